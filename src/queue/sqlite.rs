//! The SQLite `JobStore` of the embedded deployment.
//!
//! All writes go through a one-connection pool, so SQLite never sees two writers from this
//! process and never answers "database is locked"; reads use a separate pool (WAL mode
//! lets them run beside the writer). Migrations run under an exclusive lock on a file
//! beside the database, so any number of processes may start on one data dir at once.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteRow, SqliteSynchronous,
};
use sqlx::{Connection, Row, SqliteConnection, SqlitePool};
use uuid::Uuid;

use super::webhooks::{AttemptOutcome, Delivery, WebhookEvent};
use super::{
    ApiKey, CancelOutcome, Completion, Enqueued, Event, EventKind, ImageQuery, ImageRecord, Job,
    JobSpec, JobStatus, JobStore, Lease, ListQuery, NewImage, NewJob, PreviewImage, PurgedJob,
    Scope, StoreError, WorkerInfo,
};

mod batch;
mod checkpoint;
mod complete;
mod gallery;
mod keys;
mod maintenance;
mod open;
mod queue_order;
mod webhooks;

use queue_order::{position, CLAIM_PICK};

/// The statuses after which a job never changes.
const FINISHED: &str = "('succeeded', 'failed', 'canceled')";

const JOB_COLUMNS: &str = "id, owner, status, spec, priority, attempt, max_attempts, worker, cancel_requested, \
     progress_step, progress_total, last_seq, error, timings, run_at, created_at, started_at, finished_at";

