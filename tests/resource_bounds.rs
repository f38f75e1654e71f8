//! Many clients that hold connections do not stop the server: 1,000 idle SSE streams and
//! 1,000 slowloris clients (request headers sent a line at a time, never finished) leave
//! `/health` answering and new jobs running; the header timeout closes the slow ones.
//! Prints the server's resident memory and open file descriptors before, during, after.

mod common;

use std::time::{Duration, Instant};

use common::{small_job, ServeProcess};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const SSE_CLIENTS: usize = 1000;
const SLOW_CLIENTS: usize = 1000;

/// `(resident KiB, open fds)` of a process.
fn usage(pid: u32) -> (u64, usize) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count();
    (rss, fds)
}

fn raise_fd_limit() {
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    unsafe {
        let mut l = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) == 0 {
            l.rlim_cur = l.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &l);
        }
    }
}

async fn connect(port: u16) -> TcpStream {
    for _ in 0..50 {
        if let Ok(s) = TcpStream::connect(("127.0.0.1", port)).await {
            return s;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("cannot connect to the server");
}

/// Opens an SSE stream and reads its response head; the client then never reads again.
async fn idle_sse(port: u16, job: &str) -> TcpStream {
    let mut s = connect(port).await;
    let req = format!(
        "GET /v1/jobs/{job}/events HTTP/1.1\r\nhost: 127.0.0.1\r\naccept: text/event-stream\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(
            s.read(&mut byte).await.unwrap(),
            1,
            "SSE stream closed early"
        );
        head.push(byte[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    s
}

/// Sends a request line and one header, then a header line every second, forever.
fn slowloris(port: u16) -> tokio::task::JoinHandle<bool> {
    tokio::spawn(async move {
        let mut s = connect(port).await;
        if s.write_all(b"GET /health HTTP/1.1\r\nhost: 127.0.0.1\r\n")
            .await
            .is_err()
        {
            return true;
        }
        let start = Instant::now();
        let mut buf = [0u8; 512];
        // Closed by the server: the read ends (EOF, a 408, or a reset).
        while start.elapsed() < Duration::from_secs(60) {
            tokio::select! {
                n = s.read(&mut buf) => {
                    return matches!(n, Ok(0) | Err(_)) || buf.starts_with(b"HTTP/1.1 408");
                }
                _ = tokio::time::sleep(Duration::from_secs(1)) => {
                    if s.write_all(b"x-slow: 1\r\n").await.is_err() {
                        return true;
                    }
                }
            }
        }
        false
    })
}

async fn health_ms(client: &reqwest::Client, base: &str) -> u128 {
    let t = Instant::now();
    let r = client
        .get(format!("{base}/health"))
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .expect("/health answers");
    assert_eq!(r.status(), 200);
    t.elapsed().as_millis()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_streams_and_slow_clients_do_not_stop_the_server() {
    raise_fd_limit();
    let dir = tempfile::tempdir().unwrap();
    let serve = ServeProcess::spawn(
        dir.path(),
        &[
            "--workers",
            "2",
            "--header-timeout-secs",
            "3",
            "--poll-secs",
            "0.5",
        ],
    );
    let client = reqwest::Client::new();
    serve.wait_healthy(&client).await;
    let pid = serve.child.id();
    let port: u16 = serve.base.rsplit(':').next().unwrap().parse().unwrap();
    let before = usage(pid);
    println!("before: RSS {} KiB, {} fds", before.0, before.1);

    // A long job keeps one worker busy and its stream open; the other worker is free.
    let resp = client
        .post(format!("{}/v1/jobs", serve.base))
        .json(&serde_json::json!({"prompt": "long", "width": 256, "height": 256, "steps": 150}))
        .send()
        .await
        .unwrap();
    let long: Value = resp.json().await.unwrap();
    let long = long["id"].as_str().unwrap().to_string();

    let mut streams = Vec::with_capacity(SSE_CLIENTS);
    for _ in 0..SSE_CLIENTS {
        streams.push(idle_sse(port, &long).await);
    }
    let slow: Vec<_> = (0..SLOW_CLIENTS).map(|_| slowloris(port)).collect();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let during = usage(pid);
    println!(
        "with {SSE_CLIENTS} idle SSE streams and {SLOW_CLIENTS} slowloris clients: RSS {} KiB, {} fds",
        during.0, during.1
    );
    assert!(during.1 >= before.1 + SSE_CLIENTS, "the streams are open");

    // The server answers and runs new work meanwhile.
    let ms = health_ms(&client, &serve.base).await;
    println!("/health in {ms} ms");
    let resp = client
        .post(format!("{}/v1/jobs", serve.base))
        .json(&small_job("while loaded"))
        .timeout(Duration::from_secs(30))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    let id = resp.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let start = Instant::now();
    loop {
        let job: Value = client
            .get(format!("{}/v1/jobs/{id}", serve.base))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if job["status"] == "succeeded" {
            break;
        }
        assert_ne!(job["status"], "failed", "{job}");
        assert!(
            start.elapsed() < Duration::from_secs(180),
            "new job not done: {job}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    println!("a new job finished in {} ms", start.elapsed().as_millis());

    // The header timeout closed every slow client.
    let mut closed = 0;
    for s in slow {
        if s.await.unwrap() {
            closed += 1;
        }
    }
    assert_eq!(closed, SLOW_CLIENTS, "slow clients the server closed");
    let after_slow = usage(pid);
    println!(
        "slow clients closed: RSS {} KiB, {} fds",
        after_slow.0, after_slow.1
    );

    // Dropping the idle streams releases their descriptors.
    drop(streams);
    let _ = client
        .post(format!("{}/v1/jobs/{long}/cancel", serve.base))
        .send()
        .await;
    let start = Instant::now();
    let after = loop {
        let now = usage(pid);
        if now.1 <= before.1 + 20 || start.elapsed() > Duration::from_secs(30) {
            break now;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    println!("after: RSS {} KiB, {} fds", after.0, after.1);
    assert!(
        after.1 <= before.1 + 20,
        "descriptors released: {before:?} → {after:?}"
    );
    health_ms(&client, &serve.base).await;
}
