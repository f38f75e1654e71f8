//! Restarts: jobs queued while the server is down run once it is back.

mod common;

use std::time::Duration;

use common::{small_job, Server};
use sdq::queue::{sqlite::SqliteStore, JobSpec, JobStore, NewJob};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_queued_while_down_are_processed_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    // Submitted to a server with no worker, which then stops.
    let mut before = Server::start_in(dir.path(), &["--workers", "0"]).await;
    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(
            before
                .submit_ok(small_job(&format!("before restart {i}")))
                .await,
        );
    }
    before.stop().await;

    // Written straight into the database while no server runs.
    let store = SqliteStore::open(&format!("sqlite://{}", dir.path().join("sdq.db").display()))
        .await
        .unwrap();
    let job = store
        .enqueue(NewJob::local(
            JobSpec {
                prompt: "queued offline".into(),
                negative_prompt: String::new(),
                model: "tiny".into(),
                width: 64,
                height: 64,
                steps: 2,
                guidance_scale: 1.0,
                seed: 1,
                scheduler: "euler".into(),
                num_images: 1,
                long_prompt: "chunk".into(),
                ..Default::default()
            },
            0,
            3,
        ))
        .await
        .unwrap();
    ids.push(job.job().id.to_string());
    drop(store);

    let mut after = Server::start_in(dir.path(), &[]).await;
    for id in &ids {
        let job = after.wait_terminal(id, Duration::from_secs(60)).await;
        assert_eq!(job["status"], "succeeded", "{job}");
        assert_eq!(job["attempts"], 1);
        assert_eq!(job["images"].as_array().unwrap().len(), 1);
    }
    after.stop().await;
}
