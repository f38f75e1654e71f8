//! The PostgreSQL `JobStore` of the distributed deployment.
//!
//! Same behaviour as `sqlite.rs`, different SQL: claims take the best row with
//! `FOR UPDATE SKIP LOCKED` so any number of workers claim concurrently without blocking
//! each other, and every time comes from the database clock so leases mean the same on
//! every host.

use std::collections::HashSet;
use std::path::Path;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions, PgRow};
use sqlx::types::Json;
use sqlx::{PgConnection, PgPool, Row};
use uuid::Uuid;

use super::webhooks::{AttemptOutcome, Delivery, WebhookEvent};
use super::{
    ApiKey, CancelOutcome, Completion, Enqueued, Event, EventKind, ImageQuery, ImageRecord, Job,
    JobSpec, JobStatus, JobStore, Lease, ListQuery, NewImage, NewJob, PreviewImage, PurgedJob,
    Scope, StoreError, WorkerInfo,
};

mod batch;
mod gallery;
mod keys;
mod maintenance;
mod statements;
mod webhooks;

use statements::{insert_job, position, record_sql, CLAIM, COMPLETE};

/// The statuses after which a job never changes.
const FINISHED: &str = "('succeeded', 'failed', 'canceled')";

/// Now, in milliseconds since the epoch, from the database clock.
const NOW: &str = "(extract(epoch from clock_timestamp()) * 1000)::bigint";

const JOB_COLUMNS: &str = "id, owner, status, spec, priority, attempt, max_attempts, worker, cancel_requested, \
     progress_step, progress_total, last_seq, error, timings, run_at, created_at, started_at, finished_at";

/// Jobs, events, images and workers in PostgreSQL.
pub struct PgStore {
    pool: PgPool,
    /// Connections whose commits do not wait for the WAL flush, for progress events only
    /// (see `record`).
    progress: PgPool,
}

fn ms(d: Duration) -> i64 {
    d.as_millis().min(i64::MAX as u128) as i64
}

impl PgStore {
    /// Connects to `url` and applies `migrations/postgres` (concurrent starters are
    /// serialised by sqlx's migration lock).
    pub async fn open(url: &str) -> Result<Self, StoreError> {
        let options: PgConnectOptions = url.parse()?;
        let pool = PgPoolOptions::new()
            .max_connections(10)
            // A database outage should turn into a quick 503, not a hung request.
            .acquire_timeout(Duration::from_secs(3))
            .connect_with(options.clone())
            .await?;
        let progress = PgPoolOptions::new()
            .max_connections(8)
            .acquire_timeout(Duration::from_secs(3))
            .connect_lazy_with(options.options([("synchronous_commit", "off")]));
        sqlx::migrate!("migrations/postgres")
            .run(&pool)
            .await
            .map_err(|e| StoreError::Database(format!("migration failed: {e}")))?;
        Ok(Self { pool, progress })
    }

    /// The pool, for tests that inspect the database directly.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }
}

fn job_from_row(row: &PgRow) -> Result<Job, StoreError> {
    let status: String = row.try_get("status")?;
    let Json(spec): Json<JobSpec> = row.try_get("spec")?;
    let timings: Option<Json<serde_json::Value>> = row.try_get("timings")?;
    Ok(Job {
        id: row.try_get("id")?,
        owner: row.try_get("owner")?,
        status: JobStatus::parse(&status)
            .ok_or_else(|| StoreError::Corrupt(format!("status {status}")))?,
        spec,
        priority: row.try_get("priority")?,
        attempt: row.try_get("attempt")?,
        max_attempts: row.try_get("max_attempts")?,
        worker: row.try_get("worker")?,
        cancel_requested: row.try_get("cancel_requested")?,
        progress_step: row.try_get("progress_step")?,
        progress_total: row.try_get("progress_total")?,
        last_seq: row.try_get("last_seq")?,
        error: row.try_get("error")?,
        timings: timings.map(|Json(t)| t),
        run_at: row.try_get("run_at")?,
        created_at: row.try_get("created_at")?,
        started_at: row.try_get("started_at")?,
        finished_at: row.try_get("finished_at")?,
    })
}

