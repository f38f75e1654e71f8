//! The `sdq` command line: one binary for every role.

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};

use crate::app::Role;
use crate::config::{check_device_dtype, parse_device, parse_dtype, Config, ServeConfig};
use crate::inference::tokenizer::LongPrompt;
use crate::inference::{
    hub, tiny, GenerateRequest, InitImage, NoiseArray, SchedulerKind, StableDiffusion, VaeTiling,
};
use crate::queue::{JobSpec, LoraRef};
use crate::storage::png::encode;
use crate::worker::png_metadata;

mod bench;
mod generate;
use bench::bench;
pub use bench::{BenchArgs, BenchKind};
use generate::generate;
pub use generate::GenerateArgs;

#[derive(Debug, Parser)]
#[command(
    name = "sdq",
    version,
    about = "Stable Diffusion job service: REST jobs, a durable queue, Candle inference, SSE progress"
)]
pub struct Cli {
    #[command(flatten)]
    pub config: Config,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// API and worker in one process (embedded defaults: SQLite, local files, in-process events).
    Serve(ServeConfig),
    /// The API half of the distributed form (no inference).
    Api(ServeConfig),
    /// The worker half of the distributed form (no HTTP).
    Worker(ServeConfig),
    /// Apply the database migrations and exit.
    Migrate,
    /// Find objects in the image store that no row names (left by a crash between upload
    /// and commit) and delete them, and f32 weight copies whose source file is gone or
    /// has changed.
    Gc {
        /// Only report the orphans; delete nothing.
        #[arg(long)]
        dry_run: bool,
        /// Leave objects younger than this many seconds alone (an upload whose commit is
        /// under way looks like an orphan).
        #[arg(long, default_value_t = 3600.0)]
        grace_secs: f64,
    },
    /// Write a consistent copy of the embedded SQLite database to PATH while sdq runs
    /// (for PostgreSQL use pg_dump).
    Backup {
        /// The file to write (must not exist).
        path: PathBuf,
    },
    /// Print the OpenAPI 3.1 document that `GET /openapi.json` serves (for client
    /// generators that run without a server).
    Openapi,
    /// Generate images locally, without a server.
    Generate(Box<GenerateArgs>),
    /// Side-by-side benchmarks that print a table and JSON lines with ratios.
    Bench(BenchArgs),
    /// Manage API keys (stored in the job database: same --data-dir / --database-url).
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// The models directory: list it, pull into it, export a single-file checkpoint.
    #[command(subcommand)]
    Models(ModelsCommand),
    /// Write a small random-initialised model in diffusers layout (offline tests and demos).
    TinyModel {
        /// Folder to write (must not exist yet).
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value_t = tiny::DEFAULT_SEED)]
        seed: u64,
        /// Which family to imitate: sd15 (epsilon), sd2 (v-prediction, OpenCLIP-style),
        /// inpaint (SD 1.5 with a 9-channel inpainting UNet), sdxl, sdxl-inpaint; or a
        /// published geometry with random weights for benchmarks: sd15-full, sdxl-full.
        #[arg(long, value_enum, default_value_t = tiny::TinyKind::Sd15)]
        kind: tiny::TinyKind,
    },
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Issue a key; its token is printed once and stored only as a hash.
    Create {
        name: String,
        /// Sees and manages every key's jobs and images, and the keys.
        #[arg(long)]
        admin: bool,
        /// Most queued + running jobs at once.
        #[arg(long)]
        max_queued: Option<i64>,
        /// Requests per minute.
        #[arg(long)]
        rate_per_min: Option<i64>,
        /// Days this key's finished jobs are kept (overrides --retain-days for it).
        #[arg(long)]
        retain_days: Option<f64>,
    },
    /// List every key (never the token), with its webhook secret.
    List,
    /// Revoke a key by id: every API process refuses it within seconds.
    Revoke { id: String },
}

#[derive(Debug, Subcommand)]
pub enum ModelsCommand {
    /// List checkpoints, LoRAs, embeddings and VAEs with family, size and SHA-256.
    List,
    /// Fetch a hub repo (diffusers layout) into the Hugging Face cache, or download a
    /// `.safetensors` URL into the models directory.
    Pull {
        /// `owner/name` or an http(s) URL of a .safetensors file.
        source: String,
        /// For a URL: the folder it goes to.
        #[arg(long, value_enum, default_value = "checkpoint")]
        kind: PullKind,
    },
    /// Write a diffusers folder as one .safetensors in the original (A1111) layout.
    Export {
        /// The diffusers folder.
        folder: PathBuf,
        #[arg(long)]
        out: PathBuf,
        /// Store half-precision weights.
        #[arg(long)]
        half: bool,
        /// Also write a decoy EMA copy of the UNet (tests use it to show EMA is ignored).
        #[arg(long)]
        ema: bool,
        /// Write only the VAE (a standalone VAE file).
        #[arg(long)]
        vae_only: bool,
    },
}

