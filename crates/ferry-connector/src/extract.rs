//! One extract run: every mapped file is queried from the ERP and written to the spool as `NAME.csv.bz2`, then the
//! batch's `manifest.json` is written last, atomically.
//!
//! Per file, in constant memory: the query's rows stream from the [`Source`] on the async side and go in chunks
//! through a bounded channel to a blocking writer thread, which formats each row as a positional CSV line of
//! `DATA-SPEC.md`, checks every field with [`spec::parse_field`] (so a bad row fails here, with its line and column,
//! instead of in the App), hashes the plain CSV (MD5, SHA-256, byte count) and compresses it with bzip2 on all
//! cores into `NAME.csv.bz2.tmp`, renamed to `NAME.csv.bz2` once complete.
//!
//! Values become text as follows (see [`format_value`]):
//! - integers as they are; a date column also takes an integer `YYYYMMDD`;
//! - floats rounded to 15 significant digits (what an `f64` holds exactly), then written as the shortest decimal
//!   that reads back to that value, never with an exponent: `0.1 + 0.2` -> `0.3`, `12.0` -> `12`, `-0.0` -> `0`;
//! - exact decimals (`NUMERIC`, `DECIMAL`, and decimals stored as text in a decimal column) without redundant
//!   zeros, never through a float: `012.3400` -> `12.34`, `5.000` -> `5`; booleans as `1`/`0`;
//! - `DATE` and `TIMESTAMP` values as `YYYY/MM/DD` (a timestamp's time is dropped);
//! - text as it is, except that codes and numbers are trimmed (ERPs pad `CHAR` columns), descriptions lose trailing
//!   spaces, and line breaks become spaces; an empty or blank text is an empty field;
//! - dates (columns of kind `Date`): `YYYY-MM-DD`, `YYYY-MM-DD HH:MM:SS` (or with a `T`, fractions of seconds) and
//!   `YYYY/MM/DD` are accepted and written `YYYY/MM/DD`;
//! - BLOBs that hold UTF-8 are text; any other BLOB is an error.
//!
//! Custom files `ut_NNN.csv` carry a header row of the query's column names; their text is quoted, numbers bare,
//! nothing is checked. Their row count in the manifest excludes the header.
//!
//! **Validation in the same pass** ([`crate::check`]): the writer thread feeds every converted row to a
//! [`FileCheck`] (keys, references to codes of earlier files, the incremental date), and a value that fails its
//! conversion is recorded as a problem instead of stopping the file. The files that define codes (location,
//! master, supplier, group) are extracted first. A file with errors stops the run; at the end, warnings stop it
//! unless allowed. A stopped run leaves no files and no manifest: nothing can be sent. [`check_mapping`] runs the
//! same pipeline without writing anything, for `ferry connector check`.
//!
//! **Windows** ([`ExtractPlan::windows`]): an incremental file extracted as a window keeps only the rows whose date
//! column, once converted, is on or after the window's first day. The filter runs here, on the converted date, so
//! it works the same for every source (the query is not changed).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use chrono::{Datelike, NaiveDate, Utc};
use ferry_io::bz::ParallelBzWriter;
use ferry_io::digest::HashingWriter;
use ferry_proto::batch::BatchId;
use ferry_proto::manifest::{MANIFEST_NAME, Manifest, ManifestFile, Mode, Scope, Window};
use ferry_proto::spec::{self, Column, Kind};
use futures::StreamExt;
use tokio::sync::mpsc;

use crate::check::{At, CheckLimits, CheckReport, FieldError, FileCheck, FileReport, Known, Severity};
use crate::erp::source::{Recycle, Source, SourceError, SqlValue};
use crate::mapping::{Mapping, MappingError};

/// Rows per chunk sent to the writer thread, and chunks in flight: together they bound the memory of a file.
const CHUNK_ROWS: usize = 1024;
const CHUNKS_IN_FLIGHT: usize = 4;
/// Plain CSV gathered before one write into the hasher and compressor.
const WRITE_BUF: usize = 64 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExtractOptions {
    /// bzip2 level 1-9 (9, the `bzip2` command's default, gives the smallest files).
    pub level: u32,
    /// Compression threads; 0 means one per core.
    pub threads: usize,
}

impl Default for ExtractOptions {
    fn default() -> Self {
        ExtractOptions { level: 9, threads: 0 }
    }
}

/// What extracting one file took.
#[derive(Debug, Clone, PartialEq)]
pub struct FileStats {
    pub name: String,
    pub rows: u64,
    /// Size of the plain CSV.
    pub bytes: u64,
    /// Size of the `.bz2`.
    pub compressed_bytes: u64,
    pub seconds: f64,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct ExtractStats {
    /// One entry per file, in batch order.
    pub files: Vec<FileStats>,
    /// Wall time of the whole run.
    pub seconds: f64,
}

impl ExtractStats {
    pub fn rows(&self) -> u64 {
        self.files.iter().map(|f| f.rows).sum()
    }
    pub fn bytes(&self) -> u64 {
        self.files.iter().map(|f| f.bytes).sum()
    }
    pub fn compressed_bytes(&self) -> u64 {
        self.files.iter().map(|f| f.compressed_bytes).sum()
    }
}

/// What a run does beyond what the mapping says: which incremental files are windows, and whether warnings block.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExtractPlan {
    /// Incremental files extracted as a window this run, with the window's first day; the column is the file's
    /// `incremental.column` in the mapping. Every other file is extracted whole.
    pub windows: BTreeMap<String, NaiveDate>,
    /// Write the batch even if validation found warnings (errors always stop it).
    pub allow_warnings: bool,
}

