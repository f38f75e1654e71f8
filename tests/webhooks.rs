//! Webhooks against a real receiver: `tests/fixtures/webhook_receiver.py` verifies every
//! delivery with the `standardwebhooks` package from PyPI (the test venv), answers 500 to
//! the first attempt of each webhook-id and 200 after, and records what it got.
//!
//! - Deliveries are signed, retried with the same id and body, and the body is the job as
//!   `GET /v1/jobs/{id}` shows it (SQLite and PostgreSQL).
//! - A `sdq serve` killed (SIGKILL) between a failed attempt and its retry delivers after
//!   a restart, exactly once per webhook-id.
//! - SSRF targets are refused: inward literal addresses at submission (422), a name that
//!   resolves inward (`localhost`) at delivery, with the reason on the job.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{create_key, ServeProcess, Server, TestKey};
use serde_json::{json, Value};

/// The Python receiver; killed on drop.
struct Receiver {
    child: Child,
    port: u16,
    client: reqwest::Client,
}

impl Receiver {
    fn start(secret: &str) -> Self {
        let python = common::services::test_python();
        assert!(
            python.exists(),
            "{} is missing: run ./scripts/install-test-deps.sh",
            python.display()
        );
        let script = format!(
            "{}/tests/fixtures/webhook_receiver.py",
            env!("CARGO_MANIFEST_DIR")
        );
        let mut child = Command::new(&python)
            .args([&script, secret, "1"])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the webhook receiver");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .expect("receiver output");
        let port = line
            .trim()
            .strip_prefix("PORT ")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| {
                panic!("the receiver did not start (is standardwebhooks installed?): {line:?}")
            });
        Self {
            child,
            port,
            client: reqwest::Client::new(),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    async fn log(&self) -> Vec<Value> {
        self.client
            .get(self.url("/log"))
            .send()
            .await
            .expect("receiver log")
            .json()
            .await
            .expect("receiver log JSON")
    }

    /// Waits until `done` holds for the log.
    async fn wait_for(
        &self,
        what: &str,
        timeout: Duration,
        done: impl Fn(&[Value]) -> bool,
    ) -> Vec<Value> {
        let start = Instant::now();
        loop {
            let log = self.log().await;
            if done(&log) {
                return log;
            }
            assert!(
                start.elapsed() < timeout,
                "receiver never saw {what} within {timeout:?}: {log:#?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// How many requests the receiver answered `status` for `id`.
fn answered(log: &[Value], id: &str, status: u64) -> usize {
    log.iter()
        .filter(|e| e["id"] == id && e["answered"] == status)
        .count()
}

/// The job's view without its `webhooks` list: what a delivery's body must equal.
fn without_webhooks(mut job: Value) -> Value {
    job.as_object_mut().unwrap().remove("webhooks");
    job
}

/// Polls the job until `done` holds for its `webhooks` list.
async fn wait_webhooks(
    get: impl Fn() -> futures::future::BoxFuture<'static, Value>,
    timeout: Duration,
    done: impl Fn(&[Value]) -> bool,
) -> Value {
    let start = Instant::now();
    loop {
        let job = get().await;
        if let Some(list) = job["webhooks"].as_array() {
            if done(list) {
                return job;
            }
        }
        assert!(
            start.elapsed() < timeout,
            "webhooks not as expected within {timeout:?}: {job:#}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn getter(
    base: &str,
    token: &str,
    id: &str,
) -> impl Fn() -> futures::future::BoxFuture<'static, Value> {
    let url = format!("{base}/v1/jobs/{id}");
    let token = token.to_string();
    move || {
        let (url, token) = (url.clone(), token.clone());
        Box::pin(async move {
            reqwest::Client::new()
                .get(&url)
                .bearer_auth(&token)
                .send()
                .await
                .expect("get job")
                .json::<Value>()
                .await
                .expect("job JSON")
        })
    }
}

/// Signed deliveries of `started` and `completed`, each refused once and delivered on
/// its retry with the same id and body; the completed body is the job's own view.
async fn deliveries_are_signed_retried_and_carry_the_job(global: &[&str]) {
    let data = tempfile::tempdir().unwrap();
    let data_dir = data.path().display().to_string();
    let mut key_args = vec!["--data-dir", &data_dir];
    key_args.extend_from_slice(global);
    let key: TestKey = create_key(&key_args, "hooks", &[]);
    let receiver = Receiver::start(&key.webhook_secret);
    let mut flags = vec![
        "--auth",
        "required",
        "--webhook-allow",
        "127.0.0.1",
        "--webhook-retry-base-secs",
        "0.3",
        "--webhook-interval-secs",
        "0.1",
    ];
    flags.extend_from_slice(global);
    let mut server = Server::start_in(data.path(), &flags).await;
    let me = server.with(Some(&key.token));
    let mut body = common::small_job("a lighthouse");
    body["webhook_url"] = json!(receiver.url("/hooks/sdq"));
    body["webhook_events"] = json!(["started", "completed"]);
    let job = me.run_job(body).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    let id = job["id"].as_str().unwrap().to_string();
    assert_eq!(
        job["request"]["webhook_events"],
        json!(["started", "completed"])
    );

    let done = wait_webhooks(
        getter(&server.base, &key.token, &id),
        Duration::from_secs(30),
        |list| list.len() == 2 && list.iter().all(|w| w["status"] == "delivered"),
    )
    .await;
    let log = receiver.log().await;
    assert!(
        log.iter().all(|e| e["verified"] == true),
        "standardwebhooks rejected a delivery: {log:#?}"
    );
    let hooks = done["webhooks"].as_array().unwrap();
    assert_eq!(hooks[0]["event"], "started");
    assert_eq!(hooks[1]["event"], "completed");
    for hook in hooks {
        let wid = hook["id"].as_str().unwrap();
        assert!(wid.starts_with("msg_"), "{hook}");
        assert_eq!(hook["attempts"], 2, "{hook}");
        assert!(
            hook["last_error"].as_str().unwrap().starts_with("HTTP 500"),
            "{hook}"
        );
        assert!(hook["delivered_at"].is_string(), "{hook}");
        // One refusal, one success, under the same id with the same body.
        let attempts: Vec<&Value> = log.iter().filter(|e| e["id"] == wid).collect();
        assert_eq!(attempts.len(), 2, "{attempts:#?}");
        assert_eq!(answered(&log, wid, 500), 1);
        assert_eq!(answered(&log, wid, 200), 1);
        assert_eq!(
            attempts[0]["body"], attempts[1]["body"],
            "a retry sends the same body"
        );
        assert_eq!(attempts[0]["path"], "/hooks/sdq");
        assert_eq!(attempts[0]["content_type"], "application/json");
    }
    let body_of = |wid: &str| -> Value {
        let entry = log.iter().find(|e| e["id"] == wid).unwrap();
        serde_json::from_str(entry["body"].as_str().unwrap()).unwrap()
    };
    let completed = body_of(hooks[1]["id"].as_str().unwrap());
    assert_eq!(
        completed,
        without_webhooks(done.clone()),
        "the body is GET /v1/jobs/{{id}}"
    );
    assert_eq!(completed["status"], "succeeded");
    assert_eq!(completed["images"].as_array().unwrap().len(), 1);
    let started = body_of(hooks[0]["id"].as_str().unwrap());
    assert_eq!(started["id"], id);
    assert_ne!(started["status"], "queued", "{started}");

    // Multipart takes the events as a comma-separated string; a redirect is an answer
    // like any other non-2xx: not followed, retried.
    let form = reqwest::multipart::Form::new()
        .text("prompt", "a redirect")
        .text("width", "64")
        .text("height", "64")
        .text("steps", "2")
        .text("webhook_url", receiver.url("/redirect"))
        .text("webhook_events", "completed, started");
    let resp = server
        .client
        .post(server.url("/v1/jobs"))
        .bearer_auth(&key.token)
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    let id: Value = resp.json().await.unwrap();
    let id = id["id"].as_str().unwrap().to_string();
    let redirected = wait_webhooks(
        getter(&server.base, &key.token, &id),
        Duration::from_secs(30),
        |list| list.len() == 2 && list.iter().all(|w| w["attempts"].as_i64() >= Some(2)),
    )
    .await;
    assert_eq!(
        redirected["request"]["webhook_events"],
        json!(["completed", "started"])
    );
    for hook in redirected["webhooks"].as_array().unwrap() {
        assert_eq!(hook["status"], "pending", "{hook}");
        assert_eq!(hook["response_status"], 302, "{hook}");
        let error = hook["last_error"].as_str().unwrap();
        assert!(error.contains("redirects are not followed"), "{error}");
    }
    let log = receiver.log().await;
    assert!(
        log.iter().all(|e| e["path"] != "/hook"),
        "a redirect was followed: {log:#?}"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_are_signed_retried_and_carry_the_job_sqlite() {
    deliveries_are_signed_retried_and_carry_the_job(&[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_are_signed_retried_and_carry_the_job_postgres() {
    let db = common::services::PgDatabase::create().await;
    deliveries_are_signed_retried_and_carry_the_job(&["--database-url", &db.url]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_mid_retry_delivers_exactly_once() {
    let data = tempfile::tempdir().unwrap();
    let data_dir = data.path().display().to_string();
    let key = create_key(&["--data-dir", &data_dir], "hooks", &[]);
    let receiver = Receiver::start(&key.webhook_secret);
    // Retries wait about 3 s: time enough to kill the server in between.
    let flags = [
        "--auth",
        "required",
        "--webhook-allow",
        "127.0.0.1",
        "--webhook-retry-base-secs",
        "3",
        "--webhook-interval-secs",
        "0.2",
    ];
    let client = reqwest::Client::new();
    let mut first = ServeProcess::spawn(data.path(), &flags);
    first.wait_healthy(&client).await;
    let mut body = common::small_job("a restart");
    body["webhook_url"] = json!(receiver.url("/hook"));
    let created: Value = client
        .post(format!("{}/v1/jobs", first.base))
        .bearer_auth(&key.token)
        .json(&body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = created["id"].as_str().expect("job id").to_string();
    // The first attempt was refused and its outcome recorded: the retry is pending.
    let pending = wait_webhooks(
        getter(&first.base, &key.token, &id),
        Duration::from_secs(60),
        |list| list.len() == 1 && list[0]["attempts"] == 1 && list[0]["last_error"].is_string(),
    )
    .await;
    let hook = &pending["webhooks"][0];
    assert_eq!(hook["status"], "pending", "{hook}");
    assert_eq!(hook["event"], "completed");
    let wid = hook["id"].as_str().unwrap().to_string();
    first.kill9();
    assert_eq!(answered(&receiver.log().await, &wid, 200), 0);

    let second = ServeProcess::spawn(data.path(), &flags);
    second.wait_healthy(&client).await;
    receiver
        .wait_for(
            "the retry after the restart",
            Duration::from_secs(30),
            |log| answered(log, &wid, 200) == 1,
        )
        .await;
    let delivered = wait_webhooks(
        getter(&second.base, &key.token, &id),
        Duration::from_secs(10),
        |list| list.len() == 1 && list[0]["status"] == "delivered",
    )
    .await;
    assert_eq!(delivered["webhooks"][0]["id"], wid.as_str());
    assert_eq!(delivered["webhooks"][0]["attempts"], 2);
    // Nothing more arrives: exactly one success, and one request per attempt.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let log = receiver.log().await;
    assert_eq!(answered(&log, &wid, 200), 1, "{log:#?}");
    assert_eq!(
        log.iter().filter(|e| e["id"] == wid.as_str()).count(),
        2,
        "{log:#?}"
    );
    assert_eq!(log.len(), 2, "only the one job's webhook: {log:#?}");
    assert!(log.iter().all(|e| e["verified"] == true), "{log:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssrf_targets_are_refused() {
    let data = tempfile::tempdir().unwrap();
    let data_dir = data.path().display().to_string();
    let key = create_key(&["--data-dir", &data_dir], "hooks", &[]);
    let receiver = Receiver::start(&key.webhook_secret);
    // Auth off (a loopback bind), no --webhook-allow: nothing inward is reachable.
    let mut server = Server::start_in(
        data.path(),
        &[
            "--webhook-interval-secs",
            "0.1",
            "--webhook-retry-base-secs",
            "0.2",
        ],
    )
    .await;
    let me = server.with(Some(&key.token));
    let submit = |url: &str, events: Option<Value>| {
        let mut body = common::small_job("ssrf");
        body["webhook_url"] = json!(url);
        if let Some(events) = events {
            body["webhook_events"] = events;
        }
        body
    };
    let port = receiver.port;
    for target in [
        format!("http://127.0.0.1:{port}/hook"),
        "http://10.0.0.1/hook".to_string(),
        "http://169.254.169.254/latest/meta-data/".to_string(),
        "http://[::1]:8080/".to_string(),
        "http://[fd00:ec2::254]/".to_string(),
        "http://100.64.1.1/".to_string(),
        "http://[::ffff:127.0.0.1]/".to_string(),
    ] {
        let (status, body) = me.post_json("/v1/jobs", &submit(&target, None)).await;
        assert_eq!(status, 422, "{target}: {body}");
        assert_eq!(body["error"]["field"], "webhook_url", "{target}: {body}");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains("--webhook-allow"), "{target}: {message}");
    }
    for (body, field) in [
        (submit("ftp://example.com/x", None), "webhook_url"),
        (submit("not a url", None), "webhook_url"),
        (
            submit("https://hooks.example.com/", Some(json!(["finished"]))),
            "webhook_events",
        ),
        (
            submit("https://hooks.example.com/", Some(json!([]))),
            "webhook_events",
        ),
        (
            submit("https://hooks.example.com/", Some(json!(7))),
            "webhook_events",
        ),
        (
            json!({"prompt": "x", "webhook_events": ["completed"]}),
            "webhook_events",
        ),
    ] {
        let (status, answer) = me.post_json("/v1/jobs", &body).await;
        assert_eq!(status, 422, "{body}: {answer}");
        assert_eq!(answer["error"]["field"], field, "{body}: {answer}");
    }
    // Without a key there is no secret to sign with.
    let (status, answer) = server
        .with(None)
        .post_json("/v1/jobs", &submit("https://hooks.example.com/", None))
        .await;
    assert_eq!(status, 422, "{answer}");
    assert_eq!(answer["error"]["field"], "webhook_url");

    // A name is judged by what it resolves to, at delivery: localhost is loopback.
    let job = me
        .run_job(submit(&format!("http://localhost:{port}/hook"), None))
        .await;
    let id = job["id"].as_str().unwrap().to_string();
    let failed = wait_webhooks(
        getter(&server.base, &key.token, &id),
        Duration::from_secs(20),
        |list| list.len() == 1 && list[0]["status"] == "failed",
    )
    .await;
    let hook = &failed["webhooks"][0];
    assert_eq!(hook["attempts"], 1, "refusals are not retried: {hook}");
    let error = hook["last_error"].as_str().unwrap();
    assert!(
        error.contains("SSRF") && error.contains("loopback"),
        "{error}"
    );
    assert!(error.contains("localhost"), "{error}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        receiver.log().await.is_empty(),
        "a refused target got a request"
    );
    server.stop().await;
}
