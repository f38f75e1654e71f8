//! The embedded SQLite database under the things that happen to a machine: processes
//! started together on a fresh data dir, `kill -9` in the middle of a burst, a full disk,
//! and a backup taken while sdq runs.

mod common;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{small_job, ServeProcess};
use serde_json::Value;

async fn submit(client: &reqwest::Client, base: &str, body: &Value) -> (u16, Value) {
    let resp = client
        .post(format!("{base}/v1/jobs"))
        .json(body)
        .send()
        .await
        .expect("submit");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

async fn wait_terminal(client: &reqwest::Client, base: &str, id: &str, timeout: Duration) -> Value {
    let start = Instant::now();
    loop {
        if let Ok(resp) = client.get(format!("{base}/v1/jobs/{id}")).send().await {
            if let Ok(job) = resp.json::<Value>().await {
                if ["succeeded", "failed", "canceled"]
                    .contains(&job["status"].as_str().unwrap_or(""))
                {
                    return job;
                }
            }
        }
        assert!(
            start.elapsed() < timeout,
            "job {id} not finished within {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A read-only view of a database file, for checks from outside the server.
async fn open_db(path: &Path) -> sqlx::SqlitePool {
    sqlx::SqlitePool::connect(&format!("sqlite://{}?mode=ro", path.display()))
        .await
        .expect("open database")
}

/// `PRAGMA integrity_check` on a file no server has open.
async fn integrity(path: &Path) -> Vec<String> {
    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", path.display()))
        .await
        .unwrap();
    let report = sqlx::query_scalar("PRAGMA integrity_check")
        .fetch_all(&pool)
        .await
        .unwrap();
    pool.close().await;
    report
}

async fn job_ids(pool: &sqlx::SqlitePool) -> HashSet<String> {
    sqlx::query_scalar("SELECT id FROM jobs")
        .fetch_all(pool)
        .await
        .unwrap()
        .into_iter()
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processes_started_together_on_a_fresh_data_dir_all_work() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    // Two servers and two `sdq migrate` at the same moment, on a data dir with no
    // database yet.
    let servers: Vec<ServeProcess> = (0..2)
        .map(|_| ServeProcess::spawn(dir.path(), &["--poll-secs", "0.5"]))
        .collect();
    let migrates: Vec<_> = (0..2)
        .map(|_| {
            Command::new(common::sdq_bin())
                .args(["--data-dir", data, "migrate"])
                .output()
        })
        .collect();
    for out in migrates {
        let out = out.unwrap();
        assert!(
            out.status.success(),
            "sdq migrate failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let client = reqwest::Client::new();
    for s in &servers {
        s.wait_healthy(&client).await;
    }
    let mut ids = Vec::new();
    for i in 0..20 {
        let base = &servers[i % 2].base;
        let body = serde_json::json!({"prompt": format!("together {i}"), "width": 64,
            "height": 64, "steps": 1, "guidance_scale": 1.0, "seed": i});
        let (status, body) = submit(&client, base, &body).await;
        assert_eq!(status, 202, "{body}");
        ids.push(body["id"].as_str().unwrap().to_string());
    }
    let mut ran_on = HashSet::new();
    for id in &ids {
        let job = wait_terminal(&client, &servers[0].base, id, Duration::from_secs(300)).await;
        assert_eq!(job["status"], "succeeded", "{job}");
        assert_eq!(job["attempts"], 1, "ran once: {job}");
        ran_on.insert(job["worker"].as_str().map(str::to_string));
    }
    println!("ran on {} worker(s) across both servers", ran_on.len());
    let pool = open_db(&dir.path().join("sdq.db")).await;
    let succeeded: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM job_events WHERE json_extract(body, '$.type') = 'succeeded'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(succeeded, 20, "each job completed exactly once");
    let migrations: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM _sqlx_migrations")
        .fetch_one(&pool)
        .await
        .unwrap();
    let files = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations/sqlite"))
        .unwrap()
        .count();
    assert_eq!(migrations as usize, files, "each migration applied once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_a_burst_loses_no_acknowledged_job() {
    let dir = tempfile::tempdir().unwrap();
    let client = reqwest::Client::new();
    let args = ["--lease-secs", "2", "--rescue-secs", "0.5"];
    let mut serve = ServeProcess::spawn(dir.path(), &args);
    serve.wait_healthy(&client).await;

    // Ten clients submit as fast as they can; the server dies under them.
    let acked = Arc::new(Mutex::new(Vec::<String>::new()));
    let mut clients = Vec::new();
    for c in 0..10 {
        let client = client.clone();
        let base = serve.base.clone();
        let acked = acked.clone();
        clients.push(tokio::spawn(async move {
            for i in 0.. {
                let body = serde_json::json!({"prompt": format!("c{c} j{i}"), "width": 64,
                    "height": 64, "steps": 1, "guidance_scale": 1.0, "seed": i});
                match client
                    .post(format!("{base}/v1/jobs"))
                    .json(&body)
                    .send()
                    .await
                {
                    Ok(resp) if resp.status() == 202 => {
                        let v: Value = resp.json().await.unwrap();
                        acked
                            .lock()
                            .unwrap()
                            .push(v["id"].as_str().unwrap().to_string());
                    }
                    Ok(resp) => panic!("unexpected {}", resp.status()),
                    // The server is gone: an unacknowledged submission may or may not exist.
                    Err(_) => return,
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    serve.kill9();
    for c in clients {
        c.await.unwrap();
    }
    let acked: Vec<String> = acked.lock().unwrap().clone();
    assert!(
        acked.len() > 20,
        "the burst was under way ({} acked)",
        acked.len()
    );

    let db = dir.path().join("sdq.db");
    assert_eq!(integrity(&db).await, vec!["ok".to_string()]);
    let stored = job_ids(&open_db(&db).await).await;
    let missing: Vec<_> = acked.iter().filter(|id| !stored.contains(*id)).collect();
    assert!(missing.is_empty(), "acknowledged but lost: {missing:?}");
    println!(
        "kill -9 after {} acknowledged submissions: all present, {} rows in total, integrity ok",
        acked.len(),
        stored.len()
    );

    // Restarted, it finishes every job, including the one that was running.
    let serve = ServeProcess::spawn(dir.path(), &[&args[..], &["--workers", "2"]].concat());
    serve.wait_healthy(&client).await;
    for id in &stored {
        let job = wait_terminal(&client, &serve.base, id, Duration::from_secs(300)).await;
        assert_eq!(job["status"], "succeeded", "{job}");
    }
}

/// A small tmpfs mounted for one test, unmounted when dropped.
struct Tmpfs {
    path: PathBuf,
    _dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "this test mounts a small tmpfs as the data dir and needs root (CAP_SYS_ADMIN): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Self {
            path: dir.path().to_path_buf(),
            _dir: dir,
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

/// Writes a file until the filesystem has no space left.
fn fill(path: &Path) -> u64 {
    use std::io::Write;
    let mut file = std::fs::File::create(path).unwrap();
    let chunk = vec![0u8; 64 * 1024];
    let mut written = 0u64;
    loop {
        match file.write(&chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => written += n as u64,
        }
    }
    // The last partial pages too.
    while file.write(&[0u8; 512]).map(|n| n > 0).unwrap_or(false) {
        written += 512;
    }
    let _ = file.sync_all();
    written
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_submissions_with_507_and_recovers() {
    let disk = Tmpfs::mount("32m");
    let client = reqwest::Client::new();
    let args = [
        "--lease-secs",
        "3",
        "--rescue-secs",
        "1",
        "--max-attempts",
        "10",
        "--retry-base-secs",
        "0.5",
        "--poll-secs",
        "0.5",
    ];
    let serve = ServeProcess::spawn(&disk.path, &args);
    serve.wait_healthy(&client).await;
    let mut acked = Vec::new();
    for i in 0..3 {
        let (status, body) = submit(&client, &serve.base, &small_job(&format!("before {i}"))).await;
        assert_eq!(status, 202, "{body}");
        let id = body["id"].as_str().unwrap().to_string();
        let job = wait_terminal(&client, &serve.base, &id, Duration::from_secs(120)).await;
        assert_eq!(job["status"], "succeeded", "{job}");
        acked.push(id);
    }

    let filler = disk.path.join("filler");
    let filled = fill(&filler);
    // SQLite may still fit a few rows in pages it already has; soon every write needs a
    // new page and fails. Every answer is 202 or 507, never a 500.
    let mut refused = None;
    for i in 0..500 {
        let (status, body) = submit(&client, &serve.base, &small_job(&format!("full {i}"))).await;
        match status {
            202 => acked.push(body["id"].as_str().unwrap().to_string()),
            507 => {
                refused = Some(body);
                break;
            }
            other => panic!("a full disk answered {other}: {body}"),
        }
    }
    let refused = refused.expect("a full disk never refused a submission");
    assert_eq!(
        refused["error"]["code"], "insufficient_storage",
        "{refused}"
    );
    let message = refused["error"]["message"].as_str().unwrap();
    assert!(message.contains("disk is full"), "{message}");
    println!("full disk ({filled} bytes of filler): 507 {message}");
    let health = client
        .get(format!("{}/health", serve.base))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200, "the server keeps answering");

    // Space returns: submissions are accepted again and every acknowledged job finishes.
    std::fs::remove_file(&filler).unwrap();
    let (status, body) = submit(&client, &serve.base, &small_job("after")).await;
    assert_eq!(status, 202, "{body}");
    acked.push(body["id"].as_str().unwrap().to_string());
    for id in &acked {
        let job = wait_terminal(&client, &serve.base, id, Duration::from_secs(300)).await;
        assert_eq!(job["status"], "succeeded", "{job}");
    }
    drop(serve);
    assert_eq!(
        integrity(&disk.path.join("sdq.db")).await,
        vec!["ok".to_string()]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_while_serving_is_a_consistent_copy() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap().to_string();
    let client = reqwest::Client::new();
    let serve = ServeProcess::spawn(dir.path(), &[]);
    serve.wait_healthy(&client).await;

    // Submissions keep coming while the backup runs.
    let acked = Arc::new(Mutex::new(Vec::<String>::new()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let (client, base, acked, stop) = (
            client.clone(),
            serve.base.clone(),
            acked.clone(),
            stop.clone(),
        );
        tokio::spawn(async move {
            let mut i = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let (status, body) = submit(&client, &base, &small_job(&format!("b{i}"))).await;
                assert_eq!(status, 202, "{body}");
                acked
                    .lock()
                    .unwrap()
                    .push(body["id"].as_str().unwrap().to_string());
                i += 1;
            }
        })
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before: Vec<String> = acked.lock().unwrap().clone();
    let copy = dir.path().join("backup.db");
    let out = Command::new(common::sdq_bin())
        .args(["--data-dir", &data, "backup"])
        .arg(&copy)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    load.await.unwrap();

    assert_eq!(integrity(&copy).await, vec!["ok".to_string()]);
    let saved = job_ids(&open_db(&copy).await).await;
    for id in &before {
        assert!(
            saved.contains(id),
            "acknowledged before the backup but not in it: {id}"
        );
    }
    println!(
        "backup during load: {} jobs acknowledged before it, {} in the copy",
        before.len(),
        saved.len()
    );
    // A second backup to the same file is refused rather than overwriting it.
    let out = Command::new(common::sdq_bin())
        .args(["--data-dir", &data, "backup"])
        .arg(&copy)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("already exists"));
}
