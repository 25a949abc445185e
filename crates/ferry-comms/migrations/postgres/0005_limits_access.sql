-- Per-tenant overrides of the [limits] defaults of comms.toml: one row per (tenant, limit) that differs.
CREATE TABLE tenant_limits (
    tenant  TEXT NOT NULL REFERENCES tenants(name),
    name    TEXT NOT NULL,
    value   BIGINT NOT NULL CHECK (value >= 0),
    PRIMARY KEY (tenant, name)
);
-- Bytes each tenant uploaded over SFTP per UTC day (the upload_bytes_per_day quota survives restarts).
CREATE TABLE upload_usage (
    tenant  TEXT NOT NULL REFERENCES tenants(name),
    day     TEXT NOT NULL,
    bytes   BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (tenant, day)
);
-- Source addresses each key has been used from (a new one is audited).
CREATE TABLE key_addresses (
    fingerprint TEXT NOT NULL,
    address     TEXT NOT NULL,
    first_seen  TEXT NOT NULL,
    PRIMARY KEY (fingerprint, address)
);
-- Bumped by every change to who may log in and with what limits, whoever makes it (any replica, the CLI, psql
-- by hand): every running server polls this one row and reloads at once. The bump also sends a NOTIFY on
-- channel ferry_access, for listeners that would rather not poll.
CREATE TABLE access_version (
    id BIGINT PRIMARY KEY CHECK (id = 1),
    v  BIGINT NOT NULL
);
INSERT INTO access_version(id, v) VALUES (1, 0);
CREATE FUNCTION ferry_bump_access_version() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE access_version SET v = v + 1 WHERE id = 1;
    PERFORM pg_notify('ferry_access', '');
    RETURN NULL;
END
$$;
CREATE TRIGGER tenants_chg AFTER INSERT OR UPDATE OR DELETE ON tenants
    FOR EACH STATEMENT EXECUTE FUNCTION ferry_bump_access_version();
CREATE TRIGGER keys_ins_del AFTER INSERT OR DELETE ON keys
    FOR EACH STATEMENT EXECUTE FUNCTION ferry_bump_access_version();
CREATE TRIGGER keys_upd AFTER UPDATE OF status, tenant, public_key ON keys
    FOR EACH STATEMENT EXECUTE FUNCTION ferry_bump_access_version();
CREATE TRIGGER limits_chg AFTER INSERT OR UPDATE OR DELETE ON tenant_limits
    FOR EACH STATEMENT EXECUTE FUNCTION ferry_bump_access_version();
