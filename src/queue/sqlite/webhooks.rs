//! Webhook deliveries in SQLite. Rows are made inside the event's own transaction (on the
//! single writer), claimed and finished by the deliverer.

use std::time::Duration;

use sqlx::sqlite::SqliteRow;
use sqlx::{Row, SqliteConnection, SqlitePool};
use uuid::Uuid;

use super::{ms, now_ms, parse_uuid};
use crate::queue::webhooks::{
    AttemptOutcome, Delivery, DeliveryStatus, WebhookEvent, PROGRESS_EVERY,
};
use crate::queue::{Event, StoreError};

const COLUMNS: &str = "id, job_id, owner, event, seq, url, status, attempts, last_error, \
     response_status, payload, next_attempt_at, created_at, delivered_at";

fn delivery_from_row(row: &SqliteRow) -> Result<Delivery, StoreError> {
    let event: String = row.try_get("event")?;
    let status: String = row.try_get("status")?;
    Ok(Delivery {
        id: parse_uuid(row.try_get("id")?)?,
        job_id: parse_uuid(row.try_get("job_id")?)?,
        owner: row.try_get("owner")?,
        event: WebhookEvent::parse(&event)
            .ok_or_else(|| StoreError::Corrupt(format!("webhook event {event}")))?,
        seq: row.try_get("seq")?,
        url: row.try_get("url")?,
        status: DeliveryStatus::parse(&status)
            .ok_or_else(|| StoreError::Corrupt(format!("delivery status {status}")))?,
        attempts: row.try_get("attempts")?,
        last_error: row.try_get("last_error")?,
        response_status: row.try_get("response_status")?,
        payload: row.try_get("payload")?,
        next_attempt_at: row.try_get("next_attempt_at")?,
        created_at: row.try_get("created_at")?,
        delivered_at: row.try_get("delivered_at")?,
    })
}

/// Adds the delivery `event` calls for, if its job subscribed to it; called in the
/// transaction that records the event.
pub(super) async fn on_event(conn: &mut SqliteConnection, event: &Event) -> Result<(), StoreError> {
    let Some(kind) = WebhookEvent::of(&event.kind) else {
        return Ok(());
    };
    let now = now_ms();
    let job = event.job_id.to_string();
    if kind == WebhookEvent::Progress {
        // Coalesce: an unsent progress delivery will carry this progress too.
        let unsent: Option<i64> = sqlx::query_scalar(
            "SELECT 1 FROM webhook_deliveries \
             WHERE job_id = ? AND event = 'progress' AND status = 'pending' AND attempts = 0",
        )
        .bind(&job)
        .fetch_optional(&mut *conn)
        .await?;
        if unsent.is_some() {
            return Ok(());
        }
    }
    let last_progress: Option<i64> = if kind == WebhookEvent::Progress {
        sqlx::query_scalar(
            "SELECT MAX(created_at) FROM webhook_deliveries WHERE job_id = ? AND event = 'progress'",
        )
        .bind(&job)
        .fetch_one(&mut *conn)
        .await?
    } else {
        None
    };
    let due = last_progress.map_or(now, |t| now.max(t + ms(PROGRESS_EVERY)));
    sqlx::query(
        "INSERT INTO webhook_deliveries (id, job_id, owner, event, seq, url, status, attempts, \
                                         next_attempt_at, created_at) \
         SELECT ?1, id, owner, ?2, ?3, webhook_url, 'pending', 0, ?4, ?5 FROM jobs \
         WHERE id = ?6 AND webhook_url IS NOT NULL AND (webhook_events & ?7) != 0 \
         ON CONFLICT (job_id, seq) DO NOTHING",
    )
    .bind(Uuid::now_v7().to_string())
    .bind(kind.as_str())
    .bind(event.seq)
    .bind(due)
    .bind(now)
    .bind(&job)
    .bind(kind.bit())
    .execute(&mut *conn)
    .await?;
    Ok(())
}

pub(super) async fn claim(
    pool: &SqlitePool,
    limit: i64,
    lease: Duration,
) -> Result<Vec<Delivery>, StoreError> {
    let now = now_ms();
    // The single writer makes the pick-and-update atomic; a claimed row is hidden until
    // `lease` passes, so a deliverer that dies mid-attempt is retried by any other.
    let rows = sqlx::query(&format!(
        "UPDATE webhook_deliveries SET attempts = attempts + 1, next_attempt_at = ?1 \
         WHERE id IN (SELECT id FROM webhook_deliveries \
                      WHERE status = 'pending' AND next_attempt_at <= ?2 \
                      ORDER BY next_attempt_at LIMIT ?3) \
         RETURNING {COLUMNS}"
    ))
    .bind(now + ms(lease))
    .bind(now)
    .bind(limit)
    .fetch_all(pool)
    .await?;
    rows.iter().map(delivery_from_row).collect()
}

pub(super) async fn set_payload(
    pool: &SqlitePool,
    id: Uuid,
    payload: &str,
) -> Result<String, StoreError> {
    let kept: Option<String> = sqlx::query_scalar(
        "UPDATE webhook_deliveries SET payload = COALESCE(payload, ?) WHERE id = ? RETURNING payload",
    )
    .bind(payload)
    .bind(id.to_string())
    .fetch_optional(pool)
    .await?;
    Ok(kept.unwrap_or_else(|| payload.to_string()))
}

pub(super) async fn finish(
    pool: &SqlitePool,
    id: Uuid,
    attempt: i64,
    outcome: &AttemptOutcome,
) -> Result<bool, StoreError> {
    let now = now_ms();
    let (status, error, code, next) = match outcome {
        AttemptOutcome::Delivered { status } => ("delivered", None, Some(*status), now),
        AttemptOutcome::Retry {
            error,
            status,
            after,
        } => ("pending", Some(error), *status, now + ms(*after)),
        AttemptOutcome::Failed { error, status } => ("failed", Some(error), *status, now),
    };
    let done = sqlx::query(
        "UPDATE webhook_deliveries SET status = ?1, last_error = COALESCE(?2, last_error), response_status = ?3, \
                next_attempt_at = ?4, delivered_at = CASE WHEN ?1 = 'delivered' THEN ?5 END \
         WHERE id = ?6 AND attempts = ?7 AND status = 'pending'",
    )
    .bind(status)
    .bind(error)
    .bind(code.map(i64::from))
    .bind(next)
    .bind(now)
    .bind(id.to_string())
    .bind(attempt)
    .execute(pool)
    .await?;
    Ok(done.rows_affected() == 1)
}

pub(super) async fn of_job(pool: &SqlitePool, job_id: Uuid) -> Result<Vec<Delivery>, StoreError> {
    let rows = sqlx::query(&format!(
        "SELECT {COLUMNS} FROM webhook_deliveries WHERE job_id = ? ORDER BY created_at, seq"
    ))
    .bind(job_id.to_string())
    .fetch_all(pool)
    .await?;
    rows.iter().map(delivery_from_row).collect()
}

pub(super) async fn secret(pool: &SqlitePool, owner: &str) -> Result<Option<String>, StoreError> {
    Ok(
        sqlx::query_scalar("SELECT webhook_secret FROM api_keys WHERE id = ?")
            .bind(owner)
            .fetch_optional(pool)
            .await?,
    )
}
