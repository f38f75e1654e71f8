//! The distributed form for tests: a fresh PostgreSQL database, a private Redis, an S3
//! server and its bucket, and `sdq api` / `sdq worker` processes of the real binary on them.

use std::time::{Duration, Instant};

use serde_json::Value;

use super::services::{PgDatabase, RedisServer, S3Server};
use super::ServeProcess;

/// Everything a distributed test needs, started fresh.
pub struct Cluster {
    pub db: PgDatabase,
    pub redis: RedisServer,
    pub s3: S3Server,
    pub bucket: String,
    pub dir: tempfile::TempDir,
    /// The global flags every process of the cluster gets.
    pub global: Vec<String>,
    pub client: reqwest::Client,
}

impl Cluster {
    pub async fn start() -> Self {
        let db = PgDatabase::create().await;
        let redis = RedisServer::start();
        let s3 = S3Server::start();
        let bucket = s3.bucket().await;
        let dir = tempfile::tempdir().unwrap();
        let global = vec![
            "--data-dir".to_string(),
            dir.path().display().to_string(),
            "--model".into(),
            "tiny".into(),
            "--database-url".into(),
            db.url.clone(),
            "--redis-url".into(),
            redis.url(),
            "--object-store".into(),
            format!("s3://{bucket}"),
        ];
        Self {
            db,
            redis,
            s3,
            bucket,
            dir,
            global,
            client: reqwest::Client::new(),
        }
    }

    pub fn spawn(&self, role: &str, args: &[&str]) -> ServeProcess {
        let global: Vec<&str> = self.global.iter().map(String::as_str).collect();
        ServeProcess::spawn_role(role, &global, args, &self.s3.env())
    }

    pub async fn submit(&self, api: &ServeProcess, body: Value) -> String {
        let resp = self
            .client
            .post(format!("{}/v1/jobs", api.base))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 202);
        resp.json::<Value>().await.unwrap()["id"]
            .as_str()
            .unwrap()
            .to_string()
    }

    pub async fn job(&self, api: &ServeProcess, id: &str) -> Value {
        self.client
            .get(format!("{}/v1/jobs/{id}", api.base))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    pub async fn wait_terminal(&self, api: &ServeProcess, id: &str, timeout: Duration) -> Value {
        let start = Instant::now();
        loop {
            let job = self.job(api, id).await;
            if ["succeeded", "failed", "canceled"].contains(&job["status"].as_str().unwrap_or("")) {
                return job;
            }
            assert!(start.elapsed() < timeout, "job {id} not done: {job}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}
