//! `sdq bench queue|submit|sse|batch` at a tiny size, so the load benchmarks cannot rot. No
//! timing is asserted (speed is measured by `sdq bench`, never in tests): only that each
//! runs against real PostgreSQL / SQLite / an in-process server and prints sane rows.

mod common;

use common::{run_sdq, services};
use serde_json::Value;

/// The JSON lines of a bench report, after checking its table header.
fn rows(stdout: &str) -> Vec<Value> {
    assert!(stdout.starts_with("bench"), "no table:\n{stdout}");
    stdout
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).expect("a JSON row"))
        .collect()
}

fn extra(row: &Value, name: &str) -> f64 {
    row["extra"]
        .as_array()
        .and_then(|e| e.iter().find(|p| p[0] == name))
        .and_then(|p| p[1].as_f64())
        .unwrap_or_else(|| panic!("row has no {name}: {row}"))
}

#[test]
fn queue_bench_runs_on_sqlite_and_postgres_and_cleans_up() {
    let admin = services::admin_url();
    let before = databases(&admin);
    let out = run_sdq(&[
        "--database-url",
        &admin,
        "bench",
        "queue",
        "--jobs",
        "50",
        "--workers",
        "1,2",
        "--iterations",
        "1",
    ]);
    let rows = rows(&out);
    let cases: Vec<&str> = rows.iter().map(|r| r["case"].as_str().unwrap()).collect();
    assert_eq!(
        cases,
        [
            "sqlite, 1 workers, 50 jobs",
            "sqlite, 2 workers, 50 jobs",
            "postgres, 1 workers, 50 jobs",
            "postgres, 2 workers, 50 jobs"
        ]
    );
    for row in &rows {
        assert!(row["ours_ms"].as_f64().unwrap() > 0.0, "{row}");
        assert_eq!(row["baseline"], "1 worker");
        assert!(extra(row, "jobs_per_s") > 0.0, "{row}");
    }
    assert_eq!(rows[0]["speedup"], 1.0);
    // Batched draining: every count also runs claiming up to 4 at a time, compared with
    // the one-at-a-time run of as many workers; every job completed (or the run fails).
    let out = run_sdq(&[
        "--database-url",
        &admin,
        "bench",
        "queue",
        "--jobs",
        "30",
        "--workers",
        "2",
        "--iterations",
        "1",
        "--progress",
        "0",
        "--claim-batch",
        "4",
    ]);
    let batched = crate::rows(&out);
    let cases: Vec<&str> = batched
        .iter()
        .map(|r| r["case"].as_str().unwrap())
        .collect();
    assert_eq!(
        cases,
        [
            "sqlite, 2 workers, 30 jobs",
            "sqlite, 2 workers, 30 jobs, claim batch 4",
            "postgres, 2 workers, 30 jobs",
            "postgres, 2 workers, 30 jobs, claim batch 4"
        ]
    );
    for row in &batched {
        assert_eq!(extra(row, "events_per_job"), 3.0, "{row}");
        assert!(extra(row, "claim_complete_per_s") > 0.0, "{row}");
    }
    assert_eq!(batched[1]["baseline"], "one at a time");
    assert_eq!(extra(&batched[1], "claim_batch"), 4.0);
    // The benchmark's own database is gone again.
    let after = databases(&admin);
    let left: Vec<_> = after.iter().filter(|d| !before.contains(d)).collect();
    assert!(
        !left.iter().any(|d| d.starts_with("sdq_bench_")),
        "left behind: {left:?}"
    );
}

fn databases(admin: &str) -> Vec<String> {
    use sqlx::Connection;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut conn = sqlx::PgConnection::connect(admin)
            .await
            .unwrap_or_else(|e| panic!("PostgreSQL at {admin} is required by this test: {e}"));
        sqlx::query_scalar("SELECT datname::text FROM pg_database")
            .fetch_all(&mut conn)
            .await
            .expect("list databases")
    })
}

#[test]
fn submit_bench_loads_an_in_process_server() {
    let out = run_sdq(&["bench", "submit", "--rate", "50", "--seconds", "1"]);
    let rows = rows(&out);
    assert_eq!(rows.len(), 1);
    let row = &rows[0];
    assert_eq!(row["case"], "POST /v1/jobs at 50/s for 1s, 1 workers");
    assert_eq!(row["baseline"], "GET /v1/health");
    assert_eq!(extra(row, "errors"), 0.0, "{row}");
    assert_eq!(
        row["iterations"], 50,
        "every submission answered 2xx: {row}"
    );
    let (p50, p99, max) = (
        extra(row, "p50_ms"),
        extra(row, "p99_ms"),
        extra(row, "max_ms"),
    );
    assert!(0.0 < p50 && p50 <= p99 && p99 <= max, "{row}");
}

#[test]
fn sse_bench_delivers_every_event_to_every_subscriber() {
    let out = run_sdq(&[
        "bench",
        "sse",
        "--subscribers",
        "10,20",
        "--events",
        "5",
        "--interval-ms",
        "20",
    ]);
    let rows = rows(&out);
    let cases: Vec<&str> = rows.iter().map(|r| r["case"].as_str().unwrap()).collect();
    assert_eq!(
        cases,
        ["10 subscribers, 5 events", "20 subscribers, 5 events"]
    );
    for (row, n) in rows.iter().zip([10, 20]) {
        assert_eq!(extra(row, "missing"), 0.0, "{row}");
        assert_eq!(row["iterations"], n * 5, "{row}");
        assert!(extra(row, "p99_ms") >= row["ours_ms"].as_f64().unwrap());
    }
    assert_eq!(rows[1]["baseline"], "10 subscribers");
}

#[test]
fn batch_bench_runs_each_batch_size_and_really_batches() {
    let out = run_sdq(&[
        "bench",
        "batch",
        "--jobs",
        "4",
        "--batch-sizes",
        "1,2",
        "--sizes",
        "64",
        "--steps",
        "2",
        "--iterations",
        "1",
    ]);
    let rows = rows(&out);
    let cases: Vec<&str> = rows.iter().map(|r| r["case"].as_str().unwrap()).collect();
    assert_eq!(
        cases,
        [
            "64x64, 2 steps, 4 jobs, batch size 1",
            "64x64, 2 steps, 4 jobs, batch size 2"
        ]
    );
    for row in &rows {
        assert!(row["ours_ms"].as_f64().unwrap() > 0.0, "{row}");
        assert!(extra(row, "jobs_per_s") > 0.0, "{row}");
        assert_eq!(row["baseline"], "batch size 1");
    }
    assert_eq!(rows[0]["speedup"], 1.0);
    // All four were queued together, so they ran alone, then two batches of two.
    assert_eq!(extra(&rows[0], "mean_batch"), 1.0, "{}", rows[0]);
    assert_eq!(extra(&rows[1], "mean_batch"), 2.0, "{}", rows[1]);
}
