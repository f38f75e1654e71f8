//! `sdq bench sse`: SSE fan-out. N subscribers stream one live job's events through the
//! real API (`GET /v1/jobs/{id}/events`) of an in-process embedded server; the benchmark
//! holds the job's lease itself and records progress events through the real store and
//! bus, noting when each was published. Lag = when a subscriber had read the event −
//! when it was published (one process, one clock).
//!
//! The baseline is the first (smallest) subscriber count, so `speedup` below 1 says how
//! much slower delivery gets as subscribers grow.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use futures::StreamExt;
use tokio::sync::mpsc;

use super::load::{quantile_ms, raise_open_files, LocalServer};
use super::Row;
use crate::app::Role;
use crate::queue::{EventKind, JobSpec, NewJob, Queue};

#[derive(Debug, Clone)]
pub struct SseBench {
    pub subscribers: Vec<usize>,
    /// Progress events published per subscriber count.
    pub events: usize,
    /// Pause between two events.
    pub interval: Duration,
}

pub async fn sse(bench: &SseBench) -> anyhow::Result<Vec<Row>> {
    if bench.subscribers.is_empty() || bench.subscribers.contains(&0) || bench.events == 0 {
        anyhow::bail!("--subscribers counts and --events must be positive");
    }
    let limit = raise_open_files();
    let most = *bench.subscribers.iter().max().expect("not empty");
    if limit > 0 && (most as u64) * 2 + 256 > limit {
        anyhow::bail!("{most} subscribers need about {} open files; the limit is {limit} (raise it with ulimit -n)", most * 2 + 256);
    }
    let server = LocalServer::start(Role::Api, 0).await?;
    let result = measure(bench, &server).await;
    server.stop().await;
    result
}

async fn measure(bench: &SseBench, server: &LocalServer) -> anyhow::Result<Vec<Row>> {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()?;
    let mut rows = Vec::new();
    let mut first: Option<(usize, Vec<Duration>)> = None;
    for &count in &bench.subscribers {
        let run = fan_out(&client, &server.running.queue, &server.base, count, bench).await?;
        let expected = count * bench.events;
        let received = run.lags.len();
        let baseline = first
            .as_ref()
            .map(|(n, lags)| (format!("{n} subscribers"), lags.clone()));
        let row = Row::new(
            "sse",
            format!("{count} subscribers, {} events", bench.events),
            &run.lags,
            baseline
                .as_ref()
                .map(|(name, lags)| (name.as_str(), lags.as_slice())),
        )
        .with("p90_ms", quantile_ms(&run.lags, 0.9))
        .with("p99_ms", quantile_ms(&run.lags, 0.99))
        .with("max_ms", quantile_ms(&run.lags, 1.0))
        .with("subscribe_s", run.subscribed.as_secs_f64())
        .with("missing", expected.saturating_sub(received) as f64);
        rows.push(row);
        if first.is_none() {
            first = Some((count, run.lags));
        }
    }
    Ok(rows)
}

struct FanOut {
    lags: Vec<Duration>,
    /// How long until every subscriber had its snapshot (was live).
    subscribed: Duration,
}

/// What a subscriber reports: it is live, or it read one event with this `seq`.
enum Seen {
    Live,
    Event(i64, Instant),
}

