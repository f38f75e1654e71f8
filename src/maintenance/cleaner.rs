//! The cleaner: removes finished jobs past their retention (rows first, then their
//! objects) and compacts the event logs of finished jobs (their `progress` events go; the
//! `queued`, `started`, `image` and terminal events stay, so a late subscriber still sees
//! how the job ended).
//!
//! Every process may run it: the store picks rows with `SKIP LOCKED` (PostgreSQL) or
//! behind its single writer (SQLite), so two cleaners never remove the same job twice.
//! Objects are deleted after their rows: a crash in between leaves orphans that the
//! orphan collector (`gc.rs`) finds, never a row whose object is gone.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::MaintenanceError;
use crate::queue::JobStore;
use crate::storage::ImageStore;

/// Rows a pass takes from the store at a time.
const BATCH: i64 = 500;

/// What the cleaner keeps.
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    /// Finished jobs older than this are removed (unless their key sets its own
    /// `retain_days`); `None` keeps them forever.
    pub keep: Option<Duration>,
    /// Finished jobs older than this lose their `progress` events.
    pub compact_after: Duration,
}

/// What one pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CleanReport {
    pub jobs_removed: usize,
    pub objects_removed: usize,
    pub jobs_compacted: u64,
}

/// One pass: retention first (no point compacting a job about to go), then compaction.
pub async fn pass(
    store: &Arc<dyn JobStore>,
    images: &ImageStore,
    retention: Retention,
) -> Result<CleanReport, MaintenanceError> {
    let mut report = CleanReport::default();
    // Runs even without a server-wide limit: a key may have its own.
    {
        loop {
            let purged = store.purge_finished(retention.keep, BATCH).await?;
            for job in &purged {
                match images.delete_job_objects(job.id, &job.input_keys).await {
                    Ok(n) => report.objects_removed += n,
                    // The rows are gone; the orphan collector deletes what is left.
                    Err(e) => {
                        tracing::warn!(job_id = %job.id, error = %e, "objects of a removed job not deleted")
                    }
                }
            }
            report.jobs_removed += purged.len();
            if (purged.len() as i64) < BATCH {
                break;
            }
        }
    }
    loop {
        let n = store.compact_events(retention.compact_after, BATCH).await?;
        report.jobs_compacted += n;
        if (n as i64) < BATCH {
            break;
        }
    }
    Ok(report)
}

/// Runs a pass every `interval` until `shutdown` turns true.
pub async fn run(
    store: Arc<dyn JobStore>,
    images: ImageStore,
    retention: Retention,
    interval: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = shutdown.changed() => {}
        }
        if *shutdown.borrow() {
            return;
        }
        match pass(&store, &images, retention).await {
            Ok(r) if r == CleanReport::default() => {}
            Ok(r) => tracing::info!(
                jobs_removed = r.jobs_removed,
                objects_removed = r.objects_removed,
                jobs_compacted = r.jobs_compacted,
                "cleaner pass"
            ),
            Err(e) => tracing::warn!(error = %e, "cleaner pass failed; will retry"),
        }
    }
}
