-- Several Comms replicas need PostgreSQL (docs/scale-out.md); on SQLite (one server) the replay cache of signed
-- calls stays in memory. The table exists on both engines so the schemas stay alike.
CREATE TABLE used_nonces (
    keyid       TEXT NOT NULL,
    nonce       TEXT NOT NULL,
    expires_at  INTEGER NOT NULL,
    PRIMARY KEY (keyid, nonce)
);
CREATE INDEX used_nonces_expiry ON used_nonces(expires_at);