/// Where `models pull URL` puts the file.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum PullKind {
    Checkpoint,
    Lora,
    Embedding,
    Vae,
}

/// Runs a parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    let default_level = match cli.command {
        Command::Generate(_)
        | Command::Models(_)
        | Command::TinyModel { .. }
        | Command::Migrate
        | Command::Openapi
        | Command::Gc { .. }
        | Command::Backup { .. }
        | Command::Keys { .. }
        | Command::Bench(_) => "warn",
        _ => "info",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match cli.config.log_format {
        crate::config::LogFormat::Text => logs.init(),
        // One object per line; the fields of every enclosing span (a job's `job_id`) are
        // on each line, not only the innermost span's.
        crate::config::LogFormat::Json => {
            logs.json().flatten_event(true).with_span_list(true).init()
        }
    }
    crate::inference::mapped::f32_copy::set_cache_dir(cli.config.weight_cache());
    match cli.command {
        Command::Serve(serve) => {
            runtime()?.block_on(run_until_signal(cli.config, serve, Role::All))
        }
        Command::Api(serve) => runtime()?.block_on(run_until_signal(cli.config, serve, Role::Api)),
        Command::Worker(serve) => {
            runtime()?.block_on(run_until_signal(cli.config, serve, Role::Worker))
        }
        Command::Openapi => {
            use std::io::Write;
            let text = format!("{:#}\n", crate::api::openapi::spec_json());
            // `sdq openapi | head` closes the pipe early: that is not an error.
            match std::io::stdout().lock().write_all(text.as_bytes()) {
                Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
                    Err(anyhow::Error::new(e).context("cannot write the document"))
                }
                _ => Ok(()),
            }
        }
        Command::Migrate => runtime()?.block_on(async {
            crate::app::open_queue(&cli.config).await?;
            println!("migrations applied to {}", cli.config.database_url());
            Ok(())
        }),
        Command::Gc {
            dry_run,
            grace_secs,
        } => runtime()?.block_on(collect_orphans(&cli.config, dry_run, grace_secs)),
        Command::Backup { path } => runtime()?.block_on(async {
            let queue = crate::app::open_queue(&cli.config).await?;
            queue
                .store
                .backup(&path)
                .await
                .with_context(|| format!("backup to {} failed", path.display()))?;
            println!(
                "backed up {} to {}",
                cli.config.database_url(),
                path.display()
            );
            Ok(())
        }),
        Command::Generate(args) => generate(&cli.config, *args),
        Command::Keys { command } => runtime()?.block_on(keys(&cli.config, command)),
        Command::Bench(args) => bench(&cli.config, args),
        Command::Models(command) => models(&cli.config, command),
        Command::TinyModel { out, seed, kind } => {
            if out.exists() {
                bail!("{} already exists", out.display());
            }
            tiny::write_kind(&out, seed, kind)
                .with_context(|| format!("writing the tiny model to {}", out.display()))?;
            println!("wrote tiny model (seed {seed}) to {}", out.display());
            Ok(())
        }
    }
}

