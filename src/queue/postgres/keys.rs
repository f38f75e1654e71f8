//! API keys and rate buckets in PostgreSQL.

use std::time::Duration;

use sqlx::postgres::PgRow;
use sqlx::{PgPool, Row};
use uuid::Uuid;

use super::NOW;
use crate::queue::store::bucket_wait;
use crate::queue::{ApiKey, StoreError};

fn key_from_row(row: &PgRow) -> Result<ApiKey, StoreError> {
    Ok(ApiKey {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        lookup: row.try_get("lookup")?,
        secret_hash: row.try_get("secret_hash")?,
        webhook_secret: row.try_get("webhook_secret")?,
        admin: row.try_get("admin")?,
        max_queued: row.try_get("max_queued")?,
        rate_per_min: row.try_get("rate_per_min")?,
        retain_days: row.try_get("retain_days")?,
        created_at: row.try_get("created_at")?,
        revoked_at: row.try_get("revoked_at")?,
        last_used_at: row.try_get("last_used_at")?,
    })
}

pub(super) async fn insert(pool: &PgPool, key: &ApiKey) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO api_keys (id, name, lookup, secret_hash, webhook_secret, admin, max_queued, \
                               rate_per_min, created_at, retain_days) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
    )
    .bind(key.id)
    .bind(&key.name)
    .bind(&key.lookup)
    .bind(&key.secret_hash)
    .bind(&key.webhook_secret)
    .bind(key.admin)
    .bind(key.max_queued)
    .bind(key.rate_per_min)
    .bind(key.created_at)
    .bind(key.retain_days)
    .execute(pool)
    .await?;
    Ok(())
}

pub(super) async fn by_lookup(pool: &PgPool, lookup: &str) -> Result<Option<ApiKey>, StoreError> {
    let row = sqlx::query("SELECT * FROM api_keys WHERE lookup = $1")
        .bind(lookup)
        .fetch_optional(pool)
        .await?;
    row.as_ref().map(key_from_row).transpose()
}

pub(super) async fn list(pool: &PgPool) -> Result<Vec<ApiKey>, StoreError> {
    let rows = sqlx::query("SELECT * FROM api_keys ORDER BY created_at, id")
        .fetch_all(pool)
        .await?;
    rows.iter().map(key_from_row).collect()
}

pub(super) async fn revoke(pool: &PgPool, id: Uuid) -> Result<Option<ApiKey>, StoreError> {
    let row = sqlx::query(&format!(
        "UPDATE api_keys SET revoked_at = COALESCE(revoked_at, {NOW}) WHERE id = $1 RETURNING *"
    ))
    .bind(id)
    .fetch_optional(pool)
    .await?;
    row.as_ref().map(key_from_row).transpose()
}

pub(super) async fn touch(pool: &PgPool, id: Uuid) -> Result<(), StoreError> {
    sqlx::query(&format!(
        "UPDATE api_keys SET last_used_at = {NOW} WHERE id = $1"
    ))
    .bind(id)
    .execute(pool)
    .await?;
    Ok(())
}

/// One statement takes the token or leaves the bucket as it was; the row lock of
/// `ON CONFLICT DO UPDATE` makes concurrent API processes take turns.
pub(super) async fn take_rate_token(
    pool: &PgPool,
    owner: &str,
    per_min: i64,
) -> Result<Option<Duration>, StoreError> {
    let refilled = format!(
        "LEAST($2, rate_buckets.tokens + ({NOW} - rate_buckets.updated_at) * $2 / 60000.0)"
    );
    let taken: Option<f64> = sqlx::query_scalar(&format!(
        "INSERT INTO rate_buckets (owner, tokens, updated_at) VALUES ($1, $2 - 1, {NOW}) \
         ON CONFLICT (owner) DO UPDATE SET tokens = {refilled} - 1, updated_at = {NOW} \
         WHERE {refilled} >= 1 RETURNING tokens"
    ))
    .bind(owner)
    .bind(per_min as f64)
    .fetch_optional(pool)
    .await?;
    if taken.is_some() {
        return Ok(None);
    }
    let (tokens, elapsed): (f64, i64) = sqlx::query_as(&format!(
        "SELECT tokens, {NOW} - updated_at FROM rate_buckets WHERE owner = $1"
    ))
    .bind(owner)
    .fetch_one(pool)
    .await?;
    Ok(Some(
        bucket_wait(tokens, per_min, elapsed).max(Duration::from_millis(1)),
    ))
}
