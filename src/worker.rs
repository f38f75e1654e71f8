//! The worker: claims jobs, runs them through inference, stores the images, and reports
//! every step. It is the only module that binds queue, inference and storage together.
//!
//! One job at a time per worker. For each job: a heartbeat task keeps the lease alive and
//! watches for cancel requests; the denoising runs on a blocking thread and sends each
//! step back over a channel; images are uploaded before the fenced commit, and deleted
//! again if the commit finds the lease lost.

use std::ops::ControlFlow;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use candle_core::{DType, Device};
use futures::StreamExt;
use tokio::sync::{mpsc, watch};
use tracing::Instrument;
use uuid::Uuid;

use crate::inference::embeddings::EmbeddingLibrary;
use crate::inference::lora::Lora;
use crate::inference::{
    self, catalogue, GenerateRequest, InferenceError, SchedulerKind, StableDiffusion, VaeTiling,
};
use crate::observability;
use crate::queue::{
    EventKind, JobSpec, Lease, NewImage, PreviewImage, Queue, StoreError, WorkerInfo,
};
use crate::storage::png::{encode, PngMetadata};
use crate::storage::thumbnail::thumbnail_jpeg;
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

/// Keeps the most recently used model loaded, and the variant of it (LoRAs, VAE) that
/// the last job asked for: the next job with the same model and adapters reuses both,
/// one with other adapters rebuilds only the patched layers from the base weights.
struct Engine {
    loaded: Mutex<Option<Loaded>>,
    models_dir: PathBuf,
    device: Device,
    dtype: DType,
}

struct Loaded {
    model: String,
    base: Arc<StableDiffusion>,
    /// `JobSpec::adapters_key` of `variant`.
    adapters: String,
    variant: Arc<StableDiffusion>,
    /// The embeddings folder as last read (names, sizes, times), to reread on change.
    embeddings_stamp: Vec<(String, u64, u128)>,
}

/// What identifies the embeddings folder's contents without reading the files.
fn folder_stamp(dir: &std::path::Path) -> Vec<(String, u64, u128)> {
    let Ok(read) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut stamp: Vec<_> = read
        .filter_map(Result::ok)
        .filter_map(|e| {
            let meta = e.metadata().ok()?;
            let modified = meta
                .modified()
                .ok()?
                .duration_since(std::time::UNIX_EPOCH)
                .ok()?
                .as_nanos();
            Some((
                e.file_name().to_string_lossy().into_owned(),
                meta.len(),
                modified,
            ))
        })
        .collect();
    stamp.sort();
    stamp
}

impl Engine {
    fn loaded_model(&self) -> Option<String> {
        self.loaded
            .lock()
            .expect("engine lock")
            .as_ref()
            .map(|l| l.model.clone())
    }

    fn loaded_adapters(&self) -> Option<String> {
        self.loaded
            .lock()
            .expect("engine lock")
            .as_ref()
            .map(|l| l.adapters.clone())
    }

    /// Blocking: the model of `spec` with its LoRAs, VAE and the models directory's
    /// embeddings, loading or rebuilding only what differs from the last job.
    fn get(&self, spec: &JobSpec) -> Result<Arc<StableDiffusion>, InferenceError> {
        let adapters = spec.adapters_key();
        let embeddings_dir = self.models_dir.join(catalogue::Kind::Embedding.folder());
        let stamp = folder_stamp(&embeddings_dir);
        let mut guard = self.loaded.lock().expect("engine lock");
        if let Some(l) = guard.as_ref() {
            if l.model == spec.model && l.adapters == adapters && l.embeddings_stamp == stamp {
                return Ok(l.variant.clone());
            }
        }
        let base = match guard.take() {
            Some(l) if l.model == spec.model => l.base,
            _ => {
                // The old model is dropped before the next loads, so two never share memory.
                let folder = inference::hub::resolve(&spec.model, &self.models_dir)?;
                Arc::new(StableDiffusion::load(&folder, &self.device, self.dtype)?)
            }
        };
        let variant = Arc::new(build_variant(&base, spec, &self.models_dir)?);
        *guard = Some(Loaded {
            model: spec.model.clone(),
            base,
            adapters,
            variant: variant.clone(),
            embeddings_stamp: stamp,
        });
        Ok(variant)
    }
}

