//! `sdq bench queue`: jobs per second for no-op jobs through the real store: enqueue,
//! claim, a few progress events (as a real job records them), complete — with 1, 2, 4, 8
//! concurrent workers, on SQLite (a temporary file) and PostgreSQL (a fresh database on
//! the server `--database-url` names, dropped afterwards).
//!
//! Each row's baseline is one worker on the same backend, so `speedup` is how well the
//! store scales with workers: lock contention or a starved pool shows as a ratio that
//! fell, while `jobs_per_s` gives the absolute figure to compare across runs.
//!
//! With `claim_batch` above 1 each count also runs as a throughput-oriented worker
//! drains: it claims a job, then up to `claim_batch - 1` more with `claim_batch`, and
//! completes them all with one `complete_many`. Those rows' baseline is the
//! one-at-a-time run with as many workers, so `speedup` is the gain of batching.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use sqlx::Connection;

use super::Row;
use crate::queue::{
    local_bus::LocalBus, postgres::PgStore, sqlite::SqliteStore, EventKind, JobSpec, JobStore,
    NewJob, Queue,
};

/// What `sdq bench queue` runs.
#[derive(Debug, Clone)]
pub struct QueueBench {
    pub jobs: usize,
    pub workers: Vec<usize>,
    /// Progress events each job records between claim and complete.
    pub progress: usize,
    /// Jobs a worker claims and completes at once (1: one at a time only).
    pub claim_batch: usize,
    pub iterations: usize,
    /// A PostgreSQL server URL; the benchmark creates (and drops) its own database there.
    pub postgres: Option<String>,
}

/// A database made for one run, removed again by `cleanup`.
enum Scratch {
    Sqlite(std::path::PathBuf),
    Postgres { admin: String, name: String },
}

impl Scratch {
    async fn cleanup(self) {
        match self {
            Scratch::Sqlite(dir) => {
                let _ = std::fs::remove_dir_all(dir);
            }
            Scratch::Postgres { admin, name } => {
                if let Ok(mut conn) = sqlx::PgConnection::connect(&admin).await {
                    let drop = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
                    if let Err(e) = sqlx::query(&drop).execute(&mut conn).await {
                        eprintln!("could not drop benchmark database {name}: {e}");
                    }
                }
            }
        }
    }
}

