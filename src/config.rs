//! Settings shared by the commands: where data lives and how the pieces are tuned.
//!
//! Every option is a flag and an `SDQ_*` environment variable; the defaults are the
//! embedded deployment (everything under `--data-dir`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::bail;
use candle_core::{DType, Device};
use clap::Args;

/// Options every long-running command takes.
#[derive(Debug, Clone, Args)]
pub struct Config {
    /// Folder for the SQLite database, images and generated models.
    #[arg(
        long,
        env = "SDQ_DATA_DIR",
        default_value = "./sdq-data",
        global = true
    )]
    pub data_dir: PathBuf,
    /// Job database (default: sqlite://DATA_DIR/sdq.db).
    #[arg(long, env = "SDQ_DATABASE_URL", global = true)]
    pub database_url: Option<String>,
    /// Image store: file:///path or a directory (default: DATA_DIR/images).
    #[arg(long, env = "SDQ_OBJECT_STORE", global = true)]
    pub object_store: Option<String>,
    /// Models directory: checkpoints/, loras/, embeddings/, vae/ and generated models
    /// (default: DATA_DIR/models).
    #[arg(long, env = "SDQ_MODELS_DIR", global = true)]
    pub models_dir: Option<PathBuf>,
    /// Default model: a known name (tiny, sd-turbo, v1-5, v2-1), a checkpoint of the models
    /// directory, a hub repo id, a folder or a .safetensors file.
    #[arg(long, env = "SDQ_MODEL", default_value = "sd-turbo", global = true)]
    pub model: String,
    /// Folder for f32 copies of half-precision weight files, which f32 models on the CPU
    /// then map instead of converting at every load, and for the CPU kernels' layouts of
    /// the weights, which later processes map instead of making them during their first
    /// image (default: DATA_DIR/cache/weights; `off` keeps neither). A copy is twice its
    /// f16 file's size, a model's layouts about its f32 size; each is made once.
    #[arg(long, env = "SDQ_WEIGHT_CACHE", global = true)]
    pub weight_cache: Option<String>,
    /// Redis for step events, cancel signals and wake-ups across processes
    /// (default: in-process, which only reaches the same process).
    #[arg(long, env = "SDQ_REDIS_URL", global = true)]
    pub redis_url: Option<String>,
    /// S3 endpoint for s3:// object stores (MinIO, moto, ...); path-style requests.
    #[arg(long, env = "SDQ_S3_ENDPOINT", global = true)]
    pub s3_endpoint: Option<String>,
    /// S3 region (default: AWS_REGION, else us-east-1).
    #[arg(long, env = "SDQ_S3_REGION", global = true)]
    pub s3_region: Option<String>,
    /// Retries of one object-store request (5xx, resets, timeouts) before it fails.
    #[arg(long, env = "SDQ_S3_RETRIES", default_value_t = 10, global = true)]
    pub s3_retries: usize,
    /// Seconds one object-store request may take, retries included.
    #[arg(
        long,
        env = "SDQ_S3_TIMEOUT_SECS",
        default_value_t = 30.0,
        global = true
    )]
    pub s3_timeout_secs: f64,
    /// Log lines as human-readable text or as one JSON object per line (for log
    /// collectors); a job's lines carry its `job_id` either way.
    #[arg(
        long,
        env = "SDQ_LOG_FORMAT",
        value_enum,
        default_value_t = LogFormat::Text,
        global = true
    )]
    pub log_format: LogFormat,
}

/// How log lines are written to stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

impl Config {
    pub fn database_url(&self) -> String {
        self.database_url
            .clone()
            .unwrap_or_else(|| format!("sqlite://{}", self.data_dir.join("sdq.db").display()))
    }

    pub fn object_store(&self) -> String {
        self.object_store
            .clone()
            .unwrap_or_else(|| self.data_dir.join("images").display().to_string())
    }

    pub fn models_dir(&self) -> PathBuf {
        self.models_dir
            .clone()
            .unwrap_or_else(|| self.data_dir.join("models"))
    }

