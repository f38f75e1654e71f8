//! `Queue`: the store and the bus together, so that every committed event is published.
//!
//! The API and the worker go through this type only; the order is always "commit to the
//! store, then publish", which is what lets subscribers trust the store as the snapshot.

use std::sync::Arc;
use std::time::Duration;

use uuid::Uuid;

use super::{
    CancelOutcome, Completion, Enqueued, Event, EventBus, EventKind, JobStore, Lease, NewImage,
    NewJob, PreviewImage, Scope, StoreError,
};

#[derive(Clone)]
pub struct Queue {
    pub store: Arc<dyn JobStore>,
    pub bus: Arc<dyn EventBus>,
}

impl Queue {
    pub fn new(store: Arc<dyn JobStore>, bus: Arc<dyn EventBus>) -> Self {
        Self { store, bus }
    }

    /// Publishes committed events. A bus failure is logged, not returned: the events are
    /// in the store and subscribers fall back to reading them from there.
    pub async fn publish(&self, events: &[Event]) {
        for event in events {
            if let Err(e) = self.bus.publish(event).await {
                tracing::warn!(job_id = %event.job_id, seq = event.seq, error = %e, "event not published");
            }
        }
    }

    /// Queues a job (or finds the one its idempotency key already made) and wakes workers.
    pub async fn submit(&self, job: NewJob) -> Result<Enqueued, StoreError> {
        let enqueued = self.store.enqueue(job).await?;
        if let Enqueued::New(_, event) = &enqueued {
            self.publish(std::slice::from_ref(event)).await;
            if let Err(e) = self.bus.notify_new_job().await {
                tracing::warn!(error = %e, "workers not woken; they will poll");
            }
        }
        Ok(enqueued)
    }

    pub async fn cancel(&self, id: Uuid, scope: &Scope) -> Result<CancelOutcome, StoreError> {
        let outcome = self.store.request_cancel(id, scope).await?;
        match &outcome {
            CancelOutcome::Canceled(event) => self.publish(std::slice::from_ref(event)).await,
            CancelOutcome::Requested => {
                // The worker also sees the flag on its next heartbeat if this is lost.
                if let Err(e) = self.bus.send_cancel(id).await {
                    tracing::warn!(job_id = %id, error = %e, "cancel signal not sent");
                }
            }
        }
        Ok(outcome)
    }

    pub async fn claim(
        &self,
        worker: &str,
        loaded_model: Option<&str>,
        lease: Duration,
    ) -> Result<Option<Lease>, StoreError> {
        self.claim_preferring(worker, loaded_model, None, lease)
            .await
    }

    /// Claims preferring the loaded model, then the loaded LoRA set and VAE.
    pub async fn claim_preferring(
        &self,
        worker: &str,
        loaded_model: Option<&str>,
        loaded_adapters: Option<&str>,
        lease: Duration,
    ) -> Result<Option<Lease>, StoreError> {
        let Some((lease, event)) = self
            .store
            .claim_preferring(worker, loaded_model, loaded_adapters, lease)
            .await?
        else {
            return Ok(None);
        };
        self.publish(&[event]).await;
        Ok(Some(lease))
    }

    /// Claims up to `max` more jobs that can share a UNet batch with `lead`, and
    /// publishes their `started` events.
    pub async fn claim_batch(
        &self,
        lead: &Lease,
        worker: &str,
        max: usize,
        lease: Duration,
    ) -> Result<Vec<Lease>, StoreError> {
        let claimed = self.store.claim_batch(lead, worker, max, lease).await?;
        let (leases, events): (Vec<Lease>, Vec<Event>) = claimed.into_iter().unzip();
        self.publish(&events).await;
        Ok(leases)
    }

    pub async fn record(&self, lease: &Lease, kind: EventKind) -> Result<(), StoreError> {
        let event = self.store.record(lease.job.id, lease.token, kind).await?;
        self.publish(&[event]).await;
        Ok(())
    }

    /// Keeps a preview as the job's latest and publishes it (live-only: it is not added
    /// to the event log). A bus failure only loses this preview; the next one follows.
    pub async fn preview(&self, lease: &Lease, preview: PreviewImage) -> Result<(), StoreError> {
        let seq = self
            .store
            .set_preview(lease.job.id, lease.token, &preview)
            .await?;
        self.publish(&[Event {
            job_id: lease.job.id,
            seq,
            kind: EventKind::Preview(preview),
        }])
        .await;
        Ok(())
    }

    pub async fn complete(
        &self,
        lease: &Lease,
        images: Vec<NewImage>,
        timings: serde_json::Value,
    ) -> Result<(), StoreError> {
        let events = self
            .store
            .complete(lease.job.id, lease.token, images, timings)
            .await?;
        self.publish(&events).await;
        Ok(())
    }

    /// Completes several held jobs in one store call and publishes the events of those
    /// that completed; each job's own result says whether its lease still held.
    pub async fn complete_many(
        &self,
        completions: Vec<(&Lease, Vec<NewImage>, serde_json::Value)>,
    ) -> Result<Vec<Result<(), StoreError>>, StoreError> {
        let completions = completions
            .into_iter()
            .map(|(lease, images, timings)| Completion {
                id: lease.job.id,
                token: lease.token,
                images,
                timings,
            })
            .collect();
        let results = self.store.complete_many(completions).await?;
        let mut outcomes = Vec::with_capacity(results.len());
        for result in results {
            match result {
                Ok(events) => {
                    self.publish(&events).await;
                    outcomes.push(Ok(()));
                }
                Err(e) => outcomes.push(Err(e)),
            }
        }
        Ok(outcomes)
    }

    pub async fn fail(
        &self,
        lease: &Lease,
        error: &str,
        retry_after: Option<Duration>,
    ) -> Result<(), StoreError> {
        let event = self
            .store
            .fail(lease.job.id, lease.token, error, retry_after)
            .await?;
        let retrying = matches!(event.kind, EventKind::Failed { retrying: true, .. });
        self.publish(&[event]).await;
        if retrying {
            // Wake the workers when the backoff ends, not now: the job is not claimable
            // before then, and idle workers poll only slowly. If this process dies first,
            // that slow poll still finds the job.
            let bus = self.bus.clone();
            let delay = retry_after.unwrap_or_default();
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                let _ = bus.notify_new_job().await;
            });
        }
        Ok(())
    }

    pub async fn cancel_running(&self, lease: &Lease) -> Result<(), StoreError> {
        let event = self.store.cancel_running(lease.job.id, lease.token).await?;
        self.publish(&[event]).await;
        Ok(())
    }

    pub async fn release(&self, lease: &Lease) -> Result<(), StoreError> {
        self.store.release(lease.job.id, lease.token).await?;
        let _ = self.bus.notify_new_job().await;
        Ok(())
    }

    /// Runs one rescue pass; returns how many jobs it moved.
    pub async fn rescue(&self) -> Result<usize, StoreError> {
        let events = self.store.rescue_expired().await?;
        self.publish(&events).await;
        if !events.is_empty() {
            let _ = self.bus.notify_new_job().await;
        }
        Ok(events.len())
    }
}
