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

use super::webhooks::{AttemptOutcome, Delivery};
use super::{
    ApiKey, Completion, Enqueued, Event, EventKind, ImageQuery, ImageRecord, ImageSummary, Job,
    JobStatus, Lease, ListQuery, NewImage, NewJob, PreviewImage, Scope, WorkerInfo,
};

#[derive(Debug, Clone, thiserror::Error)]
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
    /// The owner already has `limit` queued or running jobs.
    #[error("{active} jobs are queued or running, the most this key may have is {limit}")]
    TooManyJobs { active: i64, limit: i64 },
    /// The idempotency key was used before with a different request.
    #[error("Idempotency-Key was already used with a different request")]
    IdempotencyMismatch,
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
    /// Inserts a queued job and its `queued` event, after checking the owner's quota and
    /// idempotency key in the same transaction (so concurrent requests cannot both pass).
    async fn enqueue(&self, job: NewJob) -> Result<Enqueued, StoreError>;
    async fn get(&self, id: Uuid, scope: &Scope) -> Result<Option<Job>, StoreError>;
    async fn list(&self, query: &ListQuery) -> Result<Vec<Job>, StoreError>;
    /// 1-based place in line of a queued job; `None` if it is not queued.
    async fn queue_position(&self, id: Uuid) -> Result<Option<i64>, StoreError>;

    /// Claims the best claimable job, preferring `loaded_model` within a priority.
    async fn claim(
        &self,
        worker: &str,
        loaded_model: Option<&str>,
        lease: Duration,
    ) -> Result<Option<(Lease, Event)>, StoreError> {
        self.claim_preferring(worker, loaded_model, None, lease)
            .await
    }
    /// Like `claim`, preferring next the jobs whose LoRA set and VAE
    /// (`JobSpec::adapters_key`) equal `loaded_adapters`.
    async fn claim_preferring(
        &self,
        worker: &str,
        loaded_model: Option<&str>,
        loaded_adapters: Option<&str>,
        lease: Duration,
    ) -> Result<Option<(Lease, Event)>, StoreError>;
    /// Dynamic batching: claims, in one statement, up to `max` more claimable queued jobs
    /// with the same `batch_key` as `lead` (a job this worker claimed and still holds),
    /// best priority first, then the oldest. Each is claimed exactly as `claim` claims
    /// one: its own lease token, `attempt += 1`, its own `started` event. Empty when the
    /// lead cannot batch (no key) or its lease is no longer held.
    async fn claim_batch(
        &self,
        lead: &Lease,
        worker: &str,
        max: usize,
        lease: Duration,
    ) -> Result<Vec<(Lease, Event)>, StoreError>;
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
    /// Completes several jobs we hold in one transaction (one statement on PostgreSQL),
    /// each exactly as `complete` would, so a worker whose batch finishes together pays
    /// for one commit. Results follow the order of `completions`: a job whose lease is
    /// no longer held gets its own `LeaseLost` and the others still complete; the outer
    /// error means nothing was written. A job may appear only once per call.
    async fn complete_many(
        &self,
        completions: Vec<Completion>,
    ) -> Result<Vec<Result<Vec<Event>, StoreError>>, StoreError>;
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
    async fn request_cancel(&self, id: Uuid, scope: &Scope) -> Result<CancelOutcome, StoreError>;
    /// Requeues (or fails, after `max_attempts`) running jobs whose lease expired.
    async fn rescue_expired(&self) -> Result<Vec<Event>, StoreError>;

    async fn events_after(
        &self,
        id: Uuid,
        after_seq: i64,
        scope: &Scope,
    ) -> Result<Vec<Event>, StoreError>;
    async fn image(&self, id: Uuid, scope: &Scope) -> Result<Option<ImageRecord>, StoreError>;
    async fn job_images(&self, job_id: Uuid, scope: &Scope)
        -> Result<Vec<ImageRecord>, StoreError>;
    /// The gallery: images newest first, after an optional cursor.
    async fn list_images(&self, query: &ImageQuery) -> Result<Vec<ImageRecord>, StoreError>;
    /// Deletes an image row and returns it (its objects are the caller's to delete).
    async fn delete_image(
        &self,
        id: Uuid,
        scope: &Scope,
    ) -> Result<Option<ImageRecord>, StoreError>;
    /// Deletes a finished job with its events and image rows, and returns them;
    /// `Conflict` if it has not finished.
    async fn delete_job(
        &self,
        id: Uuid,
        scope: &Scope,
    ) -> Result<Option<(Job, Vec<ImageRecord>)>, StoreError>;
    /// A cheap round trip for readiness checks.
    async fn ping(&self) -> Result<(), StoreError>;
    /// How many jobs the store holds in each status (statuses with none are left out).
    async fn count_by_status(&self) -> Result<Vec<(JobStatus, i64)>, StoreError>;

    /// Records a worker (or refreshes it) with `last_seen_at` = now.
    async fn upsert_worker(&self, worker: &WorkerInfo) -> Result<(), StoreError>;
    /// Workers seen within `max_age`, newest first.
    async fn list_workers(&self, max_age: Duration) -> Result<Vec<WorkerInfo>, StoreError>;
    /// Forgets a worker that shut down cleanly.
    async fn remove_worker(&self, name: &str) -> Result<(), StoreError>;

    /// The model an owner chose as its default (A1111's `sd_model_checkpoint`), if any.
    async fn owner_default_model(&self, owner: &str) -> Result<Option<String>, StoreError>;
    /// Sets (or, with `None`, clears) an owner's default model.
    async fn set_owner_default_model(
        &self,
        owner: &str,
        model: Option<&str>,
    ) -> Result<(), StoreError>;

    /// Deletes up to `limit` jobs past their retention, with their events and image rows,
    /// and returns them so the caller deletes their objects. A job's retention is its
    /// key's `retain_days` when set, else `older_than` (`None`: kept forever).
    /// Rows go first: a crash before the objects are deleted leaves orphans that the
    /// orphan collector finds, never a row without its object.
    async fn purge_finished(
        &self,
        older_than: Option<Duration>,
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
    /// Stores a newly issued key (its hash, never its token).
    async fn insert_key(&self, key: &ApiKey) -> Result<(), StoreError>;
    /// The key whose token has this lookup part, revoked or not.
    async fn key_by_lookup(&self, lookup: &str) -> Result<Option<ApiKey>, StoreError>;
    /// Every key, oldest first.
    async fn list_keys(&self) -> Result<Vec<ApiKey>, StoreError>;
    /// Revokes a key; returns it, or `None` if there is no such key.
    async fn revoke_key(&self, id: Uuid) -> Result<Option<ApiKey>, StoreError>;
    /// Notes that a key was used just now.
    async fn touch_key(&self, id: Uuid) -> Result<(), StoreError>;
    /// Takes one token from the owner's bucket (`per_min` tokens, refilled continuously);
    /// `Some(wait)` when it is empty and the request must wait that long.
    async fn take_rate_token(
        &self,
        owner: &str,
        per_min: i64,
    ) -> Result<Option<Duration>, StoreError>;

    // Webhook deliveries (rows are made with the events they report; see `webhooks.rs`).
    /// Claims up to `limit` due deliveries: each starts one more attempt and stays hidden
    /// from other deliverers for `lease` (after which a crashed attempt is retried).
    async fn claim_deliveries(
        &self,
        limit: i64,
        lease: Duration,
    ) -> Result<Vec<Delivery>, StoreError>;
    /// Fixes a delivery's body at its first attempt and returns the body to send: an
    /// earlier one if it was already fixed, so every retry sends the same bytes.
    async fn set_delivery_payload(&self, id: Uuid, payload: &str) -> Result<String, StoreError>;
    /// Records how attempt `attempt` ended; `false` (nothing written) if the delivery was
    /// claimed again since or is no longer pending.
    async fn finish_delivery(
        &self,
        id: Uuid,
        attempt: i64,
        outcome: &AttemptOutcome,
    ) -> Result<bool, StoreError>;
    /// A job's deliveries, oldest first (callers check the job's scope first).
    async fn job_deliveries(&self, job_id: Uuid) -> Result<Vec<Delivery>, StoreError>;
    /// The `whsec_…` secret that signs an owner's deliveries: its key's; `None` for an
    /// owner without a key.
    async fn webhook_secret(&self, owner: &str) -> Result<Option<String>, StoreError>;

    /// Keeps `preview` as the latest of a job we hold (replacing the one before; nothing
    /// goes to the event log) and returns the `seq` of the job's last stored event.
    async fn set_preview(
        &self,
        id: Uuid,
        token: Uuid,
        preview: &PreviewImage,
    ) -> Result<i64, StoreError>;
    /// The latest preview of a running job (`None` once it has left `running`).
    async fn latest_preview(
        &self,
        id: Uuid,
        scope: &Scope,
    ) -> Result<Option<PreviewImage>, StoreError>;
}

