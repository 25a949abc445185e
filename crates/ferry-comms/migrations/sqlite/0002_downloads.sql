-- Downstream: files the App created for a tenant, fetched, compressed and offered to the tenant's Connector.
CREATE TABLE downloads (
    tenant           TEXT NOT NULL REFERENCES tenants(name),
    file_id          TEXT NOT NULL,
    name             TEXT NOT NULL,
    state            TEXT NOT NULL,          -- fetching | ready | delivered
    bytes            INTEGER NOT NULL,
    md5              TEXT NOT NULL,
    sha256           TEXT NOT NULL,
    compressed_bytes INTEGER NOT NULL DEFAULT 0,
    attempts         INTEGER NOT NULL DEFAULT 0,
    last_error       TEXT,
    app_notified     TEXT NOT NULL DEFAULT '', -- last state the App was told about
    created_at       TEXT NOT NULL,
    ready_at         TEXT,
    delivered_at     TEXT,
    PRIMARY KEY (tenant, file_id)
);
CREATE INDEX downloads_state ON downloads(state, tenant, file_id);