/// A batch written to the spool, with what validation found (warnings, if they were allowed).
#[derive(Debug, Clone)]
pub struct Extracted {
    pub manifest: Manifest,
    pub stats: ExtractStats,
    pub check: CheckReport,
}

#[derive(Debug, thiserror::Error)]
pub enum ExtractError {
    #[error("{file}: {source}; check the query for {file} in the mapping")]
    Source { file: String, source: SourceError },
    #[error("{file} row {line}: the row has {got} values but the query announced {expected} columns")]
    RowWidth { file: String, line: u64, got: usize, expected: usize },
    /// Validation found errors, or warnings that were not allowed: nothing was written.
    #[error("{}", refusal(.report, .allow_warnings))]
    Invalid { report: Box<CheckReport>, allow_warnings: bool },
    #[error(transparent)]
    Mapping(#[from] MappingError),
    #[error("batch {0} was already extracted (its manifest exists); start a new batch")]
    AlreadyExtracted(String),
    #[error("cannot write {path}: {source}; check free space and permissions of the spool directory")]
    Io { path: PathBuf, source: io::Error },
    #[error("the writer thread for {file} failed: {message}")]
    Writer { file: String, message: String },
}

fn refusal(report: &CheckReport, allow_warnings: &bool) -> String {
    report.refusal(*allow_warnings)
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> ExtractError + '_ {
    move |source| ExtractError::Io { path: path.to_path_buf(), source }
}

/// Extract every file of `mapping` from `source` into `spool_dir/<batch_id>/` and write its manifest there.
///
/// The mapping is [validated](Mapping::validate) first. `progress(file, rows, bytes)` is called as rows are read (at
/// the start of each file, then every 1,024 rows, then with the final counts); `bytes` is the CSV text converted so
/// far (it lags `rows` by up to one write buffer). On error, the files this call wrote are
/// removed and no manifest exists. The manifest's `tenant` is empty: the receiver takes the tenant from the key.
///
/// Every file is extracted whole and validated; warnings stop the run unless the mapping says `allow_warnings`.
pub async fn extract_batch(
    source: &dyn Source,
    mapping: &Mapping,
    spool_dir: &Path,
    batch_id: &BatchId,
    opts: &ExtractOptions,
    progress: &(dyn Fn(&str, u64, u64) + Sync),
) -> Result<(Manifest, ExtractStats), ExtractError> {
    let plan = ExtractPlan { allow_warnings: mapping.allow_warnings, ..ExtractPlan::default() };
    let e = extract_planned(source, mapping, spool_dir, batch_id, opts, &plan, progress).await?;
    Ok((e.manifest, e.stats))
}

/// [`extract_batch`] with a plan: windows for incremental files, and whether warnings stop the run. The manifest
/// marks every file `full` or as its window; a batch with a window has mode `incremental`.
pub async fn extract_planned(
    source: &dyn Source,
    mapping: &Mapping,
    spool_dir: &Path,
    batch_id: &BatchId,
    opts: &ExtractOptions,
    plan: &ExtractPlan,
    progress: &(dyn Fn(&str, u64, u64) + Sync),
) -> Result<Extracted, ExtractError> {
    extract_announcing(source, mapping, spool_dir, batch_id, opts, plan, progress, None).await
}

/// A file of the batch that is complete in the spool (compressed, renamed into place, its size final), announced
/// while the rest of the batch is still being extracted so that it can be uploaded at once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadyFile {
    pub batch_id: BatchId,
    /// The spooled file's name, `NAME.csv.bz2`.
    pub name: String,
    pub path: PathBuf,
    pub compressed_bytes: u64,
}

/// [`extract_planned`], announcing each file on `ready` as soon as it is complete. A file announced may still
/// belong to a batch that fails later (a later file's errors, warnings not allowed): such a run returns an error,
/// writes no manifest and removes the files, so whoever uploaded them must never complete the batch.
#[allow(clippy::too_many_arguments)]
pub async fn extract_announcing(
    source: &dyn Source,
    mapping: &Mapping,
    spool_dir: &Path,
    batch_id: &BatchId,
    opts: &ExtractOptions,
    plan: &ExtractPlan,
    progress: &(dyn Fn(&str, u64, u64) + Sync),
    ready: Option<&mpsc::UnboundedSender<ReadyFile>>,
) -> Result<Extracted, ExtractError> {
    mapping.validate()?;
    if let Some(f) = plan.windows.keys().find(|f| mapping.incremental(f).is_none()) {
        return Err(ExtractError::Mapping(MappingError::Incremental {
            file: f.clone(),
            why: "this run asks for a window, but the mapping does not mark it incremental".into(),
        }));
    }
    let dir = spool_dir.join(batch_id.as_str());
    let manifest_path = dir.join(MANIFEST_NAME);
    if manifest_path.exists() {
        return Err(ExtractError::AlreadyExtracted(batch_id.to_string()));
    }
    fs::create_dir_all(&dir).map_err(io_err(&dir))?;

    let mut written = Vec::new();
    let result = extract_into(source, mapping, &dir, batch_id, opts, plan, progress, &mut written, ready).await;
    if result.is_err() {
        for p in &written {
            let _ = fs::remove_file(p);
        }
        let _ = fs::remove_dir(&dir); // only if empty: never touches what this call did not write
    }
    result
}

