//! The gallery's queries in SQLite: image listing and deletion of images and jobs.

use sqlx::{Sqlite, SqlitePool, Transaction};
use uuid::Uuid;

use super::{image_from_row, job_from_row, JOB_COLUMNS};
use crate::queue::{ImageQuery, ImageRecord, Job, Scope, StoreError};

pub(super) async fn list_images(
    pool: &SqlitePool,
    q: &ImageQuery,
) -> Result<Vec<ImageRecord>, StoreError> {
    let rows = sqlx::query(
        "SELECT * FROM images \
         WHERE (?1 IS NULL OR owner = ?1) AND (?2 IS NULL OR job_id = ?2) \
           AND (?3 IS NULL OR model = ?3) AND (?4 IS NULL OR created_at >= ?4) \
           AND (?5 IS NULL OR (created_at, id) < (?5, ?6)) \
         ORDER BY created_at DESC, id DESC LIMIT ?7",
    )
    .bind(q.scope.owner())
    .bind(q.job_id.map(|j| j.to_string()))
    .bind(q.model.as_deref())
    .bind(q.since)
    .bind(q.before.map(|c| c.created_at))
    .bind(q.before.map(|c| c.id.to_string()))
    .bind(q.limit.clamp(1, 500))
    .fetch_all(pool)
    .await?;
    rows.iter().map(image_from_row).collect()
}

pub(super) async fn delete_image(
    tx: &mut Transaction<'static, Sqlite>,
    id: Uuid,
    scope: &Scope,
) -> Result<Option<ImageRecord>, StoreError> {
    let row =
        sqlx::query("DELETE FROM images WHERE id = ?1 AND (?2 IS NULL OR owner = ?2) RETURNING *")
            .bind(id.to_string())
            .bind(scope.owner())
            .fetch_optional(&mut **tx)
            .await?;
    row.as_ref().map(image_from_row).transpose()
}

pub(super) async fn delete_job(
    tx: &mut Transaction<'static, Sqlite>,
    id: Uuid,
    scope: &Scope,
) -> Result<Option<(Job, Vec<ImageRecord>)>, StoreError> {
    let row = sqlx::query(&format!(
        "SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?1 AND (?2 IS NULL OR owner = ?2)"
    ))
    .bind(id.to_string())
    .bind(scope.owner())
    .fetch_optional(&mut **tx)
    .await?;
    let Some(row) = row else { return Ok(None) };
    let job = job_from_row(&row)?;
    if !job.status.is_terminal() {
        return Err(StoreError::Conflict {
            id,
            status: job.status,
        });
    }
    let images = sqlx::query("DELETE FROM images WHERE job_id = ? RETURNING *")
        .bind(id.to_string())
        .fetch_all(&mut **tx)
        .await?;
    let images = images
        .iter()
        .map(image_from_row)
        .collect::<Result<Vec<_>, _>>()?;
    sqlx::query("DELETE FROM job_events WHERE job_id = ?")
        .bind(id.to_string())
        .execute(&mut **tx)
        .await?;
    sqlx::query("DELETE FROM idempotency_keys WHERE job_id = ?")
        .bind(id.to_string())
        .execute(&mut **tx)
        .await?;
    sqlx::query("DELETE FROM jobs WHERE id = ?")
        .bind(id.to_string())
        .execute(&mut **tx)
        .await?;
    Ok(Some((job, images)))
}