async fn fan_out(
    client: &reqwest::Client,
    queue: &Queue,
    base: &str,
    count: usize,
    bench: &SseBench,
) -> anyhow::Result<FanOut> {
    let spec = JobSpec {
        prompt: "an SSE fan-out benchmark".into(),
        model: "tiny".into(),
        width: 64,
        height: 64,
        steps: bench.events as u32,
        guidance_scale: 7.5,
        scheduler: "ddim".into(),
        num_images: 1,
        ..JobSpec::default()
    };
    let job = match queue.submit(NewJob::local(spec, 0, 1)).await? {
        crate::queue::Enqueued::New(job, _) | crate::queue::Enqueued::Existing(job) => job,
    };
    let lease = queue
        .claim("bench-sse", Some("tiny"), Duration::from_secs(600))
        .await?
        .context("the benchmark job was not claimable")?;
    anyhow::ensure!(lease.job.id == job.id, "claimed another job than ours");

    let (tx, mut rx) = mpsc::unbounded_channel();
    let url = format!("{base}/v1/jobs/{}/events", job.id);
    let start = Instant::now();
    let mut subscribers = Vec::with_capacity(count);
    for _ in 0..count {
        subscribers.push(tokio::spawn(subscribe(
            client.clone(),
            url.clone(),
            tx.clone(),
        )));
    }
    drop(tx);
    let mut live = 0;
    let mut seen = Vec::with_capacity(count * bench.events);
    while live < count {
        match tokio::time::timeout(Duration::from_secs(120), rx.recv()).await {
            Ok(Some(Seen::Live)) => live += 1,
            Ok(Some(Seen::Event(seq, at))) => seen.push((seq, at)),
            Ok(None) => break,
            Err(_) => anyhow::bail!("only {live} of {count} subscribers connected in 120 s"),
        }
    }
    let subscribed = start.elapsed();

    let published = Arc::new(Mutex::new(HashMap::new()));
    for step in 1..=bench.events {
        tokio::time::sleep(bench.interval).await;
        let kind = EventKind::Progress {
            step: step as i64,
            total: bench.events as i64,
            elapsed_ms: 0,
            eta_ms: 0,
        };
        // Commit first (as the worker does), then note the time and publish.
        let event = queue.store.record(job.id, lease.token, kind).await?;
        published
            .lock()
            .expect("not poisoned")
            .insert(event.seq, Instant::now());
        queue.publish(std::slice::from_ref(&event)).await;
    }
    queue
        .complete(&lease, Vec::new(), serde_json::json!({}))
        .await?;
    while let Some(message) = rx.recv().await {
        if let Seen::Event(seq, at) = message {
            seen.push((seq, at));
        }
    }
    for s in subscribers {
        s.await??;
    }
    let published = published.lock().expect("not poisoned");
    let lags = seen
        .iter()
        .filter_map(|(seq, at)| published.get(seq).map(|p| at.saturating_duration_since(*p)))
        .collect();
    Ok(FanOut { lags, subscribed })
}

/// Reads one job's SSE stream to its end, reporting when it is live (it has read the
/// `started` event of the snapshot) and each progress event's arrival.
async fn subscribe(
    client: reqwest::Client,
    url: String,
    tx: mpsc::UnboundedSender<Seen>,
) -> anyhow::Result<()> {
    let response = client.get(&url).send().await?.error_for_status()?;
    let mut body = response.bytes_stream();
    // Lines are cut out of the bytes in place: the client shares the CPU with the server
    // it measures, so it should cost little per event.
    let mut buffer: Vec<u8> = Vec::new();
    let (mut id, mut name) = (None::<i64>, String::new());
    while let Some(chunk) = body.next().await {
        let at = Instant::now();
        buffer.extend_from_slice(&chunk?);
        let mut start = 0;
        while let Some(len) = buffer[start..].iter().position(|b| *b == b'\n') {
            let raw = &buffer[start..start + len];
            start += len + 1;
            let line = std::str::from_utf8(raw.strip_suffix(b"\r").unwrap_or(raw)).unwrap_or("");
            if let Some(v) = line.strip_prefix("id:") {
                id = v.trim().parse().ok();
            } else if let Some(v) = line.strip_prefix("event:") {
                name.clear();
                name.push_str(v.trim());
            } else if line.is_empty() && !name.is_empty() {
                match name.as_str() {
                    "started" => {
                        let _ = tx.send(Seen::Live);
                    }
                    "progress" => {
                        if let Some(seq) = id {
                            let _ = tx.send(Seen::Event(seq, at));
                        }
                    }
                    "succeeded" | "failed" | "canceled" => return Ok(()),
                    _ => {}
                }
                name.clear();
            }
        }
        buffer.drain(..start);
    }
    Ok(())
}
