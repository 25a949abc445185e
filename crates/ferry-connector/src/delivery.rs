//! Downstream delivery on the ERP side: a file the App created (recommended orders `po_NNNNNN.csv`, a report, ...)
//! arrives as a `.bz2` from the Comms server; [`decompress_verified`] turns it into the plain file the file list
//! promised (size and SHA-256 checked, nothing left behind otherwise) and [`deliver`] hands it to the ERP the
//! ways `[delivery]` in `connector.toml` ([`DeliveryConfig`]) asks for, in this order:
//!
//! 1. **SQL write-back** (`sql`): every configured statement runs once per CSV row, with its `?` placeholders
//!    bound to columns picked by header name, and all rows of one file go in **one transaction** — a failing row
//!    rolls the whole file back and the error says `file:line` and what failed.
//! 2. **Inbound folder** (`inbound_dir`): the file appears complete under its own name (written as
//!    `.<name>.part`, synced, then renamed), so an ERP job watching the folder never sees half a file. The copy
//!    is staged *before* the SQL write-back, so a full disk stops the delivery before anything reaches the ERP.
//! 3. **Command** (`command`): a program the ERP admin names (e.g. the ERP's own import tool), run with a time
//!    limit; a non-zero exit fails the delivery with the exit code and the end of its stderr. It gets the file's
//!    absolute path (`{file}`) and the file's id (`{id}`, and `FERRY_FILE_ID` in its environment), so it can
//!    make itself idempotent.
//!
//! With `date_format = "iso"` the copies the inbound folder and the command get carry ISO dates
//! ([`crate::order_dates`]); the file's size and SHA-256 were checked on the bytes as received, before that, and
//! the SQL write-back binds the values as received.
//!
//! Exactly once is the caller's side of the contract: it records each file in the journal
//! ([`Journal::mark_applied`](crate::journal::Journal::mark_applied)) right after `deliver` succeeds and never
//! delivers a file whose journal state is applied or acked again — it only acknowledges it. The steps above are
//! not one atomic unit with the journal, though: a crash between the SQL commit and the journal entry, or a
//! command that fails after the SQL write-back committed, means the next attempt runs the statements again —
//! unless `ledger_table` is set: then the file's id is written to that table of the ERP database **in the
//! write-back's own transaction**, and a file the ledger already holds is not written back again (the SQL step
//! and its record commit together or not at all). Without a ledger, write the statements so a repeat is harmless
//! (e.g. `INSERT OR IGNORE` into a table with a unique key on `order_number, line`); either way prefer one
//! write-back (SQL *or* command) per file.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::fs::{self, File};
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use ferry_io::bz::capped_decoder;
use ferry_io::digest::{Digests, HashingWriter};
use ferry_proto::api::valid_file_name;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncRead};

use crate::erp::ErpConfig;
pub use crate::erp::writeback::LEDGER_COLUMNS;
use crate::erp::writeback::{
    Ledger, Statement, WriteBack, WriteBackError, WriteJob, csv_error, open_writeback, valid_table_name,
};

/// Default of [`DeliveryConfig::command_timeout_secs`].
pub const DEFAULT_COMMAND_TIMEOUT_SECS: u64 = 300;

/// How many bytes past the expected size [`decompress_verified`] decompresses before it gives up: enough to
/// report a size mismatch with both numbers, little enough that a bzip2 bomb costs nothing.
pub const DECOMPRESS_SLACK: u64 = 64 * 1024;

/// How many lines of a failed command's stderr the error keeps.
const STDERR_TAIL_LINES: usize = 20;

/// `[delivery]` in `connector.toml`: where downstream files go on the ERP side. Any combination of the three
/// targets works; at least one must be set before files can be received.
///
/// ```toml
/// [delivery]
/// inbound_dir = "from_cloud"
/// only = ["po_"]
/// date_format = "iso"
/// command = ["/opt/erp/bin/import-orders", "--file", "{file}", "--reference", "{id}"]
/// command_timeout_secs = 300
///
/// [[delivery.sql]]
/// statement = "INSERT OR IGNORE INTO recommended_orders(order_number, line, item, qty, due_date) VALUES (?, ?, ?, ?, ?)"
/// params = ["order_number", "line", "item", "qty", "due_date"]
/// ```
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DeliveryConfig {
    /// `inbound_dir`: the folder the ERP picks files up from (by convention `from_cloud`), relative to the
    /// folder holding `connector.toml` (the caller passes it resolved). It is created if missing. Each file
    /// appears there complete under its own name — written as `.<name>.part`, synced, then renamed — and a
    /// file already there with the same name is replaced atomically. Not set: no inbound folder.
    pub inbound_dir: Option<PathBuf>,
    /// `[[delivery.sql]]`: statements run against the ERP database (`[erp] url`) for every data row of each CSV
    /// file `only` selects; all rows of one file are written in one transaction, or none. Empty: no SQL
    /// write-back.
    pub sql: Vec<SqlWriteBack>,
    /// `command`: a program and its arguments (argv, no shell), run once per delivered file after the other
    /// steps; `{file}` anywhere in an argument becomes the absolute path of the delivered file (the copy in
    /// `inbound_dir` if set, else a copy the Connector removes afterwards), and `{id}` the file's id at the
    /// Comms server (also in the environment variable `FERRY_FILE_ID`): the same id every time the same file is
    /// delivered again, so the command can make itself idempotent (e.g. store it with the import and skip an id
    /// it already holds — what `ledger_table` does for the SQL write-back). A non-zero exit fails the delivery,
    /// which is retried later. Not set: no command.
    pub command: Option<Vec<String>>,
    /// `command_timeout_secs`: how long the command may run before it is stopped and the delivery fails
    /// (seconds, at least 1; default 300).
    pub command_timeout_secs: u64,
    /// `only`: which file names the SQL write-back applies to. An entry without `*` or `?` is a prefix
    /// (`"po_"` = every name starting with `po_`); one with them is a glob over the whole name (`"po_*.csv"`).
    /// Empty: every `.csv` file. The inbound folder and the command always get every file.
    pub only: Vec<String>,
    /// `ledger_table`: a table of the ERP database (e.g. `"ferry_applied"`, or `"erp.ferry_applied"`) where the
    /// SQL write-back records each file it applied, in the same transaction: a file found there is never written
    /// back twice, even after a crash between the ERP's commit and the Connector's journal. Created if missing
    /// on SQLite, PostgreSQL and MySQL/MariaDB ([`LEDGER_COLUMNS`]); over ODBC create it first. Not set: no ledger.
    pub ledger_table: Option<String>,
    /// `date_format`: the dates of the order files (`po_`, `tr_`, `wo_`: the `order_date` and `due_date`
    /// columns) in the copies the inbound folder and the command get: `"spec"` (default) keeps DATA-SPEC's
    /// `YYYY/MM/DD`, `"iso"` writes `YYYY-MM-DD` ([`crate::order_dates`]; every other byte unchanged). The SQL
    /// write-back binds the values as received either way.
    pub date_format: DateFormat,
}

