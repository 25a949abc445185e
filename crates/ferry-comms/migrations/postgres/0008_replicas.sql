-- Several Comms replicas on one database (docs/scale-out.md).
-- The replay cache of signed calls, shared by every replica: (signing key, nonce) is inserted once; a second
-- insert (the same signed call replayed to any replica) finds the row and is refused. Rows past expires_at
-- (unix seconds: the signature's created + validity + margin) are swept.
CREATE TABLE used_nonces (
    keyid       TEXT NOT NULL,
    nonce       TEXT NOT NULL,
    expires_at  BIGINT NOT NULL,
    PRIMARY KEY (keyid, nonce)
);
CREATE INDEX used_nonces_expiry ON used_nonces(expires_at);
-- A downstream file put on a tenant's download list wakes the long-polls (GET /v1/files?wait=) of every replica:
-- NOTIFY ferry_downloads with the tenant as payload (PostgreSQL folds identical notifications of one
-- transaction into one).
CREATE FUNCTION ferry_notify_downloads() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('ferry_downloads', NEW.tenant);
    RETURN NULL;
END
$$;
CREATE TRIGGER downloads_ready AFTER UPDATE OF state ON downloads
    FOR EACH ROW WHEN (NEW.state = 'relayed' AND OLD.state IS DISTINCT FROM 'relayed')
    EXECUTE FUNCTION ferry_notify_downloads();
