-- Comms metadata: tenants, their keys, registration tokens, batches, audit trail.
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
    files       INTEGER NOT NULL,
    rows        INTEGER NOT NULL,
    attempts    INTEGER NOT NULL DEFAULT 0,
    created_at  TEXT NOT NULL,
    updated_at  TEXT NOT NULL,
    PRIMARY KEY (tenant, batch_id)
);
CREATE INDEX batches_state ON batches(state, batch_id);
CREATE TABLE audit (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    at      TEXT NOT NULL,
    tenant  TEXT,
    event   TEXT NOT NULL,
    detail  TEXT NOT NULL DEFAULT ''
);