/// `[delivery] date_format`: how dates appear in the order files handed to the ERP.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DateFormat {
    /// DATA-SPEC's `YYYY/MM/DD`, as the App writes them (the file is delivered byte for byte).
    #[default]
    Spec,
    /// ISO 8601 `YYYY-MM-DD` in the order layout's date columns.
    Iso,
}

impl DateFormat {
    /// Whether a file called `name` is rewritten: `iso` and a `.csv` file (whose header row then decides).
    fn rewrites(self, name: &str) -> bool {
        self == DateFormat::Iso && name.ends_with(".csv")
    }
}

/// One `[[delivery.sql]]` statement.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SqlWriteBack {
    /// `statement`: SQL in the ERP database's dialect with `?` placeholders, e.g.
    /// `INSERT INTO recommended_orders(order_number, line, item, qty) VALUES (?, ?, ?, ?)`. Values are bound as
    /// text (SQLite converts them by column affinity); an empty CSV field is bound as NULL.
    pub statement: String,
    /// `params`: CSV header names bound in order to the `?`s, e.g. `["order_number", "line", "item", "qty"]`;
    /// a name may repeat. A file whose header lacks one of them fails with an error naming it.
    #[serde(default)]
    pub params: Vec<String>,
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        DeliveryConfig {
            inbound_dir: None,
            sql: Vec::new(),
            command: None,
            command_timeout_secs: DEFAULT_COMMAND_TIMEOUT_SECS,
            only: Vec::new(),
            ledger_table: None,
            date_format: DateFormat::Spec,
        }
    }
}

impl DeliveryConfig {
    /// Whether any target is set; when none is, files must not be received (they would be acknowledged
    /// without going anywhere).
    pub fn is_configured(&self) -> bool {
        self.inbound_dir.is_some() || !self.sql.is_empty() || self.command.is_some()
    }

    /// Checks the settings that can be checked without a file (call it when loading the config);
    /// [`deliver`] calls it too.
    pub fn validate(&self) -> Result<(), DeliveryError> {
        if let Some(argv) = &self.command
            && argv.first().is_none_or(|p| p.trim().is_empty())
        {
            return Err(DeliveryError::Config(
                "delivery.command is empty; give the program and its arguments, e.g. \
                 [\"/opt/erp/bin/import\", \"{file}\"]"
                    .into(),
            ));
        }
        if self.command_timeout_secs == 0 {
            return Err(DeliveryError::Config("delivery.command_timeout_secs must be at least 1".into()));
        }
        for (i, s) in self.sql.iter().enumerate() {
            if s.statement.trim().is_empty() {
                return Err(DeliveryError::Config(format!("delivery.sql[{i}].statement is empty")));
            }
            if s.params.iter().any(|p| p.trim().is_empty()) {
                return Err(DeliveryError::Config(format!(
                    "delivery.sql[{i}].params has an empty name; list CSV header names"
                )));
            }
        }
        if let Some(t) = &self.ledger_table
            && !valid_table_name(t)
        {
            return Err(DeliveryError::Config(format!(
                "delivery.ledger_table {t:?} is not a table name: use letters, digits and '_' (optionally \
                 schema.table), e.g. \"ferry_applied\""
            )));
        }
        if self.only.iter().any(|p| p.is_empty()) {
            return Err(DeliveryError::Config(
                "delivery.only has an empty entry; remove it or give a prefix such as \"po_\"".into(),
            ));
        }
        Ok(())
    }

    /// Whether the SQL write-back applies to a file called `name` (see [`only`](Self::only)).
    pub fn sql_applies_to(&self, name: &str) -> bool {
        if self.only.is_empty() {
            return name.ends_with(".csv");
        }
        self.only.iter().any(|p| {
            if p.contains(['*', '?']) {
                glob_match(p.as_bytes(), name.as_bytes())
            } else {
                name.starts_with(p.as_str())
            }
        })
    }
}

