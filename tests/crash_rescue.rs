//! Crashes: a job whose worker dies is re-run after its lease expires, and finishes
//! exactly once; the dead worker's lease can no longer write.

mod common;

use std::time::Duration;

use common::{small_job, ServeProcess, Server};
use sdq::queue::{sqlite::SqliteStore, JobStore, StoreError};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_process_job_is_rerun_after_restart_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let client = reqwest::Client::new();
    let flags = ["--lease-secs", "1", "--rescue-secs", "0.2"];
    let mut first = ServeProcess::spawn(dir.path(), &flags);
    first.wait_healthy(&client).await;
    let resp = client
        .post(format!("{}/v1/jobs", first.base))
        .json(
            &json!({"prompt": "interrupted", "width": 192, "height": 192, "steps": 40, "seed": 5}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    let id = resp.json::<serde_json::Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let mut sse = common::SseReader::open(
        &client,
        &format!("{}/v1/jobs/{id}/events", first.base),
        None,
    )
    .await;
    sse.wait_for_step(2, Duration::from_secs(60)).await;
    first.kill9();

    let second = ServeProcess::spawn(dir.path(), &flags);
    second.wait_healthy(&client).await;
    let events = common::SseReader::open(
        &client,
        &format!("{}/v1/jobs/{id}/events", second.base),
        None,
    )
    .await
    .collect(Duration::from_secs(120))
    .await;
    let names: Vec<&str> = events.iter().map(|e| e.event.as_str()).collect();
    assert_eq!(names.last(), Some(&"succeeded"), "{names:?}");
    assert_eq!(
        names.iter().filter(|n| **n == "started").count(),
        2,
        "{names:?}"
    );
    assert_eq!(names.iter().filter(|n| **n == "succeeded").count(), 1);
    let retry = events
        .iter()
        .find(|e| e.event == "failed")
        .expect("the lost attempt is reported");
    assert_eq!(retry.data["retrying"], true);

    let job: serde_json::Value = client
        .get(format!("{}/v1/jobs/{id}", second.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(job["status"], "succeeded");
    assert_eq!(job["attempts"], 2);
    assert_eq!(job["images"].as_array().unwrap().len(), 1);
    let stored: Vec<String> = std::fs::read_dir(dir.path().join("images").join(&id))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    let image = job["images"][0]["id"].as_str().unwrap();
    let mut stored = stored;
    stored.sort();
    assert_eq!(
        stored,
        [format!("{image}.png"), format!("{image}.thumb.jpg")],
        "exactly one image and its thumbnail, no orphans"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_workers_lease_is_rescued_and_fenced() {
    let dir = tempfile::tempdir().unwrap();
    // Queue a job with no worker running, then claim it as a worker that will die.
    let mut idle = Server::start_in(dir.path(), &["--workers", "0"]).await;
    let id = idle.submit_ok(small_job("orphaned")).await;
    idle.stop().await;
    let store = SqliteStore::open(&format!("sqlite://{}", dir.path().join("sdq.db").display()))
        .await
        .unwrap();
    let (dead, _) = store
        .claim("dead-worker", None, Duration::from_millis(500))
        .await
        .unwrap()
        .expect("claimed");
    assert_eq!(dead.job.id.to_string(), id);

    let mut server =
        Server::start_in(dir.path(), &["--lease-secs", "1", "--rescue-secs", "0.2"]).await;
    let job = server.wait_terminal(&id, Duration::from_secs(60)).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(job["attempts"], 2);

    // The dead worker wakes up: none of its writes may land.
    let job_id = dead.job.id;
    let token = dead.token;
    assert!(matches!(
        store.heartbeat(job_id, token, Duration::from_secs(5)).await,
        Err(StoreError::LeaseLost(_))
    ));
    let progress = sdq::queue::EventKind::Progress {
        step: 1,
        total: 4,
        elapsed_ms: 1,
        eta_ms: 1,
    };
    assert!(matches!(
        store.record(job_id, token, progress).await,
        Err(StoreError::LeaseLost(_))
    ));
    assert!(matches!(
        store.complete(job_id, token, vec![], json!({})).await,
        Err(StoreError::LeaseLost(_))
    ));
    assert!(matches!(
        store.fail(job_id, token, "late", None).await,
        Err(StoreError::LeaseLost(_))
    ));
    let after = server.job(&id).await;
    assert_eq!(after["status"], "succeeded");
    assert_eq!(after["images"].as_array().unwrap().len(), 1);
    server.stop().await;
}
