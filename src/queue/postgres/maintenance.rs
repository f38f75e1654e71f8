//! Bookkeeping outside the job lifecycle in PostgreSQL: the workers table, retention,
//! compaction of finished jobs' progress and the image keys still referenced.

use super::*;

pub(super) async fn upsert_worker(store: &PgStore, w: &WorkerInfo) -> Result<(), StoreError> {
    sqlx::query(&format!(
        "INSERT INTO workers (name, host, device, model, current_job, started_at, last_seen_at) \
         VALUES ($1, $2, $3, $4, $5, $6, {NOW}) \
         ON CONFLICT (name) DO UPDATE SET model = $4, current_job = $5, last_seen_at = {NOW}"
    ))
    .bind(&w.name)
    .bind(&w.host)
    .bind(&w.device)
    .bind(&w.model)
    .bind(w.current_job)
    .bind(w.started_at)
    .execute(&store.pool)
    .await?;
    Ok(())
}

pub(super) async fn list_workers(
    store: &PgStore,
    max_age: Duration,
) -> Result<Vec<WorkerInfo>, StoreError> {
    let rows = sqlx::query(&format!(
        "SELECT * FROM workers WHERE last_seen_at >= {NOW} - $1 ORDER BY started_at DESC, name"
    ))
    .bind(ms(max_age))
    .fetch_all(&store.pool)
    .await?;
    rows.iter()
        .map(|row| {
            Ok(WorkerInfo {
                name: row.try_get("name")?,
                host: row.try_get("host")?,
                device: row.try_get("device")?,
                model: row.try_get("model")?,
                current_job: row.try_get("current_job")?,
                started_at: row.try_get("started_at")?,
                last_seen_at: row.try_get("last_seen_at")?,
            })
        })
        .collect()
}

pub(super) async fn remove_worker(store: &PgStore, name: &str) -> Result<(), StoreError> {
    sqlx::query("DELETE FROM workers WHERE name = $1")
        .bind(name)
        .execute(&store.pool)
        .await?;
    Ok(())
}

pub(super) async fn purge_finished(
    store: &PgStore,
    older_than: Option<Duration>,
    limit: i64,
) -> Result<Vec<PurgedJob>, StoreError> {
    // Events and image rows go with the job (ON DELETE CASCADE); SKIP LOCKED lets
    // the cleaners of several processes share the work. A NULL limit keeps the job.
    let rows = sqlx::query(&format!(
        "DELETE FROM jobs WHERE id IN \
            (SELECT j.id FROM jobs j LEFT JOIN api_keys k ON k.id::text = j.owner \
             WHERE j.status IN {FINISHED} \
               AND j.finished_at < {NOW} - COALESCE((k.retain_days * 86400000)::bigint, $1) \
             ORDER BY j.finished_at LIMIT $2 FOR UPDATE OF j SKIP LOCKED) \
         RETURNING id, spec"
    ))
    .bind(older_than.map(ms))
    .bind(limit)
    .fetch_all(&store.pool)
    .await?;
    rows.iter()
        .map(|row| {
            let Json(spec): Json<JobSpec> = row.try_get("spec")?;
            Ok(PurgedJob {
                id: row.try_get("id")?,
                input_keys: spec.init_image.into_iter().chain(spec.mask_image).collect(),
            })
        })
        .collect()
}

pub(super) async fn compact_events(
    store: &PgStore,
    older_than: Duration,
    limit: i64,
) -> Result<u64, StoreError> {
    let compacted = sqlx::query(&format!(
        "WITH picked AS ( \
            SELECT id FROM jobs WHERE status IN {FINISHED} AND NOT events_compacted \
              AND finished_at < {NOW} - $1 ORDER BY finished_at LIMIT $2 \
            FOR UPDATE SKIP LOCKED), \
         dropped AS ( \
            DELETE FROM job_events e USING picked \
            WHERE e.job_id = picked.id AND e.body->>'type' = 'progress') \
         UPDATE jobs SET events_compacted = TRUE FROM picked WHERE jobs.id = picked.id"
    ))
    .bind(ms(older_than))
    .bind(limit)
    .execute(&store.pool)
    .await?;
    Ok(compacted.rows_affected())
}

pub(super) async fn referenced_keys(
    store: &PgStore,
    keys: &[String],
) -> Result<HashSet<String>, StoreError> {
    let mut found: HashSet<String> = HashSet::new();
    for chunk in keys.chunks(1000) {
        let images: Vec<String> =
            sqlx::query_scalar("SELECT object_key FROM images WHERE object_key = ANY($1)")
                .bind(chunk)
                .fetch_all(&store.pool)
                .await?;
        found.extend(images);
        let inputs: Vec<String> = sqlx::query_scalar(
            "SELECT k FROM jobs, LATERAL (VALUES (spec->>'init_image'), (spec->>'mask_image')) v(k) \
             WHERE spec ? 'init_image' AND k = ANY($1)",
        )
        .bind(chunk)
        .fetch_all(&store.pool)
        .await?;
        found.extend(inputs);
    }
    Ok(found)
}
