//! Wiring: builds the store, bus, image store, workers, maintenance services (rescuer,
//! cleaner, orphan collector, webhook deliverer) and API from the config, and runs them under one shutdown
//! signal.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::api::{self, ApiSettings, AppState, Auth, AuthMode, Limits, Timeouts};
use crate::config::{Config, ServeConfig};
use crate::maintenance::{cleaner, gc, webhooks};
use crate::queue::{
    local_bus::LocalBus, postgres::PgStore, redis_bus::RedisBus, rescuer, sqlite::SqliteStore,
    EventBus, JobStore, Queue,
};
use crate::storage::ImageStore;
use crate::worker::{Worker, WorkerConfig};

/// Which halves of sdq a process runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// `sdq serve`: API and workers.
    All,
    /// `sdq api`: API (and rescuer) only.
    Api,
    /// `sdq worker`: workers (and rescuer) only.
    Worker,
}

/// A running process: API and/or workers, and the maintenance services.
pub struct Running {
    /// Where the API listens (`None` for a worker-only process).
    pub addr: Option<SocketAddr>,
    /// Where a worker-only process serves `/metrics` (`--metrics-bind`).
    pub metrics_addr: Option<SocketAddr>,
    /// The store and bus this process uses (benchmarks drive jobs through it directly).
    pub queue: Queue,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Running {
    /// Stops claiming, lets running jobs finish (or releases them after the grace period),
    /// and waits for everything to stop.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        for task in self.tasks {
            let _ = task.await;
        }
    }

    /// Resolves when the process should stop (used with `shutdown`).
    pub fn trigger(&self) -> watch::Sender<bool> {
        self.shutdown.clone()
    }
}

/// Opens the configured job store (applying migrations) and event bus.
pub async fn open_queue(config: &Config) -> anyhow::Result<Queue> {
    let url = config.database_url();
    let store: Arc<dyn JobStore> = if url.starts_with("sqlite:") {
        std::fs::create_dir_all(&config.data_dir)
            .with_context(|| format!("cannot create data dir {}", config.data_dir.display()))?;
        Arc::new(
            SqliteStore::open(&url)
                .await
                .with_context(|| format!("cannot open job database {url}"))?,
        )
    } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Arc::new(
            PgStore::open(&url)
                .await
                .context("cannot open the PostgreSQL job database")?,
        )
    } else {
        anyhow::bail!("unsupported database URL '{url}' (sqlite://PATH or postgres://...)");
    };
    let bus: Arc<dyn EventBus> = match &config.redis_url {
        Some(redis) => Arc::new(RedisBus::new(redis).context("invalid Redis URL")?),
        None => Arc::new(LocalBus::new()),
    };
    Ok(Queue::new(store, bus))
}

/// Opens the configured image store.
pub fn open_images(config: &Config) -> anyhow::Result<ImageStore> {
    ImageStore::open(&config.object_store(), &config.s3()).context("cannot open the image store")
}