/// What [`deliver`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeliveryReport {
    /// CSV data rows written back with SQL (each ran every configured statement); 0 if no write-back applied.
    pub sql_rows: u64,
    /// The ledger (`ledger_table`) already held this file: the SQL write-back was not run again.
    pub already_in_ledger: bool,
    /// Where the file now is in the inbound folder, if one is configured.
    pub inbound_path: Option<PathBuf>,
    /// The command's exit code (always 0: any other code is an error), if a command is configured.
    pub command_status: Option<i32>,
}

#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    /// The name is not a valid downstream file name ([`valid_file_name`]).
    #[error(
        "refusing the downstream file name {0:?}: names are 1-64 of a-z 0-9 _ - . and do not start with a \
         dot; report this to the Ferry operator"
    )]
    InvalidName(String),
    /// `[delivery]` in `connector.toml` is unusable.
    #[error("[delivery] in connector.toml: {0}; fix the configuration")]
    Config(String),
    /// The downloaded `.bz2` is not what the file list promised (corrupt, truncated, wrong size or SHA-256).
    /// Nothing was written; delete the download and fetch it again ([`DeliveryError::refetch`]).
    #[error(
        "the downloaded file {} does not match the file list: {reason}; it will be fetched again",
        file.display()
    )]
    Checksum { file: PathBuf, reason: String },
    /// A local file operation failed (disk full, permissions, ...).
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
    /// The ERP database could not be opened or refused the transaction as a whole.
    #[error(
        "the ERP database {target}: {reason}; nothing from this file was written, check the database \
         (locked? read-only?) and the file will be delivered again"
    )]
    Database { target: String, reason: String },
    /// A configured statement needs a column the file's header row does not have.
    #[error(
        "{file}: delivery.sql[{statement}] binds the column {header:?}, but the header row has only {}; \
         fix params in [delivery] or limit the write-back with delivery.only",
        present.join(", ")
    )]
    MissingHeader { file: String, statement: usize, header: String, present: Vec<String> },
    /// The SQL write-back failed at `file:line` (a CSV error or a statement the database refused). The
    /// transaction was rolled back: nothing from this file is in the ERP.
    #[error(
        "{file}:{line}: {reason}; nothing from this file was written to the ERP, fix the cause and the file \
         will be delivered again"
    )]
    WriteBack { file: String, line: u64, reason: String },
    /// The command exited unsuccessfully.
    #[error(
        "the delivery command {program} failed ({status}); fix the command or the ERP side and the file will \
         be delivered again{}{}",
        committed_note(*sql_rows_committed),
        stderr_part(stderr)
    )]
    Command {
        program: String,
        /// The exit code; `None` if it was killed by a signal.
        code: Option<i32>,
        /// How it ended, e.g. `exit status: 3`.
        status: String,
        /// The last lines of its stderr.
        stderr: String,
        /// Rows the SQL write-back had already committed for this file (a retry runs the statements again).
        sql_rows_committed: u64,
    },
    /// The command ran longer than `command_timeout_secs` and was killed.
    #[error(
        "the delivery command {program} did not finish within {secs} s and was stopped; raise \
         delivery.command_timeout_secs or fix the command{}",
        committed_note(*sql_rows_committed)
    )]
    CommandTimeout { program: String, secs: u64, sql_rows_committed: u64 },
}

impl DeliveryError {
    /// True when the download itself is bad: delete the `.bz2` and fetch the file again. Every other error
    /// is on the ERP side: keep the verified file and retry the delivery later.
    pub fn refetch(&self) -> bool {
        matches!(self, DeliveryError::Checksum { .. })
    }
}

fn stderr_part(stderr: &str) -> String {
    if stderr.is_empty() { String::new() } else { format!("\nthe end of its stderr:\n{stderr}") }
}

