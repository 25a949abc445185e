-- The operator console (console/): when each batch stage ended, operator accounts, console sessions.
ALTER TABLE batches ADD COLUMN relayed_at TEXT;
ALTER TABLE batches ADD COLUMN judged_at TEXT;
-- password: Argon2id PHC string, NULL until set through the one-time link
CREATE TABLE operators (
    email       TEXT PRIMARY KEY,
    password    TEXT,
    created_at  TEXT NOT NULL
);
-- one-time set-password links: SHA-256 of the token only
CREATE TABLE operator_tokens (
    token_hash  TEXT PRIMARY KEY,
    email       TEXT NOT NULL REFERENCES operators(email),
    expires_at  BIGINT NOT NULL
);
-- console sessions: SHA-256 of the cookie's id only; who = an operator's email or 'admin token'
CREATE TABLE console_sessions (
    id_hash     TEXT PRIMARY KEY,
    who         TEXT NOT NULL,
    csrf        TEXT NOT NULL,
    expires_at  BIGINT NOT NULL
);
