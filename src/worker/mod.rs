//! The worker: claims jobs, runs them through inference, stores the images, and reports
//! every step. It is the only module that binds queue, inference and storage together.
//!
//! One job at a time per worker, or with `batch_size` above 1, one batch of compatible
//! txt2img jobs (see `batch.rs`). For each job: a heartbeat task keeps the lease alive and
//! watches for cancel requests; the denoising runs on a blocking thread and sends each
//! step back over a channel; images are uploaded before the fenced commit, and deleted
//! again if the commit finds the lease lost.
//!
//! `engine.rs` holds the loaded model, `spec.rs` turns a job spec into a request,
//! `lease.rs` the heartbeat, stop flags and progress reporter, `render.rs` the blocking
//! half, `job.rs` one job alone, `batch.rs` a batch, `finish.rs` how each attempt ends,
//! `commit.rs` how a batch's jobs complete in one store call, `priority.rs` the threads
//! inference runs on.

mod batch;
mod commit;
mod engine;
mod finish;
mod job;
mod lease;
mod priority;
mod render;
mod spec;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use candle_core::{DType, Device};
use futures::StreamExt;
use tokio::sync::watch;
use tracing::Instrument;
use uuid::Uuid;

pub use engine::build_variant;
pub use spec::{generate_request, png_metadata};

use engine::Engine;
use lease::{CurrentJobs, StopFlags};

use crate::observability;
use crate::queue::{Lease, Queue, WorkerInfo};
use crate::storage::ImageStore;

/// How a worker behaves; the defaults suit the embedded deployment.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// Shown in `started` events and the jobs table.
    pub name: String,
    pub lease: Duration,
    /// Fallback poll when no wake-up arrives.
    pub poll_interval: Duration,
    /// First retry delay of a transient failure; doubles per attempt.
    pub retry_base: Duration,
    /// After a shutdown signal, how long the current job may run before it is released.
    pub grace: Duration,
    /// Where `tiny` and other generated models live.
    pub models_dir: PathBuf,
    pub device: Device,
    /// How `device` was named (shown in `GET /v1/workers`).
    pub device_name: String,
    pub host: String,
    pub dtype: DType,
    /// Jobs run as one UNet batch: after claiming a job, claim up to this many minus one
    /// more that can share its batch (txt2img of the same model, adapters, size,
    /// scheduler, steps, guidance, clip skip). 1 runs every job alone.
    pub batch_size: usize,
    /// Nice value of the threads that run inference (0: the API's priority), so that
    /// requests to an API in the same process are not kept waiting (see `priority.rs`).
    pub inference_nice: i32,
    /// Test-only (`SDQ_TEST_PAUSE_BEFORE_COMMIT`): after uploading a job's images, write
    /// the job id to this file and stop before committing, so a test can kill the
    /// process at exactly that moment and leave orphaned objects behind.
    pub pause_before_commit: Option<PathBuf>,
}

impl WorkerConfig {
    pub fn new(models_dir: PathBuf) -> Self {
        let host = hostname();
        Self {
            host: host.clone(),
            device_name: "cpu".into(),
            name: format!(
                "{host}-{}-{}",
                std::process::id(),
                &Uuid::new_v4().simple().to_string()[..6]
            ),
            lease: Duration::from_secs(30),
            poll_interval: Duration::from_secs(2),
            retry_base: Duration::from_secs(1),
            grace: Duration::from_secs(30),
            models_dir,
            device: Device::Cpu,
            dtype: DType::F32,
            batch_size: 1,
            inference_nice: 10,
            pause_before_commit: None,
        }
    }
}

fn hostname() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|h| h.trim().to_string())
        })
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "local".into())
}

pub struct Worker {
    queue: Queue,
    images: ImageStore,
    config: WorkerConfig,
    engine: Arc<Engine>,
    current: CurrentJobs,
}

impl Worker {
    pub fn new(queue: Queue, images: ImageStore, config: WorkerConfig) -> Self {
        priority::lower_compute_pool(config.inference_nice);
        let engine = Arc::new(Engine::new(
            config.models_dir.clone(),
            config.device.clone(),
            config.dtype,
        ));
        Self {
            queue,
            images,
            config,
            engine,
            current: Arc::new(Mutex::new(Vec::new())),
        }
    }

