//! Dynamic batching end to end: a real embedded server with `--batch-size 4` runs
//! compatible txt2img jobs as one UNet batch, and each job still gets exactly its own
//! images (those a server without batching makes of it), its own full progress, and its
//! own cancel.

mod common;

use std::time::Duration;

use common::{Server, SseMessage};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(300);

/// Four compatible jobs (same model, size, scheduler, steps, guidance) that differ in
/// everything a job keeps to itself.
fn batchable(steps: u32) -> Vec<Value> {
    let base = json!({"width": 64, "height": 64, "steps": steps, "scheduler": "euler-a",
                      "guidance_scale": 7.5});
    let own = [
        json!({"prompt": "a photo of a cat", "seed": 1}),
        json!({"prompt": "a red house by the sea", "negative_prompt": "blurry", "seed": 2,
               "num_images": 2}),
        json!({"prompt": "a (blue:1.3) bird on a branch", "seed": 3, "previews": true}),
        json!({"prompt": "a photo of a cat", "seed": 4}),
    ];
    own.into_iter()
        .map(|o| {
            let mut body = base.clone();
            body.as_object_mut()
                .unwrap()
                .extend(o.as_object().unwrap().clone());
            body
        })
        .collect()
}

/// Keeps the worker busy with a long, incompatible job until the jobs to batch are all
/// queued, then cancels it: the worker's next claim finds them all waiting.
async fn queue_behind_a_blocker(server: &Server, bodies: &[Value]) -> Vec<String> {
    let blocker = server
        .submit_ok(json!({"prompt": "blocker", "width": 128, "height": 128, "steps": 150}))
        .await;
    let mut sse = server.events(&blocker, None).await;
    sse.wait_for_step(1, WAIT).await;
    let mut ids = Vec::new();
    for body in bodies {
        ids.push(server.submit_ok(body.clone()).await);
    }
    for id in &ids {
        assert_eq!(server.job(id).await["status"], "queued");
    }
    let resp = server
        .client
        .post(server.url(&format!("/v1/jobs/{blocker}/cancel")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    assert_eq!(
        server.wait_terminal(&blocker, WAIT).await["status"],
        "canceled"
    );
    ids
}

/// The 8-bit RGB pixels of each of a job's images, in index order.
async fn pixels(server: &Server, job: &Value) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for image in job["images"].as_array().expect("images") {
        let bytes = server
            .client
            .get(server.url(image["url"].as_str().unwrap()))
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        out.push(
            image::load_from_memory(&bytes)
                .expect("a PNG")
                .to_rgb8()
                .into_raw(),
        );
    }
    out
}

/// Every event of a job, replayed from its log.
async fn log(server: &Server, id: &str) -> Vec<SseMessage> {
    server.events(id, None).await.collect(WAIT).await
}

fn progress_steps(events: &[SseMessage]) -> Vec<(i64, i64)> {
    events
        .iter()
        .filter(|m| m.event == "progress")
        .map(|m| {
            (
                m.data["step"].as_i64().unwrap(),
                m.data["total"].as_i64().unwrap(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_of_four_makes_the_images_each_job_makes_alone() {
    let steps = 5;
    let bodies = batchable(steps);
    let mut batched = Server::start(&["--batch-size", "4"]).await;
    let ids = queue_behind_a_blocker(&batched, &bodies).await;
    let mut jobs = Vec::new();
    for id in &ids {
        let job = batched.wait_terminal(id, WAIT).await;
        assert_eq!(job["status"], "succeeded", "{job}");
        assert_eq!(job["timings"]["batch_size"], 4, "ran as one batch: {job}");
        let events = log(&batched, id).await;
        let expected: Vec<(i64, i64)> = (1..=steps as i64).map(|s| (s, steps as i64)).collect();
        assert_eq!(
            progress_steps(&events),
            expected,
            "{id}: its own full progress"
        );
        let kinds: Vec<&str> = events.iter().map(|m| m.event.as_str()).collect();
        assert_eq!(kinds.iter().filter(|k| **k == "started").count(), 1);
        assert_eq!(kinds.last(), Some(&"succeeded"));
        jobs.push(job);
    }

    let mut alone = Server::start(&[]).await;
    for (i, (body, job)) in bodies.iter().zip(&jobs).enumerate() {
        let id = alone.submit_ok(body.clone()).await;
        let solo = alone.wait_terminal(&id, WAIT).await;
        assert_eq!(solo["status"], "succeeded", "{solo}");
        assert!(solo["timings"]["batch_size"].is_null(), "ran alone: {solo}");
        let (ours, theirs) = (pixels(&batched, job).await, pixels(&alone, &solo).await);
        assert_eq!(
            ours.len(),
            body["num_images"].as_u64().unwrap_or(1) as usize
        );
        assert_eq!(ours.len(), theirs.len());
        for (a, b) in ours.iter().zip(&theirs) {
            let gap = a.iter().zip(b).map(|(x, y)| x.abs_diff(*y)).max().unwrap();
            assert!(
                gap <= 1,
                "job {i}: pixels differ by {gap}/255 from the job alone"
            );
        }
    }
    // Each job got its own prompt and seed: no two images of the batch are alike.
    let all: Vec<Vec<u8>> = {
        let mut all = Vec::new();
        for job in &jobs {
            all.extend(pixels(&batched, job).await);
        }
        all
    };
    for i in 0..all.len() {
        for j in i + 1..all.len() {
            assert_ne!(all[i], all[j], "images {i} and {j} are the same");
        }
    }
    batched.stop().await;
    alone.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canceling_one_job_of_a_batch_stops_only_that_job() {
    let steps = 40;
    let bodies = batchable(steps);
    let mut server = Server::start(&["--batch-size", "4"]).await;
    let ids = queue_behind_a_blocker(&server, &bodies).await;
    let victim = &ids[1];
    let mut sse = server.events(victim, None).await;
    sse.wait_for_step(2, WAIT).await;
    let resp = server
        .client
        .post(server.url(&format!("/v1/jobs/{victim}/cancel")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    let rest = sse.collect(WAIT).await;
    assert_eq!(rest.last().unwrap().event, "canceled", "{rest:?}");
    // It ended while the rest of the batch was still denoising.
    for id in ids.iter().filter(|id| *id != victim) {
        let other = server.job(id).await;
        assert_eq!(other["status"], "running", "{other}");
        assert!(other["progress"]["step"].as_i64().unwrap() < steps as i64);
    }
    let last_step = progress_steps(&rest).iter().map(|p| p.0).max().unwrap_or(2);
    assert!(last_step <= 4, "kept going until step {last_step}");
    assert!(!rest
        .iter()
        .any(|m| m.event == "image" || m.event == "succeeded"));
    let job = server.wait_terminal(victim, WAIT).await;
    assert_eq!(job["status"], "canceled");
    assert!(job["images"].as_array().unwrap().is_empty());
    assert!(
        !server.data.join("images").join(victim).exists(),
        "no image stored"
    );
    for id in ids.iter().filter(|id| *id != victim) {
        let job = server.wait_terminal(id, WAIT).await;
        assert_eq!(job["status"], "succeeded", "{job}");
        assert_eq!(job["timings"]["batch_size"], 4);
        let expected: Vec<(i64, i64)> = (1..=steps as i64).map(|s| (s, steps as i64)).collect();
        assert_eq!(progress_steps(&log(&server, id).await), expected);
    }
    server.stop().await;
}