#[allow(clippy::too_many_arguments)]
async fn extract_into(
    source: &dyn Source,
    mapping: &Mapping,
    dir: &Path,
    batch_id: &BatchId,
    opts: &ExtractOptions,
    plan: &ExtractPlan,
    progress: &(dyn Fn(&str, u64, u64) + Sync),
    written: &mut Vec<PathBuf>,
    ready: Option<&mpsc::UnboundedSender<ReadyFile>>,
) -> Result<Extracted, ExtractError> {
    let t0 = Instant::now();
    let started = Utc::now();
    let threads = match opts.threads {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    let level = opts.level.clamp(1, 9);
    let limits = CheckLimits { max_problems: 20, samples: 0 };
    let invalid =
        |report: CheckReport| ExtractError::Invalid { report: Box::new(report), allow_warnings: plan.allow_warnings };

    let mut files = Vec::new();
    let mut stats = ExtractStats::default();
    let mut report = CheckReport::default();
    let mut known = Known::default();
    // The files that define codes go first, so the others' references can be checked in the same pass.
    for (name, fm) in crate::check::check_order(mapping.ordered()) {
        // `validate` above guarantees every name is a standard or custom file
        let layout = spec::file_spec(name).map_or(Layout::Custom, |fs| Layout::Standard(fs.columns));
        let window = plan.windows.get(name).copied();
        let inc = fm.incremental.as_ref();
        let check = FileCheck::new(name, inc, window.is_some(), &known, limits);
        let final_path = dir.join(format!("{name}.bz2"));
        let tmp_path = dir.join(format!("{name}.bz2.tmp"));
        written.push(tmp_path.clone());
        let filter =
            window.zip(inc).and_then(|(from, i)| Some((spec::file_spec(name)?.column_index(&i.column)?, from)));
        let sink = Sink { tmp_path, final_path: final_path.clone(), level, threads };
        let job = FileJob { name, query: &fm.query, layout, window: filter, sink: Some(sink) };
        let out = extract_file(source, job, check, progress).await?;
        written.push(final_path);
        let mut file_report = out.report;
        file_report.note = match (window, inc) {
            (Some(from), Some(i)) => format!("window from {} ({})", from.format("%Y/%m/%d"), i.column),
            _ => "full".into(),
        };
        let errors = file_report.errors;
        report.files.push(file_report);
        if let Some(codes) = out.codes
            && let Some(fs) = spec::file_spec(name)
        {
            known.insert(fs.name, codes);
        }
        if errors > 0 {
            return Err(invalid(report)); // the batch cannot be sent: stop here
        }
        let Some((mut entry, fstats)) = out.written else {
            return Err(invalid(report));
        };
        if let Some(tx) = ready {
            let name = format!("{name}.bz2");
            let path = dir.join(&name);
            let compressed_bytes = entry.compressed_bytes;
            let _ = tx.send(ReadyFile { batch_id: batch_id.clone(), name, path, compressed_bytes });
        }
        entry.scope = Some(match (window, inc) {
            (Some(from), Some(i)) => Scope::Window(Window { column: i.column.clone(), from }),
            _ => Scope::Full,
        });
        files.push(entry);
        stats.files.push(fstats);
    }
    if report.blocks(plan.allow_warnings) {
        return Err(invalid(report));
    }
    // back to batch order
    let order: Vec<&str> = mapping.ordered().into_iter().map(|(n, _)| n).collect();
    let pos = |n: &str| order.iter().position(|o| *o == n);
    files.sort_by_key(|f| pos(&f.name));
    stats.files.sort_by_key(|f| pos(&f.name));

    let any_window = files.iter().any(|f| f.window().is_some());
    let manifest = Manifest {
        batch_id: batch_id.clone(),
        tenant: String::new(),
        spec_version: ferry_proto::SPEC_VERSION.to_string(),
        connector_version: ferry_proto::FERRY_VERSION.to_string(),
        mode: if any_window { Mode::Incremental } else { Mode::Full },
        extract_started: started,
        extract_finished: Utc::now(),
        files,
    };
    let json = serde_json::to_vec_pretty(&manifest)
        .map_err(|e| ExtractError::Io { path: dir.join(MANIFEST_NAME), source: io::Error::other(e) })?;
    let tmp = dir.join(format!("{MANIFEST_NAME}.tmp"));
    written.push(tmp.clone());
    write_atomically(&tmp, &dir.join(MANIFEST_NAME), &json)?;
    stats.seconds = t0.elapsed().as_secs_f64();
    Ok(Extracted { manifest, stats, check: report })
}

/// `ferry connector check`: run every query of `mapping` through the extract's conversion and validation, writing
/// nothing, and report every file — a broken query or a wrong column count is a problem of its file, and the run
/// goes on with the next file. Incremental files are checked whole.
pub async fn check_mapping(
    source: &dyn Source,
    mapping: &Mapping,
    limits: CheckLimits,
    progress: &(dyn Fn(&str, u64, u64) + Sync),
) -> CheckReport {
    let mut report = CheckReport::default();
    let mut known = Known::default();
    for (name, fm) in crate::check::check_order(mapping.ordered()) {
        let layout = spec::file_spec(name).map_or(Layout::Custom, |fs| Layout::Standard(fs.columns));
        let inc = fm.incremental.as_ref();
        let check = FileCheck::new(name, inc, false, &known, limits);
        let job = FileJob { name, query: &fm.query, layout, window: None, sink: None };
        let mut file_report = match extract_file(source, job, check, progress).await {
            Ok(out) => {
                if let (Some(codes), Some(fs)) = (out.codes, spec::file_spec(name)) {
                    known.insert(fs.name, codes);
                }
                out.report
            }
            Err(e) => {
                let mut r = FileReport::new(name);
                let message = match e {
                    ExtractError::Source { source, .. } => {
                        format!("{source}; check the query for {name} in the mapping")
                    }
                    other => other.to_string(),
                };
                r.add(
                    crate::check::Problem { file: name.into(), at: At::File, severity: Severity::Error, message },
                    &limits,
                );
                r
            }
        };
        file_report.note = match inc {
            Some(i) => format!(
                "incremental on {}: overlap {} days, full every {} days",
                i.column, i.overlap_days, i.full_every_days
            ),
            None => String::new(),
        };
        report.files.push(file_report);
    }
    let order: Vec<&str> = mapping.ordered().into_iter().map(|(n, _)| n).collect();
    report.files.sort_by_key(|f| order.iter().position(|o| *o == f.file));
    report
}

fn write_atomically(tmp: &Path, path: &Path, bytes: &[u8]) -> Result<(), ExtractError> {
    let mut f = File::create(tmp).map_err(io_err(tmp))?;
    f.write_all(bytes).map_err(io_err(tmp))?;
    f.sync_all().map_err(io_err(tmp))?;
    drop(f);
    fs::rename(tmp, path).map_err(io_err(path))?;
    if let Some(dir) = path.parent() {
        // make the rename durable; not possible on every platform, so best effort
        let _ = File::open(dir).and_then(|d| d.sync_all());
    }
    Ok(())
}

#[derive(Debug, Clone, Copy)]
enum Layout {
    Standard(&'static [Column]),
    Custom,
}

enum Msg {
    Rows(Vec<Vec<SqlValue>>),
    /// All rows were sent: finish the file. A channel closed without it means the run failed.
    Done,
}

/// Where a file's CSV goes: compressed into `tmp_path`, renamed to `final_path` once complete.
struct Sink {
    tmp_path: PathBuf,
    final_path: PathBuf,
    level: u32,
    threads: usize,
}

/// One file to run: its query, its columns, the window filter (column index, first day) and where it goes
/// (`None`: nowhere, `check` only).
struct FileJob<'a> {
    name: &'a str,
    query: &'a str,
    layout: Layout,
    window: Option<(usize, NaiveDate)>,
    sink: Option<Sink>,
}

/// What running one file gave: the manifest entry and stats (if it was written), the checks' report, and the codes
/// it defines for the checks of later files.
struct FileOutcome {
    written: Option<(ManifestFile, FileStats)>,
    report: FileReport,
    codes: Option<std::sync::Arc<crate::check::KeySet>>,
}

async fn extract_file(
    source: &dyn Source,
    job: FileJob<'_>,
    mut check: FileCheck,
    progress: &(dyn Fn(&str, u64, u64) + Sync),
) -> Result<FileOutcome, ExtractError> {
    let t0 = Instant::now();
    let name = job.name;
    let src_err = |source| ExtractError::Source { file: name.to_string(), source };
    let names = source.columns(job.query).await.map_err(src_err)?;
    let width = match job.layout {
        Layout::Standard(cols) => {
            if let Some(p) = crate::check::column_count(name, names.len(), cols) {
                check.add(p); // nothing of the file can be read position by position
                let (report, codes) = check.finish();
                return Ok(FileOutcome { written: None, report, codes });
            }
            cols.len()
        }
        Layout::Custom => names.len(),
    };
    progress(name, 0, 0);

    let text_bytes = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let recycle = Recycle::default();
    let (tx, rx) = mpsc::channel::<Msg>(CHUNKS_IN_FLIGHT);
    let tmp_path = job.sink.as_ref().map(|s| s.tmp_path.clone());
    let writer_job = WriterJob {
        file: name.to_string(),
        layout: job.layout,
        header: names,
        sink: job.sink.as_ref().map(|s| (s.tmp_path.clone(), s.level, s.threads)),
        window: job.window.map(|(i, from)| {
            let mut f = String::new();
            push_date(from, &mut f);
            (i, f)
        }),
        check,
        text_bytes: text_bytes.clone(),
        recycle: recycle.clone(),
    };
    let writer = tokio::task::spawn_blocking(move || writer_job.run(rx));

    let mut failure = None;
    let mut sent = 0u64;
    let mut chunks = source.row_chunks(job.query, CHUNK_ROWS, recycle);
    while let Some(chunk) = chunks.next().await {
        let mut chunk = match chunk {
            Ok(chunk) => chunk,
            Err(e) => {
                failure = Some(src_err(e));
                break;
            }
        };
        let bad = chunk.iter().position(|row| row.len() != width);
        if let Some(i) = bad {
            // the rows before the bad one go to the writer (their problems are reported), then the run stops
            failure = Some(ExtractError::RowWidth {
                file: name.to_string(),
                line: sent + i as u64 + 1,
                got: chunk[i].len(),
                expected: width,
            });
            chunk.truncate(i);
        }
        sent += chunk.len() as u64;
        if !chunk.is_empty() && tx.send(Msg::Rows(chunk)).await.is_err() {
            break; // the writer stopped; its error is reported below
        }
        if bad.is_some() {
            break;
        }
        progress(name, sent, text_bytes.load(std::sync::atomic::Ordering::Relaxed));
    }
    drop(chunks);
    if failure.is_none() {
        let _ = tx.send(Msg::Done).await;
    }
    drop(tx);
    let outcome = writer
        .await
        .map_err(|e| ExtractError::Writer { file: name.to_string(), message: e.to_string() })
        .and_then(|r| r);
    let (outcome, check) = match (failure, outcome) {
        (Some(e), _) | (None, Err(e)) => {
            if let Some(p) = &tmp_path {
                let _ = fs::remove_file(p);
            }
            return Err(e);
        }
        (None, Ok(o)) => o,
    };
    progress(name, outcome.rows, text_bytes.load(std::sync::atomic::Ordering::Relaxed));
    let (report, codes) = check.finish();
    let Some(sink) = job.sink else {
        return Ok(FileOutcome { written: None, report, codes });
    };
    fs::rename(&sink.tmp_path, &sink.final_path).map_err(io_err(&sink.final_path))?;
    // The Comms server checks the uploaded file against this without reading the CSV.
    let (_, compressed_sha256) = ferry_io::digest::file_sha256(&sink.final_path).map_err(io_err(&sink.final_path))?;

    let entry = ManifestFile {
        name: name.to_string(),
        rows: outcome.rows,
        bytes: outcome.bytes,
        compressed_bytes: outcome.compressed_bytes,
        compressed_sha256: Some(compressed_sha256),
        md5: outcome.md5,
        sha256: outcome.sha256,
        scope: None,
    };
    let stats = FileStats {
        name: name.to_string(),
        rows: outcome.rows,
        bytes: outcome.bytes,
        compressed_bytes: outcome.compressed_bytes,
        seconds: t0.elapsed().as_secs_f64(),
    };
    Ok(FileOutcome { written: Some((entry, stats)), report, codes })
}

struct WriterJob {
    file: String,
    layout: Layout,
    header: Vec<String>,
    /// `tmp_path`, bzip2 level and threads; `None`: convert and check only.
    sink: Option<(PathBuf, u32, usize)>,
    /// The window: column index and first day as `YYYY/MM/DD` (the converted form, which sorts as dates do).
    window: Option<(usize, String)>,
    check: FileCheck,
    /// The CSV text converted so far, for the progress callback (added once per write buffer).
    text_bytes: std::sync::Arc<std::sync::atomic::AtomicU64>,
    /// Where consumed chunks go back to the source, to be filled again.
    recycle: Recycle,
}

struct WriterOutcome {
    rows: u64,
    bytes: u64,
    compressed_bytes: u64,
    md5: String,
    sha256: String,
}

type Compressed = HashingWriter<ParallelBzWriter<BufWriter<File>>>;

impl WriterJob {
    /// Runs on a blocking thread: filter, convert, check, then format, hash, compress and write `tmp_path`.
    fn run(mut self, mut rx: mpsc::Receiver<Msg>) -> Result<(WriterOutcome, FileCheck), ExtractError> {
        let mut out: Option<(PathBuf, Compressed)> = match &self.sink {
            Some((path, level, threads)) => {
                let file = File::create(path).map_err(io_err(path))?;
                let bz = ParallelBzWriter::new(BufWriter::with_capacity(1 << 20, file), *level, *threads);
                Some((path.clone(), HashingWriter::new(bz)))
            }
            None => None,
        };
        let mut buf = String::with_capacity(WRITE_BUF + 4096);
        let mut scratch = String::new();
        let mut rows = 0u64;
        let mut query_row = 0u64;
        let width = match self.layout {
            Layout::Standard(cols) => cols.len(),
            Layout::Custom => 0,
        };
        let mut plain = vec![String::new(); width];
        let mut ok = vec![false; width];
        let (mut wout, mut wplain) = (String::new(), String::new());

        if let Layout::Custom = self.layout {
            write_header(&self.header, &mut buf);
        }
        loop {
            match rx.blocking_recv() {
                Some(Msg::Rows(chunk)) => {
                    for row in &chunk {
                        query_row += 1;
                        if let (Some((i, from)), Layout::Standard(cols)) = (&self.window, self.layout)
                            && let (Some(col), Some(value)) = (cols.get(*i), row.get(*i))
                            && before_window(col, value, from, &mut wout, &mut wplain)
                        {
                            self.check.skipped();
                            continue;
                        }
                        rows += 1;
                        let start = buf.len();
                        match self.layout {
                            Layout::Standard(cols) => format_row(
                                query_row,
                                cols,
                                row,
                                &mut buf,
                                &mut scratch,
                                &mut self.check,
                                &mut plain,
                                &mut ok,
                            ),
                            Layout::Custom => {
                                format_custom_row(row, &mut buf, &mut scratch);
                                self.check.row(query_row, &[], &[]);
                            }
                        }
                        if self.check.wants_sample() {
                            let line = buf[start..].trim_end_matches('\n').to_string();
                            self.check.sample(&line);
                        }
                        if out.is_some() && self.check.report().errors > 0 {
                            // This file cannot be sent: stop compressing it (the checks go on, to count problems).
                            out = None;
                        }
                        if buf.len() >= WRITE_BUF {
                            self.text_bytes.fetch_add(buf.len() as u64, std::sync::atomic::Ordering::Relaxed);
                            if let Some((path, w)) = &mut out {
                                w.write_all(buf.as_bytes()).map_err(io_err(path))?;
                            }
                            buf.clear();
                        }
                    }
                    self.recycle.give(chunk);
                }
                Some(Msg::Done) => {
                    self.text_bytes.fetch_add(buf.len() as u64, std::sync::atomic::Ordering::Relaxed);
                    break;
                }
                None => {
                    return Err(ExtractError::Writer { file: self.file, message: "the extract was stopped".into() });
                }
            }
        }
        let Some((path, mut w)) = out else {
            let outcome =
                WriterOutcome { rows, bytes: 0, compressed_bytes: 0, md5: String::new(), sha256: String::new() };
            return Ok((outcome, self.check));
        };
        let path = path.as_path();
        w.write_all(buf.as_bytes()).map_err(io_err(path))?;
        let (bz, digests) = w.finish();
        let file = bz.finish().map_err(io_err(path))?.into_inner().map_err(|e| io_err(path)(e.into_error()))?;
        file.sync_all().map_err(io_err(path))?;
        let compressed_bytes = file.metadata().map_err(io_err(path))?.len();
        let outcome =
            WriterOutcome { rows, bytes: digests.bytes, compressed_bytes, md5: digests.md5, sha256: digests.sha256 };
        Ok((outcome, self.check))
    }
}

/// Does `value` of the window column `col` lie before the window that starts `from` (`YYYY/MM/DD`)? Only a valid,
/// non-empty date can: an empty or bad date stays in, so that its row's check reports it.
pub(crate) fn before_window(col: &Column, value: &SqlValue, from: &str, out: &mut String, plain: &mut String) -> bool {
    out.clear();
    field(col, value, out, plain).is_ok() && !plain.is_empty() && plain.as_str() < from
}

/// Append one standard CSV line (with its `\n`) for `row`, converting and checking every field; a field that fails
/// is reported to `check` (and left empty). `line` is the row's 1-based position in the query's result.
#[allow(clippy::too_many_arguments)]
fn format_row(
    line: u64,
    cols: &[Column],
    row: &[SqlValue],
    out: &mut String,
    scratch: &mut String,
    check: &mut FileCheck,
    plain: &mut [String],
    ok: &mut [bool],
) {
    for (i, (col, value)) in cols.iter().zip(row).enumerate() {
        if i > 0 {
            out.push(',');
        }
        match field(col, value, out, scratch) {
            Ok(()) => {
                ok[i] = true;
                if check.wants(i) {
                    plain[i].clear();
                    plain[i].push_str(scratch);
                }
            }
            Err(message) => {
                ok[i] = false;
                check.field_error(line, i, &message);
            }
        }
    }
    out.push('\n');
    check.row(line, plain, ok);
}

fn format_custom_row(row: &[SqlValue], out: &mut String, scratch: &mut String) {
    for (i, value) in row.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        scratch.clear();
        let kind = match value {
            SqlValue::Null => continue,
            SqlValue::Int(n) => {
                let _ = write!(scratch, "{n}");
                Kind::Dec
            }
            SqlValue::Float(f) => {
                // NaN and infinities have no CSV form: leave the field empty
                if format_float(*f, scratch).is_err() {
                    continue;
                }
                Kind::Dec
            }
            SqlValue::Decimal(d) => {
                if normalize_decimal(d, scratch).is_err() {
                    scratch.clear();
                    scratch.push_str(d.trim());
                    Kind::Text
                } else {
                    Kind::Dec
                }
            }
            SqlValue::Bool(b) => {
                scratch.push(if *b { '1' } else { '0' });
                Kind::Dec
            }
            SqlValue::Date(d) => {
                push_date(*d, scratch);
                Kind::Date
            }
            SqlValue::Timestamp(t) => {
                push_date(t.date(), scratch);
                Kind::Date
            }
            SqlValue::Text(s) => {
                scratch.push_str(s);
                Kind::Text
            }
            SqlValue::Bytes(b) => {
                scratch.push_str(&String::from_utf8_lossy(b));
                Kind::Text
            }
        };
        spec::format_field(kind, scratch, out);
    }
    out.push('\n');
}

