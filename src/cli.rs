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

/// `sdq bench WHAT`: the model is the global `--model` (a name or a folder).
#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub what: BenchKind,
    /// Timed runs of each side (after one untimed warm-up).
    #[arg(long, global = true, default_value_t = 3)]
    pub iterations: usize,
    /// Square image sizes, e.g. 256,512,768.
    #[arg(long, global = true, value_delimiter = ',', default_value = "64,256")]
    pub sizes: Vec<usize>,
    /// cpu, cuda:N or metal.
    #[arg(long, global = true, default_value = "cpu")]
    pub device: String,
    /// f32, f16 or bf16 (the end-to-end benchmark; the others run f32).
    #[arg(long, global = true, default_value = "f32")]
    pub dtype: String,
}

/// The benchmarks `sdq bench` runs.
#[derive(Debug, Subcommand)]
pub enum BenchKind {
    /// One UNet evaluation with CFG (batch 2): ours vs candle-transformers (or candle's ops).
    Unet {
        #[arg(long, value_enum, default_value_t = crate::bench::unet::Baseline::Auto)]
        baseline: crate::bench::unet::Baseline,
    },
    /// One VAE decode: our decoder vs candle-transformers'.
    Vae {
        /// Time ours alone (for runs beside another process).
        #[arg(long)]
        no_baseline: bool,
        /// Decode ours in tiles (`on`: whenever larger than one tile; default off).
        #[arg(long, value_enum, default_value_t = VaeTiling::Off)]
        vae_tiling: VaeTiling,
    },
    /// Load time, then seconds per image for each size and step count.
    E2e {
        #[arg(long, value_delimiter = ',', default_value = "4")]
        steps: Vec<usize>,
    },
    /// Each CPU kernel against candle's op for the same layer (needs no model).
    Kernels {
        /// Latent side of the shapes (64: the UNet's first level at 512²).
        #[arg(long, default_value_t = 32)]
        latent: usize,
        /// Only the cases whose name contains this.
        #[arg(long)]
        only: Option<String>,
    },
    /// Switching a job's LoRA set against loading the model it patches.
    LoraSwitch {
        /// On a random model of SD 1.5's full size (written to a temporary folder, about
        /// 4 GB) instead of --model.
        #[arg(long)]
        full_size: bool,
        /// With --full-size: divide every width by this (2: a quarter of the weights).
        #[arg(long, default_value_t = 1)]
        shrink: usize,
    },
    /// Jobs per second for no-op jobs through the real store (enqueue, claim, progress,
    /// complete) on SQLite, and on PostgreSQL when --database-url names a server (the
    /// benchmark makes and drops its own database there).
    Queue {
        #[arg(long, default_value_t = 2000)]
        jobs: usize,
        #[arg(long, value_delimiter = ',', default_value = "1,2,4,8")]
        workers: Vec<usize>,
        /// Progress events each job records (0: none).
        #[arg(long, default_value_t = 4)]
        progress: usize,
        /// Also drain claiming up to N jobs at a time (claim, then `claim_batch`) and
        /// completing them in one call; those rows compare with one at a time.
        #[arg(long, default_value_t = 1)]
        claim_batch: usize,
    },
    /// `POST /v1/jobs` latency percentiles at a fixed rate (open loop) against an
    /// in-process embedded server whose worker runs the jobs, or against --url.
    Submit {
        /// Requests per second.
        #[arg(long, default_value_t = 500.0)]
        rate: f64,
        #[arg(long, default_value_t = 10.0)]
        seconds: f64,
        /// A running sdq to load instead of an in-process one.
        #[arg(long)]
        url: Option<String>,
        /// Bearer key for --url.
        #[arg(long, env = "SDQ_API_KEY")]
        api_key: Option<String>,
        /// Workers of the in-process server (0: the API alone, nothing runs the jobs).
        #[arg(long, default_value_t = 1)]
        workers: usize,
    },
    /// Dynamic batching: jobs/s of N compatible tiny-model jobs through an in-process
    /// server whose worker runs with each --batch-sizes value, against the first one.
    Batch {
        #[arg(long, default_value_t = 8)]
        jobs: usize,
        #[arg(long, value_delimiter = ',', default_value = "1,2,4")]
        batch_sizes: Vec<usize>,
        #[arg(long, default_value_t = 4)]
        steps: usize,
    },
    /// SSE fan-out: delivery lag of one live job's events to N subscribers.
    Sse {
        #[arg(long, value_delimiter = ',', default_value = "100,500,1000,2000")]
        subscribers: Vec<usize>,
        /// Progress events published per subscriber count.
        #[arg(long, default_value_t = 20)]
        events: usize,
        /// Milliseconds between two events.
        #[arg(long, default_value_t = 50)]
        interval_ms: u64,
    },
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

#[derive(Debug, clap::Args)]
pub struct GenerateArgs {
    #[arg(long)]
    pub prompt: String,
    #[arg(long, default_value = "")]
    pub negative_prompt: String,
    /// Steps (default: the model's).
    #[arg(long)]
    pub steps: Option<usize>,
    #[arg(long)]
    pub guidance_scale: Option<f64>,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[arg(long)]
    pub width: Option<usize>,
    #[arg(long)]
    pub height: Option<usize>,
    /// ddim, pndm, euler, euler-a, heun, dpmpp-2m, dpmpp-2m-karras, dpmpp-2m-sde-karras,
    /// unipc or lcm.
    #[arg(long, default_value = "euler-a")]
    pub scheduler: String,
    #[arg(long, default_value_t = 1)]
    pub num_images: usize,
    #[arg(long, value_enum, default_value_t = LongPrompt::Chunk)]
    pub long_prompt: LongPrompt,
    /// Starting latents (.npy, float32 NCHW), exactly as diffusers' `latents=` argument.
    #[arg(long)]
    pub latents: Option<PathBuf>,
    /// One later random draw (.npy shaped like the latents); repeat in diffusers' draw order.
    #[arg(long)]
    pub noise: Vec<PathBuf>,
    /// img2img: start from this image (resized to --width/--height if given, else to its
    /// own size rounded down to a multiple of 8).
    #[arg(long)]
    pub init_image: Option<PathBuf>,
    /// Inpainting: white repaints, black keeps (with --init-image; resized like it).
    #[arg(long)]
    pub mask: Option<PathBuf>,
    /// img2img and inpainting: how much to repaint, 0 to 1 (default 0.8, inpainting 1).
    #[arg(long)]
    pub strength: Option<f64>,
    /// A LoRA at a weight, `NAME[:WEIGHT]` (a file of the models directory's loras/, or a
    /// path); repeatable. `<lora:NAME:WEIGHT>` in the prompt works too.
    #[arg(long = "lora")]
    pub loras: Vec<String>,
    /// Decode with this VAE (a name in the models directory's vae/, or a path); `none`
    /// keeps the checkpoint's own. By default a VAE named like the checkpoint goes with it.
    #[arg(long)]
    pub vae: Option<String>,
    /// A1111's clip skip: 1 = last layer (default), 2 = penultimate, ...
    #[arg(long)]
    pub clip_skip: Option<usize>,
    /// VAE tiling: off, on (whenever the image is larger than the VAE's sample_size), or
    /// auto (only when one full-resolution VAE feature map would exceed 1 GiB).
    #[arg(long, value_enum, default_value_t = VaeTiling::Auto)]
    pub vae_tiling: VaeTiling,
    /// Random numbers: torch-cpu reproduces torch.Generator("cpu").manual_seed(seed).
    #[arg(long, default_value = "torch-cpu")]
    pub rng: String,
    /// cpu, cuda:N or metal.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// f32, f16 or bf16.
    #[arg(long, default_value = "f32")]
    pub dtype: String,
    /// Output PNG; with several images, OUT-0.png, OUT-1.png, ...
    #[arg(short, long, default_value = "sdq.png")]
    pub output: PathBuf,
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

fn bench(config: &Config, args: BenchArgs) -> anyhow::Result<()> {
    use crate::bench;
    let device = parse_device(&args.device)?;
    let dtype = parse_dtype(&args.dtype)?;
    check_device_dtype(&device, dtype)?;
    if let Some(bad) = args.sizes.iter().find(|s| **s == 0 || **s % 8 != 0) {
        bail!("benchmark sizes must be positive multiples of 8, got {bad}");
    }
    let folder = || hub::resolve(&config.model, &config.models_dir());
    let threads = crate::inference::kernels::threads();
    eprintln!(
        "sdq bench: model {}, device {:?}, {threads} threads, {} iterations",
        config.model, device, args.iterations
    );
    let mut rows = Vec::new();
    match args.what {
        BenchKind::Unet { baseline } => {
            let folder = folder()?;
            for &size in &args.sizes {
                rows.push(bench::unet::unet_step(
                    &folder,
                    (size, size),
                    args.iterations,
                    &device,
                    baseline,
                )?);
            }
        }
        BenchKind::Vae {
            no_baseline,
            vae_tiling,
        } => {
            let folder = folder()?;
            for &size in &args.sizes {
                rows.push(bench::vae::vae_decode(
                    &folder,
                    (size, size),
                    args.iterations,
                    &device,
                    !no_baseline,
                    vae_tiling,
                )?);
            }
        }
        BenchKind::E2e { steps } => {
            let target = (&device, dtype);
            rows =
                bench::e2e::end_to_end(&folder()?, &args.sizes, &steps, args.iterations, target)?;
        }
        BenchKind::Kernels { latent, only } => {
            rows = bench::kernels::kernels(latent, args.iterations, only.as_deref())?
        }
        BenchKind::LoraSwitch { full_size, shrink } => {
            let scratch = std::env::temp_dir().join(format!("sdq-bench-{}", std::process::id()));
            let folder = if full_size {
                let folder = scratch.join("sd15-sized");
                eprintln!(
                    "writing a random SD 1.5-shaped model (widths / {shrink}) to {}",
                    folder.display()
                );
                tiny::write_sd15_sized(&folder, shrink)?;
                folder
            } else {
                folder()?
            };
            let row = bench::lora_switch::lora_switch(&folder, args.iterations, &device, dtype);
            let _ = std::fs::remove_dir_all(&scratch);
            rows.push(row?);
        }
        BenchKind::Queue {
            jobs,
            workers,
            progress,
            claim_batch,
        } => {
            let url = config.database_url();
            let postgres =
                (url.starts_with("postgres://") || url.starts_with("postgresql://")).then_some(url);
            let run = bench::queue::QueueBench {
                jobs,
                workers,
                progress,
                claim_batch,
                iterations: args.iterations,
                postgres,
            };
            rows = runtime()?.block_on(bench::queue::queue(&run))?;
        }
        BenchKind::Submit {
            rate,
            seconds,
            url,
            api_key,
            workers,
        } => {
            let run = bench::submit::SubmitBench {
                rate,
                seconds,
                url,
                api_key,
                workers,
            };
            rows = runtime()?.block_on(bench::submit::submit(&run))?;
        }
        BenchKind::Batch {
            jobs,
            batch_sizes,
            steps,
        } => {
            let run = bench::batch::BatchBench {
                jobs,
                batch_sizes,
                sizes: args.sizes.clone(),
                steps,
                iterations: args.iterations,
                device: args.device.clone(),
                dtype: args.dtype.clone(),
            };
            rows = runtime()?.block_on(bench::batch::batch(&run))?;
        }
        BenchKind::Sse {
            subscribers,
            events,
            interval_ms,
        } => {
            let run = bench::sse::SseBench {
                subscribers,
                events,
                interval: std::time::Duration::from_millis(interval_ms),
            };
            rows = runtime()?.block_on(bench::sse::sse(&run))?;
        }
    }
    print!("{}", bench::format_report(&rows));
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
            "{} stale f32 weight copies in {}, {verb} {}",
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

fn output_path(base: &Path, index: usize, count: usize) -> PathBuf {
    if count == 1 {
        return base.to_path_buf();
    }
    let stem = base.file_stem().and_then(|s| s.to_str()).unwrap_or("sdq");
    let ext = base.extension().and_then(|s| s.to_str()).unwrap_or("png");
    base.with_file_name(format!("{stem}-{index}.{ext}"))
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

/// `NAME` or `NAME:WEIGHT` of `--lora`.
fn parse_lora_arg(arg: &str) -> anyhow::Result<LoraRef> {
    let (name, weight) = match arg.rsplit_once(':') {
        Some((name, w)) if w.trim().parse::<f64>().is_ok() => (name, w.trim().parse::<f64>()?),
        _ => (arg, 1.0),
    };
    if name.is_empty() || !weight.is_finite() {
        bail!("--lora takes NAME or NAME:WEIGHT, got '{arg}'");
    }
    Ok(LoraRef {
        name: name.to_string(),
        weight,
    })
}

/// Reads an img2img start image (and inpainting mask) from files.
fn load_init_image(
    path: &Path,
    mask: Option<&Path>,
    width: Option<usize>,
    height: Option<usize>,
    strength: Option<f64>,
) -> anyhow::Result<InitImage> {
    let image = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let mask = mask
        .map(|p| std::fs::read(p).with_context(|| format!("reading {}", p.display())))
        .transpose()?;
    Ok(crate::inference::init_image::init_image(
        &image,
        mask.as_deref(),
        width,
        height,
        strength,
    )?)
}

fn generate(config: &Config, args: GenerateArgs) -> anyhow::Result<()> {
    if args.rng != "torch-cpu" {
        bail!("unknown --rng '{}' (torch-cpu)", args.rng);
    }
    let scheduler = SchedulerKind::parse(&args.scheduler).with_context(|| {
        let names: Vec<_> = SchedulerKind::ALL.iter().map(|k| k.name()).collect();
        format!(
            "unknown scheduler '{}' ({})",
            args.scheduler,
            names.join(", ")
        )
    })?;
    if args.num_images == 0 {
        bail!("--num-images must be at least 1");
    }
    let device = parse_device(&args.device)?;
    let dtype = parse_dtype(&args.dtype)?;
    check_device_dtype(&device, dtype)?;
    let defaults = hub::known(&config.model);
    let init_image = args
        .init_image
        .as_deref()
        .map(|p| {
            load_init_image(
                p,
                args.mask.as_deref(),
                args.width,
                args.height,
                args.strength,
            )
        })
        .transpose()?;
    if args.mask.is_some() && init_image.is_none() {
        bail!("--mask needs --init-image");
    }
    let request = GenerateRequest {
        prompt: args.prompt.clone(),
        negative_prompt: args.negative_prompt.clone(),
        width: init_image.as_ref().map_or(
            args.width
                .unwrap_or(defaults.map_or(512, |d| d.default_width)),
            |i| i.width,
        ),
        height: init_image.as_ref().map_or(
            args.height
                .unwrap_or(defaults.map_or(512, |d| d.default_height)),
            |i| i.height,
        ),
        steps: args
            .steps
            .unwrap_or(defaults.map_or(30, |d| d.default_steps)),
        guidance_scale: args
            .guidance_scale
            .unwrap_or(defaults.map_or(7.5, |d| d.default_guidance)),
        seed: args.seed,
        scheduler,
        num_images: args.num_images,
        long_prompt: args.long_prompt,
        clip_skip: args.clip_skip,
        vae_tiling: args.vae_tiling,
        latents: args
            .latents
            .as_deref()
            .map(NoiseArray::read_npy)
            .transpose()?,
        noise: args
            .noise
            .iter()
            .map(|p| NoiseArray::read_npy(p))
            .collect::<Result<_, _>>()?,
        init_image,
        preview_every: None,
    };

    if args.clip_skip == Some(0) {
        bail!("--clip-skip counts from 1 (the last layer)");
    }
    let (_, tags) = crate::inference::extra_networks::split_lora_tags(&args.prompt)?;
    let mut loras = args
        .loras
        .iter()
        .map(|arg| parse_lora_arg(arg))
        .collect::<anyhow::Result<Vec<_>>>()?;
    loras.extend(tags.into_iter().map(|t| LoraRef {
        name: t.name,
        weight: t.weight,
    }));

    let t_load = Instant::now();
    let models_dir = config.models_dir();
    let folder = hub::resolve(&config.model, &models_dir)?;
    let base = StableDiffusion::load(&folder, &device, dtype)?;
    let load = t_load.elapsed();
    // A VAE named like a models-directory checkpoint goes with it, as over the API.
    let vae = crate::inference::catalogue::choose_vae(args.vae.clone(), || {
        crate::inference::catalogue::paired_vae(&models_dir, &config.model)
    });
    let extras = JobSpec {
        loras: loras.clone(),
        vae: vae.clone(),
        ..Default::default()
    };
    let sd = crate::worker::build_variant(&base, &extras, &models_dir)?;

    let bar = ProgressBar::new(request.steps as u64);
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} [{bar:30}] step {pos}/{len} {elapsed_precise} eta {eta}",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    let t_gen = Instant::now();
    let images = sd.generate(&request, &mut |p| {
        bar.set_length(p.total as u64);
        bar.set_position(p.step as u64);
        ControlFlow::Continue(())
    })?;
    bar.finish_and_clear();
    let gen = t_gen.elapsed();

    let spec = JobSpec {
        prompt: request.prompt.clone(),
        negative_prompt: request.negative_prompt.clone(),
        model: config.model.clone(),
        width: request.width as u32,
        height: request.height as u32,
        steps: request.steps as u32,
        guidance_scale: request.guidance_scale,
        seed: request.seed,
        scheduler: scheduler.name().into(),
        num_images: request.num_images as u32,
        long_prompt: serde_json::to_value(request.long_prompt)?
            .as_str()
            .unwrap_or("chunk")
            .into(),
        // Locally, the inputs are named by their paths.
        init_image: args.init_image.as_ref().map(|p| p.display().to_string()),
        mask_image: args.mask.as_ref().map(|p| p.display().to_string()),
        strength: request.init_image.as_ref().map(|i| i.strength),
        user: None,
        loras,
        vae,
        clip_skip: args.clip_skip.map(|c| c as u32),
        webhook_url: None,
        webhook_events: Vec::new(),
        previews: false,
        preview_every: None,
        // Stored only when chosen, as the API stores it.
        vae_tiling: (request.vae_tiling != VaeTiling::Auto)
            .then(|| request.vae_tiling.name().into()),
    };
    let count = images.len();
    for (i, image) in images.iter().enumerate() {
        let path = output_path(&args.output, i, count);
        let png = encode(
            image.width as u32,
            image.height as u32,
            &image.rgb,
            &png_metadata(&spec, scheduler, image.seed),
        )?;
        std::fs::write(&path, png).with_context(|| format!("writing {}", path.display()))?;
        println!("{}", path.display());
    }
    let per_step = gen.as_secs_f64() * 1000.0 / request.steps.max(1) as f64;
    eprintln!(
        "{count} image(s) {}x{} in {:.2}s ({:.1} ms/step, model load {:.2}s) on {}",
        request.width,
        request.height,
        gen.as_secs_f64(),
        per_step,
        load.as_secs_f64(),
        args.device
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn several_images_get_numbered_names() {
        assert_eq!(
            output_path(Path::new("out.png"), 0, 1),
            PathBuf::from("out.png")
        );
        assert_eq!(
            output_path(Path::new("dir/out.png"), 1, 2),
            PathBuf::from("dir/out-1.png")
        );
    }
}
