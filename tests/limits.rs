//! Limits per key hold across API processes, and idempotency keys return the first job:
//! two `sdq api` processes of the real binary share one PostgreSQL database, and requests
//! alternate between them.

mod common;

use std::time::{Duration, Instant};

use common::services::PgDatabase;
use common::{create_key, small_job, ServeProcess, Server};
use futures::future::join_all;
use serde_json::{json, Value};

struct TwoApis {
    _db: PgDatabase,
    _dir: tempfile::TempDir,
    global: Vec<String>,
    apis: Vec<ServeProcess>,
    client: reqwest::Client,
}

impl TwoApis {
    async fn start() -> Self {
        let db = PgDatabase::create().await;
        let dir = tempfile::tempdir().unwrap();
        let global = vec![
            "--data-dir".to_string(),
            dir.path().display().to_string(),
            "--model".into(),
            "tiny".into(),
            "--database-url".into(),
            db.url.clone(),
        ];
        let g: Vec<&str> = global.iter().map(String::as_str).collect();
        // Keys first: the processes need one to start with auth required.
        create_key(&g, "bootstrap", &["--admin"]);
        let client = reqwest::Client::new();
        let mut apis = Vec::new();
        for _ in 0..2 {
            // No worker runs: submitted jobs stay queued, so quotas fill up.
            let api = ServeProcess::spawn_role("api", &g, &["--auth", "required"], &[]);
            api.wait_healthy(&client).await;
            apis.push(api);
        }
        Self {
            _db: db,
            _dir: dir,
            global,
            apis,
            client,
        }
    }

    fn key(&self, name: &str, extra: &[&str]) -> String {
        let g: Vec<&str> = self.global.iter().map(String::as_str).collect();
        create_key(&g, name, extra).token
    }

