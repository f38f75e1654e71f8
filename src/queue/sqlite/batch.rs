//! Dynamic batching in SQLite: claiming the jobs that share a UNet batch with a lead.

use std::time::Duration;

use sqlx::SqliteConnection;
use uuid::Uuid;

use super::{insert_event, job_from_row, ms, now_ms, SqliteStore, JOB_COLUMNS};
use crate::queue::{Event, EventKind, Lease, StoreError};

/// Claims up to `max` queued jobs with the lead's `batch_key`, in one statement inside
/// the caller's write transaction. Each row gets its own token: the picked rows are
/// numbered in claim order and joined to the tokens by that number.
pub(super) async fn claim(
    store: &SqliteStore,
    lead: &Lease,
    worker: &str,
    max: usize,
    lease: Duration,
) -> Result<Vec<(Lease, Event)>, StoreError> {
    if max == 0 {
        return Ok(Vec::new());
    }
    let mut tx = store.write_tx().await?;
    let claimed = claim_in(&mut tx, lead, worker, max, lease).await?;
    tx.commit().await?;
    Ok(claimed)
}

async fn claim_in(
    conn: &mut SqliteConnection,
    lead: &Lease,
    worker: &str,
    max: usize,
    lease: Duration,
) -> Result<Vec<(Lease, Event)>, StoreError> {
    let now = now_ms();
    let tokens: Vec<Uuid> = (0..max).map(|_| Uuid::new_v4()).collect();
    let token_list = serde_json::to_string(&tokens.iter().map(Uuid::to_string).collect::<Vec<_>>())
        .map_err(|e| StoreError::Corrupt(e.to_string()))?;
    // UPDATE … FROM computes the join (and so the picked set) before it writes a row.
    let rows = sqlx::query(&format!(
        "WITH picked AS ( \
             SELECT id AS pid, row_number() OVER (ORDER BY priority DESC, created_at, id) - 1 AS n \
             FROM jobs \
             WHERE status = 'queued' AND run_at <= ?1 AND batch_key = \
                   (SELECT batch_key FROM jobs WHERE id = ?2 AND lease_token = ?3 AND status = 'running') \
             ORDER BY priority DESC, created_at, id LIMIT ?4), \
         tokens AS (SELECT key AS tn, value AS tok FROM json_each(?5)) \
         UPDATE jobs SET status = 'running', attempt = attempt + 1, lease_token = tokens.tok, \
                lease_expires_at = ?6, worker = ?7, started_at = ?1, progress_step = 0, \
                progress_total = 0, last_seq = last_seq + 1, preview = NULL \
         FROM picked JOIN tokens ON tokens.tn = picked.n \
         WHERE jobs.id = picked.pid \
         RETURNING {JOB_COLUMNS}, lease_token"
    ))
    .bind(now)
    .bind(lead.job.id.to_string())
    .bind(lead.token.to_string())
    .bind(max as i64)
    .bind(token_list)
    .bind(now + ms(lease))
    .bind(worker)
    .fetch_all(&mut *conn)
    .await?;
    let mut leases = Vec::with_capacity(rows.len());
    for row in &rows {
        let token: String = sqlx::Row::try_get(row, "lease_token")?;
        leases.push(Lease {
            job: job_from_row(row)?,
            token: super::parse_uuid(&token)?,
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
