//! `JobStore`: everything the queue asks of a database, as one trait.
//!
//! The two backends (`sqlite.rs`, `postgres.rs`) differ only in SQL; the decisions they
//! share (which events a completion records, what the rescuer does) live here.
//! Every state change is one transaction that checks the state it expects, and every
//! write about a running job is fenced by its lease token, so a worker that lost its
//! lease cannot write. Methods return the events they recorded; `Queue` publishes them.

use std::collections::HashSet;
use std::path::Path;
use std::time::Duration;

use async_trait::async_trait;
use uuid::Uuid;

use super::{
    Event, EventKind, ImageRecord, ImageSummary, Job, JobStatus, Lease, ListQuery, NewImage,
    NewJob, WorkerInfo,
};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("job {0} not found")]
    NotFound(Uuid),
    /// The lease token no longer matches: the job was rescued, finished or canceled.
    #[error("lease on job {0} is no longer held")]
    LeaseLost(Uuid),
    #[error("job {id} is already {status}")]
    Conflict { id: Uuid, status: JobStatus },
    /// The database cannot be reached right now; callers answer 503 and retry later.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// The database's disk is full: nothing was written; writes work again once space
    /// is freed.
    #[error("the job database's disk is full: {0}")]
    Full(String),
    /// The backend cannot do this; the message says what to use instead.
    #[error("{0}")]
    Unsupported(String),
    #[error("database error: {0}")]
    Database(String),
    #[error("corrupt row: {0}")]
    Corrupt(String),
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        // Connection trouble (and Postgres' "connection exception", "operator
        // intervention" and "insufficient resources" classes) is an outage, not a bug:
        // callers answer 503 and retry.
        let code = e.as_database_error().and_then(|d| d.code());
        // SQLite's SQLITE_FULL (13) and PostgreSQL's disk_full (53100).
        let full = code.as_deref().is_some_and(|c| c == "13" || c == "53100")
            || e.to_string().contains("disk is full");
        let outage_code = code
            .as_deref()
            .is_some_and(|c| c.starts_with("08") || c.starts_with("57") || c.starts_with("53"));
        match e {
            _ if full => StoreError::Full(e.to_string()),
            sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::Protocol(_)
            | sqlx::Error::WorkerCrashed => StoreError::Unavailable(e.to_string()),
            _ if outage_code => StoreError::Unavailable(e.to_string()),
            other => StoreError::Database(other.to_string()),
        }
    }
}

/// A finished job that retention removed from the database: what it still has in the
/// object store besides its `{job}/` folder.
#[derive(Debug, Clone)]
pub struct PurgedJob {
    pub id: Uuid,
    /// The input keys its spec named (`inputs/{uuid}/init`, `…/mask`).
    pub input_keys: Vec<String>,
}

/// What `request_cancel` did.
#[derive(Debug, Clone)]
pub enum CancelOutcome {
    /// The job was queued and is now canceled.
    Canceled(Event),
    /// The job is running; its worker has been asked to stop.
    Requested,
}

#[async_trait]
pub trait JobStore: Send + Sync {
    /// Inserts a queued job and its `queued` event.
    async fn enqueue(&self, job: NewJob) -> Result<(Job, Event), StoreError>;
    async fn get(&self, id: Uuid) -> Result<Option<Job>, StoreError>;
    async fn list(&self, query: &ListQuery) -> Result<Vec<Job>, StoreError>;
    /// 1-based place in line of a queued job; `None` if it is not queued.
    async fn queue_position(&self, id: Uuid) -> Result<Option<i64>, StoreError>;

    /// Claims the best claimable job, preferring `loaded_model` within a priority.
    async fn claim(
        &self,
        worker: &str,
        loaded_model: Option<&str>,
        lease: Duration,
    ) -> Result<Option<(Lease, Event)>, StoreError>;
    /// Extends the lease; returns whether a cancel was requested.
    async fn heartbeat(&self, id: Uuid, token: Uuid, lease: Duration) -> Result<bool, StoreError>;
    /// Appends a non-terminal event (progress) for a job we hold.
    async fn record(&self, id: Uuid, token: Uuid, kind: EventKind) -> Result<Event, StoreError>;
    /// Records the images and marks the job succeeded, all in one transaction.
    async fn complete(
        &self,
        id: Uuid,
        token: Uuid,
        images: Vec<NewImage>,
        timings: serde_json::Value,
    ) -> Result<Vec<Event>, StoreError>;
    /// Fails the attempt: requeued after `retry_after` if attempts remain, else failed.
    async fn fail(
        &self,
        id: Uuid,
        token: Uuid,
        error: &str,
        retry_after: Option<Duration>,
    ) -> Result<Event, StoreError>;
    /// The worker stopped a running job because a cancel was requested.
    async fn cancel_running(&self, id: Uuid, token: Uuid) -> Result<Event, StoreError>;
    /// Gives a running job back to the queue without counting the attempt (shutdown).
    async fn release(&self, id: Uuid, token: Uuid) -> Result<(), StoreError>;