fn write_header(names: &[String], out: &mut String) {
    for (i, n) in names.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        if n.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            out.push_str(n);
        } else {
            spec::format_field(Kind::Text, n, out);
        }
    }
    out.push('\n');
}

/// Append `value` as the CSV field of `col` (quoted as `DATA-SPEC.md` wants), after converting it as the module
/// documentation describes and checking it with [`spec::parse_field`]. The error says what is wrong with the value.
pub fn format_value(col: &Column, value: &SqlValue, out: &mut String) -> Result<(), FieldError> {
    field(col, value, out, &mut String::new())
}

fn field(col: &Column, value: &SqlValue, out: &mut String, plain: &mut String) -> Result<(), FieldError> {
    plain.clear();
    to_plain(col.kind, value, plain).map_err(FieldError::Conversion)?;
    // A non-empty date, code, text or decimal made by `to_plain` is valid by construction (a real date written
    // YYYY/MM/DD; trimmed, without line breaks; a decimal from an integer, `format_float` or `normalize_decimal`):
    // only the other cases need the spec's check (which would also allocate the parsed value).
    let valid_by_construction =
        !plain.is_empty() && matches!(col.kind, Kind::Date | Kind::Code | Kind::Text | Kind::Dec | Kind::Unused);
    if !valid_by_construction {
        if plain.is_empty() && col.required && col.kind != Kind::Unused {
            return Err(FieldError::RequiredEmpty { column: col.name.to_string() });
        }
        spec::check_field(col, plain).map_err(FieldError::Spec)?;
    }
    spec::format_field(col.kind, plain, out);
    Ok(())
}