fn committed_note(rows: u64) -> String {
    if rows == 0 {
        String::new()
    } else {
        format!(
            " (note: the SQL write-back of {rows} rows was already committed, and a retry runs it again \
             unless its statements ignore repeats)"
        )
    }
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> DeliveryError {
    let what = what.into();
    move |source| DeliveryError::Io { what, source }
}

/// Decompresses the downloaded `bz2` into `out` and checks it against the file list: exactly `expected_bytes`
/// bytes with SHA-256 `expected_sha256` (hex, any case).
///
/// Streams through [`capped_decoder`] (capped at `expected_bytes` + [`DECOMPRESS_SLACK`], so a bzip2 bomb stops
/// early) and [`HashingWriter`] into `<out>.tmp`, syncs it and renames it to `out` only if size and SHA-256
/// match. On any mismatch, or corrupt or truncated input, the temporary file is removed and the error is
/// [`DeliveryError::Checksum`]. Blocking: call it from `spawn_blocking` in async code.
pub fn decompress_verified(
    bz2: &Path,
    out: &Path,
    expected_bytes: u64,
    expected_sha256: &str,
) -> Result<Digests, DeliveryError> {
    let mut tmp = out.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let result = decompress_to(bz2, &tmp, expected_bytes).and_then(|d| {
        let mismatch = if d.bytes != expected_bytes {
            Some(format!("it decompresses to {} bytes, the file list says {expected_bytes}", d.bytes))
        } else if !d.sha256.eq_ignore_ascii_case(expected_sha256.trim()) {
            Some(format!("its SHA-256 is {}, the file list says {expected_sha256}", d.sha256))
        } else {
            None
        };
        match mismatch {
            Some(reason) => Err(DeliveryError::Checksum { file: bz2.to_path_buf(), reason }),
            None => Ok(d),
        }
    });
    let digests = result
        .and_then(|d| {
            fs::rename(&tmp, out).map_err(io_err(format!("cannot rename {} to {}", tmp.display(), out.display())))?;
            Ok(d)
        })
        .inspect_err(|_| {
            let _ = fs::remove_file(&tmp);
        })?;
    sync_parent(out);
    Ok(digests)
}

fn decompress_to(bz2: &Path, tmp: &Path, expected_bytes: u64) -> Result<Digests, DeliveryError> {
    let input = File::open(bz2).map_err(io_err(format!("cannot open the downloaded file {}", bz2.display())))?;
    if let Some(dir) = tmp.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::create_dir_all(dir).map_err(io_err(format!("cannot create {}", dir.display())))?;
    }
    let write_err = || io_err(format!("cannot write {} (is the disk full?)", tmp.display()));
    let file = File::create(tmp).map_err(write_err())?;
    let cap = expected_bytes.saturating_add(DECOMPRESS_SLACK);
    let mut decoder = capped_decoder(BufReader::new(input), cap);
    let mut writer = HashingWriter::new(BufWriter::new(file));
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match decoder.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                let reason = if decoder.decompressed_bytes() >= cap {
                    format!("it decompresses to more than {cap} bytes, the file list says {expected_bytes}")
                } else {
                    format!("it cannot be decompressed ({e})")
                };
                return Err(DeliveryError::Checksum { file: bz2.to_path_buf(), reason });
            }
        };
        writer.write_all(&buf[..n]).map_err(write_err())?;
    }
    let (buffered, digests) = writer.finish();
    let file = buffered.into_inner().map_err(|e| write_err()(e.into_error()))?;
    file.sync_all().map_err(write_err())?;
    Ok(digests)
}

/// Makes a rename durable (best effort; not possible on every platform).
fn sync_parent(path: &Path) {
    #[cfg(unix)]
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty())
        && let Ok(d) = File::open(dir)
    {
        let _ = d.sync_all();
    }
    #[cfg(not(unix))]
    let _ = path;
}

/// Delivers the verified plain `file` (downstream name `name`) into the ERP as `cfg` says: SQL write-back (if
/// configured and `cfg.sql_applies_to(name)`), then the inbound folder, then the command; see the
/// [module docs](self). `erp` is the `[erp]` section (its `url` resolved when the config was loaded), needed only
/// for the SQL write-back: SQLite, PostgreSQL, MySQL/MariaDB or ODBC, by its `kind`.
///
/// Nothing is visible in the ERP unless the SQL step succeeded as a whole; the inbound file appears only after
/// it, complete. Reads the CSV with blocking I/O between database calls (files are local and read buffered).
pub async fn deliver(
    cfg: &DeliveryConfig,
    erp: Option<&ErpConfig>,
    file: &Path,
    name: &str,
) -> Result<DeliveryReport, DeliveryError> {
    deliver_file(cfg, erp, file, name, None).await
}

/// [`deliver`] for the file the Comms server knows as `file_id`: with `ledger_table` set, the SQL write-back
/// records that id in the ERP database in its own transaction and is skipped for an id already recorded.
pub async fn deliver_file(
    cfg: &DeliveryConfig,
    erp: Option<&ErpConfig>,
    file: &Path,
    name: &str,
    file_id: Option<&str>,
) -> Result<DeliveryReport, DeliveryError> {
    let mut session = Delivery::new(cfg, erp);
    let report = session.deliver(file, name, file_id).await;
    session.close().await;
    report
}

/// Time spent in each step of the deliveries of a [`Delivery`] session (for `ferry bench downstream`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DeliveryTimes {
    /// Copying into the inbound folder's hidden part file (synced).
    pub stage: Duration,
    /// The SQL write-back: opening the ERP connection (once per session) and each file's transaction.
    pub write_back: Duration,
    /// Renaming the part file into view (and syncing the folder).
    pub publish: Duration,
    /// The delivery command.
    pub command: Duration,
}

/// Delivers several files one after another over **one** ERP write-back connection: opened when the first file
/// needs the SQL write-back, kept for the next ones, dropped (and opened again for the next file) after an error
/// of the database as a whole, and closed by [`close`](Delivery::close). Each file is still its own
/// transaction, with its ledger row in it: what one file does is exactly what [`deliver_file`] does. (ODBC opens
/// a connection per file in any case.)
///
/// **Page mode** ([`Delivery::page`]): with a `ledger_table` (a repeat is harmless) and no command, the SQL
/// write-backs of the files go in **one ERP transaction**, each file in a savepoint of it (a file whose
/// statements fail is rolled back to its savepoint and reported alone); their inbound copies wait, complete and
/// synced under their hidden names, and are renamed into view by [`commit_page`](Delivery::commit_page) after the
/// ERP's commit. Until then a delivered file is not in the ERP: the caller journals nothing as applied before
/// `commit_page`. The ERP's write lock is held from the page's first write to its commit.
pub struct Delivery<'a> {
    cfg: &'a DeliveryConfig,
    erp: Option<&'a ErpConfig>,
    db: Option<Box<dyn WriteBack>>,
    /// Page mode asked for and allowed by the configuration.
    page: bool,
    /// A page transaction is open on `db`.
    page_open: bool,
    /// Files written back in the open page transaction, waiting for its commit: (file id, staged inbound copy).
    pending: Vec<(String, Option<StagedFile>)>,
    /// Files of a page transaction that was lost (its connection broke): (file id, why).
    lost: Vec<(String, String)>,
    /// What the deliveries so far spent in each step.
    pub times: DeliveryTimes,
}

