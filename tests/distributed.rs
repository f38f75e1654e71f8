//! The distributed form with real services: PostgreSQL, Redis, an S3 server, one `sdq api`
//! and several `sdq worker` processes of the real binary.

mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use common::cluster::Cluster;
use common::SseReader;
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_api_three_workers_two_hundred_jobs_each_exactly_once() {
    let cluster = Cluster::start().await;
    let api = cluster.spawn("api", &[]);
    api.wait_healthy(&cluster.client).await;
    // Each worker serves its own /metrics (it has no API).
    let metrics_ports: Vec<u16> = (0..3).map(|_| common::free_port()).collect();
    let workers: Vec<_> = metrics_ports
        .iter()
        .map(|port| {
            let bind = format!("127.0.0.1:{port}");
            cluster.spawn("worker", &["--lease-secs", "5", "--metrics-bind", &bind])
        })
        .collect();

    let mut ids = Vec::new();
    for i in 0..200 {
        let steps = if i == 0 { 6 } else { 2 };
        ids.push(cluster.submit(&api, json!({"prompt": format!("job {i}"), "width": 64, "height": 64, "steps": steps, "seed": i})).await);
    }
    // The API process runs no inference: these events come from a worker process.
    let mut sse = SseReader::open(
        &cluster.client,
        &format!("{}/v1/jobs/{}/events", api.base, ids[0]),
        None,
    )
    .await;
    let events = sse.collect(Duration::from_secs(300)).await;
    let steps: Vec<i64> = events
        .iter()
        .filter(|e| e.event == "progress")
        .map(|e| e.data["step"].as_i64().unwrap())
        .collect();
    assert_eq!(steps, (1..=6).collect::<Vec<_>>());
    assert_eq!(events.last().unwrap().event, "succeeded");
    let ran_on = events.iter().find(|e| e.event == "started").unwrap().data["worker"]
        .as_str()
        .unwrap()
        .to_string();

    let (status, workers_view) = {
        let r = cluster
            .client
            .get(format!("{}/v1/workers", api.base))
            .send()
            .await
            .unwrap();
        (r.status(), r.json::<Value>().await.unwrap())
    };
    assert_eq!(status, 200);
    let names: HashSet<&str> = workers_view["workers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["name"].as_str().unwrap())
        .collect();
    assert_eq!(names.len(), 3, "{workers_view}");
    assert!(names.contains(ran_on.as_str()));

    let mut image_keys = HashSet::new();
    for id in &ids {
        let job = cluster
            .wait_terminal(&api, id, Duration::from_secs(600))
            .await;
        assert_eq!(job["status"], "succeeded", "{job}");
        let images = job["images"].as_array().unwrap();
        assert_eq!(images.len(), 1, "{job}");
        let image = images[0]["id"].as_str().unwrap();
        image_keys.insert(format!("{id}/{image}.png"));
        image_keys.insert(format!("{id}/{image}.thumb.jpg"));
        let events = SseReader::open(
            &cluster.client,
            &format!("{}/v1/jobs/{id}/events", api.base),
            None,
        )
        .await
        .collect(Duration::from_secs(30))
        .await;
        assert_eq!(
            events.iter().filter(|e| e.event == "succeeded").count(),
            1,
            "exactly once: {id}"
        );
    }
    // The workers' own counters add up to the jobs, each counted by the worker that ran it.
    let mut finished = 0.0;
    for port in &metrics_ports {
        let text = cluster
            .client
            .get(format!("http://127.0.0.1:{port}/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let line = text
            .lines()
            .find(|l| l.starts_with("sdq_jobs_finished_total{outcome=\"succeeded\"}"))
            .unwrap_or_else(|| panic!("no finished-jobs counter on worker :{port}:\n{text}"));
        finished += line.rsplit(' ').next().unwrap().parse::<f64>().unwrap();
        assert!(text.contains("sdq_step_duration_seconds_count"), "{text}");
    }
    assert_eq!(finished, 200.0, "every job counted once, by its worker");

    let stored: HashSet<String> = cluster
        .s3
        .keys(&cluster.bucket, "")
        .await
        .into_iter()
        .collect();
    assert_eq!(
        stored, image_keys,
        "every image (and thumbnail) in S3 has its row and vice versa"
    );

    // Images are served from S3 through the API.
    let job = cluster.job(&api, &ids[0]).await;
    let png = cluster
        .client
        .get(format!(
            "{}{}",
            api.base,
            job["images"][0]["url"].as_str().unwrap()
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(png.status(), 200);
    assert!(png.bytes().await.unwrap().starts_with(b"\x89PNG"));
    drop(workers);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_worker_job_is_finished_by_another_without_orphans() {
    let cluster = Cluster::start().await;
    let api = cluster.spawn("api", &["--rescue-secs", "0.3"]);
    api.wait_healthy(&cluster.client).await;
    let mut doomed = cluster.spawn("worker", &["--lease-secs", "1.5", "--rescue-secs", "0.3"]);
    let id = cluster
        .submit(
            &api,
            json!({"prompt": "doomed", "width": 192, "height": 192, "steps": 40, "seed": 1}),
        )
        .await;
    let mut sse = SseReader::open(
        &cluster.client,
        &format!("{}/v1/jobs/{id}/events", api.base),
        None,
    )
    .await;
    sse.wait_for_step(2, Duration::from_secs(120)).await;
    doomed.kill9();
    let _rescuer = cluster.spawn("worker", &["--lease-secs", "1.5", "--rescue-secs", "0.3"]);
    let job = cluster
        .wait_terminal(&api, &id, Duration::from_secs(300))
        .await;
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(job["attempts"], 2);
    assert_eq!(job["images"].as_array().unwrap().len(), 1);
    let keys = cluster.s3.keys(&cluster.bucket, &id).await;
    assert_eq!(
        keys.len(),
        2,
        "one image and its thumbnail, no orphans: {keys:?}"
    );
    let _ = &cluster.dir;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_job_fails_after_max_attempts_with_backoff() {
    let mut cluster = Cluster::start().await;
    // Every upload to a bucket that does not exist fails: a transient error to the worker.
    for arg in cluster.global.iter_mut() {
        if arg.starts_with("s3://") {
            *arg = "s3://no-such-bucket".into();
        }
    }
    let api = cluster.spawn("api", &[]);
    api.wait_healthy(&cluster.client).await;
    let _worker = cluster.spawn(
        "worker",
        &["--max-attempts", "3", "--retry-base-secs", "0.3"],
    );
    let started = Instant::now();
    let id = cluster
        .submit(
            &api,
            json!({"prompt": "poison", "width": 64, "height": 64, "steps": 1}),
        )
        .await;
    let events = SseReader::open(
        &cluster.client,
        &format!("{}/v1/jobs/{id}/events", api.base),
        None,
    )
    .await
    .collect(Duration::from_secs(120))
    .await;
    let failures: Vec<&Value> = events
        .iter()
        .filter(|e| e.event == "failed")
        .map(|e| &e.data)
        .collect();
    assert_eq!(failures.len(), 3, "{events:?}");
    assert_eq!(failures[0]["retrying"], true);
    assert_eq!(failures[1]["retrying"], true);
    assert_eq!(failures[2]["retrying"], false);
    assert!(
        failures[2]["error"]
            .as_str()
            .unwrap()
            .contains("storing image failed"),
        "{}",
        failures[2]
    );
    // Backoff: at least 0.3 s then 0.6 s between attempts.
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "{:?}",
        started.elapsed()
    );
    let job = cluster.job(&api, &id).await;
    assert_eq!(job["status"], "failed");
    assert_eq!(job["attempts"], 3);
    assert!(job["error"]
        .as_str()
        .unwrap()
        .contains("storing image failed"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_releases_or_finishes_the_running_job() {
    let cluster = Cluster::start().await;
    let api = cluster.spawn("api", &[]);
    api.wait_healthy(&cluster.client).await;

    // Short grace: the job is released back to the queue without counting an attempt.
    let mut leaving = cluster.spawn("worker", &["--grace-secs", "0.2"]);
    let id = cluster
        .submit(
            &api,
            json!({"prompt": "interrupted", "width": 192, "height": 192, "steps": 60, "seed": 2}),
        )
        .await;
    let mut sse = SseReader::open(
        &cluster.client,
        &format!("{}/v1/jobs/{id}/events", api.base),
        None,
    )
    .await;
    sse.wait_for_step(2, Duration::from_secs(120)).await;
    let status = leaving.terminate(Duration::from_secs(30));
    assert!(status.success(), "{status}");
    let job = cluster.job(&api, &id).await;
    assert_eq!(job["status"], "queued", "{job}");
    assert_eq!(job["attempts"], 0, "a released job keeps its attempts");

    // Long grace: the next worker finishes it even though it is told to stop.
    let mut finisher = cluster.spawn("worker", &["--grace-secs", "120"]);
    sse.wait_for_step(2, Duration::from_secs(120)).await;
    let status = finisher.terminate(Duration::from_secs(300));
    assert!(status.success());
    let job = cluster.job(&api, &id).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(job["attempts"], 1);
    let _ = &cluster.redis;
}
