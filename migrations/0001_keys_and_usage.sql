-- Keys the proxy issues, the counter that tells pollers they changed, usage records and secrets.
-- One file for SQLite and Postgres alike: only types both accept (BIGINT, DOUBLE PRECISION, TEXT),
-- times as BIGINT unix milliseconds, booleans as BIGINT 0/1, ids made by the caller.

CREATE TABLE api_keys (
    id TEXT PRIMARY KEY,
    hash TEXT NOT NULL UNIQUE,
    prefix TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    name TEXT NOT NULL,
    owner TEXT,
    models TEXT NOT NULL,
    rpm BIGINT,
    tpm BIGINT,
    max_concurrent BIGINT,
    budget_usd DOUBLE PRECISION,
    budget_period TEXT,
    expires_at BIGINT,
    metadata TEXT NOT NULL,
    enabled BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    revoked_at BIGINT
);

-- One row, bumped in the same transaction as every change to api_keys.
CREATE TABLE keys_version (
    id BIGINT PRIMARY KEY,
    version BIGINT NOT NULL
);
INSERT INTO keys_version (id, version) VALUES (1, 0);

-- "group" is a reserved word in both, hence model_group.
CREATE TABLE usage_records (
    time_ms BIGINT NOT NULL,
    key_id TEXT,
    caller TEXT,
    route TEXT NOT NULL,
    provider TEXT,
    model TEXT,
    model_group TEXT,
    deployment TEXT,
    status BIGINT NOT NULL,
    input_tokens BIGINT NOT NULL,
    output_tokens BIGINT NOT NULL,
    cached_tokens BIGINT NOT NULL,
    cost_usd DOUBLE PRECISION,
    latency_ms DOUBLE PRECISION NOT NULL,
    ttfb_ms DOUBLE PRECISION,
    request_id TEXT NOT NULL,
    cached BIGINT NOT NULL
);
CREATE INDEX usage_records_time ON usage_records (time_ms);
CREATE INDEX usage_records_key_time ON usage_records (key_id, time_ms);

-- Secrets made once and kept here (hex), e.g. the key of the callers' fingerprints.
CREATE TABLE secrets (
    name TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