    /// Where f32 copies of half-precision weights go; `None` when turned off.
    pub fn weight_cache(&self) -> Option<PathBuf> {
        match self.weight_cache.as_deref() {
            Some("off" | "0" | "false") => None,
            Some(dir) => Some(PathBuf::from(dir)),
            None => Some(self.data_dir.join("cache").join("weights")),
        }
    }

    pub fn s3(&self) -> crate::storage::S3Options {
        crate::storage::S3Options {
            endpoint: self.s3_endpoint.clone(),
            region: self.s3_region.clone(),
            retries: Some(self.s3_retries),
            timeout: Some(secs(self.s3_timeout_secs)),
        }
    }
}

/// Options of `sdq serve`, `sdq api` and `sdq worker` (each uses the ones that apply).
#[derive(Debug, Clone, Args)]
pub struct ServeConfig {
    /// Address to listen on.
    #[arg(long, env = "SDQ_BIND", default_value = "127.0.0.1:7860")]
    pub bind: SocketAddr,
    /// `sdq worker` only: also serve `GET /metrics` (this process's job, step and
    /// model-load histograms) on this address; a worker has no API to scrape otherwise.
    #[arg(long, env = "SDQ_METRICS_BIND")]
    pub metrics_bind: Option<SocketAddr>,
    /// Worker loops in this process (0: API only).
    #[arg(long, env = "SDQ_WORKERS", default_value_t = 1)]
    pub workers: usize,
    /// Dynamic batching: each worker runs up to this many compatible txt2img jobs (same
    /// model, LoRAs and VAE, size, scheduler, steps, guidance, clip skip) as one UNet
    /// batch. 1 runs every job alone.
    #[arg(long, env = "SDQ_BATCH_SIZE", default_value_t = 1,
          value_parser = clap::value_parser!(u32).range(1..=64))]
    pub batch_size: u32,
    /// Nice value (0-19) of the threads that run inference: above 0 the API, and any
    /// other work on the machine, takes the cores first when it needs them. 0 runs
    /// inference at the same priority as everything else.
    #[arg(long, env = "SDQ_INFERENCE_NICE", default_value_t = 10,
          value_parser = clap::value_parser!(i32).range(0..=19))]
    pub inference_nice: i32,
    /// Where workers run inference: cpu, cuda:N or metal.
    #[arg(long, env = "SDQ_DEVICE", default_value = "cpu")]
    pub device: String,
    /// Weights precision: f32, f16 or bf16.
    #[arg(long, env = "SDQ_DTYPE", default_value = "f32")]
    pub dtype: String,
    /// Seconds a claimed job's lease lasts without a heartbeat.
    #[arg(long, env = "SDQ_LEASE_SECS", default_value_t = 30.0)]
    pub lease_secs: f64,
    /// Seconds between claim attempts of an idle worker when no wake-up arrives
    /// (wake-ups come through the event bus right after each submission).
    #[arg(long, env = "SDQ_POLL_SECS", default_value_t = 15.0)]
    pub poll_secs: f64,
    /// Seconds between rescuer passes.
    #[arg(long, env = "SDQ_RESCUE_SECS", default_value_t = 10.0)]
    pub rescue_secs: f64,
    /// Attempts a job gets before it fails for good.
    #[arg(long, env = "SDQ_MAX_ATTEMPTS", default_value_t = 3)]
    pub max_attempts: i32,
    /// Seconds of the first retry delay (doubles per attempt).
    #[arg(long, env = "SDQ_RETRY_BASE_SECS", default_value_t = 1.0)]
    pub retry_base_secs: f64,
    /// Seconds a running job may take to finish after SIGTERM before it is released.
    #[arg(long, env = "SDQ_GRACE_SECS", default_value_t = 30.0)]
    pub grace_secs: f64,
    /// Extra model ids requests may name besides the default.
    #[arg(long = "allow-model", env = "SDQ_ALLOW_MODELS", value_delimiter = ',')]
    pub allow_models: Vec<String>,
    /// off: requests need no key (loopback binds only); required: every request that
    /// touches jobs or images needs `Authorization: Bearer sdq_…`. Default: off on a
    /// loopback bind, required otherwise.
    #[arg(long, env = "SDQ_AUTH", value_enum)]
    pub auth: Option<crate::api::AuthMode>,
    /// Origins browsers may call the API from (repeatable, or `*`); preflights are answered.
    #[arg(long = "cors-origin", env = "SDQ_CORS_ORIGINS", value_delimiter = ',')]
    pub cors_origins: Vec<String>,
    /// Host names clients may address besides loopback ones while auth is off (a guard
    /// against DNS rebinding), e.g. `sdq.local`.
    #[arg(long = "public-host", env = "SDQ_PUBLIC_HOSTS", value_delimiter = ',')]
    pub public_hosts: Vec<String>,
    /// Days a finished job (its events, image rows and objects) is kept; fractions are
    /// allowed. Unset: kept forever.
    #[arg(long, env = "SDQ_RETAIN_DAYS")]
    pub retain_days: Option<f64>,
    /// Seconds after a job finishes before its progress events are dropped from its log
    /// (the rest of the log stays until retention removes the job).
    #[arg(long, env = "SDQ_COMPACT_AFTER_SECS", default_value_t = 600.0)]
    pub compact_after_secs: f64,
    /// Seconds between cleaner passes (retention and event-log compaction).
    #[arg(long, env = "SDQ_CLEAN_SECS", default_value_t = 300.0)]
    pub clean_secs: f64,
    /// Seconds between orphan-collector passes over the object store (0: never; run
    /// `sdq gc` instead).
    #[arg(long, env = "SDQ_GC_SECS", default_value_t = 3600.0)]
    pub gc_secs: f64,
    /// Objects younger than this many seconds are never collected as orphans (an upload
    /// whose job has not committed yet looks like one).
    #[arg(long, env = "SDQ_GC_GRACE_SECS", default_value_t = 3600.0)]
    pub gc_grace_secs: f64,
    /// Seconds a client may take to send a request's headers; slower connections are
    /// closed.
    #[arg(long, env = "SDQ_HEADER_TIMEOUT_SECS", default_value_t = 10.0)]
    pub header_timeout_secs: f64,
    /// Seconds a client may take to send a request body.
    #[arg(long, env = "SDQ_BODY_TIMEOUT_SECS", default_value_t = 30.0)]
    pub body_timeout_secs: f64,
    /// Webhook targets allowed although they are loopback, private, link-local or
    /// otherwise inward (repeatable): a host name, an address or a CIDR, e.g.
    /// `127.0.0.1`, `10.0.0.0/8`, `hooks.internal`.
    #[arg(
        long = "webhook-allow",
        env = "SDQ_WEBHOOK_ALLOW",
        value_delimiter = ','
    )]
    pub webhook_allow: Vec<String>,
    /// Seconds between looks for due webhook deliveries.
    #[arg(long, env = "SDQ_WEBHOOK_INTERVAL_SECS", default_value_t = 1.0)]
    pub webhook_interval_secs: f64,
    /// Seconds before the first retry of a failed webhook delivery (doubling after each
    /// further failure, with jitter, at most 15 minutes apart).
    #[arg(long, env = "SDQ_WEBHOOK_RETRY_BASE_SECS", default_value_t = 10.0)]
    pub webhook_retry_base_secs: f64,
    /// Seconds after its event a webhook delivery is retried before it is marked failed.
    #[arg(long, env = "SDQ_WEBHOOK_RETRY_FOR_SECS", default_value_t = 3600.0)]
    pub webhook_retry_for_secs: f64,
    /// Seconds one webhook attempt may take (connect, send, answer).
    #[arg(long, env = "SDQ_WEBHOOK_TIMEOUT_SECS", default_value_t = 10.0)]
    pub webhook_timeout_secs: f64,
    /// Seconds a webhook attempt may take to connect.
    #[arg(long, env = "SDQ_WEBHOOK_CONNECT_TIMEOUT_SECS", default_value_t = 5.0)]
    pub webhook_connect_timeout_secs: f64,
}

