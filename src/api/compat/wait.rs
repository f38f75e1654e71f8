//! Blocking until a job ends, for the dialects whose clients wait on one request.
//!
//! Same order as the SSE handler: subscribe to the job's events first, then read the row,
//! so an end that happens in between is not missed. Every bus message (or a gap in them,
//! or a lost bus) just triggers a re-read of the row, which is the truth; a slow poll
//! covers a bus that says nothing.

use std::time::Duration;

use futures::StreamExt;
use uuid::Uuid;

use crate::api::ApiError;
use crate::queue::{Job, Queue, Scope};

/// How often the row is re-read when no event arrives.
const POLL: Duration = Duration::from_secs(1);

/// Waits until the job is succeeded, failed or canceled, and returns its final row.
/// Dropping the future (the client went away) stops waiting; the job runs on.
pub async fn until_terminal(queue: &Queue, id: Uuid, scope: &Scope) -> Result<Job, ApiError> {
    let mut live = queue.bus.subscribe(id).await.ok();
    loop {
        let job = queue
            .store
            .get(id, scope)
            .await?
            .ok_or(ApiError::NotFound("job"))?;
        if job.status.is_terminal() {
            return Ok(job);
        }
        match live.as_mut() {
            Some(stream) => match tokio::time::timeout(POLL, stream.next()).await {
                Ok(Some(_)) | Err(_) => {}
                // The bus went away: keep polling the store alone.
                Ok(None) => live = None,
            },
            None => tokio::time::sleep(POLL).await,
        }
    }
}
