//! The order of the queue on SQLite: which job a claim takes, and a job's place in line.

use std::sync::LazyLock;

use sqlx::SqliteConnection;
use uuid::Uuid;

use crate::queue::StoreError;

/// 1-based place in line of a queued job. Two counts that each walk only the part of
/// `jobs_claimable` that is ahead of the job (higher priorities, then the older jobs of
/// its own), reading the index alone.
pub(super) async fn position(
    conn: &mut SqliteConnection,
    id: Uuid,
) -> Result<Option<i64>, StoreError> {
    let n: Option<i64> = sqlx::query_scalar(
        "SELECT (SELECT COUNT(*) FROM jobs o WHERE o.status = 'queued' AND o.priority > j.priority) \
              + (SELECT COUNT(*) FROM jobs o WHERE o.status = 'queued' AND o.priority = j.priority \
                   AND (o.created_at, o.id) < (j.created_at, j.id)) + 1 \
         FROM jobs j WHERE j.id = ? AND j.status = 'queued'",
    )
    .bind(id.to_string())
    .fetch_optional(&mut *conn)
    .await?;
    Ok(n)
}

/// The id of the job a claim takes (`?4` now, `?5` the loaded model, `?6` the loaded
/// adapters): the top priority among claimable jobs, and within it the oldest of the
/// first non-empty tier of (model and adapters), (model), (adapters), (any). That is the
/// order `priority DESC, model match DESC, adapters match DESC, created_at, id`, but each
/// tier is one `LIMIT 1` walk of an index (see the `claim_indexes` migration) where
/// sorting by match would read every queued row; `COALESCE` stops at the first tier that
/// has a job. The writer lock is held, so nothing changes between the tiers.
pub(super) static CLAIM_PICK: LazyLock<String> = LazyLock::new(|| {
    let claimable = "status = 'queued' AND run_at <= ?4";
    let top = format!(
        "(SELECT priority FROM jobs WHERE {claimable} ORDER BY priority DESC, created_at, id LIMIT 1)"
    );
    let tier = |matching: &str| {
        format!(
            "(SELECT id FROM jobs WHERE {claimable} AND priority = {top}{matching} \
              ORDER BY created_at, id LIMIT 1)"
        )
    };
    format!(
        "COALESCE({}, {}, {}, {})",
        tier(" AND model = ?5 AND adapters = ?6"),
        tier(" AND model = ?5"),
        tier(" AND adapters = ?6"),
        tier(""),
    )
});
