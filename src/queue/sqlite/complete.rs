//! Completion in SQLite: one job, or several in one write transaction (the single
//! writer's turn and the commit are then paid once for the whole batch).

use sqlx::{Row, SqliteConnection};
use uuid::Uuid;

use super::{insert_event_subscribed, now_ms, SqliteStore};
use crate::queue::{Completion, Event, NewImage, StoreError};

/// Completes one job inside the caller's write transaction. `LeaseLost` is returned
/// before anything is written, so the transaction stays usable for other jobs.
pub(super) async fn complete_in(
    conn: &mut SqliteConnection,
    id: Uuid,
    token: Uuid,
    images: Vec<NewImage>,
    timings: serde_json::Value,
) -> Result<Vec<Event>, StoreError> {
    let now = now_ms();
    let kinds = crate::queue::store::completion_events(&images, timings.clone());
    // The events' seqs are reserved here, all at once: they follow `last_seq`.
    let row = sqlx::query(
        "UPDATE jobs SET status = 'succeeded', finished_at = ?, timings = ?, lease_token = NULL, \
                lease_expires_at = NULL, progress_step = progress_total, error = NULL, preview = NULL, \
                last_seq = last_seq + ? \
         WHERE id = ? AND lease_token = ? AND status = 'running' \
         RETURNING last_seq, owner, model, json_extract(spec, '$.prompt') AS prompt, webhook_events",
    )
    .bind(now)
    .bind(timings.to_string())
    .bind(kinds.len() as i64)
    .bind(id.to_string())
    .bind(token.to_string())
    .fetch_optional(&mut *conn)
    .await?
    .ok_or(StoreError::LeaseLost(id))?;
    let last_seq: i64 = row.try_get("last_seq")?;
    let owner: String = row.try_get("owner")?;
    let model: String = row.try_get("model")?;
    let prompt: Option<String> = row.try_get("prompt")?;
    let webhook_events: i64 = row.try_get("webhook_events")?;
    let mut seq = last_seq - kinds.len() as i64;
    for image in images {
        sqlx::query(
            "INSERT INTO images (id, job_id, owner, model, prompt, idx, object_key, seed, width, height, bytes, created_at) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(image.id.to_string())
        .bind(id.to_string())
        .bind(&owner)
        .bind(&model)
        .bind(prompt.as_deref().unwrap_or(""))
        .bind(image.index)
        .bind(&image.object_key)
        .bind(image.seed)
        .bind(image.width)
        .bind(image.height)
        .bind(image.bytes)
        .bind(now)
        .execute(&mut *conn)
        .await?;
    }
    let mut events = Vec::with_capacity(kinds.len());
    for kind in kinds {
        seq += 1;
        events.push(insert_event_subscribed(conn, id, seq, kind, webhook_events).await?);
    }
    Ok(events)
}

/// Completes each job in turn in one write transaction; a lost lease is that job's
/// result, any other error rolls back the whole batch.
pub(super) async fn complete_many(
    store: &SqliteStore,
    completions: Vec<Completion>,
) -> Result<Vec<Result<Vec<Event>, StoreError>>, StoreError> {
    crate::queue::store::check_distinct(&completions)?;
    if completions.is_empty() {
        return Ok(Vec::new());
    }
    let mut tx = store.write_tx().await?;
    let mut results = Vec::with_capacity(completions.len());
    for c in completions {
        match complete_in(&mut tx, c.id, c.token, c.images, c.timings).await {
            Err(StoreError::LeaseLost(id)) => results.push(Err(StoreError::LeaseLost(id))),
            other => results.push(Ok(other?)),
        }
    }
    tx.commit().await?;
    Ok(results)
}