    /// What the cancel listener and the registration see as running.
    fn set_current(&self, jobs: Vec<(Uuid, Arc<StopFlags>)>) {
        *self.current.lock().expect("current lock") = jobs;
    }

    /// Claims and runs jobs until `shutdown` turns true.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        tracing::info!(worker = %self.config.name, "worker started");
        self.spawn_cancel_listener();
        let registration = self.spawn_registration();
        let mut wakeups = match self.queue.bus.new_jobs().await {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(error = %e, "no wake-ups; polling only");
                None
            }
        };
        while !*shutdown.borrow() {
            let loaded = self.engine.loaded_model();
            let adapters = self.engine.loaded_adapters();
            match self
                .queue
                .claim_preferring(
                    &self.config.name,
                    loaded.as_deref(),
                    adapters.as_deref(),
                    self.config.lease,
                )
                .await
            {
                Ok(Some(lead)) => {
                    let started = Instant::now();
                    let more = self.claim_batch(&lead).await;
                    if more.is_empty() {
                        let span = tracing::info_span!("job", job_id = %lead.job.id, attempt = lead.job.attempt);
                        let outcome = self.process(lead, shutdown.clone()).instrument(span).await;
                        observability::job_finished(outcome, started.elapsed());
                    } else {
                        let leases: Vec<Lease> = std::iter::once(lead).chain(more).collect();
                        for (outcome, elapsed) in self.process_batch(leases, shutdown.clone()).await
                        {
                            observability::job_finished(outcome, elapsed);
                        }
                    }
                    continue;
                }
                Ok(None) => {}
                Err(e) => tracing::warn!(error = %e, "claim failed; will retry"),
            }
            let wake = async {
                match wakeups.as_mut() {
                    Some(s) => {
                        s.next().await;
                    }
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = wake => {}
                _ = tokio::time::sleep(self.config.poll_interval) => {}
                _ = shutdown.changed() => {}
            }
        }
        registration.abort();
        if let Err(e) = self.queue.store.remove_worker(&self.config.name).await {
            tracing::warn!(error = %e, "could not unregister worker");
        }
        tracing::info!(worker = %self.config.name, "worker stopped");
    }

    /// Keeps this worker's row in the `workers` table fresh (every 10 s).
    fn spawn_registration(&self) -> tokio::task::JoinHandle<()> {
        let store = self.queue.store.clone();
        let engine = self.engine.clone();
        let current = self.current.clone();
        let mut info = WorkerInfo {
            name: self.config.name.clone(),
            host: self.config.host.clone(),
            device: self.config.device_name.clone(),
            model: None,
            current_job: None,
            started_at: chrono::Utc::now().timestamp_millis(),
            last_seen_at: 0,
        };
        tokio::spawn(async move {
            // Well inside the 30 s window in which `GET /v1/workers` shows a worker.
            let mut ticker = tokio::time::interval(Duration::from_secs(10));
            loop {
                ticker.tick().await;
                info.model = engine.loaded_model();
                info.current_job = current
                    .lock()
                    .expect("current lock")
                    .first()
                    .map(|(id, _)| *id);
                if let Err(e) = store.upsert_worker(&info).await {
                    tracing::debug!(error = %e, "worker registration not refreshed");
                }
            }
        })
    }

    /// Routes cancel signals from the bus to the job (of the batch) this worker runs.
    fn spawn_cancel_listener(&self) {
        let bus = self.queue.bus.clone();
        let current = self.current.clone();
        tokio::spawn(async move {
            let Ok(mut cancels) = bus.cancels().await else {
                tracing::warn!("no cancel signals from the bus; heartbeats will carry them");
                return;
            };
            while let Some(id) = cancels.next().await {
                for (running, flags) in current.lock().expect("current lock").iter() {
                    if *running == id {
                        StopFlags::raise(&flags.cancel);
                    }
                }
            }
        });
    }
}
