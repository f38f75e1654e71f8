//! Cancellation: running jobs stop within a step, queued jobs end at once, finished
//! jobs cannot be canceled.

mod common;

use std::time::Duration;

use common::Server;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canceling_a_running_job_stops_it_within_one_step() {
    let mut server = Server::start(&[]).await;
    let id = server
        .submit_ok(
            json!({"prompt": "a slow one", "width": 256, "height": 256, "steps": 150, "seed": 1}),
        )
        .await;
    let mut sse = server.events(&id, None).await;
    sse.wait_for_step(2, Duration::from_secs(60)).await;
    let resp = server
        .client
        .post(server.url(&format!("/v1/jobs/{id}/cancel")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202, "a running job is asked to stop");
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["cancel_requested"], true);

    let rest = sse.collect(Duration::from_secs(60)).await;
    assert_eq!(rest.last().unwrap().event, "canceled", "{rest:?}");
    let last_step = rest
        .iter()
        .filter(|m| m.event == "progress")
        .filter_map(|m| m.data["step"].as_i64())
        .max()
        .unwrap_or(2);
    // The step running when the cancel arrived may finish; the next one must not.
    assert!(last_step <= 4, "kept going until step {last_step}");
    assert!(!rest
        .iter()
        .any(|m| m.event == "image" || m.event == "succeeded"));

    let job = server.job(&id).await;
    assert_eq!(job["status"], "canceled");
    assert!(job["images"].as_array().unwrap().is_empty());
    let (_, images) = server.get_json(&format!("/v1/jobs/{id}/images")).await;
    assert!(images["images"].as_array().unwrap().is_empty());
    assert!(
        !server.data.join("images").join(&id).exists(),
        "no image stored"
    );

    let again = server
        .client
        .post(server.url(&format!("/v1/jobs/{id}/cancel")))
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 409);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canceling_finished_and_queued_jobs() {
    let mut server = Server::start(&[]).await;
    let done = server.submit_ok(common::small_job("quick")).await;
    assert_eq!(
        server.wait_terminal(&done, Duration::from_secs(60)).await["status"],
        "succeeded"
    );
    let resp = server
        .client
        .post(server.url(&format!("/v1/jobs/{done}/cancel")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 409);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "conflict");
    server.stop().await;

    // No worker: the job stays queued, and a cancel ends it at once.
    let mut idle = Server::start(&["--workers", "0"]).await;
    let queued = idle.submit_ok(common::small_job("never runs")).await;
    let resp = idle
        .client
        .post(idle.url(&format!("/v1/jobs/{queued}/cancel")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["status"], "canceled");
    let events = idle
        .events(&queued, None)
        .await
        .collect(Duration::from_secs(10))
        .await;
    let names: Vec<_> = events.iter().map(|e| e.event.as_str()).collect();
    assert_eq!(names, ["queued", "canceled"]);
    let missing = idle
        .client
        .post(idle.url("/v1/jobs/00000000-0000-0000-0000-000000000000/cancel"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    idle.stop().await;
}
