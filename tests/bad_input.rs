//! Bad input gets a clear 4xx naming the field, and the server keeps serving.

mod common;

use std::time::Duration;

use common::{small_job, Server};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_are_4xx_json_naming_the_field() {
    let mut server = Server::start(&[]).await;
    let cases = [
        (json!({"prompt": "a", "steps": 0}), 422, Some("steps")),
        (json!({"prompt": "a", "width": 513}), 422, Some("width")),
        (json!({"prompt": "a", "height": 40}), 422, Some("height")),
        (
            json!({"prompt": "a", "scheduler": "warp-drive"}),
            422,
            Some("scheduler"),
        ),
        (json!({"prompt": ""}), 422, Some("prompt")),
        (json!({"prompt": "a", "steps": "many"}), 422, Some("steps")),
        (
            json!({"prompt": "a", "guidance_scale": 1000}),
            422,
            Some("guidance_scale"),
        ),
        (
            json!({"prompt": "a", "num_images": 1000}),
            422,
            Some("num_images"),
        ),
        (
            json!({"prompt": "a", "width": 2048, "height": 2048, "num_images": 8}),
            422,
            Some("width"),
        ),
        (
            json!({"prompt": "a", "model": "../../etc"}),
            422,
            Some("model"),
        ),
        (json!({"prompt": "a", "seed": -5}), 422, Some("seed")),
        (json!({"prompt": "a", "bogus": true}), 422, Some("bogus")),
        (json!({"negative_prompt": "no prompt"}), 422, Some("prompt")),
        (json!("just a string"), 422, None),
    ];
    for (body, status, field) in cases {
        let (got, err) = server.submit(body.clone()).await;
        assert_eq!(got, status, "{body} -> {err}");
        assert!(
            err["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{err}"
        );
        assert_eq!(err["error"]["field"].as_str(), field, "{body} -> {err}");
    }

    let raw = |body: &'static str| {
        server
            .client
            .post(server.url("/v1/jobs"))
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    let malformed = raw(r#"{"prompt": "unterminated"#).await.unwrap();
    assert_eq!(malformed.status(), 400);
    let body: serde_json::Value = malformed.json().await.unwrap();
    assert_eq!(body["error"]["code"], "malformed_json");
    assert_eq!(raw("").await.unwrap().status(), 400);

    // The server answers 413 once the limit is read and closes the connection, so a
    // client still writing the rest may see a reset instead of the answer: send it on a
    // client of its own (the shared one's pooled connection would be the broken one) and
    // try again on a reset.
    let huge = format!(r#"{{"prompt":"{}"}}"#, "x".repeat(17 << 20));
    let mut too_big = None;
    for _ in 0..5 {
        let sent = reqwest::Client::new()
            .post(server.url("/v1/jobs"))
            .header("content-type", "application/json")
            .body(huge.clone())
            .send()
            .await;
        if let Ok(response) = sent {
            too_big = Some(response);
            break;
        }
    }
    let too_big = too_big.expect("an answer to the oversized body");
    assert_eq!(too_big.status(), 413);
    let body: serde_json::Value = too_big.json().await.unwrap();
    assert_eq!(body["error"]["code"], "payload_too_large");

    for path in [
        "/v1/jobs/not-a-uuid",
        "/v1/jobs/00000000-0000-0000-0000-000000000000",
        "/v1/images/xyz",
        "/v1/nothing",
    ] {
        let (status, body) = server.get_json(path).await;
        assert_eq!(status, 404, "{path}");
        assert_eq!(body["error"]["code"], "not_found", "{path}");
    }
    let (status, body) = server.get_json("/v1/jobs?status=sleeping").await;
    assert_eq!(
        (status, body["error"]["field"].as_str()),
        (422, Some("status"))
    );
    let (status, _) = server.get_json("/v1/jobs?limit=0").await;
    assert_eq!(status, 422);

    // Still serving: a good job goes through.
    let id = server.submit_ok(small_job("after all that")).await;
    let job = server.wait_terminal(&id, Duration::from_secs(60)).await;
    assert_eq!(job["status"], "succeeded");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_loopback_bind_without_keys_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (config, mut serve) = common::configs(dir.path(), &[]);
    serve.bind = "0.0.0.0:0".parse().unwrap();
    let err = sdq::app::start(&config, &serve, sdq::app::Role::All)
        .await
        .err()
        .expect("refused");
    assert!(err.to_string().contains("no API key exists"), "{err}");
}