impl<'a> Delivery<'a> {
    /// A session delivering as `cfg` says into the ERP `erp` (its `url` resolved); nothing is opened yet.
    pub fn new(cfg: &'a DeliveryConfig, erp: Option<&'a ErpConfig>) -> Delivery<'a> {
        Delivery {
            cfg,
            erp,
            db: None,
            page: false,
            page_open: false,
            pending: Vec::new(),
            lost: Vec::new(),
            times: DeliveryTimes::default(),
        }
    }

    /// A session in page mode (see [`Delivery`]) when `cfg` allows it: SQL write-back with a `ledger_table` and
    /// no command; otherwise the same as [`Delivery::new`]. The caller must call
    /// [`commit_page`](Delivery::commit_page) before it records any file as applied.
    pub fn page(cfg: &'a DeliveryConfig, erp: Option<&'a ErpConfig>) -> Delivery<'a> {
        let mut d = Delivery::new(cfg, erp);
        d.page = !cfg.sql.is_empty() && cfg.ledger_table.is_some() && cfg.command.is_none();
        d
    }

    /// Commits the open page transaction, then renames the page's inbound copies into view. Returns the files
    /// that are **not** delivered after all, `(file id, why)`: every file of the page when the commit failed (or
    /// its connection was lost earlier), a file whose rename failed (its rows are committed with its ledger
    /// row: the retry only renames it). The others are in the ERP.
    pub async fn commit_page(&mut self) -> Vec<(String, String)> {
        let mut failed = std::mem::take(&mut self.lost);
        if !self.page_open {
            return failed;
        }
        self.page_open = false;
        let pending = std::mem::take(&mut self.pending);
        let t = Instant::now();
        let committed = match self.db.as_mut() {
            Some(db) => db.commit_page().await.map_err(DeliveryError::from),
            None => Err(DeliveryError::Config("the ERP connection of the page is gone".into())),
        };
        self.times.write_back += t.elapsed();
        if let Err(e) = committed {
            if let Some(db) = self.db.take() {
                db.close().await;
            }
            let why = format!("{e}");
            // dropping the staged copies removes their part files
            failed.extend(pending.into_iter().map(|(id, _)| (id, why.clone())));
            return failed;
        }
        let t = Instant::now();
        let mut renamed = None;
        for (id, staged) in pending {
            if let Some(mut staged) = staged {
                match staged.rename() {
                    Ok(()) => renamed = Some(staged.dest.clone()),
                    Err(e) => failed.push((id, e.to_string())),
                }
            }
        }
        // one sync of the inbound folder for the page's renames (they all go to the same folder)
        if let Some(dest) = renamed {
            let _ = blocking(move || {
                sync_parent(&dest);
                Ok(())
            })
            .await;
        }
        self.times.publish += t.elapsed();
        failed
    }

    /// Closes the ERP connection, if one is open (best effort); a page not committed is rolled back.
    pub async fn close(mut self) {
        if let Some(db) = self.db.take() {
            db.close().await;
        }
    }

    /// Delivers the verified plain `file` as [`deliver_file`] does, over this session's ERP connection.
    pub async fn deliver(
        &mut self,
        file: &Path,
        name: &str,
        file_id: Option<&str>,
    ) -> Result<DeliveryReport, DeliveryError> {
        let cfg = self.cfg;
        if !valid_file_name(name) {
            return Err(DeliveryError::InvalidName(name.to_string()));
        }
        cfg.validate()?;
        if !cfg.is_configured() {
            return Err(DeliveryError::Config(
                "nothing is set up to receive downstream files; set inbound_dir, sql or command under [delivery]"
                    .into(),
            ));
        }
        let sql_url = match (cfg.sql.is_empty() || !cfg.sql_applies_to(name), self.erp) {
            (true, _) => None,
            (false, Some(erp)) => Some(erp),
            (false, None) => {
                return Err(DeliveryError::Config(
                    "delivery.sql is set but no ERP database was given; set url under [erp]".into(),
                ));
            }
        };

        // Stage the inbound copy first: a full disk then fails before anything reaches the ERP. Dropping `staged`
        // on an early return removes the `.part` file.
        let iso = cfg.date_format.rewrites(name);
        let t = Instant::now();
        let staged = match &cfg.inbound_dir {
            Some(dir) => Some(stage_inbound(file, dir, name, iso).await?),
            None => None,
        };
        self.times.stage += t.elapsed();
        let mut report = DeliveryReport::default();
        if let Some(erp) = sql_url {
            let ledger = cfg.ledger_table.as_deref().zip(file_id).map(|(table, id)| Ledger {
                table: table.to_string(),
                file_id: id.to_string(),
                name: name.to_string(),
            });
            let t = Instant::now();
            let in_page = self.page && ledger.is_some();
            if in_page && !self.page_open {
                self.page_open = self.begin_page(erp, ledger.as_ref()).await?;
            }
            let written = write_back(&mut self.db, erp, &cfg.sql, file, name, ledger).await;
            self.times.write_back += t.elapsed();
            if self.page_open && self.db.is_none() {
                // the connection broke: the page transaction, and every file written back in it, is gone
                self.page_open = false;
                let why = match &written {
                    Err(e) => format!("the page's ERP transaction was lost: {e}"),
                    Ok(_) => "the page's ERP transaction was lost".to_string(),
                };
                let lost = std::mem::take(&mut self.pending);
                self.lost.extend(lost.into_iter().map(|(id, _)| (id, why.clone())));
            }
            let written = written?;
            if self.page_open {
                // committed (and renamed into view) by `commit_page`
                report.sql_rows = written.unwrap_or(0);
                report.already_in_ledger = written.is_none();
                report.inbound_path = staged.as_ref().map(|s| s.dest.clone());
                self.pending.push((file_id.unwrap_or_default().to_string(), staged));
                return Ok(report);
            }
            match written {
                Some(rows) => report.sql_rows = rows,
                None => {
                    tracing::info!(file = name, "the ERP's ledger already holds this file: not written back again");
                    report.already_in_ledger = true;
                }
            }
        }
        if let Some(staged) = staged {
            let t = Instant::now();
            report.inbound_path = Some(staged.publish()?);
            self.times.publish += t.elapsed();
        }
        if let Some(argv) = &cfg.command {
            let t = Instant::now();
            // the inbound copy, else the verified file, else (ISO dates wanted) a converted copy beside it
            let converted = match (&report.inbound_path, iso) {
                (None, true) => Some(ConvertedCopy::create(file, name).await?),
                _ => None,
            };
            let target = match (&report.inbound_path, &converted) {
                (Some(p), _) => p.as_path(),
                (None, Some(c)) => c.path.as_path(),
                (None, None) => file,
            };
            let cmd = CommandRun { timeout_secs: cfg.command_timeout_secs, sql_rows_committed: report.sql_rows };
            let status = run_command(argv, target, file_id, &cmd).await;
            self.times.command += t.elapsed();
            report.command_status = Some(status?);
        }
        if sql_url.is_none() && cfg.inbound_dir.is_none() && cfg.command.is_none() {
            tracing::warn!(
                file = name,
                "the file went nowhere: delivery.only excludes it and neither inbound_dir nor command is set"
            );
        }
        Ok(report)
    }
}

