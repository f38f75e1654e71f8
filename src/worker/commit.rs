//! Completing a batch's jobs together. The jobs of a UNet batch finish in the same step,
//! so each one that succeeded waits until every batch-mate has either asked to commit or
//! ended some other way, and one `complete_many` commits them all: one transaction and
//! one WAL flush for the batch instead of one per job.
//!
//! Each job still gets its own fenced result: a job whose lease was lost meanwhile is
//! refused alone (its images are then deleted by its caller), the others complete.

use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

use crate::queue::{Lease, NewImage, Queue, StoreError};

/// The batch's jobs that have not settled yet, and the completions waiting to commit.
pub(super) struct CommitGroup {
    queue: Queue,
    state: Mutex<GroupState>,
}

struct GroupState {
    /// Members that have neither asked to commit nor left.
    open: usize,
    pending: Vec<Pending>,
}

struct Pending {
    lease: Lease,
    images: Vec<NewImage>,
    timings: serde_json::Value,
    done: oneshot::Sender<Result<(), StoreError>>,
}

/// One member's place in the group. Dropping it unused (the job failed, was canceled,
/// its upload failed) tells the group not to wait for it.
pub(super) struct CommitTicket {
    group: Arc<CommitGroup>,
    used: bool,
}

impl CommitGroup {
    /// A group of `members` jobs: one ticket each.
    pub(super) fn tickets(queue: Queue, members: usize) -> Vec<CommitTicket> {
        let group = Arc::new(CommitGroup {
            queue,
            state: Mutex::new(GroupState {
                open: members,
                pending: Vec::new(),
            }),
        });
        (0..members)
            .map(|_| CommitTicket {
                group: group.clone(),
                used: false,
            })
            .collect()
    }

    /// Marks one member settled (with its completion, if it has one); the completions
    /// to commit when it was the last.
    fn arrive(&self, pending: Option<Pending>) -> Option<Vec<Pending>> {
        let mut state = self.state.lock().expect("commit group lock");
        state.open -= 1;
        state.pending.extend(pending);
        (state.open == 0 && !state.pending.is_empty()).then(|| std::mem::take(&mut state.pending))
    }

    /// Commits in a task of its own: a caller that stops waiting must not abandon a
    /// commit whose outcome the other members are waiting for.
    fn spawn_commit(self: &Arc<Self>, batch: Vec<Pending>) {
        let queue = self.queue.clone();
        tokio::spawn(async move {
            let items = batch
                .iter()
                .map(|p| (&p.lease, p.images.clone(), p.timings.clone()))
                .collect();
            match queue.complete_many(items).await {
                Ok(results) => {
                    tracing::debug!(jobs = results.len(), "batch completed in one commit");
                    for (p, result) in batch.into_iter().zip(results) {
                        let _ = p.done.send(result);
                    }
                }
                Err(e) => {
                    for p in batch {
                        let _ = p.done.send(Err(e.clone()));
                    }
                }
            }
        });
    }
}

impl CommitTicket {
    /// Completes the job with the rest of its batch; returns once that commit is known.
    pub(super) async fn complete(
        mut self,
        lease: &Lease,
        images: Vec<NewImage>,
        timings: serde_json::Value,
    ) -> Result<(), StoreError> {
        self.used = true;
        let (done, result) = oneshot::channel();
        let pending = Pending {
            lease: lease.clone(),
            images,
            timings,
            done,
        };
        if let Some(batch) = self.group.arrive(Some(pending)) {
            self.group.spawn_commit(batch);
        }
        result.await.unwrap_or_else(|_| {
            Err(StoreError::Unavailable(
                "the batch's completion task stopped".into(),
            ))
        })
    }
}

impl Drop for CommitTicket {
    fn drop(&mut self) {
        if !self.used {
            if let Some(batch) = self.group.arrive(None) {
                self.group.spawn_commit(batch);
            }
        }
    }
}
