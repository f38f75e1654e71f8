//! The object store failing under sdq: connection resets, stalls and `503 Slow Down`
//! between sdq and a real S3 server (moto), through a fault proxy written for these
//! tests. Transient faults are retried and the job succeeds; a store that stays down
//! fails the job after its attempts, with the error shown; and in every case the bucket
//! holds exactly the objects the image rows name. A crash between upload and commit
//! leaves an orphan that `sdq gc` reports and collects.

mod common;

use std::collections::HashSet;
use std::process::Command;
use std::time::{Duration, Instant};

use common::fault_proxy::{Fault, FaultProxy};
use common::services::S3Server;
use common::{small_job, ServeProcess, Server};

/// Every object in the bucket has its image row and every row its object.
async fn assert_bucket_matches_rows(server: &Server, s3: &S3Server, bucket: &str, ids: &[String]) {
    let mut rows = HashSet::new();
    for id in ids {
        let job = server.job(id).await;
        for image in job["images"].as_array().unwrap() {
            let image = image["id"].as_str().unwrap();
            rows.insert(format!("{id}/{image}.png"));
            rows.insert(format!("{id}/{image}.thumb.jpg"));
        }
    }
    let objects: HashSet<String> = s3.keys(bucket, "").await.into_iter().collect();
    assert_eq!(objects, rows, "bucket objects and image rows differ");
}

