//! `/metrics` is Prometheus text that a real parser (`prometheus-parse`) reads, and its
//! numbers move as requests are served and jobs run.

mod common;

use std::time::Duration;

use common::{small_job, Server};
use prometheus_parse::{Scrape, Value as Sample};

async fn scrape(server: &Server) -> Scrape {
    let resp = server
        .client
        .get(server.url("/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let ctype = resp.headers()["content-type"].to_str().unwrap().to_string();
    assert!(ctype.starts_with("text/plain"), "{ctype}");
    let text = resp.text().await.unwrap();
    Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).expect("Prometheus text parses")
}

/// The value of the sample `name` whose labels include all of `labels` (0 when absent).
fn value(scrape: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == name)
        .filter(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match &s.value {
            Sample::Counter(v) | Sample::Gauge(v) | Sample::Untyped(v) => *v,
            Sample::Histogram(buckets) => buckets.iter().map(|b| b.count).fold(0.0, f64::max),
            Sample::Summary(_) => 0.0,
        })
        .sum()
}

/// How many observations a histogram holds (its `_count`, or its `+Inf` bucket).
fn observations(scrape: &Scrape, name: &str) -> f64 {
    let count = value(scrape, &format!("{name}_count"), &[]);
    if count > 0.0 {
        count
    } else {
        value(scrape, name, &[])
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_move_as_jobs_run() {
    let mut server = Server::start(&[]).await;
    let before = scrape(&server).await;
    let submitted = |s: &Scrape| {
        value(
            s,
            "sdq_http_requests_total",
            &[("route", "/v1/jobs"), ("method", "POST"), ("status", "202")],
        )
    };

    let id = server.submit_ok(small_job("metrics")).await;
    let job = server.wait_terminal(&id, Duration::from_secs(120)).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    // A route template, never the concrete path.
    let (status, _) = server.get_json(&format!("/v1/jobs/{id}")).await;
    assert_eq!(status, 200);
    let (status, _) = server.get_json("/v1/jobs/not-a-job").await;
    assert_eq!(status, 404);

    let after = scrape(&server).await;
    assert_eq!(submitted(&after) - submitted(&before), 1.0, "POST /v1/jobs 202");
    assert!(
        value(
            &after,
            "sdq_http_requests_total",
            &[("route", "/v1/jobs/{id}"), ("status", "404")]
        ) >= 1.0
    );
    assert!(
        !after
            .samples
            .iter()
            .any(|s| s.labels.get("route").is_some_and(|r| r.contains(&id))),
        "a job id leaked into a route label"
    );
    assert!(
        observations(&after, "sdq_http_request_duration_seconds")
            > observations(&before, "sdq_http_request_duration_seconds")
    );
    assert_eq!(
        value(&after, "sdq_jobs", &[("status", "succeeded")])
            - value(&before, "sdq_jobs", &[("status", "succeeded")]),
        1.0,
        "jobs succeeded (from the store)"
    );
    assert_eq!(
        value(&after, "sdq_jobs_finished_total", &[("outcome", "succeeded")])
            - value(&before, "sdq_jobs_finished_total", &[("outcome", "succeeded")]),
        1.0
    );
    let steps = job["request"]["steps"].as_f64().unwrap();
    assert!(
        observations(&after, "sdq_step_duration_seconds")
            - observations(&before, "sdq_step_duration_seconds")
            >= steps,
        "one step observation per denoising step"
    );
    assert!(
        observations(&after, "sdq_job_duration_seconds")
            > observations(&before, "sdq_job_duration_seconds")
    );
    assert!(
        observations(&after, "sdq_model_load_duration_seconds")
            > observations(&before, "sdq_model_load_duration_seconds")
    );
    assert_eq!(value(&after, "sdq_queue_depth", &[]), 0.0);
    assert!(value(&after, "sdq_workers", &[]) >= 1.0, "this server's worker");
    for status in ["queued", "running", "failed", "canceled"] {
        assert!(
            after
                .samples
                .iter()
                .any(|s| s.metric == "sdq_jobs" && s.labels.get("status") == Some(status)),
            "sdq_jobs{{status={status}}} is always present"
        );
    }

    // What the webhook deliverer records shows up under its own name.
    sdq::observability::webhook_delivery("delivered");
    let last = scrape(&server).await;
    assert!(
        value(
            &last,
            "sdq_webhook_deliveries_total",
            &[("outcome", "delivered")]
        ) >= 1.0
    );
    server.stop().await;
}
