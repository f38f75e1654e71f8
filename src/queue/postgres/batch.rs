//! Dynamic batching in PostgreSQL: claiming the jobs that share a UNet batch with a lead.

use std::time::Duration;

use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use super::{insert_event, job_from_row, ms, JOB_COLUMNS, NOW};
use crate::queue::{Event, EventKind, Lease, StoreError};

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
