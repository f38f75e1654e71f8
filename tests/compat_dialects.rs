//! The A1111 and OpenAI dialects over HTTP, without their clients: each answers bad input
//! in its own error shape naming its own field, and a dialect's job is an ordinary job.

mod common;

use std::time::Duration;

use base64::Engine;
use common::Server;
use serde_json::{json, Value};

async fn post(
    server: &Server,
    path: &str,
    body: Value,
) -> (u16, Value, reqwest::header::HeaderMap) {
    let resp = server
        .client
        .post(server.url(path))
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    (status, resp.json().await.unwrap_or(Value::Null), headers)
}

/// A PNG with an A1111 `parameters` chunk, as A1111 writes it.
fn a1111_png() -> Vec<u8> {
    let mut out = Vec::new();
    {
        let mut encoder = png::Encoder::new(&mut out, 2, 2);
        encoder.set_color(png::ColorType::Rgb);
        encoder
            .add_text_chunk(
                "parameters".into(),
                "a castle\nNegative prompt: fog\nSteps: 20, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 6, Seed: 77, Size: 512x640, Model: dreamshaper".into(),
            )
            .unwrap();
        let mut writer = encoder.write_header().unwrap();
        writer.write_image_data(&[0; 12]).unwrap();
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a1111_answers_in_its_shape() {
    let mut server = Server::start(&[]).await;

    // A value sdq cannot honour is a 422 naming A1111's field.
    let (status, body, _) = post(
        &server,
        "/sdapi/v1/txt2img",
        json!({"prompt": "a", "enable_hr": true}),
    )
    .await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["field"], "enable_hr");
    assert!(body["detail"].as_str().unwrap().contains("hires"), "{body}");
    // Our validation's errors are renamed to A1111's fields.
    let (status, body, _) = post(
        &server,
        "/sdapi/v1/txt2img",
        json!({"prompt": "a", "cfg_scale": 99, "steps": 2}),
    )
    .await;
    assert_eq!(
        (status, body["field"].as_str()),
        (422, Some("cfg_scale")),
        "{body}"
    );
    let (status, body, _) = post(
        &server,
        "/sdapi/v1/txt2img",
        json!({"prompt": "a", "batch_size": 5, "n_iter": 3}),
    )
    .await;
    assert_eq!(
        (status, body["field"].as_str()),
        (422, Some("batch_size")),
        "{body}"
    );
    let (status, body, _) = post(
        &server,
        "/sdapi/v1/img2img",
        json!({"prompt": "a", "init_images": ["bm90IGFuIGltYWdl"]}),
    )
    .await;
    assert_eq!(
        (status, body["field"].as_str()),
        (422, Some("init_images")),
        "{body}"
    );
    let resp = server
        .client
        .post(server.url("/sdapi/v1/txt2img"))
        .header("content-type", "application/json")
        .body("{\"prompt\": ")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let huge = json!({"prompt": "a", "init_images": ["A".repeat(17 << 20)]});
    let (status, body, _) = post(&server, "/sdapi/v1/img2img", huge).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (413, Some("payload_too_large")),
        "{body}"
    );

    // Options: the model must exist; the choice sticks.
    let (status, body, _) = post(
        &server,
        "/sdapi/v1/options",
        json!({"sd_model_checkpoint": "nope"}),
    )
    .await;
    assert_eq!(
        (status, body["field"].as_str()),
        (422, Some("sd_model_checkpoint")),
        "{body}"
    );
    let (status, body, _) = post(
        &server,
        "/sdapi/v1/options",
        json!({"CLIP_stop_at_last_layers": 2}),
    )
    .await;
    assert_eq!(
        (status, body["field"].as_str()),
        (422, Some("CLIP_stop_at_last_layers")),
        "{body}"
    );
    let (status, _, _) = post(
        &server,
        "/sdapi/v1/options",
        json!({"sd_model_checkpoint": "tiny [abcdef]", "samples_save": true}),
    )
    .await;
    assert_eq!(status, 200);
    let (_, options) = server.get_json("/sdapi/v1/options").await;
    assert_eq!(options["sd_model_checkpoint"], "tiny");

    // Without images in the answer, the job still made and stored them.
    let (status, body, _) = post(
        &server,
        "/sdapi/v1/txt2img",
        json!({"prompt": "a cat", "width": 64, "height": 64, "steps": 2, "seed": 3, "send_images": false, "sampler_name": "DPM++ 2M", "scheduler": "Karras"}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["images"], json!([]));
    let info: Value = serde_json::from_str(body["info"].as_str().unwrap()).unwrap();
    assert_eq!(
        (info["sampler_name"].as_str(), info["scheduler"].as_str()),
        (Some("DPM++ 2M"), Some("Karras"))
    );
    let job = server.job(info["job_id"].as_str().unwrap()).await;
    assert_eq!(job["status"], "succeeded");
    assert_eq!(job["request"]["scheduler"], "dpmpp-2m-karras");
    assert_eq!(job["images"].as_array().unwrap().len(), 1);

    let (_, progress) = server.get_json("/sdapi/v1/progress").await;
    assert_eq!(
        (
            progress["progress"].as_f64(),
            progress["state"]["job_count"].as_u64()
        ),
        (Some(0.0), Some(0))
    );

    // png-info reads A1111's own text.
    let image = base64::engine::general_purpose::STANDARD.encode(a1111_png());
    let (status, body, _) = post(
        &server,
        "/sdapi/v1/png-info",
        json!({"image": format!("data:image/png;base64,{image}")}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["parameters"]["Prompt"], "a castle");
    assert_eq!(body["parameters"]["Schedule type"], "Karras");
    assert_eq!(
        (
            body["parameters"]["Size-1"].as_str(),
            body["parameters"]["Size-2"].as_str()
        ),
        (Some("512"), Some("640"))
    );
    let (status, _, _) = post(
        &server,
        "/sdapi/v1/png-info",
        json!({"image": "bm90IGFuIGltYWdl"}),
    )
    .await;
    assert_eq!(status, 422);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_answers_in_its_shape() {
    let mut server = Server::start(&[]).await;
    let cases = [
        (json!({"prompt": "a", "colour": "red"}), "colour"),
        (json!({"prompt": "a", "n": 20}), "n"),
        (json!({"prompt": "a", "size": "65x64"}), "size"),
        (json!({"n": 1}), "prompt"),
        (
            json!({"prompt": "a", "background": "transparent"}),
            "background",
        ),
        (json!({"prompt": "a", "model": "not-a-model"}), "model"),
    ];
    for (body, param) in cases {
        let (status, answer, headers) = post(&server, "/v1/images/generations", body.clone()).await;
        assert_eq!(status, 422, "{body}: {answer}");
        let error = &answer["error"];
        assert_eq!(error["param"], param, "{answer}");
        assert_eq!(error["type"], "invalid_request_error");
        assert!(error["message"].as_str().is_some_and(|m| !m.is_empty()));
        assert_eq!(headers["x-should-retry"], "false", "a 422 is not retried");
    }
    let resp = server
        .client
        .post(server.url("/v1/images/edits"))
        .json(&json!({"prompt": "a"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let answer: Value = resp.json().await.unwrap();
    assert_eq!(answer["error"]["type"], "invalid_request_error");

    // A generation is an ordinary job: in /v1/jobs with its images in the gallery.
    let (status, body, _) = post(
        &server,
        "/v1/images/generations",
        json!({"prompt": "a fox", "size": "64x64", "quality": "low", "user": "u-9"}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let png = base64::engine::general_purpose::STANDARD
        .decode(body["data"][0]["b64_json"].as_str().unwrap())
        .unwrap();
    assert_eq!(common::decode_png(&png).0, 64);
    let (_, jobs) = server.get_json("/v1/jobs").await;
    let job = &jobs["jobs"][0];
    assert_eq!(
        (job["status"].as_str(), job["request"]["user"].as_str()),
        (Some("succeeded"), Some("u-9"))
    );
    assert_eq!(
        job["request"]["steps"], 2,
        "quality low halves the tiny model's 4 steps"
    );

    let (_, models) = server.get_json("/v1/models").await;
    assert_eq!(models["object"], "list");
    assert!(models["data"]
        .as_array()
        .unwrap()
        .iter()
        .any(|m| m["id"] == "tiny" && m["object"] == "model"));
    assert!(models["models"].is_array(), "sdq's own listing stays");
    let _ = server
        .wait_terminal(job["id"].as_str().unwrap(), Duration::from_secs(5))
        .await;
    server.stop().await;
}
