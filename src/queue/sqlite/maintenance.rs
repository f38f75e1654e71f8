//! Bookkeeping outside the job lifecycle in SQLite: the workers table, retention,
//! compaction of finished jobs' progress, the image keys still referenced, and backups.

use super::*;

pub(super) async fn upsert_worker(store: &SqliteStore, w: &WorkerInfo) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO workers (name, host, device, model, current_job, started_at, last_seen_at) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) \
         ON CONFLICT (name) DO UPDATE SET model = ?4, current_job = ?5, last_seen_at = ?7",
    )
    .bind(&w.name)
    .bind(&w.host)
    .bind(&w.device)
    .bind(&w.model)
    .bind(w.current_job.map(|j| j.to_string()))
    .bind(w.started_at)
    .bind(now_ms())
    .execute(&store.writer)
    .await?;
    Ok(())
}

pub(super) async fn list_workers(
    store: &SqliteStore,
    max_age: Duration,
) -> Result<Vec<WorkerInfo>, StoreError> {
    let rows =
        sqlx::query("SELECT * FROM workers WHERE last_seen_at >= ? ORDER BY started_at DESC, name")
            .bind(now_ms() - ms(max_age))
            .fetch_all(&store.reader)
            .await?;
    rows.iter()
        .map(|row| {
            let job: Option<String> = row.try_get("current_job")?;
            Ok(WorkerInfo {
                name: row.try_get("name")?,
                host: row.try_get("host")?,
                device: row.try_get("device")?,
                model: row.try_get("model")?,
                current_job: job.as_deref().map(parse_uuid).transpose()?,
                started_at: row.try_get("started_at")?,
                last_seen_at: row.try_get("last_seen_at")?,
            })
        })
        .collect()
}

pub(super) async fn remove_worker(store: &SqliteStore, name: &str) -> Result<(), StoreError> {
    sqlx::query("DELETE FROM workers WHERE name = ?")
        .bind(name)
        .execute(&store.writer)
        .await?;
    Ok(())
}

pub(super) async fn purge_finished(
    store: &SqliteStore,
    older_than: Option<Duration>,
    limit: i64,
) -> Result<Vec<PurgedJob>, StoreError> {
    // Events and image rows go with the job (ON DELETE CASCADE). A NULL limit keeps it.
    let rows = sqlx::query(&format!(
        "DELETE FROM jobs WHERE id IN \
            (SELECT j.id FROM jobs j LEFT JOIN api_keys k ON k.id = j.owner \
             WHERE j.status IN {FINISHED} \
               AND j.finished_at < ?1 - COALESCE(CAST(k.retain_days * 86400000 AS INTEGER), ?2) \
             ORDER BY j.finished_at LIMIT ?3) \
         RETURNING id, spec"
    ))
    .bind(now_ms())
    .bind(older_than.map(ms))
    .bind(limit)
    .fetch_all(&store.writer)
    .await?;
    rows.iter()
        .map(|row| {
            let spec: String = row.try_get("spec")?;
            let spec: JobSpec =
                serde_json::from_str(&spec).map_err(|e| StoreError::Corrupt(e.to_string()))?;
            Ok(PurgedJob {
                id: parse_uuid(row.try_get("id")?)?,
                input_keys: spec.init_image.into_iter().chain(spec.mask_image).collect(),
            })
        })
        .collect()
}

pub(super) async fn compact_events(
    store: &SqliteStore,
    older_than: Duration,
    limit: i64,
) -> Result<u64, StoreError> {
    let mut tx = store.write_tx().await?;
    let ids: Vec<String> = sqlx::query_scalar(&format!(
        "SELECT id FROM jobs WHERE status IN {FINISHED} AND events_compacted = 0 \
           AND finished_at < ? ORDER BY finished_at LIMIT ?"
    ))
    .bind(now_ms() - ms(older_than))
    .bind(limit)
    .fetch_all(&mut *tx)
    .await?;
    for id in &ids {
        sqlx::query(
            "DELETE FROM job_events WHERE job_id = ? AND json_extract(body, '$.type') = 'progress'",
        )
        .bind(id)
        .execute(&mut *tx)
        .await?;
        sqlx::query("UPDATE jobs SET events_compacted = 1 WHERE id = ?")
            .bind(id)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    Ok(ids.len() as u64)
}

pub(super) async fn referenced_keys(
    store: &SqliteStore,
    keys: &[String],
) -> Result<HashSet<String>, StoreError> {
    let mut found = HashSet::new();
    for chunk in keys.chunks(500) {
        let sql = format!(
            "SELECT object_key FROM images WHERE object_key IN ({})",
            placeholders(chunk.len())
        );
        let mut query = sqlx::query_scalar::<_, String>(&sql);
        for key in chunk {
            query = query.bind(key);
        }
        found.extend(query.fetch_all(&store.reader).await?);
    }
    if keys.iter().any(|k| !found.contains(k)) {
        // Inputs are named inside the spec JSON; jobs that have them are few.
        let rows = sqlx::query(
            "SELECT json_extract(spec, '$.init_image') AS init, \
                    json_extract(spec, '$.mask_image') AS mask \
             FROM jobs WHERE json_extract(spec, '$.init_image') IS NOT NULL",
        )
        .fetch_all(&store.reader)
        .await?;
        let wanted: HashSet<&str> = keys.iter().map(String::as_str).collect();
        for row in rows {
            for column in ["init", "mask"] {
                if let Some(key) = row.try_get::<Option<String>, _>(column)? {
                    if wanted.contains(key.as_str()) {
                        found.insert(key);
                    }
                }
            }
        }
    }
    Ok(found)
}

pub(super) async fn backup(store: &SqliteStore, path: &Path) -> Result<(), StoreError> {
    if path.exists() {
        return Err(StoreError::Unsupported(format!(
            "{} already exists; back up to a new file",
            path.display()
        )));
    }
    // A connection of its own: VACUUM INTO reads one consistent snapshot (WAL lets
    // the writer carry on meanwhile) and writes a compact copy.
    let mut conn = SqliteConnection::connect_with(&store.options).await?;
    sqlx::query("VACUUM INTO ?")
        .bind(path.display().to_string())
        .execute(&mut conn)
        .await?;
    conn.close().await?;
    Ok(())
}
