//! Opening the SQLite store: the connection pools, WAL and migrations under a file lock
//! that lets many processes start on one data dir at once.

use super::*;

impl SqliteStore {
    /// Opens (creating if needed) the database at `url` (`sqlite://path` or a plain path)
    /// and applies `migrations/sqlite`.
    pub async fn open(url: &str) -> Result<Self, StoreError> {
        let url = if url.starts_with("sqlite:") {
            url.to_string()
        } else {
            format!("sqlite://{url}")
        };
        let options = SqliteConnectOptions::from_str(&url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(10))
            .foreign_keys(true);
        // sqlx serialises migrations across processes on PostgreSQL with an advisory
        // lock, but not on SQLite: two processes starting on a fresh file would both
        // create the tables. A file lock held from the first connection to the last
        // migration does the same here.
        let lock = migration_lock(options.get_filename()).await?;
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            // A write that fails with SQLITE_FULL makes SQLite roll the transaction back
            // itself; sqlx's own ROLLBACK then fails and leaves the connection believing it
            // is still inside a transaction, so every later BEGIN would fail. An idle
            // connection in that state is replaced instead of reused.
            .before_acquire(|conn, _| {
                Box::pin(async move {
                    use sqlx::TransactionManager;
                    Ok(sqlx::sqlite::SqliteTransactionManager::get_transaction_depth(conn) == 0)
                })
            })
            // WAL checkpoints run beside the writer (`checkpoint.rs`), not inside one of
            // its commits.
            .connect_with(
                options
                    .clone()
                    .pragma("wal_autocheckpoint", checkpoint::BACKSTOP_PAGES),
            )
            .await?;
        sqlx::migrate!("migrations/sqlite")
            .run(&writer)
            .await
            .map_err(|e| StoreError::Database(format!("migration failed: {e}")))?;
        drop(lock);
        let reader = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options.clone().read_only(true))
            .await?;
        let alive = std::sync::Arc::new(());
        checkpoint::spawn(options.clone(), std::sync::Arc::downgrade(&alive));
        Ok(Self {
            writer,
            reader,
            options,
            _alive: alive,
        })
    }

    /// A write transaction that takes SQLite's write lock at once, so a transaction that
    /// reads and then writes never fails on a snapshot another process changed meanwhile
    /// (it waits on `busy_timeout` instead).
    pub(super) async fn write_tx(
        &self,
    ) -> Result<sqlx::Transaction<'static, sqlx::Sqlite>, StoreError> {
        Ok(self.writer.begin_with("BEGIN IMMEDIATE").await?)
    }
    /// Runs `PRAGMA integrity_check` and returns its report (`["ok"]` when intact).
    pub async fn integrity_check(&self) -> Result<Vec<String>, StoreError> {
        Ok(sqlx::query_scalar("PRAGMA integrity_check")
            .fetch_all(&self.writer)
            .await?)
    }
}

/// Takes an exclusive lock on `DB-migrate.lock` (blocking until other processes release
/// it); `None` for in-memory databases. Released when the file is dropped.
async fn migration_lock(db: &Path) -> Result<Option<std::fs::File>, StoreError> {
    let name = db.as_os_str().to_string_lossy();
    if name.is_empty() || name == ":memory:" {
        return Ok(None);
    }
    let mut path = PathBuf::from(db.as_os_str());
    path.as_mut_os_string().push("-migrate.lock");
    let lock = tokio::task::spawn_blocking(move || -> std::io::Result<std::fs::File> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)?;
        file.lock()?;
        Ok(file)
    })
    .await
    .map_err(|e| StoreError::Database(format!("migration lock: {e}")))?
    .map_err(|e| StoreError::Database(format!("cannot lock the database for migrations: {e}")))?;
    Ok(Some(lock))
}