/// The job's variant of a loaded model: its LoRAs and VAE from the models directory, and
/// the directory's embeddings.
pub fn build_variant(
    base: &StableDiffusion,
    spec: &JobSpec,
    models_dir: &std::path::Path,
) -> Result<StableDiffusion, InferenceError> {
    let loras = spec
        .loras
        .iter()
        .map(|l| {
            let path = catalogue::locate(models_dir, catalogue::Kind::Lora, &l.name)?;
            Ok((Lora::read(&path, &l.name)?, l.weight))
        })
        .collect::<Result<Vec<_>, InferenceError>>()?;
    let refs: Vec<(&Lora, f64)> = loras.iter().map(|(l, w)| (l, *w)).collect();
    let mut variant = base.with_loras(&refs)?;
    if let Some(vae) = &spec.vae {
        let path = catalogue::locate(models_dir, catalogue::Kind::Vae, vae)?;
        variant = variant.with_vae(&path)?;
    }
    let (library, errors) =
        EmbeddingLibrary::read_dir(&models_dir.join(catalogue::Kind::Embedding.folder()));
    for error in errors {
        tracing::warn!(%error, "embedding skipped");
    }
    Ok(variant.with_embeddings(Arc::new(library)))
}

/// Why a running generation was asked to stop.
#[derive(Default)]
struct StopFlags {
    cancel: AtomicBool,
    lease_lost: AtomicBool,
    release: AtomicBool,
}

impl StopFlags {
    fn any(&self) -> bool {
        self.cancel.load(Ordering::Relaxed)
            || self.lease_lost.load(Ordering::Relaxed)
            || self.release.load(Ordering::Relaxed)
    }
}

/// The job this worker is running and how to stop it (reached from the cancel listener).
type CurrentJob = Arc<Mutex<Option<(Uuid, Arc<StopFlags>)>>>;

pub struct Worker {
    queue: Queue,
    images: ImageStore,
    config: WorkerConfig,
    engine: Arc<Engine>,
    current: CurrentJob,
}

/// Converts a stored spec into an inference request.
pub fn generate_request(spec: &JobSpec) -> Result<GenerateRequest, InferenceError> {
    let scheduler = SchedulerKind::parse(&spec.scheduler).ok_or_else(|| {
        InferenceError::InvalidRequest(format!("unknown scheduler '{}'", spec.scheduler))
    })?;
    let long_prompt = serde_json::from_value(serde_json::Value::String(spec.long_prompt.clone()))
        .map_err(|_| {
        InferenceError::InvalidRequest(format!("unknown long_prompt '{}'", spec.long_prompt))
    })?;
    Ok(GenerateRequest {
        prompt: spec.prompt.clone(),
        negative_prompt: spec.negative_prompt.clone(),
        width: spec.width as usize,
        height: spec.height as usize,
        steps: spec.steps as usize,
        guidance_scale: spec.guidance_scale,
        seed: spec.seed,
        scheduler,
        num_images: spec.num_images as usize,
        long_prompt,
        clip_skip: spec.clip_skip.map(|c| c as usize),
        vae_tiling: match &spec.vae_tiling {
            None => VaeTiling::default(),
            Some(name) => VaeTiling::parse(name).ok_or_else(|| {
                InferenceError::InvalidRequest(format!("unknown vae_tiling '{name}'"))
            })?,
        },
        latents: None,
        noise: Vec::new(),
        init_image: None,
        preview_every: spec.previews.then(|| spec.preview_every()),
    })
}