/// The unquoted text of a value for a column of `kind`.
fn to_plain(kind: Kind, value: &SqlValue, out: &mut String) -> Result<(), String> {
    match value {
        SqlValue::Null => Ok(()),
        SqlValue::Int(n) if kind == Kind::Date => int_date(*n, out),
        SqlValue::Int(n) => {
            let _ = write!(out, "{n}");
            Ok(())
        }
        SqlValue::Float(f) if kind == Kind::Date => {
            Err(format!("the number {f} is not a date; return YYYY-MM-DD, YYYY-MM-DD HH:MM:SS or YYYY/MM/DD text"))
        }
        SqlValue::Float(f) => format_float(*f, out),
        SqlValue::Decimal(d) if kind == Kind::Date => {
            Err(format!("the number {d} is not a date; return a DATE, YYYY-MM-DD text or a YYYYMMDD number"))
        }
        SqlValue::Decimal(d) => normalize_decimal(d, out),
        SqlValue::Bool(b) if kind == Kind::Date => Err(format!("{b} is not a date; return a DATE or YYYY-MM-DD text")),
        SqlValue::Bool(b) => {
            out.push(if *b { '1' } else { '0' });
            Ok(())
        }
        SqlValue::Date(d) => date_value(kind, *d, out),
        SqlValue::Timestamp(t) => date_value(kind, t.date(), out),
        SqlValue::Text(s) => text(kind, s, out),
        SqlValue::Bytes(b) => match std::str::from_utf8(b) {
            Ok(s) => text(kind, s, out),
            Err(_) => Err("the value is binary data (BLOB), not UTF-8 text; convert it to text in the query".into()),
        },
    }
}

