-- The Connector's local journal: which batches exist and how far each got, so a crash or reboot resumes
-- instead of extracting or sending twice.
CREATE TABLE batches (
    batch_id    TEXT PRIMARY KEY,
    state       TEXT NOT NULL,      -- extracted | completed | imported | rejected
    detail      TEXT,
    manifest    TEXT NOT NULL,
    created_at  TEXT NOT NULL,
    updated_at  TEXT NOT NULL
);