/// Jobs, events and images in one SQLite file.
pub struct SqliteStore {
    writer: SqlitePool,
    reader: SqlitePool,
    options: SqliteConnectOptions,
    /// Held while the store lives; the checkpoint task stops when it is gone.
    _alive: std::sync::Arc<()>,
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn ms(d: Duration) -> i64 {
    d.as_millis().min(i64::MAX as u128) as i64
}

/// `?, ?, …` for `n` values.
fn placeholders(n: usize) -> String {
    vec!["?"; n].join(", ")
}

fn parse_uuid(s: &str) -> Result<Uuid, StoreError> {
    Uuid::parse_str(s).map_err(|e| StoreError::Corrupt(format!("bad uuid {s}: {e}")))
}

fn job_from_row(row: &SqliteRow) -> Result<Job, StoreError> {
    let status: String = row.try_get("status")?;
    let spec: String = row.try_get("spec")?;
    let timings: Option<String> = row.try_get("timings")?;
    Ok(Job {
        id: parse_uuid(row.try_get("id")?)?,
        owner: row.try_get("owner")?,
        status: JobStatus::parse(&status)
            .ok_or_else(|| StoreError::Corrupt(format!("status {status}")))?,
        spec: serde_json::from_str::<JobSpec>(&spec)
            .map_err(|e| StoreError::Corrupt(e.to_string()))?,
        priority: row.try_get("priority")?,
        attempt: row.try_get("attempt")?,
        max_attempts: row.try_get("max_attempts")?,
        worker: row.try_get("worker")?,
        cancel_requested: row.try_get::<i64, _>("cancel_requested")? != 0,
        progress_step: row.try_get("progress_step")?,
        progress_total: row.try_get("progress_total")?,
        last_seq: row.try_get("last_seq")?,
        error: row.try_get("error")?,
        timings: timings.and_then(|t| serde_json::from_str(&t).ok()),
        run_at: row.try_get("run_at")?,
        created_at: row.try_get("created_at")?,
        started_at: row.try_get("started_at")?,
        finished_at: row.try_get("finished_at")?,
    })
}

fn image_from_row(row: &SqliteRow) -> Result<ImageRecord, StoreError> {
    Ok(ImageRecord {
        id: parse_uuid(row.try_get("id")?)?,
        job_id: parse_uuid(row.try_get("job_id")?)?,
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

/// Inserts the event row for `seq` (already reserved in `jobs.last_seq`) and the webhook
/// delivery it calls for.
async fn insert_event(
    conn: &mut SqliteConnection,
    id: Uuid,
    seq: i64,
    kind: EventKind,
) -> Result<Event, StoreError> {
    let event = insert_event_row(conn, id, seq, kind).await?;
    webhooks::on_event(conn, &event).await?;
    Ok(event)
}

/// `insert_event` for a caller that read the job's `webhook_events` in this transaction:
/// a job that did not subscribe to this event (most have no webhook) skips the lookup.
async fn insert_event_subscribed(
    conn: &mut SqliteConnection,
    id: Uuid,
    seq: i64,
    kind: EventKind,
    webhook_events: i64,
) -> Result<Event, StoreError> {
    let event = insert_event_row(conn, id, seq, kind).await?;
    if WebhookEvent::of(&event.kind).is_some_and(|k| webhook_events & k.bit() != 0) {
        webhooks::on_event(conn, &event).await?;
    }
    Ok(event)
}

async fn insert_event_row(
    conn: &mut SqliteConnection,
    id: Uuid,
    seq: i64,
    kind: EventKind,
) -> Result<Event, StoreError> {
    let body = serde_json::to_string(&kind).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    sqlx::query("INSERT INTO job_events (job_id, seq, body, created_at) VALUES (?, ?, ?, ?)")
        .bind(id.to_string())
        .bind(seq)
        .bind(body)
        .bind(now_ms())
        .execute(&mut *conn)
        .await?;
    Ok(Event {
        job_id: id,
        seq,
        kind,
    })
}

#[async_trait]
impl JobStore for SqliteStore {
    async fn enqueue(&self, new: NewJob) -> Result<Enqueued, StoreError> {
        let id = Uuid::now_v7();
        let now = now_ms();
        let spec =
            serde_json::to_string(&new.spec).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        // The write lock is held from the first statement, so the quota count and the
        // idempotency lookup see every other writer's committed jobs, in any process.
        let mut tx = self.write_tx().await?;
        if let Some(idem) = &new.idempotency {
            let ttl = ms(super::store::IDEMPOTENCY_TTL);
            let earlier: Option<(String, String)> = sqlx::query_as(
                "SELECT fingerprint, job_id FROM idempotency_keys \
                 WHERE owner = ? AND key = ? AND created_at > ?",
            )
            .bind(&new.owner)
            .bind(&idem.key)
            .bind(now - ttl)
            .fetch_optional(&mut *tx)
            .await?;
            if let Some((fingerprint, job_id)) = earlier {
                if fingerprint != idem.fingerprint {
                    return Err(StoreError::IdempotencyMismatch);
                }
                let row = sqlx::query(&format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?"))
                    .bind(&job_id)
                    .fetch_optional(&mut *tx)
                    .await?;
                // A job deleted since then no longer holds its key.
                if let Some(row) = row {
                    return Ok(Enqueued::Existing(job_from_row(&row)?));
                }
            }
        }
        if let Some(limit) = new.max_active {
            let active: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) FROM jobs WHERE owner = ? AND status IN ('queued', 'running')",
            )
            .bind(&new.owner)
            .fetch_one(&mut *tx)
            .await?;
            if active >= limit {
                return Err(StoreError::TooManyJobs { active, limit });
            }
        }
        let row = sqlx::query(&format!(
            "INSERT INTO jobs (id, owner, status, model, spec, priority, max_attempts, run_at, created_at, last_seq, adapters, \
                               webhook_url, webhook_events, batch_key) \
             VALUES (?, ?, 'queued', ?, ?, ?, ?, ?, ?, 1, ?, ?, ?, ?) RETURNING {JOB_COLUMNS}"
        ))
        .bind(id.to_string())
        .bind(&new.owner)
        .bind(&new.spec.model)
        .bind(spec)
        .bind(new.priority)
        .bind(new.max_attempts.max(1))
        .bind(now)
        .bind(now)
        .bind(new.spec.adapters_key())
        .bind(&new.spec.webhook_url)
        .bind(new.spec.webhook_mask())
        .bind(new.spec.batch_key())
        .fetch_one(&mut *tx)
        .await?;
        let job = job_from_row(&row)?;
        if let Some(idem) = &new.idempotency {
            sqlx::query(
                "INSERT INTO idempotency_keys (owner, key, fingerprint, job_id, created_at) \
                 VALUES (?, ?, ?, ?, ?) ON CONFLICT (owner, key) DO UPDATE \
                 SET fingerprint = excluded.fingerprint, job_id = excluded.job_id, \
                     created_at = excluded.created_at",
            )
            .bind(&new.owner)
            .bind(&idem.key)
            .bind(&idem.fingerprint)
            .bind(id.to_string())
            .bind(now)
            .execute(&mut *tx)
            .await?;
        }
        let pos = position(&mut tx, id).await?.unwrap_or(1);
        let event = insert_event(&mut tx, id, 1, EventKind::Queued { position: pos }).await?;
        tx.commit().await?;
        Ok(Enqueued::New(job, event))
    }

    async fn get(&self, id: Uuid, scope: &Scope) -> Result<Option<Job>, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?1 AND (?2 IS NULL OR owner = ?2)"
        ))
        .bind(id.to_string())
        .bind(scope.owner())
        .fetch_optional(&self.reader)
        .await?;
        row.as_ref().map(job_from_row).transpose()
    }

