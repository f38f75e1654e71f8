//! `sdq bench`: which benchmark, at what sizes, and running it.

use super::*;

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

pub(super) fn bench(config: &Config, args: BenchArgs) -> anyhow::Result<()> {
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