    /// Cancels a queued job at once, or flags a running one.
    async fn request_cancel(&self, id: Uuid) -> Result<CancelOutcome, StoreError>;
    /// Requeues (or fails, after `max_attempts`) running jobs whose lease expired.
    async fn rescue_expired(&self) -> Result<Vec<Event>, StoreError>;

    async fn events_after(&self, id: Uuid, after_seq: i64) -> Result<Vec<Event>, StoreError>;
    async fn image(&self, id: Uuid) -> Result<Option<ImageRecord>, StoreError>;
    async fn job_images(&self, job_id: Uuid) -> Result<Vec<ImageRecord>, StoreError>;
    /// A cheap round trip for readiness checks.
    async fn ping(&self) -> Result<(), StoreError>;

    /// Records a worker (or refreshes it) with `last_seen_at` = now.
    async fn upsert_worker(&self, worker: &WorkerInfo) -> Result<(), StoreError>;
    /// Workers seen within `max_age`, newest first.
    async fn list_workers(&self, max_age: Duration) -> Result<Vec<WorkerInfo>, StoreError>;
    /// Forgets a worker that shut down cleanly.
    async fn remove_worker(&self, name: &str) -> Result<(), StoreError>;

    /// Deletes up to `limit` jobs that finished more than `older_than` ago, with their
    /// events and image rows, and returns them so the caller deletes their objects.
    /// Rows go first: a crash before the objects are deleted leaves orphans that the
    /// orphan collector finds, never a row without its object.
    async fn purge_finished(
        &self,
        older_than: Duration,
        limit: i64,
    ) -> Result<Vec<PurgedJob>, StoreError>;
    /// Drops the `progress` events of up to `limit` jobs that finished more than
    /// `older_than` ago (the rest of their log stays); returns how many jobs it compacted.
    async fn compact_events(&self, older_than: Duration, limit: i64) -> Result<u64, StoreError>;
    /// Which of `keys` a row still names: an image row's object key, or a job's input.
    async fn referenced_keys(&self, keys: &[String]) -> Result<HashSet<String>, StoreError>;
    /// Writes a consistent copy of the database to `path` (which must not exist) while
    /// it is in use.
    async fn backup(&self, path: &Path) -> Result<(), StoreError>;
}

/// The events a completion records, in order: one `image` per image, then `succeeded`.
/// Both backends insert exactly these, so the event log is the same on either.
pub(crate) fn completion_events(images: &[NewImage], timings: serde_json::Value) -> Vec<EventKind> {
    let summaries: Vec<ImageSummary> = images
        .iter()
        .map(|image| ImageSummary {
            index: image.index,
            id: image.id,
            url: image.url.clone(),
            seed: image.seed,
        })
        .collect();
    let mut kinds: Vec<EventKind> = summaries.iter().cloned().map(EventKind::Image).collect();
    kinds.push(EventKind::Succeeded {
        images: summaries,
        timings,
    });
    kinds
}

/// What the rescuer does with a running job whose lease expired: cancel it if a cancel
/// was asked for, fail it if it has used its attempts, else requeue it.
pub(crate) fn rescue_outcome(
    attempt: i64,
    max_attempts: i64,
    cancel_requested: bool,
) -> (JobStatus, EventKind, String) {
    let error = format!("worker stopped renewing its lease (attempt {attempt} of {max_attempts})");
    if cancel_requested {
        (JobStatus::Canceled, EventKind::Canceled, error)
    } else if attempt >= max_attempts {
        let kind = EventKind::Failed {
            error: error.clone(),
            retrying: false,
        };
        (JobStatus::Failed, kind, error)
    } else {
        let kind = EventKind::Failed {
            error: error.clone(),
            retrying: true,
        };
        (JobStatus::Queued, kind, error)
    }
}
