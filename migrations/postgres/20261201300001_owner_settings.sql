-- Settings a caller chooses for itself (A1111's /sdapi/v1/options): one row per owner
-- (an API key's id, or 'local' when auth is off).
CREATE TABLE owner_settings (
    owner         TEXT PRIMARY KEY,
    default_model TEXT,
    updated_at    BIGINT NOT NULL
);
