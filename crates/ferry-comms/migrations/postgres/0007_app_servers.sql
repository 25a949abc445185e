-- Several App servers (issue 12, item 4): each is registered by name with what `ferry app info` prints; each
-- tenant is placed on one (`tenants.app`). The [app] section of comms.toml is the App server named 'default'
-- (registered at every start). A tenant of before this migration is placed on 'default' at start.
CREATE TABLE app_servers (
    name                     TEXT PRIMARY KEY,
    api_url                  TEXT NOT NULL,
    tls_fingerprint          TEXT NOT NULL,
    ssh_addr                 TEXT NOT NULL,
    ssh_host_key_fingerprint TEXT NOT NULL,
    service_key              TEXT NOT NULL,
    -- the service key's fingerprint: the keyid of the App's signed calls (one App per key)
    key_fingerprint          TEXT NOT NULL UNIQUE,
    created_at               TEXT NOT NULL
);
ALTER TABLE tenants ADD COLUMN app TEXT REFERENCES app_servers(name);
CREATE INDEX tenants_app ON tenants(app);
-- a change of App servers reaches every running server's routing and announce keys like an access change
CREATE TRIGGER apps_chg AFTER INSERT OR UPDATE OR DELETE ON app_servers
    FOR EACH STATEMENT EXECUTE FUNCTION ferry_bump_access_version();
