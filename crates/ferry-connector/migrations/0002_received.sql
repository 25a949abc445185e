-- Downstream files received from the Comms server and how far each got, so a file is applied to the ERP exactly
-- once: applied or acked files are never applied again, only (re-)acknowledged.
CREATE TABLE received (
    file_id     TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    sha256      TEXT NOT NULL,      -- of the plain file as applied
    state       TEXT NOT NULL,      -- applied | acked | failed
    attempts    INTEGER NOT NULL DEFAULT 0,
    error       TEXT,               -- the last delivery error (state failed)
    applied_at  TEXT,
    acked_at    TEXT
);
CREATE INDEX received_state ON received(state);
