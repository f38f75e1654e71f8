//! Metrics every part of sdq records, and the Prometheus text they are rendered as.
//!
//! The functions here are the only way code records a metric, so the names, labels and
//! buckets live in one place. They go through the `metrics` facade: until [`install`] has
//! run (a CLI command, a unit test) they cost nothing and record nothing. `/metrics`
//! (`src/api/metrics.rs`) renders what [`install`] collects, after setting the gauges that
//! are read from the job store at scrape time.

use std::sync::OnceLock;
use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// The `content-type` of a scrape (Prometheus' text format).
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// HTTP requests served, by `method`, `route` (the route template) and `status`.
pub const HTTP_REQUESTS: &str = "sdq_http_requests_total";
/// Seconds from a request's arrival to its response head, same labels.
pub const HTTP_DURATION: &str = "sdq_http_request_duration_seconds";
/// Jobs in the store by `status` (set at scrape).
pub const JOBS: &str = "sdq_jobs";
/// Jobs waiting to be claimed (set at scrape).
pub const QUEUE_DEPTH: &str = "sdq_queue_depth";
/// Workers seen in the last 30 seconds (set at scrape).
pub const WORKERS: &str = "sdq_workers";
/// Job attempts this process's workers ended, by `outcome`.
pub const JOBS_FINISHED: &str = "sdq_jobs_finished_total";
/// Seconds of one job attempt, claim to outcome, by `outcome`.
pub const JOB_DURATION: &str = "sdq_job_duration_seconds";
/// Seconds of one denoising step.
pub const STEP_DURATION: &str = "sdq_step_duration_seconds";
/// Seconds to have a job's model ready (close to zero when it is already loaded).
pub const MODEL_LOAD_DURATION: &str = "sdq_model_load_duration_seconds";
/// Webhook delivery attempts, by `outcome`.
pub const WEBHOOK_DELIVERIES: &str = "sdq_webhook_deliveries_total";

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the process-wide recorder (once; later calls return the same handle).
pub fn install() -> &'static PrometheusHandle {
    HANDLE.get_or_init(|| {
        let fast = [
            0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
        ];
        let slow = [
            0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
        ];
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Full(HTTP_DURATION.into()), &fast)
            .and_then(|b| b.set_buckets_for_metric(Matcher::Full(STEP_DURATION.into()), &fast))
            .and_then(|b| b.set_buckets_for_metric(Matcher::Full(JOB_DURATION.into()), &slow))
            .and_then(|b| {
                b.set_buckets_for_metric(Matcher::Full(MODEL_LOAD_DURATION.into()), &slow)
            })
            .expect("bucket lists are not empty")
            .build_recorder();
        let handle = recorder.handle();
        // Fails only when another recorder was installed first (an embedding program's);
        // then that one gets the metrics and ours renders nothing.
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::warn!("a metrics recorder was already installed; /metrics stays empty");
        }
        describe();
        handle
    })
}

/// The Prometheus text of everything recorded so far (empty before [`install`]).
pub fn render() -> String {
    HANDLE.get().map(|h| h.render()).unwrap_or_default()
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(
        HTTP_REQUESTS,
        "HTTP requests served, by route template and status"
    );
    describe_histogram!(
        HTTP_DURATION,
        Unit::Seconds,
        "HTTP request latency, by route template and status"
    );
    describe_gauge!(JOBS, "Jobs in the job store, by status");
    describe_gauge!(QUEUE_DEPTH, "Jobs waiting to be claimed");
    describe_gauge!(WORKERS, "Workers seen in the last 30 seconds");
    describe_counter!(
        JOBS_FINISHED,
        "Job attempts ended by this process's workers"
    );
    describe_histogram!(JOB_DURATION, Unit::Seconds, "Job attempt duration");
    describe_histogram!(STEP_DURATION, Unit::Seconds, "Denoising step duration");
    describe_histogram!(
        MODEL_LOAD_DURATION,
        Unit::Seconds,
        "Time to have a job's model loaded"
    );
    describe_counter!(WEBHOOK_DELIVERIES, "Webhook delivery attempts, by outcome");
}

/// One HTTP request answered.
pub fn http_request(method: &str, route: &str, status: u16, elapsed: Duration) {
    let labels = [
        ("method", method.to_string()),
        ("route", route.to_string()),
        ("status", status.to_string()),
    ];
    metrics::counter!(HTTP_REQUESTS, &labels).increment(1);
    metrics::histogram!(HTTP_DURATION, &labels).record(elapsed.as_secs_f64());
}

/// A job attempt ended: `outcome` is `succeeded`, `failed`, `retrying`, `canceled`,
/// `released` or `lease_lost`.
pub fn job_finished(outcome: &'static str, elapsed: Duration) {
    metrics::counter!(JOBS_FINISHED, "outcome" => outcome).increment(1);
    metrics::histogram!(JOB_DURATION, "outcome" => outcome).record(elapsed.as_secs_f64());
}

/// One denoising step took `elapsed`.
pub fn step(elapsed: Duration) {
    metrics::histogram!(STEP_DURATION).record(elapsed.as_secs_f64());
}

/// Getting a job's model ready took `elapsed`.
pub fn model_load(elapsed: Duration) {
    metrics::histogram!(MODEL_LOAD_DURATION).record(elapsed.as_secs_f64());
}

/// One webhook delivery attempt ended: `outcome` is e.g. `delivered`, `retrying`,
/// `failed` (retries used up) or `refused` (the SSRF guard).
pub fn webhook_delivery(outcome: &'static str) {
    metrics::counter!(WEBHOOK_DELIVERIES, "outcome" => outcome).increment(1);
}

/// What the store holds, set just before a scrape renders.
pub fn store_gauges(jobs_by_status: &[(&'static str, i64)], workers: usize) {
    for (status, n) in jobs_by_status {
        metrics::gauge!(JOBS, "status" => *status).set(*n as f64);
        if *status == "queued" {
            metrics::gauge!(QUEUE_DEPTH).set(*n as f64);
        }
    }
    metrics::gauge!(WORKERS).set(workers as f64);
}
