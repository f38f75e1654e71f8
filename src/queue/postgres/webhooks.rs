//! Webhook deliveries in PostgreSQL. Rows are made inside the event's own transaction;
//! the job row that transaction updated is locked until it commits, so the coalescing
//! check below sees every earlier event of the job. Deliverers in any number of processes
//! claim with `FOR UPDATE SKIP LOCKED`.

use std::time::Duration;

use sqlx::postgres::PgRow;
use sqlx::{PgConnection, PgPool, Row};
use uuid::Uuid;

use super::{ms, NOW};
use crate::queue::webhooks::{
    AttemptOutcome, Delivery, DeliveryStatus, WebhookEvent, PROGRESS_EVERY,
};
use crate::queue::{Event, StoreError};

const COLUMNS: &str = "id, job_id, owner, event, seq, url, status, attempts, last_error, \
     response_status, payload, next_attempt_at, created_at, delivered_at";

fn delivery_from_row(row: &PgRow) -> Result<Delivery, StoreError> {
    let event: String = row.try_get("event")?;
    let status: String = row.try_get("status")?;
    Ok(Delivery {
        id: row.try_get("id")?,
        job_id: row.try_get("job_id")?,
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
pub(super) async fn on_event(conn: &mut PgConnection, event: &Event) -> Result<(), StoreError> {
    let Some(kind) = WebhookEvent::of(&event.kind) else {
        return Ok(());
    };
    let job = "(SELECT id, owner, webhook_url, webhook_events, $2::bigint AS seq FROM jobs WHERE id = $3)";
    sqlx::query(&insert_from(job, kind, "$1"))
        .bind(Uuid::now_v7())
        .bind(event.seq)
        .bind(event.job_id)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// The `INSERT` of a `kind` delivery for the job row `source` yields (columns `id`,
/// `owner`, `webhook_url`, `webhook_events` and the event's `seq`), if the job subscribed
/// to `kind`; `id` is the parameter holding the new delivery's id. Statements that
/// record an event in one round trip run it as one of their `WITH` parts; the job row
/// they update is then locked before it runs, as in `on_event`'s transaction.
pub(super) fn insert_from(source: &str, kind: WebhookEvent, id: &str) -> String {
    let (next_attempt, coalesce) = if kind == WebhookEvent::Progress {
        // Progress is coalesced (one unsent delivery per job) and spaced by PROGRESS_EVERY.
        (
            format!(
                "GREATEST({NOW}, COALESCE((SELECT MAX(d.created_at) FROM webhook_deliveries d \
                  WHERE d.job_id = s.id AND d.event = 'progress') + {}, 0))",
                ms(PROGRESS_EVERY)
            ),
            " AND NOT EXISTS (SELECT 1 FROM webhook_deliveries d WHERE d.job_id = s.id \
                AND d.event = 'progress' AND d.status = 'pending' AND d.attempts = 0)",
        )
    } else {
        (NOW.to_string(), "")
    };
    format!(
        "INSERT INTO webhook_deliveries (id, job_id, owner, event, seq, url, status, attempts, \
                                         next_attempt_at, created_at) \
         SELECT {id}, s.id, s.owner, '{}', s.seq, s.webhook_url, 'pending', 0, {next_attempt}, {NOW} \
         FROM {source} s \
         WHERE s.webhook_url IS NOT NULL AND (s.webhook_events & {}) != 0{coalesce} \
         ON CONFLICT (job_id, seq) DO NOTHING",
        kind.as_str(),
        kind.bit(),
    )
}

pub(super) async fn claim(
    pool: &PgPool,
    limit: i64,
    lease: Duration,
) -> Result<Vec<Delivery>, StoreError> {
    // A claimed row is hidden until `lease` passes, so a deliverer that dies mid-attempt
    // is retried by any other; SKIP LOCKED keeps concurrent deliverers apart.
    let rows = sqlx::query(&format!(
        "UPDATE webhook_deliveries SET attempts = attempts + 1, next_attempt_at = {NOW} + $1 \
         WHERE id IN (SELECT id FROM webhook_deliveries \
                      WHERE status = 'pending' AND next_attempt_at <= {NOW} \
                      ORDER BY next_attempt_at LIMIT $2 FOR UPDATE SKIP LOCKED) \
         RETURNING {COLUMNS}"
    ))
    .bind(ms(lease))
    .bind(limit)
    .fetch_all(pool)
    .await?;
    rows.iter().map(delivery_from_row).collect()
}

pub(super) async fn set_payload(
    pool: &PgPool,
    id: Uuid,
    payload: &str,
) -> Result<String, StoreError> {
    let kept: Option<Option<String>> = sqlx::query_scalar(
        "UPDATE webhook_deliveries SET payload = COALESCE(payload, $1) WHERE id = $2 RETURNING payload",
    )
    .bind(payload)
    .bind(id)
    .fetch_optional(pool)
    .await?;
    Ok(kept.flatten().unwrap_or_else(|| payload.to_string()))
}

pub(super) async fn finish(
    pool: &PgPool,
    id: Uuid,
    attempt: i64,
    outcome: &AttemptOutcome,
) -> Result<bool, StoreError> {
    let (status, error, code, after) = match outcome {
        AttemptOutcome::Delivered { status } => ("delivered", None, Some(*status), 0),
        AttemptOutcome::Retry {
            error,
            status,
            after,
        } => ("pending", Some(error), *status, ms(*after)),
        AttemptOutcome::Failed { error, status } => ("failed", Some(error), *status, 0),
    };
    let done = sqlx::query(&format!(
        "UPDATE webhook_deliveries SET status = $1, last_error = COALESCE($2, last_error), response_status = $3, \
                next_attempt_at = {NOW} + $4, \
                delivered_at = CASE WHEN $1 = 'delivered' THEN {NOW} END \
         WHERE id = $5 AND attempts = $6 AND status = 'pending'"
    ))
    .bind(status)
    .bind(error)
    .bind(code.map(i64::from))
    .bind(after)
    .bind(id)
    .bind(attempt)
    .execute(pool)
    .await?;
    Ok(done.rows_affected() == 1)
}

pub(super) async fn of_job(pool: &PgPool, job_id: Uuid) -> Result<Vec<Delivery>, StoreError> {
    let rows = sqlx::query(&format!(
        "SELECT {COLUMNS} FROM webhook_deliveries WHERE job_id = $1 ORDER BY created_at, seq"
    ))
    .bind(job_id)
    .fetch_all(pool)
    .await?;
    rows.iter().map(delivery_from_row).collect()
}

pub(super) async fn secret(pool: &PgPool, owner: &str) -> Result<Option<String>, StoreError> {
    let Ok(id) = Uuid::parse_str(owner) else {
        return Ok(None);
    };
    Ok(
        sqlx::query_scalar("SELECT webhook_secret FROM api_keys WHERE id = $1")
            .bind(id)
            .fetch_optional(pool)
            .await?,
    )
}