async fn start_behind_proxy(bucket: &str, proxy: &FaultProxy) -> Server {
    S3Server::set_process_credentials();
    let store = format!("s3://{bucket}");
    let endpoint = proxy.endpoint();
    Server::start(&[
        "--object-store",
        &store,
        "--s3-endpoint",
        &endpoint,
        // Each request gives up after 3 retries or 3 s; the job then retries as a whole.
        "--s3-retries",
        "3",
        "--s3-timeout-secs",
        "3",
        "--max-attempts",
        "3",
        "--retry-base-secs",
        "0.2",
    ])
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_faults_are_retried_and_the_job_succeeds() {
    let s3 = S3Server::start();
    let bucket = s3.bucket().await;
    let proxy = FaultProxy::start(s3.port).await;
    let server = start_behind_proxy(&bucket, &proxy).await;

    let faults = [
        ("2 connections reset", Fault::Reset, Some(2)),
        ("3 answers of 503 Slow Down", Fault::Unavailable, Some(3)),
        (
            "every connection stalled 1.5 s",
            Fault::Stall(Duration::from_millis(1500)),
            None,
        ),
        (
            "1 connection stalled past the request timeout",
            Fault::Stall(Duration::from_secs(8)),
            Some(1),
        ),
    ];
    let mut ids = Vec::new();
    for (what, fault, count) in faults {
        proxy.set(fault, count);
        let id = server.submit_ok(small_job(what)).await;
        let job = server.wait_terminal(&id, Duration::from_secs(180)).await;
        assert_eq!(job["status"], "succeeded", "{what}: {job}");
        assert!(proxy.faulted() >= 1, "{what}: the fault was never met");
        println!(
            "{what}: succeeded after {} attempt(s), upload {} ms",
            job["attempts"], job["timings"]["upload_ms"]
        );
        ids.push(id);
        assert_bucket_matches_rows(&server, &s3, &bucket, &ids).await;
    }
    proxy.set(Fault::Pass, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_stays_down_fails_the_job_with_the_error() {
    let s3 = S3Server::start();
    let bucket = s3.bucket().await;
    let proxy = FaultProxy::start(s3.port).await;
    let server = start_behind_proxy(&bucket, &proxy).await;

    let mut ids = Vec::new();
    for (what, fault) in [
        ("503 on every request", Fault::Unavailable),
        ("every connection reset", Fault::Reset),
    ] {
        proxy.set(fault, None);
        let id = server.submit_ok(small_job(what)).await;
        let job = server.wait_terminal(&id, Duration::from_secs(180)).await;
        assert_eq!(job["status"], "failed", "{what}: {job}");
        assert_eq!(job["attempts"], 3, "{what}: every attempt is used: {job}");
        let error = job["error"].as_str().unwrap();
        assert!(
            error.contains("storing image failed"),
            "{what}: the error says what failed: {error}"
        );
        println!("{what}: failed after 3 attempts: {error}");
        ids.push(id);
        assert_bucket_matches_rows(&server, &s3, &bucket, &ids).await;
    }

    // The store comes back: work resumes without a restart.
    proxy.set(Fault::Pass, None);
    let id = server.submit_ok(small_job("after the outage")).await;
    let job = server.wait_terminal(&id, Duration::from_secs(120)).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    ids.push(id);
    assert_bucket_matches_rows(&server, &s3, &bucket, &ids).await;
}

/// Runs `sdq gc` against the data dir and bucket; returns stdout.
fn sdq_gc(global: &[String], env: &[(String, String)], args: &[&str]) -> String {
    let out = Command::new(common::sdq_bin())
        .args(global)
        .arg("gc")
        .args(args)
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .output()
        .expect("run sdq gc");
    assert!(
        out.status.success(),
        "sdq gc failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    println!("sdq gc {args:?}:\n{stdout}");
    stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_between_upload_and_commit_leaves_an_orphan_that_gc_collects() {
    let s3 = S3Server::start();
    let bucket = s3.bucket().await;
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("paused");
    let global: Vec<String> = [
        "--data-dir",
        dir.path().to_str().unwrap(),
        "--model",
        "tiny",
        "--object-store",
        &format!("s3://{bucket}"),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let global_refs: Vec<&str> = global.iter().map(String::as_str).collect();
    let serve_args = ["--lease-secs", "2", "--rescue-secs", "0.5"];
    let client = reqwest::Client::new();

    // The worker uploads the image, then stops before the commit; it dies right there.
    let mut env = s3.env();
    env.push((
        "SDQ_TEST_PAUSE_BEFORE_COMMIT".into(),
        marker.display().to_string(),
    ));
    let mut serve = ServeProcess::spawn_role("serve", &global_refs, &serve_args, &env);
    serve.wait_healthy(&client).await;
    let resp = client
        .post(format!("{}/v1/jobs", serve.base))
        .json(&small_job("crash before commit"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    let id = resp.json::<serde_json::Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let start = Instant::now();
    while !marker.exists() {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "worker never paused"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    serve.kill9();
    let orphan = s3.keys(&bucket, "").await;
    assert_eq!(
        orphan.len(),
        2,
        "the image and its thumbnail landed: {orphan:?}"
    );
    assert!(orphan.iter().all(|k| k.starts_with(&format!("{id}/"))));

    // Restarted without the hook, the job is rescued and runs again: a second image.
    let serve = ServeProcess::spawn_role("serve", &global_refs, &serve_args, &s3.env());
    serve.wait_healthy(&client).await;
    let server_view = |id: String| {
        let client = client.clone();
        let base = serve.base.clone();
        async move {
            loop {
                let job: serde_json::Value = client
                    .get(format!("{base}/v1/jobs/{id}"))
                    .send()
                    .await
                    .unwrap()
                    .json()
                    .await
                    .unwrap();
                if job["status"] == "succeeded" || job["status"] == "failed" {
                    return job;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    let job = tokio::time::timeout(Duration::from_secs(120), server_view(id.clone()))
        .await
        .expect("job finished after the restart");
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(job["attempts"], 2, "{job}");
    let kept_id = job["images"][0]["id"].as_str().unwrap();
    let mut kept = vec![
        format!("{id}/{kept_id}.png"),
        format!("{id}/{kept_id}.thumb.jpg"),
    ];
    kept.sort();
    let both = s3.keys(&bucket, "").await;
    assert_eq!(both.len(), 4, "{both:?}");
    assert!(kept.iter().chain(&orphan).all(|k| both.contains(k)));

    // Young objects are left alone by default (an upload may be about to commit).
    let out = sdq_gc(&global, &s3.env(), &["--dry-run"]);
    assert!(out.contains("0 orphans"), "{out}");
    // With no grace, the dry run reports the orphan and deletes nothing.
    let out = sdq_gc(&global, &s3.env(), &["--dry-run", "--grace-secs", "0"]);
    assert!(out.contains(&format!("orphan {}", orphan[0])), "{out}");
    assert!(out.contains("2 orphans, would delete 2"), "{out}");
    assert_eq!(s3.keys(&bucket, "").await.len(), 4);
    let out = sdq_gc(&global, &s3.env(), &["--grace-secs", "0"]);
    assert!(out.contains("2 orphans, deleted 2"), "{out}");
    let mut left = s3.keys(&bucket, "").await;
    left.sort();
    assert_eq!(left, kept);
    // Nothing left to collect; the surviving image is still served.
    let out = sdq_gc(&global, &s3.env(), &["--grace-secs", "0"]);
    assert!(out.contains("0 orphans"), "{out}");
    let png = client
        .get(format!(
            "{}{}",
            serve.base,
            job["images"][0]["url"].as_str().unwrap()
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(png.status(), 200);
}
