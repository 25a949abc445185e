-- Per-tenant overrides of the [limits] defaults of comms.toml: one row per (tenant, limit) that differs.
CREATE TABLE tenant_limits (
    tenant  TEXT NOT NULL REFERENCES tenants(name),
    name    TEXT NOT NULL,
    value   INTEGER NOT NULL CHECK (value >= 0),
    PRIMARY KEY (tenant, name)
);
-- Bytes each tenant uploaded over SFTP per UTC day (the upload_bytes_per_day quota survives restarts).
CREATE TABLE upload_usage (
    tenant  TEXT NOT NULL REFERENCES tenants(name),
    day     TEXT NOT NULL,
    bytes   INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (tenant, day)
);
-- Source addresses each key has been used from (a new one is audited).
CREATE TABLE key_addresses (
    fingerprint TEXT NOT NULL,
    address     TEXT NOT NULL,
    first_seen  TEXT NOT NULL,
    PRIMARY KEY (fingerprint, address)
);
-- Bumped by every change to who may log in and with what limits, whoever makes it (a running server, the
-- CLI in another process, sqlite3 by hand): running servers poll this one row and reload at once.
CREATE TABLE access_version (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    v  INTEGER NOT NULL
);
INSERT INTO access_version(id, v) VALUES (1, 0);
CREATE TRIGGER tenants_ins AFTER INSERT ON tenants BEGIN UPDATE access_version SET v = v + 1; END;
CREATE TRIGGER tenants_upd AFTER UPDATE ON tenants BEGIN UPDATE access_version SET v = v + 1; END;
CREATE TRIGGER tenants_del AFTER DELETE ON tenants BEGIN UPDATE access_version SET v = v + 1; END;
CREATE TRIGGER keys_ins AFTER INSERT ON keys BEGIN UPDATE access_version SET v = v + 1; END;
CREATE TRIGGER keys_upd AFTER UPDATE OF status, tenant, public_key ON keys BEGIN UPDATE access_version SET v = v + 1; END;
CREATE TRIGGER keys_del AFTER DELETE ON keys BEGIN UPDATE access_version SET v = v + 1; END;
CREATE TRIGGER limits_ins AFTER INSERT ON tenant_limits BEGIN UPDATE access_version SET v = v + 1; END;
CREATE TRIGGER limits_upd AFTER UPDATE ON tenant_limits BEGIN UPDATE access_version SET v = v + 1; END;
CREATE TRIGGER limits_del AFTER DELETE ON tenant_limits BEGIN UPDATE access_version SET v = v + 1; END;
