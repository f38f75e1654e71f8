//! The gallery's queries in PostgreSQL: image listing and deletion of images and jobs.

use sqlx::PgPool;
use uuid::Uuid;

use super::{image_from_row, job_from_row, JOB_COLUMNS};
use crate::queue::{ImageQuery, ImageRecord, Job, Scope, StoreError};

pub(super) async fn list_images(
    pool: &PgPool,
    q: &ImageQuery,
) -> Result<Vec<ImageRecord>, StoreError> {
    let rows = sqlx::query(
        "SELECT * FROM images \
         WHERE ($1::text IS NULL OR owner = $1) AND ($2::uuid IS NULL OR job_id = $2) \
           AND ($3::text IS NULL OR model = $3) AND ($4::bigint IS NULL OR created_at >= $4) \
           AND ($5::bigint IS NULL OR (created_at, id) < ($5, $6::uuid)) \
         ORDER BY created_at DESC, id DESC LIMIT $7",
    )
    .bind(q.scope.owner())
    .bind(q.job_id)
    .bind(q.model.as_deref())
    .bind(q.since)
    .bind(q.before.map(|c| c.created_at))
    .bind(q.before.map(|c| c.id))
    .bind(q.limit.clamp(1, 500))
    .fetch_all(pool)
    .await?;
    rows.iter().map(image_from_row).collect()
}

pub(super) async fn delete_image(
    pool: &PgPool,
    id: Uuid,
    scope: &Scope,
) -> Result<Option<ImageRecord>, StoreError> {
    let row = sqlx::query(
        "DELETE FROM images WHERE id = $1 AND ($2::text IS NULL OR owner = $2) RETURNING *",
    )
    .bind(id)
    .bind(scope.owner())
    .fetch_optional(pool)
    .await?;
    row.as_ref().map(image_from_row).transpose()
}

pub(super) async fn delete_job(
    pool: &PgPool,
    id: Uuid,
    scope: &Scope,
) -> Result<Option<(Job, Vec<ImageRecord>)>, StoreError> {
    let mut tx = pool.begin().await?;
    let row = sqlx::query(&format!(
        "SELECT {JOB_COLUMNS} FROM jobs WHERE id = $1 AND ($2::text IS NULL OR owner = $2) \
         FOR UPDATE"
    ))
    .bind(id)
    .bind(scope.owner())
    .fetch_optional(&mut *tx)
    .await?;
    let Some(row) = row else { return Ok(None) };
    let job = job_from_row(&row)?;
    if !job.status.is_terminal() {
        return Err(StoreError::Conflict {
            id,
            status: job.status,
        });
    }
    let images = sqlx::query("DELETE FROM images WHERE job_id = $1 RETURNING *")
        .bind(id)
        .fetch_all(&mut *tx)
        .await?
        .iter()
        .map(image_from_row)
        .collect::<Result<Vec<_>, _>>()?;
    for table in ["job_events", "idempotency_keys"] {
        sqlx::query(&format!("DELETE FROM {table} WHERE job_id = $1"))
            .bind(id)
            .execute(&mut *tx)
            .await?;
    }
    sqlx::query("DELETE FROM jobs WHERE id = $1")
        .bind(id)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(Some((job, images)))
}
