-- Workers register here and heartbeat, so operators can see who runs what.
CREATE TABLE workers (
    name         TEXT PRIMARY KEY,
    host         TEXT NOT NULL,
    device       TEXT NOT NULL,
    model        TEXT,
    current_job  TEXT,
    started_at   INTEGER NOT NULL,
    last_seen_at INTEGER NOT NULL
);
