//! A burst of submissions loses nothing: 50 concurrent clients submit against one
//! `sdq api` and 4 `sdq worker` processes (PostgreSQL, Redis, S3), and against one
//! embedded `sdq serve` (SQLite, local files). Every job reaches exactly one terminal
//! state, every success has its image (in the bucket, and nothing else is there), and no
//! job completes twice. Prints submit latency percentiles and throughput.
//!
//! CI runs a small burst; the full size is one command away:
//! `SDQ_BURST_JOBS=10000 SDQ_BURST_SQLITE_JOBS=1000 cargo test --release --test burst -- --nocapture`

mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::services::{PgDatabase, RedisServer, S3Server};
use common::ServeProcess;
use serde_json::json;
use sqlx::Row;

const CLIENTS: usize = 50;

fn count_from_env(var: &str, default: usize) -> usize {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// What a burst of submissions measured.
struct Submitted {
    ids: Vec<String>,
    latencies: Vec<Duration>,
    elapsed: Duration,
}

/// `jobs` submissions from `CLIENTS` concurrent clients; every one must be accepted.
async fn submit_burst(base: &str, jobs: usize) -> Submitted {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(CLIENTS)
        .build()
        .unwrap();
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..CLIENTS {
        let client = client.clone();
        let next = next.clone();
        let url = format!("{base}/v1/jobs");
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::new();
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= jobs {
                    return out;
                }
                let body = json!({"prompt": format!("burst {i}"), "width": 64, "height": 64,
                                  "steps": 1, "guidance_scale": 1.0, "seed": i});
                let t = Instant::now();
                let resp = client.post(&url).json(&body).send().await.expect("submit");
                let latency = t.elapsed();
                let status = resp.status();
                let body: serde_json::Value = resp.json().await.unwrap_or_default();
                assert_eq!(status, 202, "submission {i} not accepted: {body}");
                out.push((body["id"].as_str().unwrap().to_string(), latency));
            }
        }));
    }
    let mut ids = Vec::with_capacity(jobs);
    let mut latencies = Vec::with_capacity(jobs);
    for task in tasks {
        for (id, latency) in task.await.unwrap() {
            ids.push(id);
            latencies.push(latency);
        }
    }
    Submitted {
        ids,
        latencies,
        elapsed: start.elapsed(),
    }
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1000.0
}

fn report(what: &str, submitted: &mut Submitted, end_to_end: Duration) {
    submitted.latencies.sort();
    let l = &submitted.latencies;
    let n = l.len() as f64;
    println!(
        "{what}: {} jobs from {CLIENTS} clients; submit latency p50 {:.1} ms, p90 {:.1} ms, \
         p99 {:.1} ms, max {:.1} ms; submissions {:.0}/s; end to end {:.1} jobs/s ({:.1} s)",
        l.len(),
        percentile(l, 0.5),
        percentile(l, 0.9),
        percentile(l, 0.99),
        percentile(l, 1.0),
        n / submitted.elapsed.as_secs_f64(),
        n / end_to_end.as_secs_f64(),
        end_to_end.as_secs_f64(),
    );
}

/// The checks both forms share, as SQL that reads the same on SQLite and PostgreSQL
/// (`type_of` extracts an event's type).
struct Checks {
    statuses: &'static str,
    bad_terminal: String,
    bad_images: &'static str,
    keys: &'static str,
}

fn checks(type_of: &str) -> Checks {
    Checks {
        statuses: "SELECT status, COUNT(*) AS n FROM jobs GROUP BY status ORDER BY status",
        // Jobs without exactly one terminal event, or more than one image event.
        bad_terminal: format!(
            "SELECT COUNT(*) FROM jobs j WHERE \
               (SELECT COUNT(*) FROM job_events e WHERE e.job_id = j.id \
                 AND {type_of} IN ('succeeded', 'failed', 'canceled')) <> 1 \
               OR (SELECT COUNT(*) FROM job_events e WHERE e.job_id = j.id AND {type_of} = 'image') > 1"
        ),
        bad_images: "SELECT COUNT(*) FROM jobs j WHERE j.status = 'succeeded' AND \
                     (SELECT COUNT(*) FROM images i WHERE i.job_id = j.id) <> 1",
        keys: "SELECT object_key FROM images",
    }
}

