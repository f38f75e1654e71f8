//! Helpers shared by the integration tests: a real server on a random port, an HTTP
//! client, and an SSE reader.
#![allow(dead_code)]

pub mod cluster;
pub mod fault_proxy;
pub mod services;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use clap::Parser;
use futures::StreamExt;
use serde_json::{json, Value};

pub use sdq::app::Running;

/// A running in-process `sdq serve` with its own data directory.
pub struct Server {
    pub running: Option<Running>,
    pub base: String,
    pub data: PathBuf,
    pub client: reqwest::Client,
    _dir: Option<tempfile::TempDir>,
}

/// Parses `sdq serve` flags the way the binary does.
pub fn configs(data: &Path, extra: &[&str]) -> (sdq::config::Config, sdq::config::ServeConfig) {
    let mut args = vec![
        "sdq".to_string(),
        "--data-dir".into(),
        data.display().to_string(),
        "--model".into(),
        "tiny".into(),
        "serve".into(),
        "--bind".into(),
        "127.0.0.1:0".into(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    let cli = sdq::cli::Cli::try_parse_from(args).expect("valid flags");
    match cli.command {
        sdq::cli::Command::Serve(serve) => (cli.config, serve),
        _ => unreachable!(),
    }
}

impl Server {
    pub async fn start(extra: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let data = dir.path().to_path_buf();
        let mut server = Self::start_in(&data, extra).await;
        server._dir = Some(dir);
        server
    }

    /// Starts on an existing data directory (for restarts).
    pub async fn start_in(data: &Path, extra: &[&str]) -> Self {
        let (config, serve) = configs(data, extra);
        let running = sdq::app::start(&config, &serve, sdq::app::Role::All)
            .await
            .expect("server starts");
        Self {
            base: format!("http://{}", running.addr.expect("api address")),
            running: Some(running),
            data: data.to_path_buf(),
            client: reqwest::Client::new(),
            _dir: None,
        }
    }

    pub async fn stop(&mut self) {
        if let Some(r) = self.running.take() {
            r.shutdown().await;
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// POSTs a job and returns `(status, body)`.
    pub async fn submit(&self, body: Value) -> (u16, Value) {
        let resp = self
            .client
            .post(self.url("/v1/jobs"))
            .json(&body)
            .send()
            .await
            .expect("request");
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    /// Submits and returns the new job's id, asserting 202.
    pub async fn submit_ok(&self, body: Value) -> String {
        let (status, body) = self.submit(body).await;
        assert_eq!(status, 202, "{body}");
        body["id"].as_str().expect("id").to_string()
    }

    pub async fn get_json(&self, path: &str) -> (u16, Value) {
        let resp = self
            .client
            .get(self.url(path))
            .send()
            .await
            .expect("request");
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    pub async fn job(&self, id: &str) -> Value {
        let (status, body) = self.get_json(&format!("/v1/jobs/{id}")).await;
        assert_eq!(status, 200, "{body}");
        body
    }

    /// Polls until the job reaches a terminal state.
    pub async fn wait_terminal(&self, id: &str, timeout: Duration) -> Value {
        let start = Instant::now();
        loop {
            let job = self.job(id).await;
            if ["succeeded", "failed", "canceled"].contains(&job["status"].as_str().unwrap_or("")) {
                return job;
            }
            assert!(
                start.elapsed() < timeout,
                "job {id} not finished after {timeout:?}: {job}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn events(&self, id: &str, last_event_id: Option<i64>) -> SseReader {
        SseReader::open(
            &self.client,
            &self.url(&format!("/v1/jobs/{id}/events")),
            last_event_id,
        )
        .await
    }
}

/// A small job that finishes fast on the tiny model.
pub fn small_job(prompt: &str) -> Value {
    json!({"prompt": prompt, "width": 64, "height": 64, "steps": 4, "seed": 7})
}

/// One SSE message.
#[derive(Debug, Clone)]
pub struct SseMessage {
    pub id: Option<i64>,
    pub event: String,
    pub data: Value,
}

/// Reads `text/event-stream` from a real HTTP connection.
pub struct SseReader {
    stream: futures::stream::BoxStream<'static, reqwest::Result<bytes::Bytes>>,
    buffer: String,
    pub status: u16,
}

impl SseReader {
    pub async fn open(client: &reqwest::Client, url: &str, last_event_id: Option<i64>) -> Self {
        let mut req = client.get(url).header("accept", "text/event-stream");
        if let Some(id) = last_event_id {
            req = req.header("last-event-id", id.to_string());
        }
        let resp = req.send().await.expect("sse request");
        let status = resp.status().as_u16();
        Self {
            stream: resp.bytes_stream().boxed(),
            buffer: String::new(),
            status,
        }
    }

    /// The next event, or `None` when the server closed the stream.
    pub async fn next(&mut self, timeout: Duration) -> Option<SseMessage> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let mut msg = SseMessage {
                    id: None,
                    event: "message".into(),
                    data: Value::Null,
                };
                let mut data = String::new();
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("id:") {
                        msg.id = v.trim().parse().ok();
                    } else if let Some(v) = line.strip_prefix("event:") {
                        msg.event = v.trim().to_string();
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push_str(v.trim_start());
                    }
                }
                if data.is_empty() && msg.id.is_none() {
                    continue; // a keep-alive comment
                }
                msg.data = serde_json::from_str(&data).unwrap_or(Value::String(data));
                return Some(msg);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "no SSE event within {timeout:?}");
            match tokio::time::timeout(left, self.stream.next()).await {
                Ok(Some(Ok(chunk))) => self.buffer.push_str(&String::from_utf8_lossy(&chunk)),
                Ok(Some(Err(_))) | Ok(None) => return None,
                Err(_) => panic!("no SSE event within {timeout:?}"),
            }
        }
    }

    /// Reads until a `progress` event for `step` arrives (the job is under way).
    pub async fn wait_for_step(&mut self, step: i64, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let m = self
                .next(left)
                .await
                .expect("stream closed before the step");
            if m.event == "progress" && m.data["step"] == step {
                return;
            }
        }
    }

    /// Reads until the stream closes, returning every event.
    pub async fn collect(&mut self, timeout: Duration) -> Vec<SseMessage> {
        let mut out = Vec::new();
        let deadline = Instant::now() + timeout;
        while let Some(m) = self
            .next(deadline.saturating_duration_since(Instant::now()))
            .await
        {
            out.push(m);
        }
        out
    }
}

/// Path of the built `sdq` binary.
pub fn sdq_bin() -> &'static str {
    env!("CARGO_BIN_EXE_sdq")
}

/// Runs `sdq` to completion, asserting success; returns stdout.
pub fn run_sdq(args: &[&str]) -> String {
    let out = Command::new(sdq_bin())
        .args(args)
        .output()
        .expect("run sdq");
    assert!(
        out.status.success(),
        "sdq {args:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A child process of the real `sdq` binary; killed on drop.
pub struct ServeProcess {
    pub child: Child,
    /// The API's base URL (`None` for `sdq worker`).
    pub base: String,
}

impl ServeProcess {
    /// `sdq serve` on the tiny model with its own data dir.
    pub fn spawn(data: &Path, extra: &[&str]) -> Self {
        Self::spawn_role(
            "serve",
            &["--data-dir", data.to_str().unwrap(), "--model", "tiny"],
            extra,
            &[],
        )
    }

    /// `sdq GLOBAL... ROLE ROLE_ARGS...` with extra environment; `api` and `serve` get a free port.
    pub fn spawn_role(
        role: &str,
        global: &[&str],
        role_args: &[&str],
        env: &[(String, String)],
    ) -> Self {
        let port = free_port();
        let mut args: Vec<String> = global.iter().map(|s| s.to_string()).collect();
        args.push(role.into());
        if role != "worker" {
            args.extend(["--bind".to_string(), format!("127.0.0.1:{port}")]);
        }
        args.extend(role_args.iter().map(|s| s.to_string()));
        let log = std::env::var("SDQ_TEST_LOG").is_ok();
        let child = Command::new(sdq_bin())
            .args(&args)
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(if log { Stdio::inherit() } else { Stdio::null() })
            .stderr(if log { Stdio::inherit() } else { Stdio::null() })
            .spawn()
            .expect("spawn sdq");
        Self {
            child,
            base: format!("http://127.0.0.1:{port}"),
        }
    }

    /// Waits until `/health` answers.
    pub async fn wait_healthy(&self, client: &reqwest::Client) {
        let start = Instant::now();
        loop {
            if let Ok(r) = client.get(format!("{}/health", self.base)).send().await {
                if r.status().is_success() {
                    return;
                }
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "sdq did not start"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends SIGTERM (a graceful stop) and waits for the process to exit.
    pub fn terminate(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let start = Instant::now();
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status;
            }
            assert!(
                start.elapsed() < timeout,
                "sdq did not exit within {timeout:?} of SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A port nothing listens on now and that no other test in this process has been handed.
/// The kernel may give a port it just released to the next `bind(0)`, and the child that
/// is meant to take a port binds it only later (moto needs a second to start), so two
/// tests running side by side could otherwise be handed the same one: the second child
/// then fails to bind while the first one's listener answers for it, until the first test
/// stops its server.
pub fn free_port() -> u16 {
    static HANDED_OUT: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut handed_out = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        if !handed_out.contains(&port) {
            handed_out.push(port);
            return port;
        }
    }
}

/// Decodes a PNG, returning `(width, height, text chunks)`.
pub fn decode_png(bytes: &[u8]) -> (u32, u32, Vec<(String, String)>) {
    let decoder = png::Decoder::new(std::io::Cursor::new(bytes));
    let mut reader = decoder.read_info().expect("valid png");
    let mut buf = vec![0; reader.output_buffer_size().expect("size")];
    let info = reader.next_frame(&mut buf).expect("frame");
    let chunks = sdq::storage::png::read_text_chunks(bytes).expect("chunks");
    (info.width, info.height, chunks)
}

/// A key made by `sdq keys create`.
#[derive(Debug, Clone)]
pub struct TestKey {
    pub id: String,
    pub token: String,
    pub webhook_secret: String,
}

/// Runs `sdq GLOBAL... keys create NAME EXTRA...` and reads the key it printed.
pub fn create_key(global: &[&str], name: &str, extra: &[&str]) -> TestKey {
    let mut args: Vec<&str> = global.to_vec();
    args.extend(["keys", "create", name]);
    args.extend(extra);
    let out = run_sdq(&args);
    let field = |name: &str| {
        out.lines()
            .find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_string()))
            .unwrap_or_else(|| panic!("no {name} in `sdq keys create` output:\n{out}"))
    };
    TestKey {
        id: field("id "),
        token: field("token "),
        webhook_secret: field("webhook_secret "),
    }
}

/// Requests with an optional `Authorization: Bearer` key.
pub struct As<'a> {
    pub client: &'a reqwest::Client,
    pub base: &'a str,
    pub token: Option<&'a str>,
}

impl As<'_> {
    pub fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let req = self.client.request(method, format!("{}{path}", self.base));
        match self.token {
            Some(t) => req.bearer_auth(t),
            None => req,
        }
    }

    pub async fn get_json(&self, path: &str) -> (u16, Value) {
        let resp = self
            .request(reqwest::Method::GET, path)
            .send()
            .await
            .expect("request");
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    pub async fn post_json(&self, path: &str, body: &Value) -> (u16, Value) {
        let resp = self
            .request(reqwest::Method::POST, path)
            .json(body)
            .send()
            .await
            .expect("request");
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    pub async fn delete(&self, path: &str) -> u16 {
        self.request(reqwest::Method::DELETE, path)
            .send()
            .await
            .expect("request")
            .status()
            .as_u16()
    }

    /// Submits and waits until the job ends; returns the job.
    pub async fn run_job(&self, body: Value) -> Value {
        let (status, created) = self.post_json("/v1/jobs", &body).await;
        assert_eq!(status, 202, "{created}");
        let id = created["id"].as_str().expect("id").to_string();
        let start = Instant::now();
        loop {
            let (status, job) = self.get_json(&format!("/v1/jobs/{id}")).await;
            assert_eq!(status, 200, "{job}");
            if ["succeeded", "failed", "canceled"].contains(&job["status"].as_str().unwrap_or("")) {
                return job;
            }
            assert!(
                start.elapsed() < Duration::from_secs(120),
                "job {id} did not end: {job}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Server {
    /// Requests as `token` (or as nobody).
    pub fn with<'a>(&'a self, token: Option<&'a str>) -> As<'a> {
        As {
            client: &self.client,
            base: &self.base,
            token,
        }
    }
}
