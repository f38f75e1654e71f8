//! What keeps a claimed job's lease and reports its steps: the heartbeat, the stop flags
//! it and the cancel listener raise, and the task that records progress and previews.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;
use tracing::Instrument;
use uuid::Uuid;

use crate::inference::StepProgress;
use crate::observability;
use crate::queue::{EventKind, Lease, PreviewImage, Queue, StoreError};

/// Why a running generation was asked to stop.
#[derive(Default)]
pub(super) struct StopFlags {
    pub(super) cancel: AtomicBool,
    pub(super) lease_lost: AtomicBool,
    pub(super) release: AtomicBool,
}

impl StopFlags {
    pub(super) fn any(&self) -> bool {
        self.cancel.load(Ordering::Relaxed)
            || self.lease_lost.load(Ordering::Relaxed)
            || self.release.load(Ordering::Relaxed)
    }

    pub(super) fn is(flag: &AtomicBool) -> bool {
        flag.load(Ordering::Relaxed)
    }

    pub(super) fn raise(flag: &AtomicBool) {
        flag.store(true, Ordering::Relaxed)
    }
}

/// The jobs this worker is running (one, or a batch) and how to stop each (reached
/// from the cancel listener).
pub(super) type CurrentJobs = Arc<Mutex<Vec<(Uuid, Arc<StopFlags>)>>>;

/// Renews the lease every third of its length; flags a lost lease or a cancel request.
pub(super) async fn heartbeat_loop(
    queue: Queue,
    lease: Lease,
    length: Duration,
    flags: Arc<StopFlags>,
) {
    let mut ticker = tokio::time::interval(length / 3);
    ticker.tick().await;
    loop {
        ticker.tick().await;
        match queue
            .store
            .heartbeat(lease.job.id, lease.token, length)
            .await
        {
            Ok(true) => StopFlags::raise(&flags.cancel),
            Ok(false) => {}
            Err(StoreError::LeaseLost(_)) => {
                StopFlags::raise(&flags.lease_lost);
                return;
            }
            Err(e) => tracing::warn!(error = %e, "heartbeat failed; will retry"),
        }
    }
}

/// Records each step the generation sends as a `progress` event (and its preview, if
/// any) until the sender is dropped. `step_metrics`: also feed the step-duration
/// histogram (one reporter per UNet evaluation does, so a batch counts its steps once).
pub(super) fn spawn_reporter(
    queue: Queue,
    lease: Lease,
    flags: Arc<StopFlags>,
    mut steps: mpsc::UnboundedReceiver<StepProgress>,
    step_metrics: bool,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(
        async move {
            let mut last_elapsed_ms = 0;
            while let Some(p) = steps.recv().await {
                if step_metrics {
                    observability::step(Duration::from_millis(
                        p.elapsed_ms.saturating_sub(last_elapsed_ms),
                    ));
                }
                last_elapsed_ms = p.elapsed_ms;
                let per_step = p.elapsed_ms / p.step.max(1) as u64;
                let kind = EventKind::Progress {
                    step: p.step as i64,
                    total: p.total as i64,
                    elapsed_ms: p.elapsed_ms as i64,
                    eta_ms: (per_step * (p.total - p.step) as u64) as i64,
                };
                match queue.record(&lease, kind).await {
                    Ok(()) => {}
                    Err(StoreError::LeaseLost(_)) => StopFlags::raise(&flags.lease_lost),
                    Err(e) => tracing::warn!(error = %e, "progress not recorded"),
                }
                if let Some(preview) = p.preview {
                    let preview = PreviewImage {
                        step: p.step as i64,
                        total: p.total as i64,
                        width: preview.width as i64,
                        height: preview.height as i64,
                        image: preview.data_url,
                    };
                    match queue.preview(&lease, preview).await {
                        Ok(()) => {}
                        Err(StoreError::LeaseLost(_)) => StopFlags::raise(&flags.lease_lost),
                        Err(e) => tracing::debug!(error = %e, "preview not kept"),
                    }
                }
            }
        }
        .in_current_span(),
    )
}