async fn wait_all_terminal<F, Fut>(count_terminal: F, jobs: usize, timeout: Duration)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = i64>,
{
    let start = Instant::now();
    loop {
        let done = count_terminal().await as usize;
        if done == jobs {
            return;
        }
        assert!(
            start.elapsed() < timeout,
            "only {done} of {jobs} jobs finished within {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Image keys with the thumbnail stored beside each.
fn with_thumbnails(keys: Vec<String>) -> HashSet<String> {
    keys.into_iter()
        .flat_map(|k| {
            let thumb = format!("{}.thumb.jpg", k.trim_end_matches(".png"));
            [k, thumb]
        })
        .collect()
}

const TERMINAL_COUNT: &str =
    "SELECT COUNT(*) FROM jobs WHERE status IN ('succeeded', 'failed', 'canceled')";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn burst_on_postgres_redis_s3_loses_nothing() {
    let jobs = count_from_env("SDQ_BURST_JOBS", 300);
    let db = PgDatabase::create().await;
    let redis = RedisServer::start();
    let s3 = S3Server::start();
    let bucket = s3.bucket().await;
    let dir = tempfile::tempdir().unwrap();
    let global = [
        "--data-dir",
        dir.path().to_str().unwrap(),
        "--model",
        "tiny",
        "--database-url",
        &db.url,
        "--redis-url",
        &redis.url(),
        "--object-store",
        &format!("s3://{bucket}"),
    ];
    let client = reqwest::Client::new();
    let api = ServeProcess::spawn_role("api", &global, &[], &s3.env());
    api.wait_healthy(&client).await;
    let workers: Vec<_> = (0..4)
        .map(|_| ServeProcess::spawn_role("worker", &global, &[], &s3.env()))
        .collect();

    let mut submitted = submit_burst(&api.base, jobs).await;
    let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
    wait_all_terminal(
        || async {
            sqlx::query_scalar::<_, i64>(TERMINAL_COUNT)
                .fetch_one(&pool)
                .await
                .unwrap()
        },
        jobs,
        Duration::from_secs(300 + 2 * jobs as u64),
    )
    .await;
    let span: i64 = sqlx::query_scalar("SELECT MAX(finished_at) - MIN(created_at) FROM jobs")
        .fetch_one(&pool)
        .await
        .unwrap();
    report(
        "PostgreSQL + Redis + S3, 1 api + 4 workers",
        &mut submitted,
        Duration::from_millis(span as u64),
    );

    let c = checks("e.body->>'type'");
    verify_pg(&pool, &c, &submitted.ids).await;
    let rows: HashSet<String> =
        with_thumbnails(sqlx::query_scalar(c.keys).fetch_all(&pool).await.unwrap());
    let objects: HashSet<String> = s3.keys(&bucket, "").await.into_iter().collect();
    assert_eq!(rows.len(), 2 * jobs);
    assert_eq!(
        objects, rows,
        "every object has its row and every row its object"
    );
    drop(workers);
}

async fn verify_pg(pool: &sqlx::PgPool, c: &Checks, ids: &[String]) {
    let statuses: Vec<(String, i64)> = sqlx::query(c.statuses)
        .fetch_all(pool)
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get("status"), r.get("n")))
        .collect();
    assert_eq!(statuses, vec![("succeeded".to_string(), ids.len() as i64)]);
    let distinct: HashSet<&String> = ids.iter().collect();
    assert_eq!(distinct.len(), ids.len(), "every submission is its own job");
    let bad: i64 = sqlx::query_scalar(&c.bad_terminal)
        .fetch_one(pool)
        .await
        .unwrap();
    assert_eq!(bad, 0, "jobs without exactly one terminal event");
    let bad: i64 = sqlx::query_scalar(c.bad_images)
        .fetch_one(pool)
        .await
        .unwrap();
    assert_eq!(bad, 0, "succeeded jobs without exactly one image row");
    let max_attempt: i32 = sqlx::query_scalar("SELECT MAX(attempt) FROM jobs")
        .fetch_one(pool)
        .await
        .unwrap();
    println!("  highest attempt: {max_attempt}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn burst_on_embedded_sqlite_loses_nothing() {
    let jobs = count_from_env("SDQ_BURST_SQLITE_JOBS", 150);
    let dir = tempfile::tempdir().unwrap();
    let client = reqwest::Client::new();
    let serve = ServeProcess::spawn(dir.path(), &["--workers", "2"]);
    serve.wait_healthy(&client).await;

    let mut submitted = submit_burst(&serve.base, jobs).await;
    let url = format!("sqlite://{}?mode=ro", dir.path().join("sdq.db").display());
    let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
    wait_all_terminal(
        || async {
            sqlx::query_scalar::<_, i64>(TERMINAL_COUNT)
                .fetch_one(&pool)
                .await
                .unwrap()
        },
        jobs,
        Duration::from_secs(300 + 2 * jobs as u64),
    )
    .await;
    let span: i64 = sqlx::query_scalar("SELECT MAX(finished_at) - MIN(created_at) FROM jobs")
        .fetch_one(&pool)
        .await
        .unwrap();
    report(
        "embedded SQLite, 1 serve with 2 workers",
        &mut submitted,
        Duration::from_millis(span as u64),
    );

    let c = checks("json_extract(e.body, '$.type')");
    let statuses: Vec<(String, i64)> = sqlx::query(c.statuses)
        .fetch_all(&pool)
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get("status"), r.get("n")))
        .collect();
    assert_eq!(statuses, vec![("succeeded".to_string(), jobs as i64)]);
    let bad: i64 = sqlx::query_scalar(&c.bad_terminal)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(bad, 0, "jobs without exactly one terminal event");
    let bad: i64 = sqlx::query_scalar(c.bad_images)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(bad, 0, "succeeded jobs without exactly one image row");
    let rows: HashSet<String> =
        with_thumbnails(sqlx::query_scalar(c.keys).fetch_all(&pool).await.unwrap());
    let mut files = HashSet::new();
    let images = dir.path().join("images");
    for job in std::fs::read_dir(&images).unwrap() {
        let job = job.unwrap();
        for file in std::fs::read_dir(job.path()).unwrap() {
            files.insert(format!(
                "{}/{}",
                job.file_name().to_string_lossy(),
                file.unwrap().file_name().to_string_lossy()
            ));
        }
    }
    assert_eq!(files, rows, "every file has its row and every row its file");
}
