//! The A1111 and OpenAI dialects, checked with the real clients: `webuiapi` and `openai`
//! from the test virtualenv (scripts/install-test-deps.sh) drive a live `sdq serve --model
//! tiny --auth required`, each with its own key (webuiapi as HTTP Basic, openai as Bearer),
//! and every call they made left a job owned by that key in `GET /v1/jobs`. A missing venv
//! or client library fails the test.

mod common;

use common::ServeProcess;
use serde_json::Value;
use std::path::PathBuf;
use std::process::Command;

/// The test venv's Python with the client libraries, or a failure saying how to get them.
fn venv_python() -> PathBuf {
    let python = common::services::test_python();
    assert!(
        python.exists(),
        "{} is missing: run ./scripts/install-test-deps.sh",
        python.display()
    );
    for module in ["webuiapi", "openai", "PIL", "requests"] {
        let ok = Command::new(&python)
            .args(["-c", &format!("import {module}")])
            .status()
            .expect("run python")
            .success();
        assert!(ok, "Python module {module} is missing from the test venv: run ./scripts/install-test-deps.sh");
    }
    python
}

/// Runs one client script against `base`; returns the number of jobs it says it queued.
fn run_client(python: &PathBuf, script: &str, args: &[&str]) -> usize {
    let path = format!("{}/tests/compat/{script}", env!("CARGO_MANIFEST_DIR"));
    let out = Command::new(python)
        .arg(&path)
        .args(args)
        .output()
        .expect("run client script");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{script}:\n{stdout}{stderr}");
    assert!(out.status.success(), "{script} failed:\n{stdout}\n{stderr}");
    stdout
        .lines()
        .find_map(|l| l.strip_prefix("JOBS "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("{script} did not report its jobs"))
}

/// Every job a key sees in `GET /v1/jobs`, newest first.
async fn all_jobs(client: &reqwest::Client, base: &str, token: &str) -> Vec<Value> {
    let mut jobs = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut url = format!("{base}/v1/jobs?limit=100");
        if let Some(c) = &cursor {
            url.push_str(&format!("&cursor={c}"));
        }
        let body: Value = client
            .get(&url)
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        jobs.extend(body["jobs"].as_array().unwrap().iter().cloned());
        match body["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => return jobs,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_clients_work_unchanged() {
    let python = venv_python();
    let dir = tempfile::tempdir().unwrap();
    let global = ["--data-dir", dir.path().to_str().unwrap()];
    let a1111_key = common::create_key(&global, "a1111-client", &[]);
    let openai_key = common::create_key(&global, "openai-client", &[]);
    let server = ServeProcess::spawn(
        dir.path(),
        &["--allow-model", "tiny-sd2", "--auth", "required"],
    );
    let client = reqwest::Client::new();
    server.wait_healthy(&client).await;
    let base = server.base.clone();

    // Without a key each dialect refuses in its own way.
    let resp = client
        .get(format!("{base}/sdapi/v1/options"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    let challenge = resp.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(challenge.starts_with("Basic"), "{challenge}");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"], "unauthorized", "{body}");
    let resp = client
        .post(format!("{base}/v1/images/generations"))
        .bearer_auth("sdq_not-a-key")
        .json(&serde_json::json!({"prompt": "a"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["type"], "authentication_error", "{body}");

    let (python_a, base_a, token_a) = (python.clone(), base.clone(), a1111_key.token.clone());
    let a1111 = tokio::task::spawn_blocking(move || {
        run_client(&python_a, "webuiapi_client.py", &[&base_a, &token_a])
    })
    .await
    .unwrap();
    let (base_o, token_o) = (base.clone(), openai_key.token.clone());
    let openai = tokio::task::spawn_blocking(move || {
        run_client(&python, "openai_client.py", &[&base_o, &token_o])
    })
    .await
    .unwrap();

    // Every call left an ordinary job behind, owned by the key that made it.
    for (key, made) in [(&a1111_key, a1111), (&openai_key, openai)] {
        let jobs = all_jobs(&client, &base, &key.token).await;
        assert_eq!(jobs.len(), made, "{jobs:#?}");
        for job in &jobs {
            assert_eq!(job["owner"], key.id.as_str(), "{job}");
            let status = job["status"].as_str().unwrap();
            assert!(
                ["succeeded", "canceled"].contains(&status),
                "{}",
                serde_json::to_string_pretty(job).unwrap()
            );
        }
    }
    let a1111_jobs = all_jobs(&client, &base, &a1111_key.token).await;
    assert_eq!(
        a1111_jobs
            .iter()
            .filter(|j| j["status"] == "canceled")
            .count(),
        1,
        "only the interrupted job was canceled"
    );
    let openai_jobs = all_jobs(&client, &base, &openai_key.token).await;
    assert!(
        openai_jobs.iter().any(|j| j["request"]["user"] == "user-7"),
        "OpenAI's user is stored on the job"
    );
}
