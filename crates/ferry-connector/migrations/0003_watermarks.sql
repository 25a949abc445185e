-- Incremental extracts: per file, how far the App's instance is known to be complete. A row is written or moved
-- forward only when the App has imported a batch carrying the file (never when it was merely extracted or sent).
CREATE TABLE watermarks (
    file        TEXT PRIMARY KEY,   -- sales.csv
    column_name TEXT NOT NULL,      -- the date column of the window (invoice_date)
    fingerprint TEXT NOT NULL,      -- of the query and column used: a changed mapping starts with a full extract
    through     TEXT NOT NULL,      -- YYYY-MM-DD: date of the newest imported extract of the file
    last_full   TEXT NOT NULL,      -- YYYY-MM-DD: date of the newest imported full extract of the file
    batch_id    TEXT NOT NULL,      -- the batch that set this row
    extracted_at TEXT NOT NULL,     -- when that batch was extracted (RFC 3339, UTC, nanoseconds): a batch
                                    -- extracted earlier never moves the row back
    updated_at  TEXT NOT NULL
);
-- Per batch: the watermarks to set once the App has imported it (JSON list; NULL for batches without any).
ALTER TABLE batches ADD COLUMN watermarks TEXT;