impl ServeConfig {
    /// The auth mode this bind address gets.
    pub fn auth_mode(&self) -> crate::api::AuthMode {
        self.auth.unwrap_or(if self.bind.ip().is_loopback() {
            crate::api::AuthMode::Off
        } else {
            crate::api::AuthMode::Required
        })
    }

    pub fn lease(&self) -> Duration {
        secs(self.lease_secs)
    }
    pub fn poll_interval(&self) -> Duration {
        secs(self.poll_secs)
    }
    pub fn rescue_interval(&self) -> Duration {
        secs(self.rescue_secs)
    }
    pub fn retry_base(&self) -> Duration {
        secs(self.retry_base_secs)
    }
    pub fn grace(&self) -> Duration {
        secs(self.grace_secs)
    }
    /// How long finished jobs are kept, if they are not kept forever.
    pub fn retention(&self) -> Option<Duration> {
        self.retain_days.map(|d| secs(d * 86_400.0))
    }
    pub fn compact_after(&self) -> Duration {
        secs(self.compact_after_secs)
    }
    pub fn clean_interval(&self) -> Duration {
        secs(self.clean_secs)
    }
    /// `None` when the periodic orphan collector is off.
    pub fn gc_interval(&self) -> Option<Duration> {
        (self.gc_secs > 0.0).then(|| secs(self.gc_secs))
    }
    pub fn gc_grace(&self) -> Duration {
        if self.gc_grace_secs > 0.0 {
            secs(self.gc_grace_secs)
        } else {
            Duration::ZERO
        }
    }
    pub fn header_timeout(&self) -> Duration {
        secs(self.header_timeout_secs)
    }
    pub fn body_timeout(&self) -> Duration {
        secs(self.body_timeout_secs)
    }
    /// The webhook deliverer's settings; a malformed `--webhook-allow` is an error.
    pub fn webhooks(&self) -> anyhow::Result<crate::maintenance::webhooks::DeliverySettings> {
        let allow =
            crate::net_guard::Allowlist::parse(&self.webhook_allow).map_err(anyhow::Error::msg)?;
        Ok(crate::maintenance::webhooks::DeliverySettings {
            interval: secs(self.webhook_interval_secs),
            retry_base: secs(self.webhook_retry_base_secs),
            retry_for: secs(self.webhook_retry_for_secs),
            connect_timeout: secs(self.webhook_connect_timeout_secs),
            timeout: secs(self.webhook_timeout_secs),
            allow: std::sync::Arc::new(allow),
        })
    }
}

