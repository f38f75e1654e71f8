-- API keys, and an owner on every job and image. An owner is a key's id, or 'local' for
-- work submitted with auth off. Secrets are never stored: only a SHA-256 of the token.

CREATE TABLE api_keys (
    id             UUID PRIMARY KEY,
    name           TEXT NOT NULL,
    lookup         TEXT NOT NULL UNIQUE,
    secret_hash    TEXT NOT NULL,
    webhook_secret TEXT NOT NULL,
    admin          BOOLEAN NOT NULL DEFAULT FALSE,
    max_queued     BIGINT,
    rate_per_min   BIGINT,
    created_at     BIGINT NOT NULL,
    revoked_at     BIGINT,
    last_used_at   BIGINT
);

ALTER TABLE jobs ADD COLUMN owner TEXT NOT NULL DEFAULT 'local';
CREATE INDEX jobs_owner_newest ON jobs (owner, created_at DESC, id DESC);
CREATE INDEX jobs_owner_active ON jobs (owner, status) WHERE status IN ('queued', 'running');

ALTER TABLE images ADD COLUMN owner TEXT NOT NULL DEFAULT 'local';
ALTER TABLE images ADD COLUMN model TEXT NOT NULL DEFAULT '';
ALTER TABLE images ADD COLUMN prompt TEXT NOT NULL DEFAULT '';
CREATE INDEX images_owner_newest ON images (owner, created_at DESC, id DESC);

CREATE TABLE idempotency_keys (
    owner       TEXT NOT NULL,
    key         TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    job_id      UUID NOT NULL,
    created_at  BIGINT NOT NULL,
    PRIMARY KEY (owner, key)
);

CREATE TABLE rate_buckets (
    owner      TEXT PRIMARY KEY,
    tokens     DOUBLE PRECISION NOT NULL,
    updated_at BIGINT NOT NULL
);
