//! Outages of the services sdq depends on: Redis and PostgreSQL go away mid-run and come
//! back; nothing is lost and nothing needs a restart.

mod common;

use std::time::{Duration, Instant};

use common::services::{PgDatabase, PgServer, RedisServer, S3Server};
use common::{ServeProcess, SseReader};
use serde_json::{json, Value};

async fn submit(client: &reqwest::Client, api: &ServeProcess, body: Value) -> (u16, Value) {
    let resp = client
        .post(format!("{}/v1/jobs", api.base))
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

async fn get(client: &reqwest::Client, url: String) -> (u16, Value) {
    let resp = client.get(url).send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_outage_loses_no_job_and_streams_still_end() {
    let db = PgDatabase::create().await;
    let mut redis = RedisServer::start();
    let s3 = S3Server::start();
    let bucket = s3.bucket().await;
    let dir = tempfile::tempdir().unwrap();
    let redis_url = redis.url();
    let store = format!("s3://{bucket}");
    let global = [
        "--data-dir",
        dir.path().to_str().unwrap(),
        "--model",
        "tiny",
        "--database-url",
        &db.url,
        "--redis-url",
        &redis_url,
        "--object-store",
        &store,
    ];
    let client = reqwest::Client::new();
    let api = ServeProcess::spawn_role("api", &global, &[], &s3.env());
    api.wait_healthy(&client).await;
    let _worker = ServeProcess::spawn_role("worker", &global, &[], &s3.env());

    let mut ids = Vec::new();
    for i in 0..4 {
        let (status, body) = submit(&client, &api, json!({"prompt": format!("before {i}"), "width": 128, "height": 128, "steps": 20, "seed": i})).await;
        assert_eq!(status, 202);
        ids.push(body["id"].as_str().unwrap().to_string());
    }
    let mut streams = Vec::new();
    for id in &ids {
        streams.push(
            SseReader::open(&client, &format!("{}/v1/jobs/{id}/events", api.base), None).await,
        );
    }
    // Wait until the first job is under way, then take Redis away.
    loop {
        let m = streams[0]
            .next(Duration::from_secs(60))
            .await
            .expect("open");
        if m.event == "progress" {
            break;
        }
    }
    redis.kill();
    // Submissions still work while Redis is down.
    for i in 0..2 {
        let (status, body) = submit(
            &client,
            &api,
            json!({"prompt": format!("during {i}"), "width": 64, "height": 64, "steps": 3}),
        )
        .await;
        assert_eq!(status, 202, "{body}");
        ids.push(body["id"].as_str().unwrap().to_string());
    }
    let (status, ready) = get(&client, format!("{}/ready", api.base)).await;
    assert_eq!(
        status, 200,
        "the bus degrades readiness but does not fail it: {ready}"
    );
    assert_eq!(ready["checks"]["event_bus"]["status"], "degraded");
    tokio::time::sleep(Duration::from_secs(1)).await;
    redis.restart();

    // Every SSE client still reaches its terminal event, and no job is lost.
    for (i, stream) in streams.iter_mut().enumerate() {
        let rest = stream.collect(Duration::from_secs(300)).await;
        let last = rest.last().map(|m| m.event.clone()).unwrap_or_default();
        assert_eq!(last, "succeeded", "stream {i}: {rest:?}");
    }
    let start = Instant::now();
    for id in &ids {
        loop {
            let (_, job) = get(&client, format!("{}/v1/jobs/{id}", api.base)).await;
            if job["status"] == "succeeded" {
                break;
            }
            assert!(start.elapsed() < Duration::from_secs(300), "{job}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let (_, ready) = get(&client, format!("{}/ready", api.base)).await;
    assert_eq!(ready["checks"]["event_bus"]["status"], "ok", "{ready}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_outage_gives_503_then_recovers_without_restart() {
    let pg = PgServer::start();
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let (pg_url, redis_url) = (pg.url(), redis.url());
    let images = dir.path().join("images").display().to_string();
    let global = [
        "--data-dir",
        dir.path().to_str().unwrap(),
        "--model",
        "tiny",
        "--database-url",
        &pg_url,
        "--redis-url",
        &redis_url,
        "--object-store",
        &images,
    ];
    let client = reqwest::Client::new();
    let api = ServeProcess::spawn_role("api", &global, &[], &[]);
    api.wait_healthy(&client).await;
    let _worker = ServeProcess::spawn_role("worker", &global, &["--poll-secs", "0.5"], &[]);

    let (status, body) = submit(
        &client,
        &api,
        json!({"prompt": "before", "width": 64, "height": 64, "steps": 2}),
    )
    .await;
    assert_eq!(status, 202);
    let first = body["id"].as_str().unwrap().to_string();
    let wait_done = |id: String| {
        let client = client.clone();
        let base = api.base.clone();
        async move {
            let start = Instant::now();
            loop {
                let (status, job) = get(&client, format!("{base}/v1/jobs/{id}")).await;
                if status == 200 && job["status"] == "succeeded" {
                    return;
                }
                assert!(start.elapsed() < Duration::from_secs(120), "{status} {job}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    wait_done(first.clone()).await;

    pg.stop();
    let (status, body) = get(&client, format!("{}/v1/jobs/{first}", api.base)).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "unavailable");
    let (status, _) = submit(
        &client,
        &api,
        json!({"prompt": "during", "width": 64, "height": 64, "steps": 2}),
    )
    .await;
    assert_eq!(status, 503);
    let (status, ready) = get(&client, format!("{}/ready", api.base)).await;
    assert_eq!(status, 503, "{ready}");
    assert_eq!(ready["checks"]["database"]["status"], "error");

    pg.start_again();
    // The same processes recover by themselves: reads, writes, and the worker.
    let start = Instant::now();
    loop {
        let (status, _) = get(&client, format!("{}/v1/jobs/{first}", api.base)).await;
        if status == 200 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "API did not recover"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (status, body) = submit(
        &client,
        &api,
        json!({"prompt": "after", "width": 64, "height": 64, "steps": 2}),
    )
    .await;
    assert_eq!(status, 202, "{body}");
    wait_done(body["id"].as_str().unwrap().to_string()).await;
}