/// A stored preview column back into its value.
pub(crate) fn preview_from_column(raw: Option<String>) -> Result<Option<PreviewImage>, StoreError> {
    raw.map(|s| {
        serde_json::from_str(&s).map_err(|e| StoreError::Corrupt(format!("jobs.preview: {e}")))
    })
    .transpose()
}

/// How long ago an idempotency key stops counting.
pub const IDEMPOTENCY_TTL: Duration = Duration::from_secs(24 * 3600);

/// What a rate bucket of `per_min` tokens holds after `elapsed_ms` of refill from
/// `tokens`, and how long until it holds one token again (0 if it does).
pub(crate) fn bucket_wait(tokens: f64, per_min: i64, elapsed_ms: i64) -> Duration {
    let per_ms = per_min.max(1) as f64 / 60_000.0;
    let now = (tokens + elapsed_ms.max(0) as f64 * per_ms).min(per_min as f64);
    if now >= 1.0 {
        Duration::ZERO
    } else {
        Duration::from_millis(((1.0 - now) / per_ms).ceil() as u64)
    }
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

/// Refuses a batched completion that names a job twice: only one of the two could
/// complete, and which one would depend on the backend's row order.
pub(crate) fn check_distinct(completions: &[Completion]) -> Result<(), StoreError> {
    let mut seen = HashSet::with_capacity(completions.len());
    match completions.iter().find(|c| !seen.insert(c.id)) {
        Some(c) => Err(StoreError::Database(format!(
            "job {} appears twice in one batched completion",
            c.id
        ))),
        None => Ok(()),
    }
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