/// A date or the date of a timestamp: `YYYY/MM/DD` in a date column, and in a text or code column too (the time of
/// a timestamp is dropped: DATA-SPEC files hold dates only).
fn date_value(kind: Kind, d: NaiveDate, out: &mut String) -> Result<(), String> {
    match kind {
        Kind::Int | Kind::Dec | Kind::Flag | Kind::OneOf(_) => {
            Err(format!("the date {d} is not a number or code; return a number for this column"))
        }
        _ => {
            push_date(d, out);
            Ok(())
        }
    }
}

/// An exact decimal from the database, written without redundant zeros so that every source gives the same text:
/// `+012.3400` -> `12.34`, `5.000` -> `5`, `-0.0` -> `0`, `.5` -> `0.5`. Exponent forms are refused.
pub fn normalize_decimal(raw: &str, out: &mut String) -> Result<(), String> {
    let s = raw.trim();
    let (neg, body) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    let (int, frac) = body.split_once('.').unwrap_or((body, ""));
    let digits = |p: &str| p.bytes().all(|b| b.is_ascii_digit());
    if (int.is_empty() && frac.is_empty()) || !digits(int) || !digits(frac) {
        return Err(format!(
            "{:?} is not a decimal number (digits, optional sign and one '.'); cast it to a decimal or text like -123.45",
            s.chars().take(40).collect::<String>()
        ));
    }
    let int = int.trim_start_matches('0');
    let frac = frac.trim_end_matches('0');
    if int.is_empty() && frac.is_empty() {
        out.push('0');
        return Ok(());
    }
    if neg {
        out.push('-');
    }
    out.push_str(if int.is_empty() { "0" } else { int });
    if !frac.is_empty() {
        out.push('.');
        out.push_str(frac);
    }
    Ok(())
}

