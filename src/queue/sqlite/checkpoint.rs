//! WAL checkpoints off the write path. SQLite's automatic checkpoint runs inside
//! whichever commit takes the WAL past its limit, so every second or so one write (a
//! submission, as often as not) also copied the WAL into the database and waited for two
//! `fsync`s, holding the single writer meanwhile. Here a connection of its own runs a
//! `PASSIVE` checkpoint every `EVERY`, which never blocks the writer or the readers; the
//! writer keeps an automatic checkpoint only as a backstop, at `BACKSTOP_PAGES`, so the
//! WAL stays bounded even if this task falls behind or stops.

use std::sync::Weak;
use std::time::Duration;

use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{Connection, SqliteConnection};

/// How often the WAL is copied back into the database.
const EVERY: Duration = Duration::from_millis(500);

/// The writer's own automatic checkpoint, ten times SQLite's default of 1,000 pages.
pub(super) const BACKSTOP_PAGES: &str = "10000";

/// Checkpoints every `EVERY` until `alive` can no longer be upgraded (the store was
/// dropped). Failures are logged and retried: the backstop covers a long outage.
pub(super) fn spawn(options: SqliteConnectOptions, alive: Weak<()>) {
    tokio::spawn(async move {
        let mut conn: Option<SqliteConnection> = None;
        let mut ticker = tokio::time::interval(EVERY);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            if alive.upgrade().is_none() {
                break;
            }
            if conn.is_none() {
                conn = SqliteConnection::connect_with(&options).await.ok();
            }
            let Some(c) = conn.as_mut() else { continue };
            if let Err(e) = sqlx::query("PRAGMA wal_checkpoint(PASSIVE)")
                .execute(&mut *c)
                .await
            {
                tracing::debug!(error = %e, "WAL checkpoint failed; will retry");
                conn = None;
            }
        }
        if let Some(c) = conn {
            let _ = c.close().await;
        }
    });
}
