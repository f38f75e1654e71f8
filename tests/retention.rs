//! A service that runs for months does not grow without bound: the cleaner removes
//! finished jobs past `--retain-days` with their events, image rows and objects, and
//! compacts the event logs of finished jobs; under a steady load the rows and the bucket
//! objects level off.

mod common;

use std::time::{Duration, Instant};

use common::services::S3Server;
use common::{small_job, Server};

/// Rows per table and objects in the bucket.
#[derive(Debug, Clone, Copy)]
struct Sizes {
    jobs: i64,
    events: i64,
    images: i64,
    objects: usize,
}

async fn sizes(pool: &sqlx::SqlitePool, s3: &S3Server, bucket: &str) -> Sizes {
    let count = |table: &'static str| async move {
        sqlx::query_scalar::<_, i64>(&format!("SELECT COUNT(*) FROM {table}"))
            .fetch_one(pool)
            .await
            .unwrap()
    };
    Sizes {
        jobs: count("jobs").await,
        events: count("job_events").await,
        images: count("images").await,
        objects: s3.keys(bucket, "").await.len(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_and_objects_stop_growing_under_a_steady_load() {
    let s3 = S3Server::start();
    let bucket = s3.bucket().await;
    S3Server::set_process_credentials();
    // Keep finished jobs 4 s, compact their logs after 1 s, clean every 0.5 s.
    let retain_days = format!("{}", 4.0 / 86_400.0);
    let store = format!("s3://{bucket}");
    let endpoint = s3.endpoint();
    let server = Server::start(&[
        "--object-store",
        &store,
        "--s3-endpoint",
        &endpoint,
        "--retain-days",
        &retain_days,
        "--compact-after-secs",
        "1",
        "--clean-secs",
        "0.5",
    ])
    .await;
    let db = format!("sqlite://{}?mode=ro", server.data.join("sdq.db").display());
    let pool = sqlx::SqlitePool::connect(&db).await.unwrap();

    // A steady, sustainable load for 24 s: one job at a time, each submitted when the
    // previous one finished; sampled every 2 s.
    let start = Instant::now();
    let mut samples = Vec::new();
    let mut submitted = 0;
    let mut last_sample = Instant::now();
    while start.elapsed() < Duration::from_secs(24) {
        let body = serde_json::json!({"prompt": format!("steady {submitted}"), "width": 64,
            "height": 64, "steps": 1, "guidance_scale": 1.0, "seed": submitted});
        let id = server.submit_ok(body).await;
        server.wait_terminal(&id, Duration::from_secs(60)).await;
        submitted += 1;
        if last_sample.elapsed() >= Duration::from_secs(2) {
            last_sample = Instant::now();
            let s = sizes(&pool, &s3, &bucket).await;
            println!(
                "t={:>4.1}s submitted {submitted:>3}: {s:?}",
                start.elapsed().as_secs_f64()
            );
            samples.push(s);
        }
    }
    let third = samples.len() / 3;
    let peak = |range: &[Sizes]| {
        (
            range.iter().map(|s| s.jobs).max().unwrap(),
            range.iter().map(|s| s.events).max().unwrap(),
            range.iter().map(|s| s.images).max().unwrap(),
            range.iter().map(|s| s.objects).max().unwrap(),
        )
    };
    let middle = peak(&samples[third..2 * third]);
    let last = peak(&samples[2 * third..]);
    println!("peaks, middle third {middle:?}, last third {last:?}, {submitted} jobs submitted");
    // Level, not growing: the last third peaks no higher than the middle third plus
    // noise, and far below what was submitted.
    assert!(
        last.0 <= middle.0 + middle.0 / 2 + 5,
        "jobs keep growing: {middle:?} → {last:?}"
    );
    assert!(
        last.1 <= middle.1 + middle.1 / 2 + 50,
        "events keep growing: {middle:?} → {last:?}"
    );
    assert!(
        last.2 <= middle.2 + middle.2 / 2 + 5,
        "images keep growing: {middle:?} → {last:?}"
    );
    assert!(
        last.3 <= middle.3 + middle.3 / 2 + 5,
        "objects keep growing: {middle:?} → {last:?}"
    );
    assert!(last.0 * 2 < submitted, "retention removes jobs");

    // Once the load stops, everything goes.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let s = sizes(&pool, &s3, &bucket).await;
        if s.jobs == 0 && s.events == 0 && s.images == 0 && s.objects == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not everything was removed: {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cleaner_pass_removes_old_jobs_with_their_inputs_and_compacts_logs() {
    // No periodic cleaning: this test runs passes itself.
    let server = Server::start(&["--clean-secs", "3600"]).await;
    let png = {
        let job = server.submit_ok(small_job("source")).await;
        let job = server.wait_terminal(&job, Duration::from_secs(60)).await;
        let url = server.url(job["images"][0]["url"].as_str().unwrap());
        server
            .client
            .get(url)
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap()
    };
    use base64::Engine;
    let init = base64::engine::general_purpose::STANDARD.encode(&png);
    let img2img = server
        .submit_ok(
            serde_json::json!({"prompt": "img2img", "init_image": init, "strength": 0.5,
                                      "steps": 2, "seed": 1}),
        )
        .await;
    let job = server
        .wait_terminal(&img2img, Duration::from_secs(60))
        .await;
    assert_eq!(job["status"], "succeeded", "{job}");
    let input = job["request"]["init_image"].as_str().unwrap().to_string();

    let queue = sdq::app::open_queue(&common::configs(&server.data, &[]).0)
        .await
        .unwrap();
    let images = sdq::storage::ImageStore::open(
        &server.data.join("images").display().to_string(),
        &Default::default(),
    )
    .unwrap();
    assert!(images.get(&input).await.is_ok(), "the input is stored");
    let events = |id: String| {
        let store = queue.store.clone();
        async move {
            let id = id.parse().unwrap();
            store
                .events_after(id, 0, &sdq::queue::Scope::All)
                .await
                .unwrap()
                .into_iter()
                .map(|e| e.kind.name())
                .collect::<Vec<_>>()
        }
    };
    assert!(events(img2img.clone()).await.contains(&"progress"));

    // Compaction keeps the story of the job, minus its progress.
    let keep_all = sdq::maintenance::cleaner::Retention {
        keep: None,
        compact_after: Duration::ZERO,
    };
    tokio::time::sleep(Duration::from_millis(20)).await;
    let report = sdq::maintenance::cleaner::pass(&queue.store, &images, keep_all)
        .await
        .unwrap();
    assert_eq!(report.jobs_compacted, 2, "{report:?}");
    assert_eq!(report.jobs_removed, 0);
    assert_eq!(
        events(img2img.clone()).await,
        vec!["queued", "started", "image", "succeeded"]
    );
    // A stream opened now still ends with the terminal event.
    let late = server
        .events(&img2img, None)
        .await
        .collect(Duration::from_secs(10))
        .await;
    assert_eq!(late.last().unwrap().event, "succeeded");

    // An unfinished job stays (this one runs for minutes); finished ones go, with their
    // images, thumbnails and inputs.
    let queued_behind = server
        .submit_ok(serde_json::json!({"prompt": "long", "width": 512, "height": 512, "steps": 150}))
        .await;
    let remove_finished = sdq::maintenance::cleaner::Retention {
        keep: Some(Duration::ZERO),
        compact_after: Duration::ZERO,
    };
    let report = sdq::maintenance::cleaner::pass(&queue.store, &images, remove_finished)
        .await
        .unwrap();
    assert!(report.jobs_removed >= 2, "{report:?}");
    assert!(
        report.objects_removed >= 3,
        "two images and an input: {report:?}"
    );
    let (status, _) = server.get_json(&format!("/v1/jobs/{img2img}")).await;
    assert_eq!(status, 404);
    assert!(
        matches!(
            images.get(&input).await,
            Err(sdq::storage::StorageError::NotFound(_))
        ),
        "input deleted"
    );
    assert!(
        images.list(&img2img).await.unwrap().is_empty(),
        "images deleted"
    );
    let (status, _) = server.get_json(&format!("/v1/jobs/{queued_behind}")).await;
    assert_eq!(status, 200, "unfinished jobs are never removed");
    let _ = server
        .client
        .post(server.url(&format!("/v1/jobs/{queued_behind}/cancel")))
        .send()
        .await;
}
