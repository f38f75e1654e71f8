//! How a job's attempt ends: its images uploaded and committed, a failure (retried or
//! final), a cancel, or a release back to the queue. Each job of a batch ends here on
//! its own.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use uuid::Uuid;

use super::commit::CommitTicket;
use super::lease::StopFlags;
use super::render::{Outcome, Rendered};
use super::Worker;
use crate::observability;
use crate::queue::{Lease, NewImage};
use crate::storage::ImageStore;

impl Worker {
    /// Records how a job's generation ended (unless its lease was lost meanwhile) and
    /// returns the outcome's name for the metrics. A job of a batch passes its `ticket`,
    /// so that its completion commits with its batch-mates'.
    pub(super) async fn settle(
        &self,
        lease: &Lease,
        flags: &Arc<StopFlags>,
        outcome: Outcome,
        started: Instant,
        mut ticket: Option<CommitTicket>,
    ) -> &'static str {
        if !matches!(outcome, Outcome::Rendered(_)) || StopFlags::is(&flags.lease_lost) {
            // Nothing of this job will commit with the batch: the others need not wait.
            drop(ticket.take());
        }
        if StopFlags::is(&flags.lease_lost) {
            tracing::warn!("lease lost; dropping this attempt's results");
            return "lease_lost";
        }
        match outcome {
            Outcome::Rendered(rendered) => {
                observability::model_load(Duration::from_millis(rendered.load_ms));
                self.finish_succeeded(lease, rendered, started, ticket)
                    .await
            }
            Outcome::Stopped if StopFlags::is(&flags.release) => {
                match self.queue.release(lease).await {
                    Ok(()) => tracing::info!("job released back to the queue"),
                    Err(e) => {
                        tracing::warn!(error = %e, "release failed; the rescuer will requeue it")
                    }
                }
                "released"
            }
            Outcome::Stopped => {
                match self.queue.cancel_running(lease).await {
                    Ok(()) => tracing::info!("job canceled"),
                    Err(e) => tracing::warn!(error = %e, "could not record cancel"),
                }
                "canceled"
            }
            Outcome::Failed { error, permanent } => {
                let retry = (!permanent).then(|| {
                    crate::queue::retry::backoff(lease.job.attempt, self.config.retry_base)
                });
                self.finish_failed(lease, &error, retry).await
            }
        }
    }

    /// Records a failed attempt; `retrying` or `failed` (for good).
    pub(super) async fn finish_failed(
        &self,
        lease: &Lease,
        error: &str,
        retry: Option<Duration>,
    ) -> &'static str {
        tracing::warn!(error, retrying = retry.is_some(), "job attempt failed");
        let retrying = retry.is_some();
        if let Err(e) = self.queue.fail(lease, error, retry).await {
            tracing::warn!(error = %e, "could not record failure");
        }
        if retrying {
            "retrying"
        } else {
            "failed"
        }
    }

    /// Uploads first, then commits the job and its image rows in one fenced transaction
    /// (with its batch's, given a ticket); if that commit loses, the uploads are orphans
    /// and are deleted.
    async fn finish_succeeded(
        &self,
        lease: &Lease,
        rendered: Rendered,
        started: Instant,
        ticket: Option<CommitTicket>,
    ) -> &'static str {
        let job_id = lease.job.id;
        let upload_started = Instant::now();
        let mut uploaded: Vec<NewImage> = Vec::with_capacity(rendered.images.len());
        for (index, image) in rendered.images.into_iter().enumerate() {
            let id = Uuid::now_v7();
            let key = ImageStore::key_for(job_id, id);
            let bytes = image.png.len() as i64;
            let stored = async {
                self.images.put(&key, Bytes::from(image.png)).await?;
                self.images
                    .put(
                        &ImageStore::thumbnail_key(&key),
                        Bytes::from(image.thumbnail),
                    )
                    .await
            };
            if let Err(e) = stored.await {
                drop(ticket);
                let _ = self.images.delete(&key).await;
                self.delete_objects(&uploaded).await;
                let retry = Some(crate::queue::retry::backoff(
                    lease.job.attempt,
                    self.config.retry_base,
                ));
                return self
                    .finish_failed(lease, &format!("storing image failed: {e}"), retry)
                    .await;
            }
            uploaded.push(NewImage {
                id,
                index: index as i64,
                object_key: key,
                url: format!("/v1/images/{id}"),
                seed: image.seed as i64,
                width: lease.job.spec.width as i64,
                height: lease.job.spec.height as i64,
                bytes,
            });
        }
        if let Some(marker) = &self.config.pause_before_commit {
            tracing::warn!(marker = %marker.display(), "test hook: pausing between upload and commit");
            let _ = std::fs::write(marker, job_id.to_string());
            std::future::pending::<()>().await;
        }
        let timings = serde_json::json!({
            "load_ms": rendered.load_ms,
            "inference_ms": rendered.inference_ms,
            "encode_ms": rendered.encode_ms,
            "upload_ms": upload_started.elapsed().as_millis() as u64,
            "total_ms": started.elapsed().as_millis() as u64,
        });
        let mut timings = timings;
        if rendered.batch_size > 1 {
            timings["batch_size"] = rendered.batch_size.into();
        }
        let committed = match ticket {
            Some(ticket) => ticket.complete(lease, uploaded.clone(), timings).await,
            None => self.queue.complete(lease, uploaded.clone(), timings).await,
        };
        match committed {
            Ok(()) => {
                tracing::info!(
                    images = uploaded.len(),
                    ms = started.elapsed().as_millis() as u64,
                    "job succeeded"
                );
                "succeeded"
            }
            Err(e) => {
                tracing::warn!(error = %e, "completion not recorded; deleting this attempt's images");
                self.delete_objects(&uploaded).await;
                "lease_lost"
            }
        }
    }

    /// Deletes uploads whose commit lost (images and thumbnails).
    async fn delete_objects(&self, images: &[NewImage]) {
        for image in images {
            for key in [
                image.object_key.clone(),
                ImageStore::thumbnail_key(&image.object_key),
            ] {
                if let Err(e) = self.images.delete(&key).await {
                    tracing::warn!(%key, error = %e, "orphan object not deleted");
                }
            }
        }
    }
}