    async fn list(&self, q: &ListQuery) -> Result<Vec<Job>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {JOB_COLUMNS} FROM jobs \
             WHERE (?1 IS NULL OR status = ?1) AND (?2 IS NULL OR owner = ?2) \
               AND (?3 IS NULL OR (created_at, id) < (?3, ?4)) \
             ORDER BY created_at DESC, id DESC LIMIT ?5"
        ))
        .bind(q.status.map(|s| s.as_str()))
        .bind(q.scope.owner())
        .bind(q.before.map(|c| c.created_at))
        .bind(q.before.map(|c| c.id.to_string()))
        .bind(q.limit.clamp(1, 500))
        .fetch_all(&self.reader)
        .await?;
        rows.iter().map(job_from_row).collect()
    }

    async fn queue_position(&self, id: Uuid) -> Result<Option<i64>, StoreError> {
        let mut conn = self.reader.acquire().await?;
        position(&mut conn, id).await
    }

    async fn claim_preferring(
        &self,
        worker: &str,
        loaded_model: Option<&str>,
        loaded_adapters: Option<&str>,
        lease: Duration,
    ) -> Result<Option<(Lease, Event)>, StoreError> {
        let now = now_ms();
        let token = Uuid::new_v4();
        let mut tx = self.write_tx().await?;
        // The claim query: best priority first, then the model this worker already has
        // loaded (no thrash between models) and its LoRA set and VAE, then the oldest.
        let row = sqlx::query(&format!(
            "UPDATE jobs SET status = 'running', attempt = attempt + 1, lease_token = ?1, \
                    lease_expires_at = ?2, worker = ?3, started_at = ?4, progress_step = 0, \
                    progress_total = 0, last_seq = last_seq + 1, preview = NULL \
             WHERE id = {} \
             RETURNING {JOB_COLUMNS}, webhook_events",
            *CLAIM_PICK
        ))
        .bind(token.to_string())
        .bind(now + ms(lease))
        .bind(worker)
        .bind(now)
        .bind(loaded_model)
        .bind(loaded_adapters)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let job = job_from_row(&row)?;
        let event = insert_event_subscribed(
            &mut tx,
            job.id,
            job.last_seq,
            EventKind::Started {
                attempt: job.attempt as i64,
                worker: worker.to_string(),
            },
            row.try_get("webhook_events")?,
        )
        .await?;
        tx.commit().await?;
        Ok(Some((Lease { job, token }, event)))
    }

    async fn heartbeat(&self, id: Uuid, token: Uuid, lease: Duration) -> Result<bool, StoreError> {
        let cancel: Option<i64> = sqlx::query_scalar(
            "UPDATE jobs SET lease_expires_at = ? \
             WHERE id = ? AND lease_token = ? AND status = 'running' RETURNING cancel_requested",
        )
        .bind(now_ms() + ms(lease))
        .bind(id.to_string())
        .bind(token.to_string())
        .fetch_optional(&self.writer)
        .await?;
        cancel.map(|c| c != 0).ok_or(StoreError::LeaseLost(id))
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
        let mut tx = self.write_tx().await?;
        // Fence on the lease, take the next seq and note the progress in one statement.
        let (seq, webhook_events): (i64, i64) = sqlx::query_as(
            "UPDATE jobs SET last_seq = last_seq + 1, \
                    progress_step = COALESCE(?3, progress_step), \
                    progress_total = COALESCE(?4, progress_total) \
             WHERE id = ?1 AND lease_token = ?2 AND status = 'running' \
             RETURNING last_seq, webhook_events",
        )
        .bind(id.to_string())
        .bind(token.to_string())
        .bind(progress.map(|p| p.0))
        .bind(progress.map(|p| p.1))
        .fetch_optional(&mut *tx)
        .await?
        .ok_or(StoreError::LeaseLost(id))?;
        let event = insert_event_subscribed(&mut tx, id, seq, kind, webhook_events).await?;
        tx.commit().await?;
        Ok(event)
    }

    async fn complete(
        &self,
        id: Uuid,
        token: Uuid,
        images: Vec<NewImage>,
        timings: serde_json::Value,
    ) -> Result<Vec<Event>, StoreError> {
        let mut tx = self.write_tx().await?;
        let events = complete::complete_in(&mut tx, id, token, images, timings).await?;
        tx.commit().await?;
        Ok(events)
    }

    async fn complete_many(
        &self,
        completions: Vec<Completion>,
    ) -> Result<Vec<Result<Vec<Event>, StoreError>>, StoreError> {
        complete::complete_many(self, completions).await
    }

    async fn fail(
        &self,
        id: Uuid,
        token: Uuid,
        error: &str,
        retry_after: Option<Duration>,
    ) -> Result<Event, StoreError> {
        let now = now_ms();
        let mut tx = self.write_tx().await?;
        let row = sqlx::query(
            "SELECT attempt, max_attempts FROM jobs WHERE id = ? AND lease_token = ? AND status = 'running'",
        )
        .bind(id.to_string())
        .bind(token.to_string())
        .fetch_optional(&mut *tx)
        .await?
        .ok_or(StoreError::LeaseLost(id))?;
        let attempt: i64 = row.try_get("attempt")?;
        let max_attempts: i64 = row.try_get("max_attempts")?;
        let retry_at = retry_after
            .filter(|_| attempt < max_attempts)
            .map(|d| now + ms(d));
        let seq: i64 = sqlx::query_scalar(
            "UPDATE jobs SET status = CASE WHEN ?1 IS NULL THEN 'failed' ELSE 'queued' END, \
                    run_at = COALESCE(?1, run_at), finished_at = CASE WHEN ?1 IS NULL THEN ?2 END, \
                    error = ?3, lease_token = NULL, lease_expires_at = NULL, worker = NULL, \
                    last_seq = last_seq + 1 \
             WHERE id = ?4 RETURNING last_seq",
        )
        .bind(retry_at)
        .bind(now)
        .bind(error)
        .bind(id.to_string())
        .fetch_one(&mut *tx)
        .await?;
        let event = insert_event(
            &mut tx,
            id,
            seq,
            EventKind::Failed {
                error: error.to_string(),
                retrying: retry_at.is_some(),
            },
        )
        .await?;
        tx.commit().await?;
        Ok(event)
    }

    async fn cancel_running(&self, id: Uuid, token: Uuid) -> Result<Event, StoreError> {
        let mut tx = self.write_tx().await?;
        let seq: i64 = sqlx::query_scalar(
            "UPDATE jobs SET status = 'canceled', finished_at = ?, lease_token = NULL, \
                    lease_expires_at = NULL, last_seq = last_seq + 1 \
             WHERE id = ? AND lease_token = ? AND status = 'running' RETURNING last_seq",
        )
        .bind(now_ms())
        .bind(id.to_string())
        .bind(token.to_string())
        .fetch_optional(&mut *tx)
        .await?
        .ok_or(StoreError::LeaseLost(id))?;
        let event = insert_event(&mut tx, id, seq, EventKind::Canceled).await?;
        tx.commit().await?;
        Ok(event)
    }

    async fn release(&self, id: Uuid, token: Uuid) -> Result<(), StoreError> {
        let done = sqlx::query(
            "UPDATE jobs SET status = 'queued', attempt = MAX(attempt - 1, 0), lease_token = NULL, \
                    lease_expires_at = NULL, worker = NULL, run_at = ?, progress_step = 0 \
             WHERE id = ? AND lease_token = ? AND status = 'running'",
        )
        .bind(now_ms())
        .bind(id.to_string())
        .bind(token.to_string())
        .execute(&self.writer)
        .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::LeaseLost(id));
        }
        Ok(())
    }

    async fn request_cancel(&self, id: Uuid, scope: &Scope) -> Result<CancelOutcome, StoreError> {
        let mut tx = self.write_tx().await?;
        let status: Option<String> = sqlx::query_scalar(
            "SELECT status FROM jobs WHERE id = ?1 AND (?2 IS NULL OR owner = ?2)",
        )
        .bind(id.to_string())
        .bind(scope.owner())
        .fetch_optional(&mut *tx)
        .await?;
        let status = status.ok_or(StoreError::NotFound(id))?;
        let status =
            JobStatus::parse(&status).ok_or_else(|| StoreError::Corrupt(status.clone()))?;
        let outcome = match status {
            JobStatus::Queued => {
                let seq: i64 = sqlx::query_scalar(
                    "UPDATE jobs SET status = 'canceled', finished_at = ?, last_seq = last_seq + 1 \
                     WHERE id = ? AND status = 'queued' RETURNING last_seq",
                )
                .bind(now_ms())
                .bind(id.to_string())
                .fetch_one(&mut *tx)
                .await?;
                CancelOutcome::Canceled(insert_event(&mut tx, id, seq, EventKind::Canceled).await?)
            }
            JobStatus::Running => {
                sqlx::query(
                    "UPDATE jobs SET cancel_requested = 1 WHERE id = ? AND status = 'running'",
                )
                .bind(id.to_string())
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
        let now = now_ms();
        let mut tx = self.write_tx().await?;
        let rows = sqlx::query(
            "SELECT id, attempt, max_attempts, cancel_requested FROM jobs \
             WHERE status = 'running' AND lease_expires_at < ?",
        )
        .bind(now)
        .fetch_all(&mut *tx)
        .await?;
        let mut events = Vec::with_capacity(rows.len());
        for row in rows {
            let id = parse_uuid(row.try_get("id")?)?;
            let attempt: i64 = row.try_get("attempt")?;
            let max_attempts: i64 = row.try_get("max_attempts")?;
            let canceled = row.try_get::<i64, _>("cancel_requested")? != 0;
            let (status, kind, error) =
                super::store::rescue_outcome(attempt, max_attempts, canceled);
            let status = status.as_str();
            let seq: i64 = sqlx::query_scalar(
                "UPDATE jobs SET status = ?, error = CASE WHEN ? = 'canceled' THEN error ELSE ? END, \
                        lease_token = NULL, lease_expires_at = NULL, worker = NULL, run_at = ?, \
                        finished_at = CASE WHEN ? = 'queued' THEN NULL ELSE ? END, \
                        last_seq = last_seq + 1 \
                 WHERE id = ? AND status = 'running' RETURNING last_seq",
            )
            .bind(status)
            .bind(status)
            .bind(&error)
            .bind(now)
            .bind(status)
            .bind(now)
            .bind(id.to_string())
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
             WHERE e.job_id = ?1 AND e.seq > ?2 AND (?3 IS NULL OR j.owner = ?3) ORDER BY e.seq",
        )
        .bind(id.to_string())
        .bind(after_seq)
        .bind(scope.owner())
        .fetch_all(&self.reader)
        .await?;
        rows.iter()
            .map(|row| {
                let body: String = row.try_get("body")?;
                Ok(Event {
                    job_id: id,
                    seq: row.try_get("seq")?,
                    kind: serde_json::from_str(&body)
                        .map_err(|e| StoreError::Corrupt(e.to_string()))?,
                })
            })
            .collect()
    }

    async fn image(&self, id: Uuid, scope: &Scope) -> Result<Option<ImageRecord>, StoreError> {
        let row = sqlx::query("SELECT * FROM images WHERE id = ?1 AND (?2 IS NULL OR owner = ?2)")
            .bind(id.to_string())
            .bind(scope.owner())
            .fetch_optional(&self.reader)
            .await?;
        row.as_ref().map(image_from_row).transpose()
    }

    async fn job_images(
        &self,
        job_id: Uuid,
        scope: &Scope,
    ) -> Result<Vec<ImageRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT * FROM images WHERE job_id = ?1 AND (?2 IS NULL OR owner = ?2) ORDER BY idx",
        )
        .bind(job_id.to_string())
        .bind(scope.owner())
        .fetch_all(&self.reader)
        .await?;
        rows.iter().map(image_from_row).collect()
    }

    async fn list_images(&self, q: &ImageQuery) -> Result<Vec<ImageRecord>, StoreError> {
        gallery::list_images(&self.reader, q).await
    }

    async fn delete_image(
        &self,
        id: Uuid,
        scope: &Scope,
    ) -> Result<Option<ImageRecord>, StoreError> {
        let mut tx = self.write_tx().await?;
        let image = gallery::delete_image(&mut tx, id, scope).await?;
        tx.commit().await?;
        Ok(image)
    }

    async fn delete_job(
        &self,
        id: Uuid,
        scope: &Scope,
    ) -> Result<Option<(Job, Vec<ImageRecord>)>, StoreError> {
        let mut tx = self.write_tx().await?;
        let deleted = gallery::delete_job(&mut tx, id, scope).await?;
        tx.commit().await?;
        Ok(deleted)
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.reader).await?;
        Ok(())
    }

    async fn count_by_status(&self) -> Result<Vec<(JobStatus, i64)>, StoreError> {
        let rows: Vec<(String, i64)> =
            sqlx::query_as("SELECT status, COUNT(*) FROM jobs GROUP BY status")
                .fetch_all(&self.reader)
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
            sqlx::query_scalar("SELECT default_model FROM owner_settings WHERE owner = ?")
                .bind(owner)
                .fetch_optional(&self.reader)
                .await?;
        Ok(model.flatten())
    }

    async fn set_owner_default_model(
        &self,
        owner: &str,
        model: Option<&str>,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO owner_settings (owner, default_model, updated_at) VALUES (?1, ?2, ?3) \
             ON CONFLICT (owner) DO UPDATE SET default_model = ?2, updated_at = ?3",
        )
        .bind(owner)
        .bind(model)
        .bind(now_ms())
        .execute(&self.writer)
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

    async fn backup(&self, path: &Path) -> Result<(), StoreError> {
        maintenance::backup(self, path).await
    }

    async fn insert_key(&self, key: &ApiKey) -> Result<(), StoreError> {
        keys::insert(&self.writer, key).await
    }

    async fn key_by_lookup(&self, lookup: &str) -> Result<Option<ApiKey>, StoreError> {
        keys::by_lookup(&self.reader, lookup).await
    }

    async fn list_keys(&self) -> Result<Vec<ApiKey>, StoreError> {
        keys::list(&self.reader).await
    }

    async fn revoke_key(&self, id: Uuid) -> Result<Option<ApiKey>, StoreError> {
        keys::revoke(&self.writer, id, now_ms()).await
    }

    async fn touch_key(&self, id: Uuid) -> Result<(), StoreError> {
        keys::touch(&self.writer, id, now_ms()).await
    }

    async fn take_rate_token(
        &self,
        owner: &str,
        per_min: i64,
    ) -> Result<Option<Duration>, StoreError> {
        keys::take_rate_token(&self.writer, owner, per_min, now_ms()).await
    }

    async fn claim_deliveries(
        &self,
        limit: i64,
        lease: Duration,
    ) -> Result<Vec<Delivery>, StoreError> {
        webhooks::claim(&self.writer, limit, lease).await
    }

    async fn set_delivery_payload(&self, id: Uuid, payload: &str) -> Result<String, StoreError> {
        webhooks::set_payload(&self.writer, id, payload).await
    }

    async fn finish_delivery(
        &self,
        id: Uuid,
        attempt: i64,
        outcome: &AttemptOutcome,
    ) -> Result<bool, StoreError> {
        webhooks::finish(&self.writer, id, attempt, outcome).await
    }

    async fn job_deliveries(&self, job_id: Uuid) -> Result<Vec<Delivery>, StoreError> {
        webhooks::of_job(&self.reader, job_id).await
    }

    async fn webhook_secret(&self, owner: &str) -> Result<Option<String>, StoreError> {
        webhooks::secret(&self.reader, owner).await
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
            "UPDATE jobs SET preview = ? \
             WHERE id = ? AND lease_token = ? AND status = 'running' RETURNING last_seq",
        )
        .bind(json)
        .bind(id.to_string())
        .bind(token.to_string())
        .fetch_optional(&self.writer)
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
             WHERE id = ?1 AND (?2 IS NULL OR owner = ?2) AND status = 'running'",
        )
        .bind(id.to_string())
        .bind(scope.owner())
        .fetch_optional(&self.reader)
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
        batch::claim(self, lead, worker, max, lease).await
    }
}
