//! Step previews end to end, on both deployments: the embedded one (SQLite, in-process
//! bus) and the distributed one (`sdq api` + `sdq worker` on PostgreSQL, Redis and S3).
//!
//! Previews arrive for a job that asks for them (small JPEGs of the latents' size), none
//! for a job that does not; they carry no SSE `id`, so a resume with `Last-Event-ID` is
//! exact for the stored events; the stored log (what a subscriber after the end replays)
//! holds no preview; a subscriber that arrives mid-job gets the latest one at once.

mod common;

use std::time::{Duration, Instant};

use base64::Engine as _;
use common::cluster::Cluster;
use common::{Server, SseMessage, SseReader};
use serde_json::{json, Value};

async fn submit(client: &reqwest::Client, base: &str, body: Value) -> (u16, Value) {
    let resp = client
        .post(format!("{base}/v1/jobs"))
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

async fn submit_ok(client: &reqwest::Client, base: &str, body: Value) -> String {
    let (status, body) = submit(client, base, body).await;
    assert_eq!(status, 202, "{body}");
    body["id"].as_str().unwrap().to_string()
}

async fn job(client: &reqwest::Client, base: &str, id: &str) -> Value {
    client
        .get(format!("{base}/v1/jobs/{id}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

async fn events(client: &reqwest::Client, base: &str, id: &str, last: Option<i64>) -> SseReader {
    SseReader::open(client, &format!("{base}/v1/jobs/{id}/events"), last).await
}

/// Decodes a preview's data URL and checks it is a JPEG of `w` × `h`.
fn assert_preview_image(data_url: &str, w: u32, h: u32) {
    let b64 = data_url
        .strip_prefix("data:image/jpeg;base64,")
        .unwrap_or_else(|| panic!("not a JPEG data URL: {:.60}", data_url));
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .unwrap();
    let img = image::load_from_memory_with_format(&bytes, image::ImageFormat::Jpeg).unwrap();
    assert_eq!((img.width(), img.height()), (w, h));
}

/// Checks a preview message: no SSE id, the event's fields, a decodable small image.
fn check_preview(m: &SseMessage, steps: i64, size: u32) {
    assert_eq!(m.event, "preview");
    assert_eq!(m.id, None, "previews carry no SSE id: {m:?}");
    assert_eq!(m.data["type"], "preview");
    let step = m.data["step"].as_i64().unwrap();
    assert!((1..steps).contains(&step), "preview step {step} of {steps}");
    assert_eq!(m.data["total"], steps);
    assert_eq!(
        (m.data["width"].as_u64(), m.data["height"].as_u64()),
        (Some(size as u64 / 8), Some(size as u64 / 8))
    );
    assert_preview_image(m.data["image"].as_str().unwrap(), size / 8, size / 8);
}

/// The whole behaviour, against any deployment's API at `base`.
async fn previews_behave(client: &reqwest::Client, base: &str) {
    // Bad values name their field.
    for (body, field) in [
        (
            json!({"prompt": "a", "steps": 4, "previews": true, "preview_every": 0}),
            "preview_every",
        ),
        (
            json!({"prompt": "a", "steps": 4, "previews": true, "preview_every": 9}),
            "preview_every",
        ),
        (
            json!({"prompt": "a", "steps": 4, "preview_every": 2}),
            "preview_every",
        ),
        (json!({"prompt": "a", "previews": "yes"}), "previews"),
    ] {
        let (status, err) = submit(client, base, body.clone()).await;
        assert!((400..500).contains(&status), "{body}: {status}");
        assert_eq!(err["error"]["field"], field, "{body}: {err}");
    }

    // A job with a preview after every step: read some events, previews among them,
    // hang up, resume with the last stored id.
    let (size, steps) = (128u32, 16i64);
    let id = submit_ok(
        client,
        base,
        json!({"prompt": "a walk in the fog", "width": size, "height": size, "steps": steps,
               "seed": 5, "scheduler": "euler", "previews": true, "preview_every": 1}),
    )
    .await;
    let mut first = events(client, base, &id, None).await;
    let (mut stored, mut previews) = (Vec::new(), Vec::new());
    while previews.len() < 2 {
        let m = first
            .next(Duration::from_secs(120))
            .await
            .expect("the stream ended before two previews");
        assert_ne!(m.event, "succeeded", "no preview before the end");
        if m.event == "preview" {
            previews.push(m);
        } else {
            stored.push(m);
        }
    }
    drop(first);
    let last_id = stored.last().unwrap().id.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut second = events(client, base, &id, Some(last_id)).await;
    for m in second.collect(Duration::from_secs(300)).await {
        if m.event == "preview" {
            previews.push(m);
        } else {
            stored.push(m);
        }
    }
    assert_eq!(stored.last().unwrap().event, "succeeded");
    let ids: Vec<i64> = stored
        .iter()
        .map(|m| m.id.expect("stored events have ids"))
        .collect();
    assert_eq!(
        ids,
        (1..=ids.len() as i64).collect::<Vec<_>>(),
        "resume is exact: no gap, no duplicate"
    );
    let progress: Vec<i64> = stored
        .iter()
        .filter(|m| m.event == "progress")
        .map(|m| m.data["step"].as_i64().unwrap())
        .collect();
    assert_eq!(progress, (1..=steps).collect::<Vec<_>>());
    for m in &previews {
        check_preview(m, steps, size);
    }

    // The stored log, as a subscriber after the end replays it, holds no preview, and the
    // finished job keeps none.
    let replay = events(client, base, &id, None)
        .await
        .collect(Duration::from_secs(30))
        .await;
    assert!(replay.iter().all(|m| m.event != "preview"));
    assert_eq!(
        replay.iter().map(|m| m.id.unwrap()).collect::<Vec<_>>(),
        ids
    );
    let done = job(client, base, &id).await;
    assert_eq!(done["status"], "succeeded");
    assert_eq!(done["request"]["previews"], true);
    assert_eq!(done["request"]["preview_every"], 1);
    assert!(done["preview"].is_null(), "{}", done["preview"]);

    // A job without previews sends none.
    let plain = submit_ok(
        client,
        base,
        json!({"prompt": "plain", "width": 64, "height": 64, "steps": 6, "seed": 1}),
    )
    .await;
    let all = events(client, base, &plain, None)
        .await
        .collect(Duration::from_secs(120))
        .await;
    assert_eq!(all.last().unwrap().event, "succeeded");
    assert!(all.iter().all(|m| m.event != "preview"), "{all:?}");
    assert!(job(client, base, &plain).await["request"]
        .get("previews")
        .is_none());

    // A late subscriber gets the latest preview right after the stored events. This job's
    // only preview is at step 20 of 40, so once `GET` shows it no live one follows: a
    // preview on the new stream can only come from the snapshot.
    let (size, steps) = (256u32, 40i64);
    let late = submit_ok(
        client,
        base,
        json!({"prompt": "a slow dawn", "width": size, "height": size, "steps": steps,
               "seed": 2, "previews": true, "preview_every": 20}),
    )
    .await;
    let start = Instant::now();
    let shown = loop {
        let j = job(client, base, &late).await;
        if !j["preview"].is_null() {
            break j;
        }
        assert!(
            j["status"] != "succeeded",
            "the job ended before its preview showed"
        );
        assert!(
            start.elapsed() < Duration::from_secs(300),
            "no preview on {j}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(shown["status"], "running");
    assert_eq!(shown["preview"]["step"], 20);
    assert_preview_image(
        shown["preview"]["image"].as_str().unwrap(),
        size / 8,
        size / 8,
    );
    let mut stream = events(client, base, &late, None).await;
    let mut before = Vec::new();
    let snapshot = loop {
        let m = stream
            .next(Duration::from_secs(120))
            .await
            .expect("the stream ended without the snapshot's preview");
        if m.event == "preview" {
            break m;
        }
        assert_ne!(m.event, "succeeded", "the snapshot had no preview");
        before.push(m);
    };
    check_preview(&snapshot, steps, size);
    assert_eq!(snapshot.data["step"], 20);
    let rest = stream.collect(Duration::from_secs(300)).await;
    assert!(
        rest.iter().all(|m| m.event != "preview"),
        "only one preview: {rest:?}"
    );
    assert_eq!(rest.last().unwrap().event, "succeeded");
    let ids: Vec<i64> = before.iter().chain(&rest).map(|m| m.id.unwrap()).collect();
    assert_eq!(ids, (1..=ids.len() as i64).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn previews_on_the_embedded_deployment() {
    let mut server = Server::start(&[]).await;
    previews_behave(&server.client, &server.base).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn previews_through_redis_between_api_and_worker() {
    let cluster = Cluster::start().await;
    let api = cluster.spawn("api", &[]);
    api.wait_healthy(&cluster.client).await;
    let _worker = cluster.spawn("worker", &[]);
    previews_behave(&cluster.client, &api.base).await;
}
