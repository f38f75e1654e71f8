//! Submit over REST, follow SSE to the end, download the PNG.

mod common;

use std::time::Duration;

use common::{decode_png, small_job, Server};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_runs_end_to_end_with_every_step_streamed() {
    let mut server = Server::start(&[]).await;
    let id = server.submit_ok(json!({"prompt": "a lighthouse", "width": 64, "height": 64, "steps": 6, "seed": 3, "scheduler": "ddim"})).await;

    let mut sse = server.events(&id, None).await;
    assert_eq!(sse.status, 200);
    let events = sse.collect(Duration::from_secs(60)).await;
    let names: Vec<&str> = events.iter().map(|e| e.event.as_str()).collect();
    assert_eq!(names.first(), Some(&"queued"), "{names:?}");
    assert_eq!(names.last(), Some(&"succeeded"), "{names:?}");
    assert!(
        names.contains(&"started") && names.contains(&"image"),
        "{names:?}"
    );

    // ids are the per-job seq: 1, 2, 3, ... with no gaps.
    let ids: Vec<i64> = events.iter().map(|e| e.id.expect("id")).collect();
    assert_eq!(ids, (1..=ids.len() as i64).collect::<Vec<_>>());

    let steps: Vec<i64> = events
        .iter()
        .filter(|e| e.event == "progress")
        .map(|e| {
            assert_eq!(e.data["total"], 6);
            e.data["step"].as_i64().unwrap()
        })
        .collect();
    assert_eq!(steps, (1..=6).collect::<Vec<_>>());

    let done = events.last().unwrap();
    let image_url = done.data["images"][0]["url"].as_str().unwrap().to_string();
    let png = server
        .client
        .get(server.url(&image_url))
        .send()
        .await
        .unwrap();
    assert_eq!(png.status(), 200);
    assert_eq!(png.headers()["content-type"], "image/png");
    let (w, h, chunks) = decode_png(&png.bytes().await.unwrap());
    assert_eq!((w, h), (64, 64));
    assert!(chunks
        .iter()
        .any(|(k, v)| k == "parameters" && v.contains("Sampler: DDIM")));

    let job = server.job(&id).await;
    assert_eq!(job["status"], "succeeded");
    assert_eq!(job["attempts"], 1);
    assert_eq!(job["progress"]["step"], 6);
    assert_eq!(job["images"].as_array().unwrap().len(), 1);
    assert!(job["timings"]["total_ms"].as_u64().is_some());

    let (status, listed) = server.get_json(&format!("/v1/jobs/{id}/images")).await;
    assert_eq!(status, 200);
    assert_eq!(listed["images"][0]["url"], image_url);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_images_and_listing() {
    let mut server = Server::start(&[]).await;
    let id = server.submit_ok(json!({"prompt": "two cats", "width": 64, "height": 64, "steps": 2, "num_images": 2, "seed": 40})).await;
    let job = server.wait_terminal(&id, Duration::from_secs(60)).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    let images = job["images"].as_array().unwrap();
    assert_eq!(images.len(), 2);
    assert_eq!(images[0]["seed"], 40);
    assert_eq!(images[1]["seed"], 41);

    let other = server.submit_ok(small_job("another")).await;
    server.wait_terminal(&other, Duration::from_secs(60)).await;
    let (status, page) = server.get_json("/v1/jobs?limit=1").await;
    assert_eq!(status, 200);
    assert_eq!(page["jobs"][0]["id"], other.as_str(), "newest first");
    let cursor = page["next_cursor"].as_str().unwrap();
    let (_, next) = server
        .get_json(&format!("/v1/jobs?limit=1&cursor={cursor}"))
        .await;
    assert_eq!(next["jobs"][0]["id"], id.as_str());
    let (_, succeeded) = server.get_json("/v1/jobs?status=succeeded").await;
    assert_eq!(succeeded["jobs"].as_array().unwrap().len(), 2);

    let (status, health) = server.get_json("/health").await;
    assert_eq!((status, health["status"].as_str()), (200, Some("ok")));
    let (status, ready) = server.get_json("/ready").await;
    assert_eq!(status, 200, "{ready}");
    let (status, models) = server.get_json("/v1/models").await;
    assert_eq!(status, 200);
    assert_eq!(models["models"][0]["id"], "tiny");
    server.stop().await;
}