/// The PNG metadata of image `index` of a job.
pub fn png_metadata(spec: &JobSpec, scheduler: SchedulerKind, seed: u64) -> PngMetadata {
    PngMetadata {
        prompt: spec.prompt.clone(),
        negative_prompt: spec.negative_prompt.clone(),
        steps: spec.steps,
        sampler: scheduler.a1111_name().to_string(),
        guidance_scale: spec.guidance_scale,
        seed,
        width: spec.width,
        height: spec.height,
        model: spec.model.clone(),
        strength: spec.init_image.as_ref().and(spec.strength),
        // Where the job reported to is no part of the recipe an image carries.
        spec: serde_json::to_value(JobSpec {
            seed,
            num_images: 1,
            webhook_url: None,
            webhook_events: Vec::new(),
            ..spec.clone()
        })
        .unwrap_or_default(),
    }
}

/// One finished image: its seed, the PNG and its gallery thumbnail (JPEG).
struct EncodedImage {
    seed: u64,
    png: Vec<u8>,
    thumbnail: Vec<u8>,
}

/// What the blocking half of a job hands back.
struct Rendered {
    images: Vec<EncodedImage>,
    load_ms: u64,
    inference_ms: u64,
    encode_ms: u64,
}

impl Worker {
    pub fn new(queue: Queue, images: ImageStore, config: WorkerConfig) -> Self {
        let engine = Arc::new(Engine {
            loaded: Mutex::new(None),
            models_dir: config.models_dir.clone(),
            device: config.device.clone(),
            dtype: config.dtype,
        });
        Self {
            queue,
            images,
            config,
            engine,
            current: Arc::new(Mutex::new(None)),
        }
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
                Ok(Some(lease)) => {
                    let span = tracing::info_span!("job", job_id = %lease.job.id, attempt = lease.job.attempt);
                    let started = Instant::now();
                    let outcome = self.process(lease, shutdown.clone()).instrument(span).await;
                    observability::job_finished(outcome, started.elapsed());
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
                    .as_ref()
                    .map(|(id, _)| *id);
                if let Err(e) = store.upsert_worker(&info).await {
                    tracing::debug!(error = %e, "worker registration not refreshed");
                }
            }
        })
    }

    /// Routes cancel signals from the bus to the job this worker is running.
    fn spawn_cancel_listener(&self) {
        let bus = self.queue.bus.clone();
        let current = self.current.clone();
        tokio::spawn(async move {
            let Ok(mut cancels) = bus.cancels().await else {
                tracing::warn!("no cancel signals from the bus; heartbeats will carry them");
                return;
            };
            while let Some(id) = cancels.next().await {
                if let Some((running, flags)) = current.lock().expect("current lock").as_ref() {
                    if *running == id {
                        flags.cancel.store(true, Ordering::Relaxed);
                    }
                }
            }
        });
    }

    /// Runs one claimed job to an outcome, which it returns for the metrics.
    async fn process(&self, lease: Lease, mut shutdown: watch::Receiver<bool>) -> &'static str {
        let started = Instant::now();
        let job = lease.job.clone();
        tracing::info!(model = %job.spec.model, steps = job.spec.steps, "job claimed");
        let request = match generate_request(&job.spec) {
            Ok(r) => r,
            Err(e) => return self.finish_failed(&lease, &e.to_string(), None).await,
        };
        let inputs = match self.fetch_inputs(&job.spec).await {
            Ok(inputs) => inputs,
            Err((error, retry)) => {
                let retry = retry
                    .then(|| crate::queue::retry::backoff(job.attempt, self.config.retry_base));
                return self.finish_failed(&lease, &error, retry).await;
            }
        };
        let flags = Arc::new(StopFlags::default());
        flags.cancel.store(job.cancel_requested, Ordering::Relaxed);
        *self.current.lock().expect("current lock") = Some((job.id, flags.clone()));

        // Spawned tasks and the blocking thread do not inherit the job's span by
        // themselves; each is given it, so every line of the job's work carries its id.
        let heartbeat = tokio::spawn(
            heartbeat_loop(
                self.queue.clone(),
                lease.clone(),
                self.config.lease,
                flags.clone(),
            )
            .in_current_span(),
        );
        let (steps_tx, mut steps_rx) = mpsc::unbounded_channel::<inference::StepProgress>();
        let reporter = {
            let queue = self.queue.clone();
            let lease = lease.clone();
            let flags = flags.clone();
            tokio::spawn(
                async move {
                    let mut last_elapsed_ms = 0;
                    while let Some(p) = steps_rx.recv().await {
                        observability::step(Duration::from_millis(
                            p.elapsed_ms.saturating_sub(last_elapsed_ms),
                        ));
                        last_elapsed_ms = p.elapsed_ms;
                        let per_step = p.elapsed_ms / p.step.max(1) as u64;
                        let kind = EventKind::Progress {
                            step: p.step as i64,
                            total: p.total as i64,
                            elapsed_ms: p.elapsed_ms as i64,
                            eta_ms: (per_step * (p.total - p.step) as u64) as i64,
                        };
                        match queue.record(&lease, kind).await {
                            Ok(()) => {}
                            Err(StoreError::LeaseLost(_)) => {
                                flags.lease_lost.store(true, Ordering::Relaxed)
                            }
                            Err(e) => tracing::warn!(error = %e, "progress not recorded"),
                        }
                        if let Some(preview) = p.preview {
                            let preview = PreviewImage {
                                step: p.step as i64,
                                total: p.total as i64,
                                width: preview.width as i64,
                                height: preview.height as i64,
                                image: preview.data_url,
                            };
                            match queue.preview(&lease, preview).await {
                                Ok(()) => {}
                                Err(StoreError::LeaseLost(_)) => {
                                    flags.lease_lost.store(true, Ordering::Relaxed)
                                }
                                Err(e) => tracing::debug!(error = %e, "preview not kept"),
                            }
                        }
                    }
                }
                .in_current_span(),
            )
        };

        let blocking = {
            let engine = self.engine.clone();
            let flags = flags.clone();
            let spec = job.spec.clone();
            let span = tracing::Span::current();
            tokio::task::spawn_blocking(move || {
                span.in_scope(|| render(&engine, &spec, request, inputs, &flags, steps_tx))
            })
        };
        tokio::pin!(blocking);
        let mut grace: Option<std::pin::Pin<Box<tokio::time::Sleep>>> = None;
        let outcome = loop {
            tokio::select! {
                result = &mut blocking => break result,
                _ = shutdown.changed(), if grace.is_none() => {
                    if *shutdown.borrow() {
                        tracing::info!(grace_s = self.config.grace.as_secs(), "shutting down; finishing the current job");
                        grace = Some(Box::pin(tokio::time::sleep(self.config.grace)));
                    }
                }
                _ = async { grace.as_mut().expect("guarded").await }, if grace.is_some() => {
                    flags.release.store(true, Ordering::Relaxed);
                }
            }
        };
        let _ = reporter.await;
        heartbeat.abort();
        *self.current.lock().expect("current lock") = None;

        if flags.lease_lost.load(Ordering::Relaxed) {
            tracing::warn!("lease lost; dropping this attempt's results");
            return "lease_lost";
        }
        match outcome {
            Ok(Ok(rendered)) => {
                observability::model_load(Duration::from_millis(rendered.load_ms));
                self.finish_succeeded(&lease, rendered, started).await
            }
            Ok(Err(InferenceError::Canceled)) if flags.release.load(Ordering::Relaxed) => {
                match self.queue.release(&lease).await {
                    Ok(()) => tracing::info!("job released back to the queue"),
                    Err(e) => {
                        tracing::warn!(error = %e, "release failed; the rescuer will requeue it")
                    }
                }
                "released"
            }
            Ok(Err(InferenceError::Canceled)) => {
                match self.queue.cancel_running(&lease).await {
                    Ok(()) => tracing::info!("job canceled"),
                    Err(e) => tracing::warn!(error = %e, "could not record cancel"),
                }
                "canceled"
            }
            Ok(Err(e)) => {
                let retry = (!e.is_permanent())
                    .then(|| crate::queue::retry::backoff(job.attempt, self.config.retry_base));
                self.finish_failed(&lease, &e.to_string(), retry).await
            }
            Err(join) => {
                let retry = Some(crate::queue::retry::backoff(
                    job.attempt,
                    self.config.retry_base,
                ));
                self.finish_failed(&lease, &format!("inference crashed: {join}"), retry)
                    .await
            }
        }
    }

    /// Reads the img2img start image and mask of a job from the object store. Errors say
    /// whether a retry could help (a store outage) or not (the object is gone).
    async fn fetch_inputs(
        &self,
        spec: &JobSpec,
    ) -> Result<Option<(Bytes, Option<Bytes>)>, (String, bool)> {
        let Some(init_key) = &spec.init_image else {
            return Ok(None);
        };
        let fetch = |key: String| async move {
            self.images.get(&key).await.map_err(|e| {
                let retry = !matches!(e, crate::storage::StorageError::NotFound(_));
                (format!("reading input image {key} failed: {e}"), retry)
            })
        };
        let image = fetch(init_key.clone()).await?;
        let mask = match &spec.mask_image {
            Some(key) => Some(fetch(key.clone()).await?),
            None => None,
        };
        Ok(Some((image, mask)))
    }

    /// Records a failed attempt; `retrying` or `failed` (for good).
    async fn finish_failed(
        &self,
        lease: &Lease,
        error: &str,
        retry: Option<Duration>,
    ) -> &'static str {
        tracing::warn!(error, retrying = retry.is_some(), "job attempt failed");
        let retrying = retry.is_some();
        if let Err(e) = self.queue.fail(lease, error, retry).await {
            tracing::warn!(error = %e, "could not record failure");
        }
        if retrying {
            "retrying"
        } else {
            "failed"
        }
    }

    /// Uploads first, then commits the job and its image rows in one fenced transaction;
    /// if that commit loses, the uploads are orphans and are deleted.
    async fn finish_succeeded(
        &self,
        lease: &Lease,
        rendered: Rendered,
        started: Instant,
    ) -> &'static str {
        let job_id = lease.job.id;
        let upload_started = Instant::now();
        let mut uploaded: Vec<NewImage> = Vec::with_capacity(rendered.images.len());
        for (index, image) in rendered.images.into_iter().enumerate() {
            let id = Uuid::now_v7();
            let key = ImageStore::key_for(job_id, id);
            let bytes = image.png.len() as i64;
            let stored = async {
                self.images.put(&key, Bytes::from(image.png)).await?;
                self.images
                    .put(
                        &ImageStore::thumbnail_key(&key),
                        Bytes::from(image.thumbnail),
                    )
                    .await
            };
            if let Err(e) = stored.await {
                let _ = self.images.delete(&key).await;
                self.delete_objects(&uploaded).await;
                let retry = Some(crate::queue::retry::backoff(
                    lease.job.attempt,
                    self.config.retry_base,
                ));
                return self
                    .finish_failed(lease, &format!("storing image failed: {e}"), retry)
                    .await;
            }
            uploaded.push(NewImage {
                id,
                index: index as i64,
                object_key: key,
                url: format!("/v1/images/{id}"),
                seed: image.seed as i64,
                width: lease.job.spec.width as i64,
                height: lease.job.spec.height as i64,
                bytes,
            });
        }
        if let Some(marker) = &self.config.pause_before_commit {
            tracing::warn!(marker = %marker.display(), "test hook: pausing between upload and commit");
            let _ = std::fs::write(marker, job_id.to_string());
            std::future::pending::<()>().await;
        }
        let timings = serde_json::json!({
            "load_ms": rendered.load_ms,
            "inference_ms": rendered.inference_ms,
            "encode_ms": rendered.encode_ms,
            "upload_ms": upload_started.elapsed().as_millis() as u64,
            "total_ms": started.elapsed().as_millis() as u64,
        });
        match self.queue.complete(lease, uploaded.clone(), timings).await {
            Ok(()) => {
                tracing::info!(
                    images = uploaded.len(),
                    ms = started.elapsed().as_millis() as u64,
                    "job succeeded"
                );
                "succeeded"
            }
            Err(e) => {
                tracing::warn!(error = %e, "completion not recorded; deleting this attempt's images");
                self.delete_objects(&uploaded).await;
                "lease_lost"
            }
        }
    }

    /// Deletes uploads whose commit lost (images and thumbnails).
    async fn delete_objects(&self, images: &[NewImage]) {
        for image in images {
            for key in [
                image.object_key.clone(),
                ImageStore::thumbnail_key(&image.object_key),
            ] {
                if let Err(e) = self.images.delete(&key).await {
                    tracing::warn!(%key, error = %e, "orphan object not deleted");
                }
            }
        }
    }
}