impl Delivery<'_> {
    /// Opens the connection if needed and begins a page transaction on it; `false` when the backend has none.
    async fn begin_page(&mut self, erp: &ErpConfig, ledger: Option<&Ledger>) -> Result<bool, DeliveryError> {
        let Some(ledger) = ledger else { return Ok(false) };
        let conn = match &mut self.db {
            Some(c) => c,
            None => self.db.insert(open_writeback(erp).await?),
        };
        match conn.begin_page(ledger).await {
            Ok(open) => Ok(open),
            Err(e) => {
                if let Some(broken) = self.db.take() {
                    broken.close().await;
                }
                Err(e.into())
            }
        }
    }
}

/// A complete, synced copy in the inbound folder under a hidden name, waiting to be renamed into view.
struct StagedFile {
    part: PathBuf,
    dest: PathBuf,
    published: bool,
}

/// Copies `file` into the inbound folder under its hidden name, the dates rewritten as ISO if `iso`.
async fn stage_inbound(file: &Path, dir: &Path, name: &str, iso: bool) -> Result<StagedFile, DeliveryError> {
    let staged = StagedFile { part: dir.join(format!(".{name}.part")), dest: dir.join(name), published: false };
    let (src, dir) = (file.to_path_buf(), dir.to_path_buf());
    blocking(move || {
        fs::create_dir_all(&dir).map_err(io_err(format!("cannot create the inbound folder {}", dir.display())))?;
        let copy_err = || {
            io_err(format!(
                "cannot copy {} to {} (is the disk full or the folder read-only?)",
                src.display(),
                staged.part.display()
            ))
        };
        let mut input = File::open(&src).map_err(io_err(format!("cannot open the received file {}", src.display())))?;
        // From here on, `staged` removes the part file if anything fails.
        let mut out = File::create(&staged.part).map_err(copy_err())?;
        copy_dates(&mut input, &mut out, iso).map_err(copy_err())?;
        out.sync_all().map_err(copy_err())?;
        Ok(staged)
    })
    .await
}

/// Copies `input` to `out` (buffered), rewriting the order dates as ISO if `iso`.
fn copy_dates(input: &mut File, out: &mut File, iso: bool) -> io::Result<()> {
    if iso {
        let n = crate::order_dates::copy_with_iso_dates(BufReader::new(input), out)?;
        tracing::debug!(dates = n, "order dates rewritten as ISO");
    } else {
        io::copy(input, out)?;
    }
    Ok(())
}

/// A copy of the verified file with ISO dates for the command when there is no inbound folder:
/// `<folder of the file>/.iso/<name>`, removed when dropped.
struct ConvertedCopy {
    dir: PathBuf,
    path: PathBuf,
}

