//! `sdq bench submit`: `POST /v1/jobs` latency at a fixed request rate, open loop, against
//! an in-process embedded server (SQLite, in-process bus) whose worker runs the submitted
//! jobs on the tiny model meanwhile — or against `--url`.
//!
//! The baseline is `GET /v1/health` at the same rate right after, on the same server
//! (whose worker is still busy with the backlog): the HTTP stack and the machine's load
//! alone, so the ratio isolates what the submit path itself costs.

use std::time::Duration;

use super::load::{open_loop, quantile_ms, LocalServer, OpenLoop};
use super::Row;
use crate::app::Role;

#[derive(Debug, Clone)]
pub struct SubmitBench {
    pub rate: f64,
    pub seconds: f64,
    /// A running server to load instead of an in-process one.
    pub url: Option<String>,
    pub api_key: Option<String>,
    /// Workers of the in-process server.
    pub workers: usize,
}

pub async fn submit(bench: &SubmitBench) -> anyhow::Result<Vec<Row>> {
    if !(bench.rate > 0.0 && bench.seconds > 0.0) {
        anyhow::bail!("--rate and --seconds must be positive");
    }
    let local = match &bench.url {
        Some(_) => None,
        None => Some(LocalServer::start(Role::All, bench.workers).await?),
    };
    let base = match (&bench.url, &local) {
        (Some(url), _) => url.trim_end_matches('/').to_string(),
        (None, Some(server)) => server.base.clone(),
        (None, None) => unreachable!("one of them is set"),
    };
    let result = measure(bench, &base).await;
    if let Some(server) = local {
        server.stop().await;
    }
    result
}

async fn measure(bench: &SubmitBench, base: &str) -> anyhow::Result<Vec<Row>> {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(1024)
        .timeout(Duration::from_secs(30))
        .build()?;
    let count = ((bench.rate * bench.seconds).round() as usize).max(1);
    let auth = |r: reqwest::RequestBuilder| match &bench.api_key {
        Some(key) => r.bearer_auth(key),
        None => r,
    };
    let jobs = format!("{base}/v1/jobs");
    let post = |i: usize| {
        auth(client.post(&jobs).json(&serde_json::json!({
            "prompt": format!("a load test {i}"),
            "width": 64,
            "height": 64,
            "steps": 1,
        })))
    };
    let health = format!("{base}/v1/health");
    let get = |_: usize| auth(client.get(&health));
    // Warm-up: open connections and the server's first-use paths, untimed.
    open_loop(bench.rate, count.min(20), &post).await;
    let submits = open_loop(bench.rate, count, &post).await;
    let healths = open_loop(bench.rate, count, &get).await;
    if submits.latencies.is_empty() {
        anyhow::bail!(
            "every request failed: {}",
            submits.first_error.unwrap_or_default()
        );
    }
    if let Some(e) = &submits.first_error {
        eprintln!("{} submissions failed, the first with: {e}", submits.errors);
    }
    let row = Row::new(
        "submit",
        match &bench.url {
            Some(_) => format!("POST /v1/jobs at {}/s for {}s", bench.rate, bench.seconds),
            None => format!(
                "POST /v1/jobs at {}/s for {}s, {} workers",
                bench.rate, bench.seconds, bench.workers
            ),
        },
        &submits.latencies,
        Some(("GET /v1/health", &healths.latencies)),
    );
    Ok(vec![with_percentiles(row, &submits, bench.rate).with(
        "baseline_p99_ms",
        quantile_ms(&healths.latencies, 0.99),
    )])
}

fn with_percentiles(row: Row, run: &OpenLoop, rate: f64) -> Row {
    let sent = run.latencies.len() + run.errors;
    row.with("p50_ms", quantile_ms(&run.latencies, 0.5))
        .with("p90_ms", quantile_ms(&run.latencies, 0.9))
        .with("p99_ms", quantile_ms(&run.latencies, 0.99))
        .with("max_ms", quantile_ms(&run.latencies, 1.0))
        .with("rate", rate)
        .with(
            "achieved_per_s",
            sent as f64 / run.elapsed.as_secs_f64().max(1e-9),
        )
        .with("errors", run.errors as f64)
}
