//! API keys and rate buckets in SQLite.

use std::time::Duration;

use sqlx::sqlite::SqliteRow;
use sqlx::{Row, SqlitePool};
use uuid::Uuid;

use super::parse_uuid;
use crate::queue::store::bucket_wait;
use crate::queue::{ApiKey, StoreError};

fn key_from_row(row: &SqliteRow) -> Result<ApiKey, StoreError> {
    Ok(ApiKey {
        id: parse_uuid(row.try_get("id")?)?,
        name: row.try_get("name")?,
        lookup: row.try_get("lookup")?,
        secret_hash: row.try_get("secret_hash")?,
        webhook_secret: row.try_get("webhook_secret")?,
        admin: row.try_get::<i64, _>("admin")? != 0,
        max_queued: row.try_get("max_queued")?,
        rate_per_min: row.try_get("rate_per_min")?,
        retain_days: row.try_get("retain_days")?,
        created_at: row.try_get("created_at")?,
        revoked_at: row.try_get("revoked_at")?,
        last_used_at: row.try_get("last_used_at")?,
    })
}

pub(super) async fn insert(pool: &SqlitePool, key: &ApiKey) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO api_keys (id, name, lookup, secret_hash, webhook_secret, admin, max_queued, \
                               rate_per_min, created_at, retain_days) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(key.id.to_string())
    .bind(&key.name)
    .bind(&key.lookup)
    .bind(&key.secret_hash)
    .bind(&key.webhook_secret)
    .bind(key.admin as i64)
    .bind(key.max_queued)
    .bind(key.rate_per_min)
    .bind(key.created_at)
    .bind(key.retain_days)
    .execute(pool)
    .await?;
    Ok(())
}

pub(super) async fn by_lookup(
    pool: &SqlitePool,
    lookup: &str,
) -> Result<Option<ApiKey>, StoreError> {
    let row = sqlx::query("SELECT * FROM api_keys WHERE lookup = ?")
        .bind(lookup)
        .fetch_optional(pool)
        .await?;
    row.as_ref().map(key_from_row).transpose()
}

pub(super) async fn list(pool: &SqlitePool) -> Result<Vec<ApiKey>, StoreError> {
    let rows = sqlx::query("SELECT * FROM api_keys ORDER BY created_at, id")
        .fetch_all(pool)
        .await?;
    rows.iter().map(key_from_row).collect()
}

pub(super) async fn revoke(
    pool: &SqlitePool,
    id: Uuid,
    now: i64,
) -> Result<Option<ApiKey>, StoreError> {
    let row = sqlx::query(
        "UPDATE api_keys SET revoked_at = COALESCE(revoked_at, ?) WHERE id = ? RETURNING *",
    )
    .bind(now)
    .bind(id.to_string())
    .fetch_optional(pool)
    .await?;
    row.as_ref().map(key_from_row).transpose()
}

pub(super) async fn touch(pool: &SqlitePool, id: Uuid, now: i64) -> Result<(), StoreError> {
    sqlx::query("UPDATE api_keys SET last_used_at = ? WHERE id = ?")
        .bind(now)
        .bind(id.to_string())
        .execute(pool)
        .await?;
    Ok(())
}

/// One statement takes the token or leaves the bucket as it was, so concurrent requests
/// (from any process on this file) never both take the last one.
pub(super) async fn take_rate_token(
    pool: &SqlitePool,
    owner: &str,
    per_min: i64,
    now: i64,
) -> Result<Option<Duration>, StoreError> {
    let refilled = "MIN(?2, tokens + (?3 - updated_at) * ?2 / 60000.0)";
    let taken: Option<f64> = sqlx::query_scalar(&format!(
        "INSERT INTO rate_buckets (owner, tokens, updated_at) VALUES (?1, ?2 - 1, ?3) \
         ON CONFLICT (owner) DO UPDATE SET tokens = {refilled} - 1, updated_at = ?3 \
         WHERE {refilled} >= 1 RETURNING tokens"
    ))
    .bind(owner)
    .bind(per_min as f64)
    .bind(now)
    .fetch_optional(pool)
    .await?;
    if taken.is_some() {
        return Ok(None);
    }
    let (tokens, updated_at): (f64, i64) =
        sqlx::query_as("SELECT tokens, updated_at FROM rate_buckets WHERE owner = ?")
            .bind(owner)
            .fetch_one(pool)
            .await?;
    Ok(Some(
        bucket_wait(tokens, per_min, now - updated_at).max(Duration::from_millis(1)),
    ))
}
