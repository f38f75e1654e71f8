//! `sdq bench batch`: what dynamic batching gains. N compatible txt2img jobs on the tiny
//! model go through a real in-process `sdq serve` (HTTP submissions, SQLite, its worker
//! with `--batch-size B`) at each B, and the throughput is compared with the first B
//! listed (normally 1: every job alone).
//!
//! So that every B sees the same queue, the jobs are submitted while the worker is busy
//! with a long, incompatible blocker job, which is then canceled: the worker's next claim
//! finds all N waiting. Each job's claim and finish times come from its row; a run's time
//! is the first claim to the last finish, so neither the blocker nor the model load
//! (done by a warm-up job first) counts.

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::{json, Value};
use uuid::Uuid;

use super::load::LocalServer;
use super::Row;
use crate::app::Role;
use crate::queue::{Job, JobStatus, Scope};

#[derive(Debug, Clone)]
pub struct BatchBench {
    /// Jobs per run.
    pub jobs: usize,
    pub batch_sizes: Vec<usize>,
    /// Square image sides.
    pub sizes: Vec<usize>,
    pub steps: usize,
    pub iterations: usize,
    /// The worker's `--device` and `--dtype`.
    pub device: String,
    pub dtype: String,
}

/// How long one job may wait before the benchmark gives up.
const PATIENCE: Duration = Duration::from_secs(3600);

pub async fn batch(bench: &BatchBench) -> anyhow::Result<Vec<Row>> {
    if bench.jobs == 0 || bench.steps == 0 || bench.steps > 150 {
        bail!("--jobs must be positive and --steps 1 to 150");
    }
    if bench.batch_sizes.is_empty() || bench.batch_sizes.iter().any(|b| !(1..=64).contains(b)) {
        bail!("--batch-sizes must be 1 to 64");
    }
    let mut rows = Vec::new();
    for &size in &bench.sizes {
        let mut baseline: Option<(String, Vec<Duration>)> = None;
        for &b in &bench.batch_sizes {
            let flag = b.to_string();
            let flags = [
                "--batch-size",
                &flag,
                "--poll-secs",
                "1",
                "--device",
                &bench.device,
                "--dtype",
                &bench.dtype,
            ];
            let server = LocalServer::start_with(Role::All, 1, &flags).await?;
            let result = measure(&server, size, bench).await;
            server.stop().await;
            let (per_job, mean_batch) = result?;
            // The first batch size is the baseline of every row, its own included.
            let baseline =
                baseline.get_or_insert_with(|| (format!("batch size {b}"), per_job.clone()));
            let row = Row::new(
                "batch",
                format!(
                    "{size}x{size}, {} steps, {} jobs, batch size {b}",
                    bench.steps, bench.jobs
                ),
                &per_job,
                Some((baseline.0.as_str(), baseline.1.as_slice())),
            );
            let jobs_per_s = 1000.0 / row.ours_ms.max(1e-9);
            rows.push(
                row.with("jobs_per_s", jobs_per_s)
                    .with("batch_size", b as f64)
                    .with("mean_batch", mean_batch),
            );
        }
    }
    Ok(rows)
}

/// Runs the jobs `iterations` times on one server; returns each run's time per job and
/// the mean batch the jobs ran in.
async fn measure(
    server: &LocalServer,
    size: usize,
    bench: &BatchBench,
) -> anyhow::Result<(Vec<Duration>, f64)> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()?;
    let job = |i: usize| {
        json!({"prompt": format!("a batch benchmark, job {i}"), "seed": i,
               "width": size, "height": size, "steps": bench.steps,
               "scheduler": "euler", "guidance_scale": 7.5})
    };
    // Loads the model and warms first-use paths, untimed.
    let warm = submit(&client, server, &job(0)).await?;
    wait(server, &[warm]).await?;

    let mut per_job = Vec::new();
    let mut batches = Vec::new();
    for _ in 0..bench.iterations.max(1) {
        let blocker = json!({"prompt": "blocker", "width": 64, "height": 64, "steps": 150,
                             "scheduler": "ddim"});
        let blocker = submit(&client, server, &blocker).await?;
        until(server, blocker, |j| j.status != JobStatus::Queued).await?;
        let mut ids = Vec::with_capacity(bench.jobs);
        for i in 0..bench.jobs {
            ids.push(submit(&client, server, &job(i + 1)).await?);
        }
        if get(server, blocker).await?.status != JobStatus::Running {
            bail!("the blocker job ended before all jobs were queued; use fewer --jobs");
        }
        let cancel = format!("{}/v1/jobs/{blocker}/cancel", server.base);
        client.post(&cancel).send().await?.error_for_status()?;
        let done = wait(server, &ids).await?;
        let first = done.iter().filter_map(|j| j.started_at).min().unwrap_or(0);
        let last = done.iter().filter_map(|j| j.finished_at).max().unwrap_or(0);
        let span = Duration::from_millis((last - first).max(0) as u64);
        per_job.push(span / bench.jobs as u32);
        batches.extend(done.iter().map(|j| {
            j.timings
                .as_ref()
                .and_then(|t| t["batch_size"].as_f64())
                .unwrap_or(1.0)
        }));
    }
    let mean_batch = batches.iter().sum::<f64>() / batches.len().max(1) as f64;
    Ok((per_job, mean_batch))
}

async fn submit(
    client: &reqwest::Client,
    server: &LocalServer,
    body: &Value,
) -> anyhow::Result<Uuid> {
    let response = client
        .post(format!("{}/v1/jobs", server.base))
        .json(body)
        .send()
        .await?;
    let status = response.status();
    let answer: Value = response.json().await?;
    if !status.is_success() {
        bail!("submission refused ({status}): {answer}");
    }
    answer["id"]
        .as_str()
        .and_then(|id| Uuid::parse_str(id).ok())
        .context("the answer has no job id")
}

async fn get(server: &LocalServer, id: Uuid) -> anyhow::Result<Job> {
    server
        .running
        .queue
        .store
        .get(id, &Scope::All)
        .await?
        .context("a submitted job is gone")
}

/// Polls a job's row until `done` holds.
async fn until(server: &LocalServer, id: Uuid, done: impl Fn(&Job) -> bool) -> anyhow::Result<Job> {
    let start = Instant::now();
    loop {
        let job = get(server, id).await?;
        if done(&job) {
            return Ok(job);
        }
        if start.elapsed() > PATIENCE {
            bail!("job {id} is still {} after {PATIENCE:?}", job.status);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits for every job to succeed.
async fn wait(server: &LocalServer, ids: &[Uuid]) -> anyhow::Result<Vec<Job>> {
    let mut done = Vec::with_capacity(ids.len());
    for &id in ids {
        let job = until(server, id, |j| j.status.is_terminal()).await?;
        if job.status != JobStatus::Succeeded {
            bail!("job {id} ended {}: {:?}", job.status, job.error);
        }
        done.push(job);
    }
    Ok(done)
}
