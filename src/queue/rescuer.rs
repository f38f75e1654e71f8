//! The rescuer: a small service that requeues jobs whose worker stopped renewing its lease.
//!
//! Any number of processes may run it: each pass is one transaction per job that checks the
//! lease is still expired, so two rescuers never move the same job twice.

use std::time::Duration;

use tokio::sync::watch;

use super::Queue;

/// Runs a rescue pass every `interval` until `shutdown` turns true.
pub async fn run(queue: Queue, interval: Duration, mut shutdown: watch::Receiver<bool>) {
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
        match queue.rescue().await {
            Ok(0) => {}
            Ok(n) => tracing::info!(jobs = n, "rescued jobs with expired leases"),
            Err(e) => tracing::warn!(error = %e, "rescue pass failed; will retry"),
        }
    }
}