impl ConvertedCopy {
    async fn create(file: &Path, name: &str) -> Result<ConvertedCopy, DeliveryError> {
        let dir = file.parent().unwrap_or(Path::new(".")).join(".iso");
        let copy = ConvertedCopy { path: dir.join(name), dir };
        let (src, dest) = (file.to_path_buf(), copy.path.clone());
        blocking(move || {
            let dir = dest.parent().unwrap_or(Path::new("."));
            fs::create_dir_all(dir).map_err(io_err(format!("cannot create {}", dir.display())))?;
            let mut input =
                File::open(&src).map_err(io_err(format!("cannot open the received file {}", src.display())))?;
            let copy_err = || io_err(format!("cannot write {} (is the disk full?)", dest.display()));
            let mut out = File::create(&dest).map_err(copy_err())?;
            copy_dates(&mut input, &mut out, true).map_err(copy_err())?;
            out.sync_all().map_err(copy_err())
        })
        .await?;
        Ok(copy)
    }
}

impl Drop for ConvertedCopy {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

impl StagedFile {
    /// Renames the part file to its real name, replacing a file of that name.
    fn publish(mut self) -> Result<PathBuf, DeliveryError> {
        self.rename()?;
        sync_parent(&self.dest);
        Ok(self.dest.clone())
    }

    /// The rename of [`publish`](StagedFile::publish) without the folder's sync (the caller syncs it once).
    fn rename(&mut self) -> Result<(), DeliveryError> {
        fs::rename(&self.part, &self.dest).map_err(io_err(format!(
            "cannot rename {} to {}",
            self.part.display(),
            self.dest.display()
        )))?;
        self.published = true;
        Ok(())
    }
}

impl Drop for StagedFile {
    fn drop(&mut self) {
        if !self.published {
            let _ = fs::remove_file(&self.part);
        }
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, DeliveryError> + Send + 'static,
) -> Result<T, DeliveryError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| DeliveryError::Io {
        what: "a file copy was interrupted".into(),
        source: io::Error::other(e.to_string()),
    })?
}

