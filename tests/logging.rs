//! `--log-format json`: every stderr line is a JSON object, and every line a job's work
//! writes (the worker's, the model loader's and the pipeline's, on the async tasks and on
//! the blocking thread alike) carries that job's id.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::{free_port, sdq_bin, small_job};
use serde_json::Value;

/// The `job_id` of the job span a line was written in, if any.
fn job_of(line: &Value) -> Option<String> {
    line["spans"]
        .as_array()?
        .iter()
        .find(|s| s["name"] == "job")
        .and_then(|s| s["job_id"].as_str())
        .map(str::to_string)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_log_lines_of_a_job_carry_its_id() {
    let dir = tempfile::tempdir().unwrap();
    let log_path = dir.path().join("stderr.log");
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut child = Command::new(sdq_bin())
        .args([
            "--data-dir",
            dir.path().to_str().unwrap(),
            "--model",
            "tiny",
            "--log-format",
            "json",
            "serve",
            "--bind",
            &format!("127.0.0.1:{port}"),
        ])
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .expect("spawn sdq");
    let client = reqwest::Client::new();
    let start = std::time::Instant::now();
    while client.get(format!("{base}/health")).send().await.is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "sdq did not start"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let created: Value = client
        .post(format!("{base}/v1/jobs"))
        .json(&small_job("logged"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = created["id"].as_str().unwrap().to_string();
    loop {
        let job: Value = client
            .get(format!("{base}/v1/jobs/{id}"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if job["status"] == "succeeded" {
            break;
        }
        assert!(
            !["failed", "canceled"].contains(&job["status"].as_str().unwrap()),
            "{job}"
        );
        assert!(start.elapsed() < Duration::from_secs(120), "job not done");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Let the worker write its last line, then stop the server.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let _ = child.kill();
    let _ = child.wait();

    let text = std::fs::read_to_string(&log_path).unwrap();
    let lines: Vec<Value> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert!(!lines.is_empty(), "no log lines");
    let message = |l: &Value| l["message"].as_str().unwrap_or("").to_string();
    let claimed = lines
        .iter()
        .position(|l| message(l) == "job claimed")
        .unwrap_or_else(|| panic!("no 'job claimed' line:\n{text}"));
    let done = lines
        .iter()
        .position(|l| message(l) == "job succeeded")
        .unwrap_or_else(|| panic!("no 'job succeeded' line:\n{text}"));
    assert!(claimed < done);
    // Everything the worker, the model loader and the pipeline said while the job ran
    // (the only job) is in its span.
    let job_lines: Vec<&Value> = lines[claimed..=done]
        .iter()
        .filter(|l| {
            let target = l["target"].as_str().unwrap_or("");
            target.starts_with("sdq::worker")
                || target.starts_with("sdq::inference")
                || target.starts_with("sdq::storage")
        })
        .collect();
    assert!(job_lines.len() >= 2, "{text}");
    for line in &job_lines {
        assert_eq!(
            job_of(line).as_deref(),
            Some(id.as_str()),
            "a line of the job's work without its id: {line}"
        );
    }
}
