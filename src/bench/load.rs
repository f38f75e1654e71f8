//! What the API benchmarks share: an in-process embedded server, an open-loop request
//! schedule, percentiles and the open-file limit.

use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;

use crate::app::{Role, Running};

/// An in-process `sdq serve` on a temporary data directory (SQLite, in-process bus,
/// auth off on loopback), removed again by `stop`.
pub struct LocalServer {
    pub running: Running,
    pub base: String,
    dir: std::path::PathBuf,
}

impl LocalServer {
    /// Starts the API with `workers` workers on the tiny model.
    pub async fn start(role: Role, workers: usize) -> anyhow::Result<Self> {
        Self::start_with(role, workers, &[]).await
    }

    /// Like `start`, with more `sdq serve` flags.
    pub async fn start_with(role: Role, workers: usize, extra: &[&str]) -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(format!(
            "sdq-bench-server-{}-{}",
            std::process::id(),
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&dir)?;
        let workers = workers.to_string();
        let mut args = vec![
            "sdq",
            "--data-dir",
            dir.to_str().context("temp dir is not UTF-8")?,
            "--model",
            "tiny",
            "serve",
            "--bind",
            "127.0.0.1:0",
            "--workers",
            &workers,
        ];
        args.extend_from_slice(extra);
        let cli = crate::cli::Cli::try_parse_from(args)?;
        let crate::cli::Command::Serve(serve) = cli.command else {
            unreachable!("parsed a serve command")
        };
        let running = crate::app::start(&cli.config, &serve, role).await?;
        let base = format!("http://{}", running.addr.context("the API listens")?);
        Ok(Self { running, base, dir })
    }

    pub async fn stop(self) {
        self.running.shutdown().await;
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The `q`-quantile (0..=1) of `samples` in milliseconds (nearest rank); 0 for none.
pub fn quantile_ms(samples: &[Duration], q: f64) -> f64 {
    if samples.is_empty() {
        return 0.0;
    }
    let mut sorted = samples.to_vec();
    sorted.sort();
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1].as_secs_f64() * 1000.0
}

/// What an open-loop run measured.
pub struct OpenLoop {
    /// Per request: from when it was due to when its response had been read.
    pub latencies: Vec<Duration>,
    pub errors: usize,
    /// The first error seen, for the report.
    pub first_error: Option<String>,
    pub elapsed: Duration,
}

/// Sends `count` requests at `rate` per second, each at its due time whether or not
/// earlier ones have answered (open loop), and measures each from its due time, so a
/// stalled server cannot hide latency by slowing the sender (coordinated omission).
pub async fn open_loop(
    rate: f64,
    count: usize,
    make: impl Fn(usize) -> reqwest::RequestBuilder,
) -> OpenLoop {
    let start = Instant::now() + Duration::from_millis(20);
    let mut tasks = Vec::with_capacity(count);
    for i in 0..count {
        let due = start + Duration::from_secs_f64(i as f64 / rate);
        tokio::time::sleep_until(due.into()).await;
        let request = make(i);
        tasks.push(tokio::spawn(async move {
            let outcome = match request.send().await {
                Ok(response) => {
                    let status = response.status();
                    let body = response.bytes().await;
                    match body {
                        Ok(_) if status.is_success() => Ok(()),
                        Ok(body) => Err(format!(
                            "{status}: {}",
                            String::from_utf8_lossy(&body[..body.len().min(200)])
                        )),
                        Err(e) => Err(e.to_string()),
                    }
                }
                Err(e) => Err(e.to_string()),
            };
            (due.elapsed(), outcome)
        }));
    }
    let mut run = OpenLoop {
        latencies: Vec::with_capacity(count),
        errors: 0,
        first_error: None,
        elapsed: Duration::ZERO,
    };
    for task in tasks {
        match task.await {
            Ok((latency, Ok(()))) => run.latencies.push(latency),
            Ok((_, Err(e))) => {
                run.errors += 1;
                run.first_error.get_or_insert(e);
            }
            Err(e) => {
                run.errors += 1;
                run.first_error.get_or_insert(e.to_string());
            }
        }
    }
    run.elapsed = start.elapsed();
    run
}

/// Raises the soft open-file limit to the hard one (thousands of SSE connections need
/// two descriptors each in one process); returns the limit now in force.
pub fn raise_open_files() -> u64 {
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    unsafe {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return 0;
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: limit.rlim_max,
                rlim_max: limit.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                limit = raised;
            }
        }
        limit.rlim_cur
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_use_the_nearest_rank() {
        let samples: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(quantile_ms(&samples, 0.5), 50.0);
        assert_eq!(quantile_ms(&samples, 0.99), 99.0);
        assert_eq!(quantile_ms(&samples, 1.0), 100.0);
        assert_eq!(quantile_ms(&[], 0.5), 0.0);
    }
}