    /// POSTs a job to API `i % 2`.
    async fn submit(
        &self,
        i: usize,
        token: &str,
        body: &Value,
        idem: Option<&str>,
    ) -> reqwest::Response {
        let mut req = self
            .client
            .post(format!("{}/v1/jobs", self.apis[i % 2].base))
            .bearer_auth(token)
            .json(body);
        if let Some(key) = idem {
            req = req.header("idempotency-key", key);
        }
        req.send().await.unwrap()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quotas_and_rates_hold_across_two_api_processes() {
    let cluster = TwoApis::start().await;

    // At most five queued + running jobs, whichever process takes the request.
    let token = cluster.key("queue-limited", &["--max-queued", "5"]);
    let body = small_job("q");
    let responses = join_all((0..12).map(|i| cluster.submit(i, &token, &body, None))).await;
    let mut accepted = 0;
    for resp in responses {
        match resp.status().as_u16() {
            202 => accepted += 1,
            429 => {
                let retry: u64 = resp.headers()["retry-after"]
                    .to_str()
                    .unwrap()
                    .parse()
                    .unwrap();
                assert!(retry >= 1);
                let body: Value = resp.json().await.unwrap();
                assert_eq!(body["error"]["code"], "too_many_jobs", "{body}");
            }
            other => panic!("unexpected {other}: {}", resp.text().await.unwrap()),
        }
    }
    assert_eq!(accepted, 5);
    // Canceling one frees a place.
    let (_, jobs) = common::As {
        client: &cluster.client,
        base: &cluster.apis[0].base,
        token: Some(&token),
    }
    .get_json("/v1/jobs?status=queued")
    .await;
    let first = jobs["jobs"][0]["id"].as_str().unwrap().to_string();
    let resp = cluster
        .client
        .post(format!("{}/v1/jobs/{first}/cancel", cluster.apis[1].base))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        cluster
            .submit(0, &token, &small_job("q"), None)
            .await
            .status(),
        202
    );
    assert_eq!(
        cluster
            .submit(1, &token, &small_job("q"), None)
            .await
            .status(),
        429
    );

    // Twenty requests a minute, counted together by both processes.
    let token = cluster.key("rate-limited", &["--rate-per-min", "20"]);
    let mut statuses = Vec::new();
    for i in 0..30 {
        let resp = cluster
            .client
            .get(format!("{}/v1/jobs", cluster.apis[i % 2].base))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        if status == 429 {
            let retry: u64 = resp.headers()["retry-after"]
                .to_str()
                .unwrap()
                .parse()
                .unwrap();
            assert!((1..=4).contains(&retry), "{retry}");
            let body: Value = resp.json().await.unwrap();
            assert_eq!(body["error"]["code"], "rate_limited");
        }
        statuses.push(status);
    }
    let ok = statuses.iter().filter(|s| **s == 200).count();
    // The bucket refills one token every 3 s: the run may earn one or two more.
    assert!((20..=22).contains(&ok), "{ok} of 30 passed: {statuses:?}");
    assert!(statuses[..20].iter().all(|s| *s == 200), "{statuses:?}");

    // Priority above the bound needs an admin.
    let user = cluster.key("user", &[]);
    let admin = cluster.key("admin", &["--admin"]);
    let urgent = json!({"prompt": "now", "width": 64, "height": 64, "steps": 2, "priority": 50});
    let resp = cluster.submit(0, &user, &urgent, None).await;
    assert_eq!(resp.status(), 403);
    assert_eq!(cluster.submit(1, &admin, &urgent, None).await.status(), 202);
    let ordinary = json!({"prompt": "later", "width": 64, "height": 64, "steps": 2, "priority": 5});
    assert_eq!(
        cluster.submit(0, &user, &ordinary, None).await.status(),
        202
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_keys_return_the_same_job_even_when_racing() {
    let cluster = TwoApis::start().await;
    let token = cluster.key("idem", &[]);
    let body = small_job("once");
    let responses =
        join_all((0..10).map(|i| cluster.submit(i, &token, &body, Some("order-17")))).await;
    let mut ids = Vec::new();
    let mut created = 0;
    for resp in responses {
        let status = resp.status().as_u16();
        assert!(status == 202 || status == 200, "{status}");
        created += (status == 202) as usize;
        let v: Value = resp.json().await.unwrap();
        ids.push(v["id"].as_str().unwrap().to_string());
    }
    assert_eq!(created, 1, "exactly one request made the job");
    ids.dedup();
    assert_eq!(ids.len(), 1, "{ids:?}");
    // A different body under the same key is a conflict; another key is another job.
    let resp = cluster
        .submit(0, &token, &small_job("twice"), Some("order-17"))
        .await;
    assert_eq!(resp.status(), 409);
    let resp = cluster.submit(1, &token, &body, Some("order-18")).await;
    assert_eq!(resp.status(), 202);
    let v: Value = resp.json().await.unwrap();
    assert_ne!(v["id"], ids[0]);
    // The key belongs to its owner: another key's same header makes its own job.
    let other = cluster.key("other", &[]);
    let resp = cluster.submit(0, &other, &body, Some("order-17")).await;
    assert_eq!(resp.status(), 202);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotent_multipart_and_json_agree_on_the_embedded_form() {
    let mut server = Server::start(&[]).await;
    let start = Instant::now();
    let send = |idem: &str| {
        server
            .client
            .post(server.url("/v1/jobs"))
            .header("idempotency-key", idem)
            .json(&small_job("same"))
            .send()
    };
    let a = send("k").await.unwrap();
    assert_eq!(a.status(), 202);
    let b = send("k").await.unwrap();
    assert_eq!(b.status(), 200);
    let (a, b): (Value, Value) = (a.json().await.unwrap(), b.json().await.unwrap());
    assert_eq!(a["id"], b["id"]);
    // The same request as multipart form fields is the same body.
    let form = reqwest::multipart::Form::new()
        .text("prompt", "same")
        .text("width", "64")
        .text("height", "64")
        .text("steps", "4")
        .text("seed", "7");
    let c = server
        .client
        .post(server.url("/v1/jobs"))
        .header("idempotency-key", "k")
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(c.status(), 200, "{}", c.text().await.unwrap());
    let long = "x".repeat(300);
    let resp = send(&long).await.unwrap();
    assert_eq!(resp.status(), 422);
    let id = a["id"].as_str().unwrap();
    server.wait_terminal(id, Duration::from_secs(60)).await;
    assert!(start.elapsed() < Duration::from_secs(120));
    server.stop().await;
}
