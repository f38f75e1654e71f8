//! `/metrics` is Prometheus text that Prometheus' own parser (`prometheus_client` from the
//! test venv) reads, and its numbers move as requests are served and jobs run.

mod common;

use std::collections::HashMap;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{small_job, Server};
use serde_json::Value;

/// One sample of a scrape: its name (`_count`, `_bucket`, ... included), labels, value.
struct Sample {
    name: String,
    labels: HashMap<String, String>,
    value: f64,
}

/// Parses Prometheus text with `prometheus_client.parser`; a line it cannot read fails.
fn parse(text: &str) -> Vec<Sample> {
    const SCRIPT: &str = r#"
import json, sys
from prometheus_client.parser import text_string_to_metric_families
out = []
for family in text_string_to_metric_families(sys.stdin.read()):
    for s in family.samples:
        out.append({"name": s.name, "labels": s.labels, "value": s.value})
print(json.dumps(out))
"#;
    let python = common::services::test_python();
    assert!(
        python.exists(),
        "{} is missing: run ./scripts/install-test-deps.sh",
        python.display()
    );
    let mut child = Command::new(python)
        .args(["-c", SCRIPT])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run python");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "prometheus_client could not parse /metrics: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    let samples: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    samples
        .into_iter()
        .map(|s| Sample {
            name: s["name"].as_str().unwrap().to_string(),
            labels: serde_json::from_value(s["labels"].clone()).unwrap(),
            value: s["value"].as_f64().unwrap(),
        })
        .collect()
}

async fn scrape(server: &Server) -> Vec<Sample> {
    let resp = server
        .client
        .get(server.url("/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let ctype = resp.headers()["content-type"].to_str().unwrap().to_string();
    assert!(ctype.starts_with("text/plain"), "{ctype}");
    parse(&resp.text().await.unwrap())
}

/// The sum of the samples `name` whose labels include all of `labels` (0 when none).
fn value(scrape: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    scrape
        .iter()
        .filter(|s| s.name == name)
        .filter(|s| {
            labels
                .iter()
                .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| s.value)
        .sum()
}

/// How many observations a histogram holds (its `_count`).
fn observations(scrape: &[Sample], name: &str) -> f64 {
    value(scrape, &format!("{name}_count"), &[])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_move_as_jobs_run() {
    let mut server = Server::start(&[]).await;
    let before = scrape(&server).await;
    let submitted = |s: &[Sample]| {
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
    assert_eq!(
        submitted(&after) - submitted(&before),
        1.0,
        "POST /v1/jobs 202"
    );
    assert!(
        value(
            &after,
            "sdq_http_requests_total",
            &[("route", "/v1/jobs/{id}"), ("status", "404")]
        ) >= 1.0
    );
    assert!(
        !after
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
        value(
            &after,
            "sdq_jobs_finished_total",
            &[("outcome", "succeeded")]
        ) - value(
            &before,
            "sdq_jobs_finished_total",
            &[("outcome", "succeeded")]
        ),
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
    assert!(
        value(&after, "sdq_workers", &[]) >= 1.0,
        "this server's worker"
    );
    for status in ["queued", "running", "failed", "canceled"] {
        assert!(
            after.iter().any(|s| s.name == "sdq_jobs"
                && s.labels.get("status").map(String::as_str) == Some(status)),
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