fn image_from_row(row: &PgRow) -> Result<ImageRecord, StoreError> {
    Ok(ImageRecord {
        id: row.try_get("id")?,
        job_id: row.try_get("job_id")?,
        owner: row.try_get("owner")?,
        model: row.try_get("model")?,
        prompt: row.try_get("prompt")?,
        index: row.try_get("idx")?,
        object_key: row.try_get("object_key")?,
        seed: row.try_get("seed")?,
        width: row.try_get("width")?,
        height: row.try_get("height")?,
        bytes: row.try_get("bytes")?,
        created_at: row.try_get("created_at")?,
    })
}

async fn insert_event(
    conn: &mut PgConnection,
    id: Uuid,
    seq: i64,
    kind: EventKind,
) -> Result<Event, StoreError> {
    sqlx::query(&format!(
        "INSERT INTO job_events (job_id, seq, body, created_at) VALUES ($1, $2, $3, {NOW})"
    ))
    .bind(id)
    .bind(seq)
    .bind(Json(&kind))
    .execute(&mut *conn)
    .await?;
    let event = Event {
        job_id: id,
        seq,
        kind,
    };
    webhooks::on_event(conn, &event).await?;
    Ok(event)
}

#[async_trait]
impl JobStore for PgStore {
    async fn enqueue(&self, new: NewJob) -> Result<Enqueued, StoreError> {
        let id = Uuid::now_v7();
        if new.idempotency.is_none() && new.max_active.is_none() {
            // Nothing to check first: the job and its event are one statement, one commit.
            let mut conn = self.pool.acquire().await?;
            let (job, event) = insert_job(&mut conn, id, &new).await?;
            return Ok(Enqueued::New(job, event));
        }
        let mut tx = self.pool.begin().await?;
        // One owner's submissions take turns (on every API process): the quota count
        // and the idempotency lookup cannot both pass for two racing requests.
        sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 7))")
            .bind(&new.owner)
            .execute(&mut *tx)
            .await?;
        if let Some(idem) = &new.idempotency {
            let earlier: Option<(String, Uuid)> = sqlx::query_as(&format!(
                "SELECT fingerprint, job_id FROM idempotency_keys \
                 WHERE owner = $1 AND key = $2 AND created_at > {NOW} - $3"
            ))
            .bind(&new.owner)
            .bind(&idem.key)
            .bind(ms(super::store::IDEMPOTENCY_TTL))
            .fetch_optional(&mut *tx)
            .await?;
            if let Some((fingerprint, job_id)) = earlier {
                if fingerprint != idem.fingerprint {
                    return Err(StoreError::IdempotencyMismatch);
                }
                let row = sqlx::query(&format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = $1"))
                    .bind(job_id)
                    .fetch_optional(&mut *tx)
                    .await?;
                if let Some(row) = row {
                    return Ok(Enqueued::Existing(job_from_row(&row)?));
                }
            }
        }
        if let Some(limit) = new.max_active {
            let active: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) FROM jobs WHERE owner = $1 AND status IN ('queued', 'running')",
            )
            .bind(&new.owner)
            .fetch_one(&mut *tx)
            .await?;
            if active >= limit {
                return Err(StoreError::TooManyJobs { active, limit });
            }
        }
        let (job, event) = insert_job(&mut tx, id, &new).await?;
        if let Some(idem) = &new.idempotency {
            sqlx::query(&format!(
                "INSERT INTO idempotency_keys (owner, key, fingerprint, job_id, created_at) \
                 VALUES ($1, $2, $3, $4, {NOW}) ON CONFLICT (owner, key) DO UPDATE \
                 SET fingerprint = excluded.fingerprint, job_id = excluded.job_id, \
                     created_at = excluded.created_at"
            ))
            .bind(&new.owner)
            .bind(&idem.key)
            .bind(&idem.fingerprint)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(Enqueued::New(job, event))
    }

    async fn get(&self, id: Uuid, scope: &Scope) -> Result<Option<Job>, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT {JOB_COLUMNS} FROM jobs WHERE id = $1 AND ($2::text IS NULL OR owner = $2)"
        ))
        .bind(id)
        .bind(scope.owner())
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(job_from_row).transpose()
    }

    async fn list(&self, q: &ListQuery) -> Result<Vec<Job>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {JOB_COLUMNS} FROM jobs \
             WHERE ($1::text IS NULL OR status = $1) AND ($2::text IS NULL OR owner = $2) \
               AND ($3::bigint IS NULL OR (created_at, id) < ($3, $4::uuid)) \
             ORDER BY created_at DESC, id DESC LIMIT $5"
        ))
        .bind(q.status.map(|s| s.as_str()))
        .bind(q.scope.owner())
        .bind(q.before.map(|c| c.created_at))
        .bind(q.before.map(|c| c.id))
        .bind(q.limit.clamp(1, 500))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(job_from_row).collect()
    }

    async fn queue_position(&self, id: Uuid) -> Result<Option<i64>, StoreError> {
        let mut conn = self.pool.acquire().await?;
        position(&mut conn, id).await
    }

    async fn claim_preferring(
        &self,
        worker: &str,
        loaded_model: Option<&str>,
        loaded_adapters: Option<&str>,
        lease: Duration,
    ) -> Result<Option<(Lease, Event)>, StoreError> {
        let token = Uuid::new_v4();
        // Best priority, then the model this worker has loaded (and its LoRA set and
        // VAE), then the oldest; rows other workers are claiming right now are skipped,
        // not waited on (see `CLAIM_PICK`).
        let started = EventKind::Started {
            attempt: 0,
            worker: worker.to_string(),
        };
        let row = sqlx::query(&CLAIM)
            .bind(token)
            .bind(ms(lease))
            .bind(worker)
            .bind(loaded_model)
            .bind(loaded_adapters)
            .bind(Json(&started))
            .bind(Uuid::now_v7())
            .fetch_optional(&self.pool)
            .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let job = job_from_row(&row)?;
        let event = Event {
            job_id: job.id,
            seq: job.last_seq,
            kind: EventKind::Started {
                attempt: job.attempt as i64,
                worker: worker.to_string(),
            },
        };
        Ok(Some((Lease { job, token }, event)))
    }

    async fn heartbeat(&self, id: Uuid, token: Uuid, lease: Duration) -> Result<bool, StoreError> {
        let cancel: Option<bool> = sqlx::query_scalar(&format!(
            "UPDATE jobs SET lease_expires_at = {NOW} + $1 \
             WHERE id = $2 AND lease_token = $3 AND status = 'running' RETURNING cancel_requested"
        ))
        .bind(ms(lease))
        .bind(id)
        .bind(token)
        .fetch_optional(&self.pool)
        .await?;
        cancel.ok_or(StoreError::LeaseLost(id))
    }

    async fn record(&self, id: Uuid, token: Uuid, kind: EventKind) -> Result<Event, StoreError> {
        if kind.is_terminal() {
            return Err(StoreError::Database(
                "terminal events are recorded by complete/fail/cancel".into(),
            ));
        }
        if kind.is_live_only() {
            return Err(StoreError::Database(
                "previews are kept by set_preview, never in the event log".into(),
            ));
        }
        let progress = match &kind {
            EventKind::Progress { step, total, .. } => Some((*step, *total)),
            _ => None,
        };
        // Progress goes through connections that commit asynchronously (no WAL flush of
        // their own): a database crash may lose the last moments of progress of a running
        // job, never a state change, and the next synchronous commit (the terminal event)
        // flushes everything before it. Progress is most of a job's commits.
        let pool = if progress.is_some() {
            &self.progress
        } else {
            &self.pool
        };
        let webhook = WebhookEvent::of(&kind);
        let sql = record_sql(webhook);
        let mut query = sqlx::query_scalar(&sql)
            .bind(id)
            .bind(token)
            .bind(progress.map(|p| p.0))
            .bind(progress.map(|p| p.1))
            .bind(Json(&kind));
        if webhook.is_some() {
            query = query.bind(Uuid::now_v7());
        }
        let seq: i64 = query
            .fetch_optional(pool)
            .await?
            .ok_or(StoreError::LeaseLost(id))?;
        Ok(Event {
            job_id: id,
            seq,
            kind,
        })
    }

    async fn complete(
        &self,
        id: Uuid,
        token: Uuid,
        images: Vec<NewImage>,
        timings: serde_json::Value,
    ) -> Result<Vec<Event>, StoreError> {
        let kinds = super::store::completion_events(&images, timings.clone());
        let bodies = kinds
            .iter()
            .map(serde_json::to_value)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| StoreError::Database(e.to_string()))?;
        let column = |f: fn(&NewImage) -> i64| images.iter().map(f).collect::<Vec<i64>>();
        let last_seq: i64 = sqlx::query_scalar(&COMPLETE)
            .bind(Json(&timings))
            .bind(id)
            .bind(token)
            .bind(kinds.len() as i64)
            .bind(images.iter().map(|i| i.id).collect::<Vec<Uuid>>())
            .bind(column(|i| i.index))
            .bind(
                images
                    .iter()
                    .map(|i| i.object_key.clone())
                    .collect::<Vec<String>>(),
            )
            .bind(column(|i| i.seed))
            .bind(column(|i| i.width))
            .bind(column(|i| i.height))
            .bind(column(|i| i.bytes))
            .bind(bodies)
            .bind(Uuid::now_v7())
            .fetch_optional(&self.pool)
            .await?
            .ok_or(StoreError::LeaseLost(id))?;
        Ok(numbered_up_to(id, kinds, last_seq))
    }

    async fn complete_many(
        &self,
        completions: Vec<Completion>,
    ) -> Result<Vec<Result<Vec<Event>, StoreError>>, StoreError> {
        batch::complete_many(&self.pool, completions).await
    }

    async fn fail(
        &self,
        id: Uuid,
        token: Uuid,
        error: &str,
        retry_after: Option<Duration>,
    ) -> Result<Event, StoreError> {
        let mut tx = self.pool.begin().await?;
        let row = sqlx::query(
            "SELECT attempt, max_attempts FROM jobs \
             WHERE id = $1 AND lease_token = $2 AND status = 'running' FOR UPDATE",
        )
        .bind(id)
        .bind(token)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or(StoreError::LeaseLost(id))?;
        let attempt: i32 = row.try_get("attempt")?;
        let max_attempts: i32 = row.try_get("max_attempts")?;
        let retry = retry_after.filter(|_| attempt < max_attempts).map(ms);
        let seq: i64 = sqlx::query_scalar(&format!(
            "UPDATE jobs SET status = CASE WHEN $1::bigint IS NULL THEN 'failed' ELSE 'queued' END, \
                    run_at = COALESCE({NOW} + $1::bigint, run_at), \
                    finished_at = CASE WHEN $1::bigint IS NULL THEN {NOW} END, \
                    error = $2, lease_token = NULL, lease_expires_at = NULL, worker = NULL, \
                    last_seq = last_seq + 1 \
             WHERE id = $3 RETURNING last_seq"
        ))
        .bind(retry)
        .bind(error)
        .bind(id)
        .fetch_one(&mut *tx)
        .await?;
        let kind = EventKind::Failed {
            error: error.to_string(),
            retrying: retry.is_some(),
        };
        let event = insert_event(&mut tx, id, seq, kind).await?;
        tx.commit().await?;
        Ok(event)
    }

    async fn cancel_running(&self, id: Uuid, token: Uuid) -> Result<Event, StoreError> {
        let mut tx = self.pool.begin().await?;
        let seq: i64 = sqlx::query_scalar(&format!(
            "UPDATE jobs SET status = 'canceled', finished_at = {NOW}, lease_token = NULL, \
                    lease_expires_at = NULL, last_seq = last_seq + 1 \
             WHERE id = $1 AND lease_token = $2 AND status = 'running' RETURNING last_seq"
        ))
        .bind(id)
        .bind(token)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or(StoreError::LeaseLost(id))?;
        let event = insert_event(&mut tx, id, seq, EventKind::Canceled).await?;
        tx.commit().await?;
        Ok(event)
    }

    async fn release(&self, id: Uuid, token: Uuid) -> Result<(), StoreError> {
        let done = sqlx::query(&format!(
            "UPDATE jobs SET status = 'queued', attempt = GREATEST(attempt - 1, 0), lease_token = NULL, \
                    lease_expires_at = NULL, worker = NULL, run_at = {NOW}, progress_step = 0 \
             WHERE id = $1 AND lease_token = $2 AND status = 'running'"
        ))
        .bind(id)
        .bind(token)
        .execute(&self.pool)
        .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::LeaseLost(id));
        }
        Ok(())
    }

    async fn request_cancel(&self, id: Uuid, scope: &Scope) -> Result<CancelOutcome, StoreError> {
        let mut tx = self.pool.begin().await?;
        let status: String = sqlx::query_scalar(
            "SELECT status FROM jobs WHERE id = $1 AND ($2::text IS NULL OR owner = $2) FOR UPDATE",
        )
        .bind(id)
        .bind(scope.owner())
        .fetch_optional(&mut *tx)
        .await?
        .ok_or(StoreError::NotFound(id))?;
        let status =
            JobStatus::parse(&status).ok_or_else(|| StoreError::Corrupt(status.clone()))?;
        let outcome = match status {
            JobStatus::Queued => {
                let seq: i64 = sqlx::query_scalar(&format!(
                    "UPDATE jobs SET status = 'canceled', finished_at = {NOW}, last_seq = last_seq + 1 \
                     WHERE id = $1 RETURNING last_seq"
                ))
                .bind(id)
                .fetch_one(&mut *tx)
                .await?;
                CancelOutcome::Canceled(insert_event(&mut tx, id, seq, EventKind::Canceled).await?)
            }
            JobStatus::Running => {
                sqlx::query("UPDATE jobs SET cancel_requested = TRUE WHERE id = $1")
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
                CancelOutcome::Requested
            }
            terminal => {
                return Err(StoreError::Conflict {
                    id,
                    status: terminal,
                })
            }
        };
        tx.commit().await?;
        Ok(outcome)
    }

    async fn rescue_expired(&self) -> Result<Vec<Event>, StoreError> {
        let mut tx = self.pool.begin().await?;
        // SKIP LOCKED: two rescuers never move the same job, and neither waits on the other.
        let rows = sqlx::query(&format!(
            "SELECT id, attempt, max_attempts, cancel_requested FROM jobs \
             WHERE status = 'running' AND lease_expires_at < {NOW} FOR UPDATE SKIP LOCKED"
        ))
        .fetch_all(&mut *tx)
        .await?;
        let mut events = Vec::with_capacity(rows.len());
        for row in rows {
            let id: Uuid = row.try_get("id")?;
            let attempt: i32 = row.try_get("attempt")?;
            let max_attempts: i32 = row.try_get("max_attempts")?;
            let canceled: bool = row.try_get("cancel_requested")?;
            let (status, kind, error) =
                super::store::rescue_outcome(attempt.into(), max_attempts.into(), canceled);
            let status = status.as_str();
            let seq: i64 = sqlx::query_scalar(&format!(
                "UPDATE jobs SET status = $1, error = CASE WHEN $1 = 'canceled' THEN error ELSE $2 END, \
                        lease_token = NULL, lease_expires_at = NULL, worker = NULL, run_at = {NOW}, \
                        finished_at = CASE WHEN $1 = 'queued' THEN NULL ELSE {NOW} END, \
                        last_seq = last_seq + 1 \
                 WHERE id = $3 RETURNING last_seq"
            ))
            .bind(status)
            .bind(&error)
            .bind(id)
            .fetch_one(&mut *tx)
            .await?;
            events.push(insert_event(&mut tx, id, seq, kind).await?);
        }
        tx.commit().await?;
        Ok(events)
    }

    async fn events_after(
        &self,
        id: Uuid,
        after_seq: i64,
        scope: &Scope,
    ) -> Result<Vec<Event>, StoreError> {
        let rows = sqlx::query(
            "SELECT e.seq, e.body FROM job_events e JOIN jobs j ON j.id = e.job_id \
             WHERE e.job_id = $1 AND e.seq > $2 AND ($3::text IS NULL OR j.owner = $3) \
             ORDER BY e.seq",
        )
        .bind(id)
        .bind(after_seq)
        .bind(scope.owner())
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                let Json(kind): Json<EventKind> = row.try_get("body")?;
                Ok(Event {
                    job_id: id,
                    seq: row.try_get("seq")?,
                    kind,
                })
            })
            .collect()
    }

    async fn image(&self, id: Uuid, scope: &Scope) -> Result<Option<ImageRecord>, StoreError> {
        let row =
            sqlx::query("SELECT * FROM images WHERE id = $1 AND ($2::text IS NULL OR owner = $2)")
                .bind(id)
                .bind(scope.owner())
                .fetch_optional(&self.pool)
                .await?;
        row.as_ref().map(image_from_row).transpose()
    }

    async fn job_images(
        &self,
        job_id: Uuid,
        scope: &Scope,
    ) -> Result<Vec<ImageRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT * FROM images WHERE job_id = $1 AND ($2::text IS NULL OR owner = $2) \
             ORDER BY idx",
        )
        .bind(job_id)
        .bind(scope.owner())
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(image_from_row).collect()
    }

    async fn list_images(&self, q: &ImageQuery) -> Result<Vec<ImageRecord>, StoreError> {
        gallery::list_images(&self.pool, q).await
    }

    async fn delete_image(
        &self,
        id: Uuid,
        scope: &Scope,
    ) -> Result<Option<ImageRecord>, StoreError> {
        gallery::delete_image(&self.pool, id, scope).await
    }

    async fn delete_job(
        &self,
        id: Uuid,
        scope: &Scope,
    ) -> Result<Option<(Job, Vec<ImageRecord>)>, StoreError> {
        gallery::delete_job(&self.pool, id, scope).await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    async fn count_by_status(&self) -> Result<Vec<(JobStatus, i64)>, StoreError> {
        let rows: Vec<(String, i64)> =
            sqlx::query_as("SELECT status, COUNT(*) FROM jobs GROUP BY status")
                .fetch_all(&self.pool)
                .await?;
        Ok(rows
            .into_iter()
            .filter_map(|(s, n)| JobStatus::parse(&s).map(|s| (s, n)))
            .collect())
    }

    async fn upsert_worker(&self, w: &WorkerInfo) -> Result<(), StoreError> {
        maintenance::upsert_worker(self, w).await
    }

    async fn list_workers(&self, max_age: Duration) -> Result<Vec<WorkerInfo>, StoreError> {
        maintenance::list_workers(self, max_age).await
    }

    async fn remove_worker(&self, name: &str) -> Result<(), StoreError> {
        maintenance::remove_worker(self, name).await
    }

    async fn owner_default_model(&self, owner: &str) -> Result<Option<String>, StoreError> {
        let model: Option<Option<String>> =
            sqlx::query_scalar("SELECT default_model FROM owner_settings WHERE owner = $1")
                .bind(owner)
                .fetch_optional(&self.pool)
                .await?;
        Ok(model.flatten())
    }

    async fn set_owner_default_model(
        &self,
        owner: &str,
        model: Option<&str>,
    ) -> Result<(), StoreError> {
        sqlx::query(&format!(
            "INSERT INTO owner_settings (owner, default_model, updated_at) VALUES ($1, $2, {NOW}) \
             ON CONFLICT (owner) DO UPDATE SET default_model = $2, updated_at = {NOW}"
        ))
        .bind(owner)
        .bind(model)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn purge_finished(
        &self,
        older_than: Option<Duration>,
        limit: i64,
    ) -> Result<Vec<PurgedJob>, StoreError> {
        maintenance::purge_finished(self, older_than, limit).await
    }

    async fn compact_events(&self, older_than: Duration, limit: i64) -> Result<u64, StoreError> {
        maintenance::compact_events(self, older_than, limit).await
    }

    async fn referenced_keys(&self, keys: &[String]) -> Result<HashSet<String>, StoreError> {
        maintenance::referenced_keys(self, keys).await
    }

    async fn backup(&self, _path: &Path) -> Result<(), StoreError> {
        Err(StoreError::Unsupported(
            "sdq backup copies the embedded SQLite database; for PostgreSQL use pg_dump \
             (e.g. pg_dump --format=custom --file=sdq.dump \"$SDQ_DATABASE_URL\")"
                .into(),
        ))
    }

    async fn insert_key(&self, key: &ApiKey) -> Result<(), StoreError> {
        keys::insert(&self.pool, key).await
    }

    async fn key_by_lookup(&self, lookup: &str) -> Result<Option<ApiKey>, StoreError> {
        keys::by_lookup(&self.pool, lookup).await
    }

    async fn list_keys(&self) -> Result<Vec<ApiKey>, StoreError> {
        keys::list(&self.pool).await
    }

    async fn revoke_key(&self, id: Uuid) -> Result<Option<ApiKey>, StoreError> {
        keys::revoke(&self.pool, id).await
    }

    async fn touch_key(&self, id: Uuid) -> Result<(), StoreError> {
        keys::touch(&self.pool, id).await
    }

    async fn take_rate_token(
        &self,
        owner: &str,
        per_min: i64,
    ) -> Result<Option<Duration>, StoreError> {
        keys::take_rate_token(&self.pool, owner, per_min).await
    }

    async fn claim_deliveries(
        &self,
        limit: i64,
        lease: Duration,
    ) -> Result<Vec<Delivery>, StoreError> {
        webhooks::claim(&self.pool, limit, lease).await
    }

    async fn set_delivery_payload(&self, id: Uuid, payload: &str) -> Result<String, StoreError> {
        webhooks::set_payload(&self.pool, id, payload).await
    }

    async fn finish_delivery(
        &self,
        id: Uuid,
        attempt: i64,
        outcome: &AttemptOutcome,
    ) -> Result<bool, StoreError> {
        webhooks::finish(&self.pool, id, attempt, outcome).await
    }

    async fn job_deliveries(&self, job_id: Uuid) -> Result<Vec<Delivery>, StoreError> {
        webhooks::of_job(&self.pool, job_id).await
    }

    async fn webhook_secret(&self, owner: &str) -> Result<Option<String>, StoreError> {
        webhooks::secret(&self.pool, owner).await
    }

    async fn set_preview(
        &self,
        id: Uuid,
        token: Uuid,
        preview: &PreviewImage,
    ) -> Result<i64, StoreError> {
        let json =
            serde_json::to_string(preview).map_err(|e| StoreError::Database(e.to_string()))?;
        let seq: Option<i64> = sqlx::query_scalar(
            "UPDATE jobs SET preview = $1 \
             WHERE id = $2 AND lease_token = $3 AND status = 'running' RETURNING last_seq",
        )
        .bind(json)
        .bind(id)
        .bind(token)
        .fetch_optional(&self.pool)
        .await?;
        seq.ok_or(StoreError::LeaseLost(id))
    }

    async fn latest_preview(
        &self,
        id: Uuid,
        scope: &Scope,
    ) -> Result<Option<PreviewImage>, StoreError> {
        let raw: Option<Option<String>> = sqlx::query_scalar(
            "SELECT preview FROM jobs \
             WHERE id = $1 AND ($2::text IS NULL OR owner = $2) AND status = 'running'",
        )
        .bind(id)
        .bind(scope.owner())
        .fetch_optional(&self.pool)
        .await?;
        super::store::preview_from_column(raw.flatten())
    }

    async fn claim_batch(
        &self,
        lead: &Lease,
        worker: &str,
        max: usize,
        lease: Duration,
    ) -> Result<Vec<(Lease, Event)>, StoreError> {
        batch::claim(&self.pool, lead, worker, max, lease).await
    }
}

/// A job's new events, in order, given the `seq` the last of them was stored with.
pub(super) fn numbered_up_to(job_id: Uuid, kinds: Vec<EventKind>, last_seq: i64) -> Vec<Event> {
    let first = last_seq - kinds.len() as i64 + 1;
    kinds
        .into_iter()
        .zip(first..)
        .map(|(kind, seq)| Event { job_id, seq, kind })
        .collect()
}