async fn open_sqlite() -> anyhow::Result<(Arc<dyn JobStore>, Scratch)> {
    let dir = std::env::temp_dir().join(format!(
        "sdq-bench-queue-{}-{}",
        std::process::id(),
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::create_dir_all(&dir)?;
    let store = SqliteStore::open(&format!("sqlite://{}", dir.join("jobs.db").display())).await?;
    Ok((Arc::new(store), Scratch::Sqlite(dir)))
}

async fn open_postgres(url: &str) -> anyhow::Result<(Arc<dyn JobStore>, Scratch)> {
    // Keep the URL's parameters (e.g. `?options=...`) for the database we make.
    let (path, query) = url.split_once('?').unwrap_or((url, ""));
    let (base, _) = path
        .rsplit_once('/')
        .context("the PostgreSQL URL must name a database, e.g. postgres://host/test")?;
    let query = if query.is_empty() {
        String::new()
    } else {
        format!("?{query}")
    };
    let name = format!("sdq_bench_{}", uuid::Uuid::new_v4().simple());
    let mut conn = sqlx::PgConnection::connect(url)
        .await
        .with_context(|| format!("cannot reach PostgreSQL at {url}"))?;
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut conn)
        .await
        .context("cannot create the benchmark database")?;
    let scratch = Scratch::Postgres {
        admin: url.to_string(),
        name: name.clone(),
    };
    match PgStore::open(&format!("{base}/{name}{query}")).await {
        Ok(store) => Ok((Arc::new(store), scratch)),
        Err(e) => {
            scratch.cleanup().await;
            Err(e.into())
        }
    }
}

fn spec() -> JobSpec {
    JobSpec {
        prompt: "a queue benchmark".into(),
        model: "tiny".into(),
        width: 64,
        height: 64,
        steps: 4,
        guidance_scale: 7.5,
        scheduler: "ddim".into(),
        num_images: 1,
        ..JobSpec::default()
    }
}

/// One measured pass: how long `jobs` took to enqueue (by `workers` concurrent
/// submitters) and to drain (by `workers` concurrent workers).
struct Pass {
    enqueue: Duration,
    drain: Duration,
}

/// How one pass drains the queue: `workers` workers taking `batch` jobs at a time.
#[derive(Clone, Copy)]
struct Shape {
    workers: usize,
    batch: usize,
    progress: usize,
}

fn progress_event(step: usize, total: usize) -> EventKind {
    EventKind::Progress {
        step: step as i64,
        total: total as i64,
        elapsed_ms: 0,
        eta_ms: 0,
    }
}

/// One worker's drain: claims until the queue is empty; returns how many jobs it did.
async fn drain_queue(queue: Queue, name: String, shape: Shape) -> anyhow::Result<usize> {
    let lease = Duration::from_secs(60);
    let mut done = 0usize;
    while let Some(lead) = queue.claim(&name, Some("tiny"), lease).await? {
        if shape.batch <= 1 {
            for step in 1..=shape.progress {
                queue
                    .record(&lead, progress_event(step, shape.progress))
                    .await?;
            }
            queue
                .complete(&lead, Vec::new(), serde_json::json!({}))
                .await?;
            done += 1;
            continue;
        }
        let more = queue
            .claim_batch(&lead, &name, shape.batch - 1, lease)
            .await?;
        let held: Vec<_> = std::iter::once(lead).chain(more).collect();
        // Each job of a batch reports its own steps, as in a UNet batch.
        for step in 1..=shape.progress {
            for job in &held {
                queue
                    .record(job, progress_event(step, shape.progress))
                    .await?;
            }
        }
        let results = queue
            .complete_many(
                held.iter()
                    .map(|l| (l, Vec::new(), serde_json::json!({})))
                    .collect(),
            )
            .await?;
        for result in results {
            result?;
            done += 1;
        }
    }
    Ok(done)
}

async fn pass(queue: &Queue, jobs: usize, shape: Shape) -> anyhow::Result<Pass> {
    let workers = shape.workers;
    let start = Instant::now();
    let mut submitters = Vec::new();
    for w in 0..workers {
        let queue = queue.clone();
        let share = jobs / workers + usize::from(w < jobs % workers);
        submitters.push(tokio::spawn(async move {
            for _ in 0..share {
                queue.submit(NewJob::local(spec(), 0, 3)).await?;
            }
            anyhow::Ok(())
        }));
    }
    for s in submitters {
        s.await??;
    }
    let enqueue = start.elapsed();

    let start = Instant::now();
    let mut drainers = Vec::new();
    for w in 0..workers {
        let name = format!("bench-worker-{w}");
        drainers.push(tokio::spawn(drain_queue(queue.clone(), name, shape)));
    }
    let mut done = 0;
    for d in drainers {
        done += d.await??;
    }
    let drain = start.elapsed();
    if done != jobs {
        bail!("{workers} workers completed {done} jobs, {jobs} were queued");
    }
    Ok(Pass { enqueue, drain })
}

fn per_s(jobs: usize, d: Duration) -> f64 {
    jobs as f64 / d.as_secs_f64().max(1e-9)
}

/// Runs every worker count on each backend, interleaved per iteration so that a slow
/// spell of the machine hits all counts alike; returns one row per backend and count.
pub async fn queue(bench: &QueueBench) -> anyhow::Result<Vec<Row>> {
    if bench.jobs == 0 || bench.workers.contains(&0) || bench.claim_batch == 0 {
        bail!("--jobs, --claim-batch and every --workers count must be positive");
    }
    if spec().batch_key().is_none() {
        bail!("the benchmark's jobs cannot be claimed in batches");
    }
    let mut backends = vec!["sqlite"];
    if bench.postgres.is_some() {
        backends.push("postgres");
    }
    let mut rows = Vec::new();
    for backend in backends {
        let (store, scratch) = match backend {
            "sqlite" => open_sqlite().await?,
            _ => open_postgres(bench.postgres.as_deref().expect("checked")).await?,
        };
        let queue = Queue::new(store, Arc::new(LocalBus::new()));
        let result = measure(&queue, bench, backend).await;
        drop(queue);
        scratch.cleanup().await;
        rows.extend(result?);
    }
    Ok(rows)
}

async fn measure(queue: &Queue, bench: &QueueBench, backend: &str) -> anyhow::Result<Vec<Row>> {
    let shape = |workers, batch| Shape {
        workers,
        batch,
        progress: bench.progress,
    };
    let counts = &bench.workers;
    let mut batches = vec![1];
    if bench.claim_batch > 1 {
        batches.push(bench.claim_batch);
    }
    // Warm-up: connections, statement caches, the first pages of the tables.
    for &batch in &batches {
        pass(queue, bench.jobs.min(50), shape(1, batch)).await?;
    }
    // samples[b][i]: batch size `batches[b]`, worker count `counts[i]`.
    let mut samples: Vec<Vec<Vec<Pass>>> = batches
        .iter()
        .map(|_| counts.iter().map(|_| Vec::new()).collect())
        .collect();
    for _ in 0..bench.iterations.max(1) {
        for (i, &w) in counts.iter().enumerate() {
            for (b, &batch) in batches.iter().enumerate() {
                samples[b][i].push(pass(queue, bench.jobs, shape(w, batch)).await?);
            }
        }
    }
    let total = |p: &Pass| p.enqueue + p.drain;
    let totals =
        |b: usize, i: usize| -> Vec<Duration> { samples[b][i].iter().map(total).collect() };
    let one: Option<Vec<Duration>> = counts.iter().position(|w| *w == 1).map(|i| totals(0, i));
    let mut rows = Vec::new();
    for (b, &batch) in batches.iter().enumerate() {
        for (i, &w) in counts.iter().enumerate() {
            let ours = totals(b, i);
            let enqueues: Vec<Duration> = samples[b][i].iter().map(|p| p.enqueue).collect();
            let drains: Vec<Duration> = samples[b][i].iter().map(|p| p.drain).collect();
            let one_at_a_time = totals(0, i);
            let (case, baseline) = if batch == 1 {
                (
                    format!("{backend}, {w} workers, {} jobs", bench.jobs),
                    one.as_deref().map(|t| ("1 worker", t)),
                )
            } else {
                (
                    format!(
                        "{backend}, {w} workers, {} jobs, claim batch {batch}",
                        bench.jobs
                    ),
                    Some(("one at a time", one_at_a_time.as_slice())),
                )
            };
            let row = Row::new("queue", case, &ours, baseline)
                .with("jobs_per_s", per_s(bench.jobs, super::median(&ours)))
                .with("enqueue_per_s", per_s(bench.jobs, super::median(&enqueues)))
                .with(
                    "claim_complete_per_s",
                    per_s(bench.jobs, super::median(&drains)),
                )
                .with("events_per_job", (bench.progress + 3) as f64)
                .with("claim_batch", batch as f64);
            rows.push(row);
        }
    }
    Ok(rows)
}