fn text(kind: Kind, s: &str, out: &mut String) -> Result<(), String> {
    let s = match kind {
        Kind::Text => s.trim_end(),
        _ => s.trim(),
    };
    if s.is_empty() {
        return Ok(());
    }
    if kind == Kind::Date {
        return text_date(s, out);
    }
    if kind == Kind::Dec {
        return normalize_decimal(s, out);
    }
    out.extend(s.chars().map(|c| if c == '\n' || c == '\r' { ' ' } else { c }));
    Ok(())
}

/// Write a float rounded to 15 significant digits, in the shortest form that reads back to that value, without an
/// exponent (`0.1 + 0.2` -> `0.3`, `12.0` -> `12`, `1e-7` -> `0.0000001`).
pub fn format_float(x: f64, out: &mut String) -> Result<(), String> {
    if !x.is_finite() {
        return Err(format!("{x} is not a number that CSV can hold"));
    }
    let x = if x == 0.0 { 0.0 } else { x }; // no "-0"
    let start = out.len();
    let _ = write!(out, "{x}"); // shortest round-trip form, never an exponent
    if significant_digits(&out[start..]) > 15 {
        // binary noise such as 0.30000000000000004: round to 15 significant digits and write that shortest
        out.truncate(start);
        let mut sci = String::with_capacity(24);
        let _ = write!(sci, "{x:.14e}");
        let rounded: f64 = sci.parse().unwrap_or(x);
        let rounded = if rounded == 0.0 { 0.0 } else { rounded };
        let _ = write!(out, "{rounded}");
    }
    Ok(())
}

