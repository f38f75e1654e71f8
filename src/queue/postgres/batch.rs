//! Dynamic batching in PostgreSQL: claiming the jobs that share a UNet batch with a lead,
//! and completing several jobs in one statement.

use std::time::Duration;

use std::collections::HashMap;

use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use super::statements::COMPLETE_MANY;
use super::{insert_event, job_from_row, ms, numbered_up_to, JOB_COLUMNS, NOW};
use crate::queue::{Completion, Event, EventKind, Lease, StoreError};

/// Claims up to `max` queued jobs with the lead's `batch_key`, in one statement inside
/// the caller's transaction. Rows other workers are claiming are skipped, not waited on;
/// each picked row is numbered in claim order and joined to its own token by that number.
pub(super) async fn claim(
    pool: &PgPool,
    lead: &Lease,
    worker: &str,
    max: usize,
    lease: Duration,
) -> Result<Vec<(Lease, Event)>, StoreError> {
    if max == 0 {
        return Ok(Vec::new());
    }
    let mut tx = pool.begin().await?;
    let claimed = claim_in(&mut tx, lead, worker, max, lease).await?;
    tx.commit().await?;
    Ok(claimed)
}

async fn claim_in(
    conn: &mut PgConnection,
    lead: &Lease,
    worker: &str,
    max: usize,
    lease: Duration,
) -> Result<Vec<(Lease, Event)>, StoreError> {
    let tokens: Vec<Uuid> = (0..max).map(|_| Uuid::new_v4()).collect();
    // Window functions cannot sit beside FOR UPDATE, so the rows are locked one level in.
    let rows = sqlx::query(&format!(
        "WITH picked AS ( \
             SELECT pid, row_number() OVER (ORDER BY priority DESC, created_at, pid) AS n FROM ( \
                 SELECT id AS pid, priority, created_at FROM jobs \
                 WHERE status = 'queued' AND run_at <= {NOW} AND batch_key = \
                       (SELECT batch_key FROM jobs WHERE id = $1 AND lease_token = $2 AND status = 'running') \
                 ORDER BY priority DESC, created_at, id \
                 LIMIT $3 FOR UPDATE SKIP LOCKED) AS candidates), \
         tokens AS (SELECT tok, tn FROM unnest($4::uuid[]) WITH ORDINALITY AS t(tok, tn)) \
         UPDATE jobs SET status = 'running', attempt = attempt + 1, lease_token = tokens.tok, \
                lease_expires_at = {NOW} + $5, worker = $6, started_at = {NOW}, \
                progress_step = 0, progress_total = 0, last_seq = last_seq + 1, preview = NULL \
         FROM picked JOIN tokens ON tokens.tn = picked.n \
         WHERE jobs.id = picked.pid \
         RETURNING {JOB_COLUMNS}, lease_token"
    ))
    .bind(lead.job.id)
    .bind(lead.token)
    .bind(max as i64)
    .bind(&tokens)
    .bind(ms(lease))
    .bind(worker)
    .fetch_all(&mut *conn)
    .await?;
    let mut leases = Vec::with_capacity(rows.len());
    for row in &rows {
        leases.push(Lease {
            job: job_from_row(row)?,
            token: sqlx::Row::try_get(row, "lease_token")?,
        });
    }
    // RETURNING has no order; events go in claim order.
    leases.sort_by_key(|l| {
        (
            std::cmp::Reverse(l.job.priority),
            l.job.created_at,
            l.job.id,
        )
    });
    let mut claimed = Vec::with_capacity(leases.len());
    for lease in leases {
        let started = EventKind::Started {
            attempt: lease.job.attempt as i64,
            worker: worker.to_string(),
        };
        let event = insert_event(conn, lease.job.id, lease.job.last_seq, started).await?;
        claimed.push((lease, event));
    }
    Ok(claimed)
}

/// Completes every job of `completions` whose lease still holds, in one statement (one
/// commit); the others get `LeaseLost`. The arrays are the batch flattened: one element
/// per job, per image and per event, each image and event naming its job's 1-based place.
pub(super) async fn complete_many(
    pool: &PgPool,
    completions: Vec<Completion>,
) -> Result<Vec<Result<Vec<Event>, StoreError>>, StoreError> {
    crate::queue::store::check_distinct(&completions)?;
    if completions.is_empty() {
        return Ok(Vec::new());
    }
    let n = completions.len();
    let mut ids = Vec::with_capacity(n);
    let mut tokens = Vec::with_capacity(n);
    let mut timings = Vec::with_capacity(n);
    let mut counts = Vec::with_capacity(n);
    let mut deliveries = Vec::with_capacity(n);
    let mut image_job: Vec<i64> = Vec::new();
    let mut image_id: Vec<Uuid> = Vec::new();
    let mut image_col: [Vec<i64>; 5] = Default::default(); // idx, seed, width, height, bytes
    let mut image_key: Vec<String> = Vec::new();
    let mut event_job: Vec<i64> = Vec::new();
    let mut event_n: Vec<i64> = Vec::new();
    let mut bodies: Vec<serde_json::Value> = Vec::new();
    let mut kinds_of = Vec::with_capacity(n);
    for (place, c) in (1i64..).zip(&completions) {
        let kinds = crate::queue::store::completion_events(&c.images, c.timings.clone());
        for (number, kind) in (1i64..).zip(&kinds) {
            event_job.push(place);
            event_n.push(number);
            bodies
                .push(serde_json::to_value(kind).map_err(|e| StoreError::Database(e.to_string()))?);
        }
        for image in &c.images {
            image_job.push(place);
            image_id.push(image.id);
            image_key.push(image.object_key.clone());
            for (col, v) in image_col.iter_mut().zip([
                image.index,
                image.seed,
                image.width,
                image.height,
                image.bytes,
            ]) {
                col.push(v);
            }
        }
        ids.push(c.id);
        tokens.push(c.token);
        timings.push(c.timings.clone());
        counts.push(kinds.len() as i64);
        deliveries.push(Uuid::now_v7());
        kinds_of.push(kinds);
    }
    let [idx, seed, width, height, bytes] = image_col;
    let rows: Vec<(i64, i64)> = sqlx::query_as(&COMPLETE_MANY)
        .bind(&ids)
        .bind(&tokens)
        .bind(&timings)
        .bind(&counts)
        .bind(&deliveries)
        .bind(&image_job)
        .bind(&image_id)
        .bind(&idx)
        .bind(&image_key)
        .bind(&seed)
        .bind(&width)
        .bind(&height)
        .bind(&bytes)
        .bind(&event_job)
        .bind(&event_n)
        .bind(&bodies)
        .fetch_all(pool)
        .await?;
    let last_seq: HashMap<i64, i64> = rows.into_iter().collect();
    Ok((1i64..)
        .zip(ids)
        .zip(kinds_of)
        .map(|((place, id), kinds)| {
            let last = *last_seq.get(&place).ok_or(StoreError::LeaseLost(id))?;
            Ok(numbered_up_to(id, kinds, last))
        })
        .collect())
}
