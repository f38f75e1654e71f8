//! The embedded database copies its WAL back into the database file on its own, beside
//! the writer: committed jobs reach the main file within a second or so, without any
//! commit (a submission, say) having to wait for that copy and its `fsync`s.

use std::time::{Duration, Instant};

use sdq::queue::sqlite::SqliteStore;
use sdq::queue::{JobSpec, JobStore, NewJob};
use sqlx::Connection;

/// How many jobs the database file alone holds (a copy of it without its WAL, opened
/// elsewhere); `None` while the copy is not readable (a checkpoint was writing it).
async fn jobs_in_main_file(db: &std::path::Path, scratch: &std::path::Path) -> Option<i64> {
    let copy = scratch.join(format!("copy-{}.db", uuid::Uuid::new_v4().simple()));
    std::fs::copy(db, &copy).ok()?;
    let mut conn = sqlx::SqliteConnection::connect(&format!("sqlite://{}", copy.display()))
        .await
        .ok()?;
    let count = sqlx::query_scalar("SELECT COUNT(*) FROM jobs")
        .fetch_one(&mut conn)
        .await
        .ok();
    let _ = conn.close().await;
    count
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committed_jobs_reach_the_database_file_without_a_writer_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let db = dir.path().join("jobs.db");
    let store = SqliteStore::open(&format!("sqlite://{}", db.display()))
        .await
        .unwrap();
    // A few hundred commits: more WAL pages than SQLite's default automatic checkpoint
    // (1,000) would leave behind, fewer than the writer's backstop.
    for i in 0..300 {
        let spec = JobSpec {
            prompt: format!("job {i}"),
            model: "m".into(),
            ..Default::default()
        };
        store.enqueue(NewJob::local(spec, 0, 3)).await.unwrap();
    }
    let wal = std::fs::metadata(dir.path().join("jobs.db-wal"))
        .map(|m| m.len())
        .unwrap_or(0);
    assert!(wal > 0, "the writes went to the WAL first");
    let started = Instant::now();
    let mut seen = None;
    while started.elapsed() < Duration::from_secs(10) {
        seen = jobs_in_main_file(&db, scratch.path()).await;
        if seen == Some(300) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        seen,
        Some(300),
        "every committed job is in the database file"
    );
    // The store keeps working after its checkpoints.
    assert_eq!(
        store
            .count_by_status()
            .await
            .unwrap()
            .iter()
            .map(|(_, n)| n)
            .sum::<i64>(),
        300
    );
}