/// Runs the configured statements for every data row of `file` through the [`WriteBack`] of `erp`, in one
/// transaction; `None` when the ledger shows the file was applied before. The statements are planned (header names
/// to fields) before the database is opened, so a missing header fails without it. `db` is the session's
/// connection: opened here if there is none, kept for the next file, dropped after an error of the database as a
/// whole (a broken connection is not used again).
async fn write_back(
    db: &mut Option<Box<dyn WriteBack>>,
    erp: &ErpConfig,
    statements: &[SqlWriteBack],
    file: &Path,
    name: &str,
    ledger: Option<Ledger>,
) -> Result<Option<u64>, DeliveryError> {
    let input = File::open(file).map_err(io_err(format!("cannot open the received file {}", file.display())))?;
    let input: Box<dyn Read + Send> = Box::new(BufReader::new(input));
    let mut records = csv::ReaderBuilder::new().has_headers(true).flexible(false).from_reader(input);
    let headers = records.headers().map_err(|e| csv_error(name, 1, &e))?.clone();
    if headers.is_empty() {
        return Ok(Some(0)); // an empty file: no header, no rows
    }
    let present: Vec<String> = headers.iter().map(|h| h.trim().to_string()).collect();
    let mut plan = Vec::with_capacity(statements.len());
    for (i, s) in statements.iter().enumerate() {
        let columns = s
            .params
            .iter()
            .map(|p| {
                let p = p.trim();
                present.iter().position(|h| h == p).ok_or_else(|| DeliveryError::MissingHeader {
                    file: name.to_string(),
                    statement: i,
                    header: p.to_string(),
                    present: present.clone(),
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        plan.push(Statement { sql: s.statement.clone(), columns });
    }
    let conn = match db {
        Some(c) => c,
        None => db.insert(open_writeback(erp).await?),
    };
    let result = conn.apply(WriteJob { file: name.to_string(), statements: plan, records, ledger }).await;
    if let Err(WriteBackError::Database { .. }) = &result
        && let Some(broken) = db.take()
    {
        broken.close().await;
    }
    Ok(result?)
}

impl From<WriteBackError> for DeliveryError {
    fn from(e: WriteBackError) -> DeliveryError {
        match e {
            WriteBackError::Database { target, reason } => DeliveryError::Database { target, reason },
            WriteBackError::Record { file, line, reason } => DeliveryError::WriteBack { file, line, reason },
        }
    }
}

/// How the command runs: its time limit, and what the error says was already committed.
struct CommandRun {
    timeout_secs: u64,
    sql_rows_committed: u64,
}

/// Runs the configured command on `target` (made absolute) for the file `file_id`; returns its exit code (0) or
/// the reason it failed.
async fn run_command(
    argv: &[String],
    target: &Path,
    file_id: Option<&str>,
    how: &CommandRun,
) -> Result<i32, DeliveryError> {
    let CommandRun { timeout_secs, sql_rows_committed } = *how;
    let target = std::path::absolute(target).unwrap_or_else(|_| target.to_path_buf());
    let mut args = argv.iter().map(|a| substitute(a, &target, file_id.unwrap_or("")));
    let program = args.next().unwrap_or_default();
    let shown = program.to_string_lossy().into_owned();
    let mut command = tokio::process::Command::new(&program);
    if let Some(id) = file_id {
        command.env("FERRY_FILE_ID", id);
    }
    let mut child = command
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(io_err(format!(
            "cannot start the delivery command {shown}; check delivery.command in connector.toml"
        )))?;
    let (stdout, stderr) = (child.stdout.take(), child.stderr.take());
    let run = async {
        let (status, out, err) =
            tokio::join!(child.wait(), tail(stdout, STDERR_TAIL_LINES), tail(stderr, STDERR_TAIL_LINES));
        (status, out, err)
    };
    let (status, stdout_tail, stderr_tail) = match tokio::time::timeout(Duration::from_secs(timeout_secs), run).await {
        Ok(done) => done,
        Err(_) => {
            let _ = child.kill().await;
            return Err(DeliveryError::CommandTimeout { program: shown, secs: timeout_secs, sql_rows_committed });
        }
    };
    let status = status.map_err(io_err(format!("cannot wait for the delivery command {shown}")))?;
    for line in &stdout_tail {
        tracing::debug!(command = %shown, "{line}");
    }
    match status.code() {
        Some(0) => Ok(0),
        code => Err(DeliveryError::Command {
            program: shown,
            code,
            status: status.to_string(),
            stderr: stderr_tail.join("\n"),
            sql_rows_committed,
        }),
    }
}

/// `arg` with every `{file}` replaced by `path` (which need not be UTF-8) and every `{id}` by `id`.
fn substitute(arg: &str, path: &Path, id: &str) -> OsString {
    let mut out = OsString::new();
    for (i, part) in arg.split("{file}").enumerate() {
        if i > 0 {
            out.push(path.as_os_str());
        }
        out.push(part.replace("{id}", id));
    }
    out
}

/// The last `keep` lines of `r` (lossy UTF-8, each cut to 500 characters), reading it to the end.
async fn tail<R: AsyncRead + Unpin>(r: Option<R>, keep: usize) -> Vec<String> {
    let Some(r) = r else { return Vec::new() };
    let mut lines = tokio::io::BufReader::new(r).split(b'\n');
    let mut last = VecDeque::with_capacity(keep + 1);
    while let Ok(Some(line)) = lines.next_segment().await {
        let text = String::from_utf8_lossy(&line);
        last.push_back(text.trim_end().chars().take(500).collect::<String>());
        if last.len() > keep {
            last.pop_front();
        }
    }
    last.into()
}

/// `*` matches any run of characters, `?` any one character; everything else matches itself.
fn glob_match(pattern: &[u8], name: &[u8]) -> bool {
    let (mut p, mut n) = (0, 0);
    let mut backtrack: Option<(usize, usize)> = None;
    while n < name.len() {
        match pattern.get(p) {
            Some(b'*') => {
                backtrack = Some((p, n));
                p += 1;
            }
            Some(&c) if c == b'?' || c == name[n] => {
                p += 1;
                n += 1;
            }
            _ => match backtrack {
                Some((bp, bn)) => {
                    p = bp + 1;
                    n = bn + 1;
                    backtrack = Some((bp, bn + 1));
                }
                None => return false,
            },
        }
    }
    pattern[p.min(pattern.len())..].iter().all(|&c| c == b'*')
}

/// What receive passes spent in each step (`Connector::receive_times`, summed over every pass).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReceiveTimes {
    /// Files delivered.
    pub files: u64,
    /// Waiting for the next file to be downloaded, decompressed and verified (it is fetched ahead).
    pub fetch_wait: Duration,
    /// The deliveries, step by step.
    pub delivery: DeliveryTimes,
    /// Journal commits (applied, failed, acked), and how many there were.
    pub journal: Duration,
    pub journal_commits: u64,
    /// Acknowledgement calls to the Comms server.
    pub ack: Duration,
}

impl ReceiveTimes {
    pub(crate) fn add(&mut self, o: &ReceiveTimes) {
        self.files += o.files;
        self.fetch_wait += o.fetch_wait;
        self.delivery.stage += o.delivery.stage;
        self.delivery.write_back += o.delivery.write_back;
        self.delivery.publish += o.delivery.publish;
        self.delivery.command += o.delivery.command;
        self.journal += o.journal;
        self.journal_commits += o.journal_commits;
        self.ack += o.ack;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_and_prefix_selection() {
        assert!(glob_match(b"po_*.csv", b"po_000001.csv"));
        assert!(glob_match(b"*", b""));
        assert!(glob_match(b"p?_*", b"po_1"));
        assert!(glob_match(b"*a*b", b"xaxxab"));
        assert!(!glob_match(b"po_*.csv", b"po_000001.txt"));
        assert!(!glob_match(b"po", b"po_"));
        let mut cfg = DeliveryConfig::default();
        assert!(cfg.sql_applies_to("rp_000001.csv"));
        assert!(!cfg.sql_applies_to("report.txt"));
        cfg.only = vec!["po_".into(), "tr_*.csv".into()];
        assert!(cfg.sql_applies_to("po_000001.csv"));
        assert!(cfg.sql_applies_to("tr_000002.csv"));
        assert!(!cfg.sql_applies_to("rp_000003.csv"));
    }

    #[test]
    fn file_and_id_placeholders_are_replaced_everywhere() {
        let p = Path::new("/in/po_{id}.csv");
        assert_eq!(substitute("--file={file}", p, "F1"), "--file=/in/po_{id}.csv");
        assert_eq!(substitute("{file}:{file}", p, "F1"), "/in/po_{id}.csv:/in/po_{id}.csv");
        assert_eq!(substitute("--ref={id}-{id}", p, "F1"), "--ref=F1-F1");
        assert_eq!(substitute("{id}{file}", p, ""), "/in/po_{id}.csv");
        assert_eq!(substitute("plain", p, "F1"), "plain");
    }
}