async fn keys(config: &Config, command: KeysCommand) -> anyhow::Result<()> {
    use crate::queue::keys::{issue, TOKEN_PREFIX};
    let queue = crate::app::open_queue(config).await?;
    let store = &queue.store;
    match command {
        KeysCommand::Create {
            name,
            admin,
            max_queued,
            rate_per_min,
            retain_days,
        } => {
            let new = crate::queue::NewApiKey {
                name,
                admin,
                max_queued,
                rate_per_min,
                retain_days,
            };
            crate::api::check_new_key(&new).map_err(anyhow::Error::msg)?;
            let issued = issue(new, chrono::Utc::now().timestamp_millis());
            store.insert_key(&issued.key).await?;
            let key = &issued.key;
            println!("id              {}", key.id);
            println!("name            {}", key.name);
            println!("admin           {}", key.admin);
            println!("token           {}", issued.token);
            println!("webhook_secret  {}", key.webhook_secret);
            eprintln!("The token is shown only now; sdq keeps just its hash. Send it as `Authorization: Bearer {TOKEN_PREFIX}…`.");
        }
        KeysCommand::List => {
            let keys = store.list_keys().await?;
            println!(
                "{:<36}  {:<20}  {:<18}  {:<5}  {:<10}  {:<8}  {:<11}  {:<7}  webhook_secret",
                "id", "name", "prefix", "admin", "max_queued", "rate/min", "retain_days", "revoked"
            );
            for k in keys {
                let limit = |v: Option<i64>| v.map_or("-".to_string(), |n| n.to_string());
                println!(
                    "{:<36}  {:<20}  {:<18}  {:<5}  {:<10}  {:<8}  {:<11}  {:<7}  {}",
                    k.id,
                    k.name,
                    format!("{TOKEN_PREFIX}{}…", k.lookup),
                    k.admin,
                    limit(k.max_queued),
                    limit(k.rate_per_min),
                    k.retain_days.map_or("-".to_string(), |d| d.to_string()),
                    if k.is_revoked() { "yes" } else { "no" },
                    k.webhook_secret
                );
            }
        }
        KeysCommand::Revoke { id } => {
            let id = uuid::Uuid::parse_str(id.trim())
                .with_context(|| format!("'{id}' is not a key id (see `sdq keys list`)"))?;
            match store.revoke_key(id).await? {
                Some(key) => println!("revoked key {} ({})", key.id, key.name),
                None => bail!("no key with id {id}"),
            }
        }
    }
    Ok(())
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

/// `sdq gc`: one orphan collection, reported object by object.
async fn collect_orphans(config: &Config, dry_run: bool, grace_secs: f64) -> anyhow::Result<()> {
    let queue = crate::app::open_queue(config).await?;
    let images = crate::app::open_images(config)?;
    let grace = std::time::Duration::from_secs_f64(grace_secs.clamp(0.0, 1e9));
    let report = crate::maintenance::gc::collect(&queue.store, &images, grace, dry_run).await?;
    for orphan in &report.orphans {
        println!("orphan {} ({} bytes)", orphan.key, orphan.bytes);
    }
    let verb = if dry_run { "would delete" } else { "deleted" };
    println!(
        "{} objects scanned, {} orphans, {verb} {}, {} objects of other shapes left alone",
        report.scanned,
        report.orphans.len(),
        if dry_run {
            report.orphans.len()
        } else {
            report.deleted
        },
        report.foreign
    );
    if let Some(dir) = config.weight_cache() {
        let stale = crate::inference::mapped::f32_copy::prune(&dir, dry_run);
        for path in &stale {
            println!("stale weight copy {}", path.display());
        }
        println!(
            "{} stale f32 weight copies and kernel layouts in {}, {verb} {}",
            stale.len(),
            dir.display(),
            stale.len()
        );
    }
    Ok(())
}

/// Raises the soft limit on open files to the hard limit: every client connection (SSE
/// streams included) holds a descriptor, and the usual soft limit of 1024 is too few.
fn raise_fd_limit() {
    #[cfg(unix)]
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    unsafe {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max
        {
            limit.rlim_cur = limit.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                tracing::warn!("could not raise the open-file limit");
            }
        }
    }
}

async fn run_until_signal(config: Config, serve: ServeConfig, role: Role) -> anyhow::Result<()> {
    raise_fd_limit();
    let running = crate::app::start(&config, &serve, role).await?;
    match running.addr {
        Some(addr) => println!(
            "sdq serving on http://{addr} (model {}, data in {})",
            config.model,
            config.data_dir.display()
        ),
        None => println!(
            "sdq worker running (model {}, database {})",
            config.model,
            config.database_url()
        ),
    }
    shutdown_signal().await;
    tracing::info!("shutting down");
    running.shutdown().await;
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}

fn models(config: &Config, command: ModelsCommand) -> anyhow::Result<()> {
    use crate::inference::catalogue::{self, Kind};
    let dir = config.models_dir();
    match command {
        ModelsCommand::List => {
            catalogue::create_folders(&dir)?;
            let c = catalogue::scan(&dir);
            println!("models directory {}", dir.display());
            for kind in Kind::ALL {
                for e in c.of(kind) {
                    println!(
                        "{:<10} {:<28} {:<12} {:>12} {}{}",
                        kind.folder(),
                        e.name,
                        e.family.as_deref().unwrap_or("-"),
                        e.size,
                        e.sha256.as_deref().map_or("-", |h| &h[..16.min(h.len())]),
                        e.error
                            .as_deref()
                            .map(|e| format!("  ({e})"))
                            .unwrap_or_default()
                    );
                }
            }
            Ok(())
        }
        ModelsCommand::Pull { source, kind } => {
            if source.starts_with("http://") || source.starts_with("https://") {
                let kind = match kind {
                    PullKind::Checkpoint => Kind::Checkpoint,
                    PullKind::Lora => Kind::Lora,
                    PullKind::Embedding => Kind::Embedding,
                    PullKind::Vae => Kind::Vae,
                };
                let path = crate::models_pull::download_url(&source, &dir.join(kind.folder()))?;
                println!("saved {}", path.display());
            } else {
                let path = hub::pull(&source)?;
                println!("{source} is in {}", path.display());
            }
            Ok(())
        }
        ModelsCommand::Export {
            folder,
            out,
            half,
            ema,
            vae_only,
        } => {
            if out.exists() {
                bail!("{} already exists", out.display());
            }
            crate::inference::single_file::export(
                &folder,
                &out,
                crate::inference::single_file::ExportOptions {
                    half,
                    ema,
                    vae_only,
                },
            )?;
            println!("wrote {}", out.display());
            Ok(())
        }
    }
}