/// Significant digits of a plain decimal (`-0.0012300` -> 3, `1200` -> 2).
fn significant_digits(s: &str) -> usize {
    let digits: Vec<u8> = s.bytes().filter(u8::is_ascii_digit).collect();
    let first = digits.iter().position(|b| *b != b'0');
    let last = digits.iter().rposition(|b| *b != b'0');
    match (first, last) {
        (Some(f), Some(l)) => l - f + 1,
        _ => 0,
    }
}

fn push_date(d: NaiveDate, out: &mut String) {
    let _ = write!(out, "{:04}/{:02}/{:02}", d.year(), d.month(), d.day());
}

fn int_date(n: i64, out: &mut String) -> Result<(), String> {
    let d = (10_000_000..=99_991_231)
        .contains(&n)
        .then(|| NaiveDate::from_ymd_opt((n / 10_000) as i32, (n / 100 % 100) as u32, (n % 100) as u32))
        .flatten()
        .ok_or_else(|| format!("the number {n} is not a date; return YYYY-MM-DD text or a YYYYMMDD number"))?;
    push_date(d, out);
    Ok(())
}

/// `YYYY-MM-DD`, `YYYY-MM-DD HH:MM[:SS[.fff]]` (space or `T`) or `YYYY/MM/DD`, parsed by hand: it runs for every
/// date of every row.
fn text_date(s: &str, out: &mut String) -> Result<(), String> {
    let b = s.as_bytes();
    let num = |from: usize, to: usize| -> Option<u32> {
        b.get(from..to)?.iter().try_fold(0u32, |acc, c| c.is_ascii_digit().then(|| acc * 10 + u32::from(c - b'0')))
    };
    let date = (|| {
        let sep = *b.get(4)?;
        if !(sep == b'-' || sep == b'/') || b.get(7) != Some(&sep) {
            return None;
        }
        let (y, m, d) = (num(0, 4)?, num(5, 7)?, num(8, 10)?);
        let time_ok = match b.get(10) {
            None => true,
            Some(b' ' | b'T') if sep == b'-' => valid_time(&b[11..]),
            Some(_) => false,
        };
        time_ok.then(|| NaiveDate::from_ymd_opt(y as i32, m, d)).flatten()
    })();
    match date {
        Some(d) => {
            push_date(d, out);
            Ok(())
        }
        None => Err(format!(
            "{:?} is not a date; return YYYY-MM-DD, YYYY-MM-DD HH:MM:SS or YYYY/MM/DD (e.g. strftime('%Y-%m-%d', col))",
            s.chars().take(40).collect::<String>()
        )),
    }
}

/// `HH:MM`, `HH:MM:SS` or `HH:MM:SS.fff`.
fn valid_time(t: &[u8]) -> bool {
    let two = |i: usize, max: u8| {
        t.get(i..i + 2).is_some_and(|p| p.iter().all(u8::is_ascii_digit) && (p[0] - b'0') * 10 + (p[1] - b'0') <= max)
    };
    let hm = two(0, 23) && t.get(2) == Some(&b':') && two(3, 59);
    match t.len() {
        5 => hm,
        8 => hm && t[5] == b':' && two(6, 60),
        n if n > 9 => hm && t[5] == b':' && two(6, 60) && t[8] == b'.' && t[9..].iter().all(u8::is_ascii_digit),
        _ => false,
    }
}