/// The blocking half of a job: load, denoise, encode.
fn render(
    engine: &Engine,
    spec: &JobSpec,
    mut request: GenerateRequest,
    inputs: Option<(Bytes, Option<Bytes>)>,
    flags: &StopFlags,
    steps: mpsc::UnboundedSender<inference::StepProgress>,
) -> Result<Rendered, InferenceError> {
    if let Some((image, mask)) = inputs {
        request.init_image = Some(crate::inference::init_image::init_image(
            &image,
            mask.as_deref(),
            Some(request.width),
            Some(request.height),
            spec.strength,
        )?);
    }
    let t0 = Instant::now();
    let sd = engine.get(spec)?;
    let load_ms = t0.elapsed().as_millis() as u64;
    let t1 = Instant::now();
    let images = sd.generate(&request, &mut |p| {
        let _ = steps.send(p);
        if flags.any() {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    })?;
    let inference_ms = t1.elapsed().as_millis() as u64;
    let t2 = Instant::now();
    let images = images
        .into_iter()
        .map(|img| {
            let (w, h) = (img.width as u32, img.height as u32);
            let meta = png_metadata(spec, request.scheduler, img.seed);
            let png = encode(w, h, &img.rgb, &meta)
                .map_err(|e| InferenceError::InvalidRequest(format!("PNG encoding failed: {e}")))?;
            let thumbnail = thumbnail_jpeg(w, h, &img.rgb).map_err(|e| {
                InferenceError::InvalidRequest(format!("thumbnail encoding failed: {e}"))
            })?;
            Ok(EncodedImage {
                seed: img.seed,
                png,
                thumbnail,
            })
        })
        .collect::<Result<Vec<_>, InferenceError>>()?;
    Ok(Rendered {
        images,
        load_ms,
        inference_ms,
        encode_ms: t2.elapsed().as_millis() as u64,
    })
}

/// Renews the lease every third of its length; flags a lost lease or a cancel request.
async fn heartbeat_loop(queue: Queue, lease: Lease, length: Duration, flags: Arc<StopFlags>) {
    let mut ticker = tokio::time::interval(length / 3);
    ticker.tick().await;
    loop {
        ticker.tick().await;
        match queue
            .store
            .heartbeat(lease.job.id, lease.token, length)
            .await
        {
            Ok(true) => flags.cancel.store(true, Ordering::Relaxed),
            Ok(false) => {}
            Err(StoreError::LeaseLost(_)) => {
                flags.lease_lost.store(true, Ordering::Relaxed);
                return;
            }
            Err(e) => tracing::warn!(error = %e, "heartbeat failed; will retry"),
        }
    }
}
