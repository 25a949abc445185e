-- Comms metadata on PostgreSQL: the same tables as migrations/sqlite (same numbering), integers as BIGINT, times
-- as RFC 3339 text (compared and sorted as text, exactly as on SQLite).
CREATE TABLE tenants (
    name        TEXT PRIMARY KEY,
    status      TEXT NOT NULL DEFAULT 'active',
    created_at  TEXT NOT NULL
);
CREATE TABLE keys (
    fingerprint  TEXT PRIMARY KEY,
    tenant       TEXT NOT NULL REFERENCES tenants(name),
    public_key   TEXT NOT NULL,
    hostname     TEXT NOT NULL DEFAULT '',
    status       TEXT NOT NULL DEFAULT 'active',
    created_at   TEXT NOT NULL,
    last_used_at TEXT
);
CREATE TABLE tokens (
    secret_hash TEXT PRIMARY KEY,
    tenant      TEXT NOT NULL REFERENCES tenants(name),
    expires_at  TEXT NOT NULL,
    used_at     TEXT
);
CREATE TABLE batches (
    tenant      TEXT NOT NULL REFERENCES tenants(name),
    batch_id    TEXT NOT NULL,
    state       TEXT NOT NULL,
    detail      TEXT,
    manifest    TEXT NOT NULL,
    files       BIGINT NOT NULL,
    rows        BIGINT NOT NULL,
    attempts    BIGINT NOT NULL DEFAULT 0,
    created_at  TEXT NOT NULL,
    updated_at  TEXT NOT NULL,
    PRIMARY KEY (tenant, batch_id)
);
CREATE INDEX batches_state ON batches(state, batch_id);
-- ids are given by the appender (one after the other, under a lock): the hash chain covers them
CREATE TABLE audit (
    id      BIGINT PRIMARY KEY,
    at      TEXT NOT NULL,
    tenant  TEXT,
    event   TEXT NOT NULL,
    detail  TEXT NOT NULL DEFAULT ''
);