/// Starts the parts `role` asks for and returns once the API (if any) is listening.
pub async fn start(config: &Config, serve: &ServeConfig, role: Role) -> anyhow::Result<Running> {
    crate::observability::install();
    let api = role != Role::Worker;
    let auth_mode = serve.auth_mode();
    if api && auth_mode == AuthMode::Off && !serve.bind.ip().is_loopback() {
        anyhow::bail!(
            "refusing to serve on {} with --auth off: anyone who can reach it could use your \
             GPUs. Keep auth on (the default off loopback) and create a key with \
             `sdq keys create NAME`, or bind a loopback address",
            serve.bind
        );
    }
    let queue = open_queue(config).await?;
    if api && auth_mode == AuthMode::Required {
        let keys = queue.store.list_keys().await?;
        if !keys.iter().any(|k| !k.is_revoked()) {
            anyhow::bail!(
                "auth is required on {} but no API key exists yet: create one with \
                 `sdq keys create NAME --admin` (same --data-dir / --database-url), then start again",
                serve.bind
            );
        }
    }
    let images = open_images(config)?;
    let webhook_settings = serve.webhooks()?;
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let mut tasks = Vec::new();

    tasks.push(tokio::spawn(rescuer::run(
        queue.clone(),
        serve.rescue_interval(),
        shutdown_rx.clone(),
    )));
    tasks.push(tokio::spawn(cleaner::run(
        queue.store.clone(),
        images.clone(),
        cleaner::Retention {
            keep: serve.retention(),
            compact_after: serve.compact_after(),
        },
        serve.clean_interval(),
        shutdown_rx.clone(),
    )));
    if let Some(interval) = serve.gc_interval() {
        tasks.push(tokio::spawn(gc::run(
            queue.store.clone(),
            images.clone(),
            serve.gc_grace(),
            interval,
            shutdown_rx.clone(),
        )));
    }
    // Every process delivers: claims keep them apart, and a worker-only fleet still
    // reports its jobs.
    tasks.push(tokio::spawn(webhooks::run(
        queue.store.clone(),
        webhook_settings.clone(),
        shutdown_rx.clone(),
    )));
    let workers = if role == Role::Api { 0 } else { serve.workers };
    for _ in 0..workers {
        let mut wc = WorkerConfig::new(config.models_dir());
        wc.lease = serve.lease();
        wc.retry_base = serve.retry_base();
        wc.grace = serve.grace();
        wc.poll_interval = serve.poll_interval();
        wc.batch_size = serve.batch_size as usize;
        wc.inference_nice = serve.inference_nice;
        wc.device = crate::config::parse_device(&serve.device)?;
        wc.device_name = serve.device.clone();
        wc.dtype = crate::config::parse_dtype(&serve.dtype)?;
        crate::config::check_device_dtype(&wc.device, wc.dtype)?;
        wc.pause_before_commit = std::env::var_os("SDQ_TEST_PAUSE_BEFORE_COMMIT").map(Into::into);
        let worker = Worker::new(queue.clone(), images.clone(), wc);
        tasks.push(tokio::spawn(worker.run(shutdown_rx.clone())));
    }

    let mut models = vec![config.model.clone()];
    models.extend(serve.allow_models.iter().cloned());
    let state = AppState {
        auth: Arc::new(Auth::new(auth_mode, queue.store.clone())),
        queue,
        images,
        settings: Arc::new(ApiSettings {
            default_model: config.model.clone(),
            models,
            limits: Limits::default(),
            max_attempts: serve.max_attempts,
            public_hosts: serve.public_hosts.clone(),
            cors_origins: serve.cors_origins.clone(),
            webhook_allow: webhook_settings.allow.clone(),
            models_dir: {
                let dir = config.models_dir();
                if let Err(e) = crate::inference::catalogue::create_folders(&dir) {
                    tracing::warn!(dir = %dir.display(), error = %e, "cannot create the models directory");
                }
                tokio::task::spawn_blocking(move || api::ModelsDir::scan(dir)).await?
            },
        }),
    };
    if !api {
        let metrics_addr = match serve.metrics_bind {
            Some(bind) => Some(serve_worker_metrics(bind, shutdown_rx.clone(), &mut tasks).await?),
            None => None,
        };
        tracing::info!(workers, ?metrics_addr, "sdq worker running");
        return Ok(Running {
            addr: None,
            metrics_addr,
            queue: state.queue.clone(),
            shutdown: shutdown_tx,
            tasks,
        });
    }
    let listener = TcpListener::bind(serve.bind)
        .await
        .with_context(|| format!("cannot listen on {}", serve.bind))?;
    let addr = listener.local_addr()?;
    let queue = state.queue.clone();
    let timeouts = Timeouts {
        header: serve.header_timeout(),
        body: serve.body_timeout(),
    };
    let mut api_shutdown = shutdown_rx.clone();
    let mut deadline = shutdown_rx.clone();
    tasks.push(tokio::spawn(async move {
        let signal = async move {
            let _ = api_shutdown.wait_for(|stop| *stop).await;
        };
        // Open SSE streams would hold a graceful shutdown forever; give them a few seconds.
        let forced = async move {
            let _ = deadline.wait_for(|stop| *stop).await;
            tokio::time::sleep(std::time::Duration::from_secs(3)).await;
        };
        tokio::select! {
            result = api::serve(listener, state, timeouts, signal) => {
                if let Err(e) = result {
                    tracing::error!(error = %e, "API server stopped");
                }
            }
            _ = forced => {}
        }
    }));
    tracing::info!(%addr, auth = ?auth_mode, "sdq listening");
    Ok(Running {
        metrics_addr: None,
        addr: Some(addr),
        queue,
        shutdown: shutdown_tx,
        tasks,
    })
}

/// A worker-only process's `/metrics`: the Prometheus text of what this process recorded
/// (its jobs, steps and model loads). Job and worker counts come from the API's scrape.
async fn serve_worker_metrics(
    bind: SocketAddr,
    mut shutdown: watch::Receiver<bool>,
    tasks: &mut Vec<JoinHandle<()>>,
) -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind(bind)
        .await
        .with_context(|| format!("cannot listen on {bind} for /metrics"))?;
    let addr = listener.local_addr()?;
    let router = axum::Router::new().route(
        "/metrics",
        axum::routing::get(|| async {
            (
                [(
                    axum::http::header::CONTENT_TYPE,
                    crate::observability::CONTENT_TYPE,
                )],
                crate::observability::render(),
            )
        }),
    );
    tasks.push(tokio::spawn(async move {
        let stop = async move {
            let _ = shutdown.wait_for(|stop| *stop).await;
        };
        if let Err(e) = axum::serve(listener, router)
            .with_graceful_shutdown(stop)
            .await
        {
            tracing::warn!(error = %e, "worker metrics server stopped");
        }
    }));
    Ok(addr)
}