fn secs(s: f64) -> Duration {
    // NaN would panic in `from_secs_f64`; treat it as the smallest value.
    Duration::from_secs_f64(if s.is_nan() { 0.01 } else { s.clamp(0.01, 1e9) })
}

/// Parses `--device`.
pub fn parse_device(name: &str) -> anyhow::Result<Device> {
    match name {
        "cpu" => Ok(Device::Cpu),
        "metal" => Ok(Device::new_metal(0)?),
        cuda if cuda.starts_with("cuda") => {
            let index = cuda
                .strip_prefix("cuda:")
                .map(str::parse)
                .transpose()?
                .unwrap_or(0);
            Ok(Device::new_cuda(index)?)
        }
        other => bail!("unknown device '{other}' (cpu, cuda:N, metal)"),
    }
}

/// Parses `--dtype`.
pub fn parse_dtype(name: &str) -> anyhow::Result<DType> {
    match name {
        "f32" => Ok(DType::F32),
        "f16" => Ok(DType::F16),
        "bf16" => Ok(DType::BF16),
        other => bail!("unknown dtype '{other}' (f32, f16, bf16)"),
    }
}

/// Refuses combinations candle cannot run, before any model is loaded.
pub fn check_device_dtype(device: &Device, dtype: DType) -> anyhow::Result<()> {
    if device.is_cpu() && dtype == DType::BF16 {
        bail!("bf16 matrix products are not supported on the CPU; use --dtype f32 or f16");
    }
    Ok(())
}
