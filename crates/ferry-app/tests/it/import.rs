//! Import of upstream batches into an instance: a good batch, idempotence, and every way a batch can be bad — each
//! rejected with a precise message and nothing of it imported.

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use bzip2::Compression;
use bzip2::write::BzEncoder;
use chrono::Utc;
use ferry_app::import::{ImportLimits, import_batch};
use ferry_app::instance::Instance;
use ferry_proto::api::{BatchState, FileRows, ImportReport};
use ferry_proto::batch::BatchId;
use ferry_proto::manifest::{Manifest, ManifestFile, Mode, Scope, Window};
use md5::{Digest, Md5};
use sha2::Sha256;
use tempfile::TempDir;

// ----------------------------------------------------------------------------------------------------------------
// Helpers: CSV content per spec, a batch directory with .bz2 files and a manifest.

fn id(n: u32) -> BatchId {
    BatchId::parse(&format!("20261128T051600Z-{n:08x}")).unwrap()
}

fn location(n: usize) -> String {
    (1..=n).map(|i| format!("\"L{i}\",\"Store {i}\",1,\"North\",\"ST\"\n")).collect()
}

fn master(n: usize) -> String {
    (1..=n).map(|i| format!("\"I{i}\",\"Item, \"\"{i}\"\"\",\"EA\",0.5,1.25,,,,\"U{i}\"\n")).collect()
}

fn stock(n: usize) -> String {
    (1..=n)
        .map(|i| {
            format!("\"I{i}\",\"L1\",2025/12/01,1.50,1.40,2.99,{i},0,\"EX\",\"S1\",\"S1\",\"BOX\",12,14,24,12,,,,,\n")
        })
        .collect()
}

fn supplier(n: usize) -> String {
    (1..=n).map(|i| format!("\"S{i}\",\"Supplier {i}\",\"local\",14\n")).collect()
}

fn sales_row(i: usize) -> String {
    format!(
        "\"I{}\",\"L{}\",\"C{}\",2026/01/{:02},2026/01/{:02},{}.5,2.10,-3.75,1,\"INV {i}\"\n",
        i % 500,
        i % 7,
        i % 1000,
        i % 28 + 1,
        i % 28 + 1,
        i % 9
    )
}

fn sales(n: usize) -> String {
    (1..=n).map(sales_row).collect()
}

fn po(n: usize) -> String {
    (1..=n)
        .map(|i| format!("\"I{i}\",\"L1\",\"S1\",\"PO{i}\",\"1\",2026/01/05,100,2026/02/01,60,\"P\",1.40\n"))
        .collect()
}

fn custom(n: usize) -> String {
    let mut s = "region,target\n".to_string();
    for i in 1..=n {
        s.push_str(&format!("\"R{i}\",{i}00\n"));
    }
    s
}

/// The good batch of every test: (file, content, data rows).
fn good_files() -> Vec<(&'static str, String)> {
    vec![
        ("location.csv", location(3)),
        ("master.csv", master(5)),
        ("stock.csv", stock(5)),
        ("supplier.csv", supplier(2)),
        ("sales.csv", sales(2500)),
        ("po.csv", po(4)),
        ("ut_001.csv", custom(2)),
    ]
}

fn compress(data: &[u8]) -> Vec<u8> {
    let mut enc = BzEncoder::new(Vec::new(), Compression::fast());
    enc.write_all(data).unwrap();
    enc.finish().unwrap()
}

fn data_rows(name: &str, content: &str) -> u64 {
    let lines = content.lines().count() as u64;
    if name.starts_with("ut_") { lines.saturating_sub(1) } else { lines }
}

fn entry(name: &str, content: &[u8], compressed: &[u8]) -> ManifestFile {
    ManifestFile {
        name: name.to_string(),
        rows: data_rows(name, &String::from_utf8_lossy(content)),
        bytes: content.len() as u64,
        compressed_bytes: compressed.len() as u64,
        compressed_sha256: Some(hex::encode(Sha256::digest(compressed))),
        md5: hex::encode(Md5::digest(content)),
        sha256: hex::encode(Sha256::digest(content)),
        scope: None,
    }
}

/// Write `files` as `NAME.csv.bz2` under `dir/<batch id>/` and return that directory and the manifest.
fn write_batch(dir: &Path, batch: &BatchId, mode: Mode, files: &[(&str, String)]) -> (std::path::PathBuf, Manifest) {
    let bdir = dir.join(batch.as_str());
    std::fs::create_dir_all(&bdir).unwrap();
    let mut entries = Vec::new();
    for (name, content) in files {
        let bz = compress(content.as_bytes());
        std::fs::write(bdir.join(format!("{name}.bz2")), &bz).unwrap();
        entries.push(entry(name, content.as_bytes(), &bz));
    }
    (bdir, manifest(batch, mode, entries))
}

fn manifest(batch: &BatchId, mode: Mode, files: Vec<ManifestFile>) -> Manifest {
    Manifest {
        batch_id: batch.clone(),
        tenant: "acme".into(),
        spec_version: ferry_proto::SPEC_VERSION.into(),
        connector_version: "test".into(),
        mode,
        extract_started: Utc::now(),
        extract_finished: Utc::now(),
        files,
    }
}

const TABLES: &[&str] = &["location", "master", "stock", "supplier", "sales", "po", "custom_rows"];

async fn counts(inst: &Instance) -> Vec<(&'static str, u64)> {
    let mut out = Vec::new();
    for t in TABLES {
        out.push((*t, inst.count_rows(t).await.unwrap()));
    }
    out
}

struct Fixture {
    dir: TempDir,
    inst: Instance,
    good: Vec<(&'static str, u64)>,
}

/// A fresh instance with the good batch (id 1) imported.
async fn fixture() -> Fixture {
    let dir = TempDir::new().unwrap();
    let inst = Instance::open(&dir.path().join("acme.db")).await.unwrap();
    let (bdir, m) = write_batch(dir.path(), &id(1), Mode::Full, &good_files());
    let report = import_batch(&inst, &bdir, &m, &ImportLimits::default()).await.unwrap();
    assert_eq!(report.state, BatchState::Imported, "{:?}", report.detail);
    let good = counts(&inst).await;
    Fixture { dir, inst, good }
}

/// Import a bad batch (id 2) and check it is rejected with a message that contains every one of `expect`, and
/// that nothing of it was imported.
async fn assert_rejected(f: &Fixture, bdir: &Path, m: &Manifest, expect: &[&str]) -> ImportReport {
    let report = import_batch(&f.inst, bdir, m, &ImportLimits::default()).await.unwrap();
    assert_eq!(report.state, BatchState::Rejected);
    assert!(!report.duplicate);
    assert!(report.files.is_empty());
    let detail = report.detail.clone().expect("a rejection has a detail");
    eprintln!("rejected as expected: {detail}");
    for e in expect {
        assert!(detail.contains(e), "detail {detail:?} should contain {e:?}");
    }
    assert_eq!(counts(&f.inst).await, f.good, "nothing of a rejected batch may be imported");
    let logged = f.inst.batch(&m.batch_id).await.unwrap().expect("the rejection is logged");
    assert_eq!(logged.state, BatchState::Rejected);
    assert_eq!(logged.detail.as_deref(), Some(detail.as_str()));
    report
}

/// The good files with `name` replaced by `content`.
fn with_file(name: &str, content: String) -> Vec<(&'static str, String)> {
    good_files().into_iter().map(|(n, c)| if n == name { (n, content.clone()) } else { (n, c) }).collect()
}

// ----------------------------------------------------------------------------------------------------------------

#[tokio::test]
async fn good_batch_imports_and_a_second_import_is_a_no_op() {
    let f = fixture().await;
    let expected: Vec<(&str, u64)> = good_files()
        .iter()
        .map(|(n, c)| (if n.starts_with("ut_") { "custom_rows" } else { n.trim_end_matches(".csv") }, data_rows(n, c)))
        .collect();
    let mut got = f.good.clone();
    got.sort();
    let mut want = expected.clone();
    want.sort();
    assert_eq!(got, want);

    // values are stored as the spec says: exact decimals, ISO dates, integers, quotes undone
    let (item, desc, vol): (String, String, String) =
        sqlx::query_as("SELECT item, description, unit_volume FROM master WHERE uid = 'U2'")
            .fetch_one(f.inst.pool())
            .await
            .unwrap();
    assert_eq!((item.as_str(), desc.as_str(), vol.as_str()), ("I2", "Item, \"2\"", "0.5"));
    let (date, qty, value): (String, String, String) =
        sqlx::query_as("SELECT order_date, qty, value FROM sales WHERE details = 'INV 30'")
            .fetch_one(f.inst.pool())
            .await
            .unwrap();
    assert_eq!((date.as_str(), qty.as_str(), value.as_str()), ("2026-01-03", "3.5", "-3.75"));
    let on_hand: i64 =
        sqlx::query_scalar("SELECT on_hand FROM stock WHERE item = 'I4'").fetch_one(f.inst.pool()).await.unwrap();
    assert_eq!(on_hand, 4);
    let (line, data): (i64, String) = sqlx::query_as("SELECT line, data FROM custom_rows ORDER BY line LIMIT 1")
        .fetch_one(f.inst.pool())
        .await
        .unwrap();
    assert_eq!(line, 2);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&data).unwrap(),
        serde_json::json!({"region": "R1", "target": "100"})
    );

    // the same batch again: nothing changes, the stored report comes back marked duplicate
    let bdir = f.dir.path().join(id(1).as_str());
    let (_, m) = write_batch(f.dir.path(), &id(1), Mode::Full, &good_files());
    let again = import_batch(&f.inst, &bdir, &m, &ImportLimits::default()).await.unwrap();
    assert!(again.duplicate);
    assert_eq!(again.state, BatchState::Imported);
    assert!(again.files.contains(&FileRows { name: "sales.csv".into(), rows: 2500 }));
    assert_eq!(counts(&f.inst).await, f.good);

    // even if the files are gone by now
    std::fs::remove_dir_all(&bdir).unwrap();
    let again = import_batch(&f.inst, &bdir, &m, &ImportLimits::default()).await.unwrap();
    assert!(again.duplicate);

    let listed = f.inst.batches().await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].batch_id, id(1));
    assert!(!listed[0].duplicate);
    assert!(f.inst.count_rows("sqlite_master").await.is_err());
    assert!(f.inst.count_rows("sales; DROP TABLE sales").await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_batch_imported_twice_at_once_is_imported_once() {
    let f = fixture().await;
    let (bdir, m) = write_batch(f.dir.path(), &id(2), Mode::Incremental, &[("sales.csv", sales(3000))]);
    let limits = ImportLimits::default();
    let (a, b) = tokio::join!(import_batch(&f.inst, &bdir, &m, &limits), import_batch(&f.inst, &bdir, &m, &limits));
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!((a.state, b.state), (BatchState::Imported, BatchState::Imported));
    assert!(a.duplicate != b.duplicate, "exactly one of the two imports does the work");
    assert_eq!(f.inst.count_rows("sales").await.unwrap(), 2500 + 3000);
}

#[tokio::test]
async fn a_full_batch_replaces_the_tables_it_carries() {
    let f = fixture().await;
    let files = with_file("sales.csv", sales(10));
    let (bdir, m) = write_batch(f.dir.path(), &id(2), Mode::Full, &files);
    let r = import_batch(&f.inst, &bdir, &m, &ImportLimits::default()).await.unwrap();
    assert_eq!(r.state, BatchState::Imported, "{:?}", r.detail);
    assert_eq!(f.inst.count_rows("sales").await.unwrap(), 10);
    assert_eq!(f.inst.count_rows("custom_rows").await.unwrap(), 2);

    // an incremental batch appends
    let (bdir, m) = write_batch(f.dir.path(), &id(3), Mode::Incremental, &[("sales.csv", sales(5))]);
    let r = import_batch(&f.inst, &bdir, &m, &ImportLimits::default()).await.unwrap();
    assert_eq!(r.state, BatchState::Imported, "{:?}", r.detail);
    assert_eq!(r.files, vec![FileRows { name: "sales.csv".into(), rows: 5 }]);
    assert_eq!(f.inst.count_rows("sales").await.unwrap(), 15);
    assert_eq!(f.inst.count_rows("master").await.unwrap(), 5);
    let ids: Vec<BatchId> = f.inst.batches().await.unwrap().into_iter().map(|b| b.batch_id).collect();
    assert_eq!(ids, vec![id(3), id(2), id(1)]);
}

/// Sales rows dated `dates` (invoice and order date), item I1 at L1, details `tag N`.
fn dated_sales(dates: &[&str], tag: &str) -> String {
    dates.iter().enumerate().map(|(i, d)| format!("\"I1\",\"L1\",,{d},{d},{}.5,,,,\"{tag} {i}\"\n", i + 1)).collect()
}

/// An incremental batch: `sales.csv` as a window on invoice_date from `from`, master.csv full.
fn window_batch(dir: &Path, batch: &BatchId, sales: String, from: (i32, u32, u32)) -> (std::path::PathBuf, Manifest) {
    let (bdir, mut m) = write_batch(dir, batch, Mode::Incremental, &[("master.csv", master(3)), ("sales.csv", sales)]);
    let from = chrono::NaiveDate::from_ymd_opt(from.0, from.1, from.2).unwrap();
    m.files[0].scope = Some(Scope::Full);
    m.files[1].scope = Some(Scope::Window(Window { column: "invoice_date".into(), from }));
    (bdir, m)
}

async fn sales_on_or_after(inst: &Instance, day: &str) -> (i64, i64) {
    let q = "SELECT (SELECT COUNT(*) FROM sales WHERE invoice_date < ?), (SELECT COUNT(*) FROM sales WHERE invoice_date >= ?)";
    sqlx::query_as(q).bind(day).bind(day).fetch_one(inst.pool()).await.unwrap()
}

#[tokio::test]
async fn a_window_replaces_exactly_its_rows_and_rows_outside_it_are_rejected() {
    let f = fixture().await;
    let (before, inside) = sales_on_or_after(&f.inst, "2026-01-20").await;
    assert!(before > 0 && inside > 0);
    let old_rows: Vec<(String, String)> =
        sqlx::query_as("SELECT invoice_date, details FROM sales WHERE invoice_date < '2026-01-20' ORDER BY 1, 2")
            .fetch_all(f.inst.pool())
            .await
            .unwrap();

    // a row before the window: rejected whole, nothing changes
    let (bdir, m) =
        window_batch(f.dir.path(), &id(2), dated_sales(&["2026/01/20", "2026/01/19"], "new"), (2026, 1, 20));
    assert_rejected(
        &f,
        &bdir,
        &m,
        &["sales.csv:2: column 5 (invoice_date)", "2026-01-19 is before the window", "2026-01-20"],
    )
    .await;

    // the window: rows dated 2026-01-20 and later are replaced by the file's rows, older rows stay as they were
    let (bdir, m) = window_batch(
        f.dir.path(),
        &id(3),
        dated_sales(&["2026/01/20", "2026/01/31", "2026/02/01"], "new"),
        (2026, 1, 20),
    );
    let r = import_batch(&f.inst, &bdir, &m, &ImportLimits::default()).await.unwrap();
    assert_eq!(r.state, BatchState::Imported, "{:?}", r.detail);
    assert_eq!(sales_on_or_after(&f.inst, "2026-01-20").await, (before, 3));
    // the window's delete uses an index on its column, not a scan of the table (the import writes through its
    // own connection: a real read first brings this connection's copy of the schema up to date, as any query would)
    let mut conn = f.inst.pool().acquire().await.unwrap();
    let _: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM sqlite_master").fetch_one(&mut *conn).await.unwrap();
    let plan: Vec<(i64, i64, i64, String)> =
        sqlx::query_as("EXPLAIN QUERY PLAN DELETE FROM sales WHERE invoice_date >= '2026-01-20'")
            .fetch_all(&mut *conn)
            .await
            .unwrap();
    drop(conn);
    assert!(plan.iter().any(|p| p.3.contains("USING INDEX sales_invoice_date_window")), "{plan:?}");
    let kept: Vec<(String, String)> =
        sqlx::query_as("SELECT invoice_date, details FROM sales WHERE invoice_date < '2026-01-20' ORDER BY 1, 2")
            .fetch_all(f.inst.pool())
            .await
            .unwrap();
    assert_eq!(kept, old_rows);
    // the full file of the same batch replaced its table; tables the batch does not carry are untouched
    assert_eq!(f.inst.count_rows("master").await.unwrap(), 3);
    assert_eq!(f.inst.count_rows("stock").await.unwrap(), 5);

    // an empty window is valid: it deletes the window's rows
    let (bdir, m) = window_batch(f.dir.path(), &id(4), String::new(), (2026, 1, 31));
    let r = import_batch(&f.inst, &bdir, &m, &ImportLimits::default()).await.unwrap();
    assert_eq!(r.state, BatchState::Imported, "{:?}", r.detail);
    assert_eq!(sales_on_or_after(&f.inst, "2026-01-20").await, (before, 1));
}

#[tokio::test]
async fn md5_mismatch_is_rejected() {
    let f = fixture().await;
    let (bdir, mut m) = write_batch(f.dir.path(), &id(2), Mode::Full, &with_file("stock.csv", stock(3)));
    let e = m.files.iter_mut().find(|e| e.name == "stock.csv").unwrap();
    let real = e.md5.clone();
    e.md5 = "0123456789abcdef0123456789abcdef".into();
    assert_rejected(
        &f,
        &bdir,
        &m,
        &["stock.csv: md5 mismatch: manifest says 0123456789abcdef0123456789abcdef, received file has", &real],
    )
    .await;
}

#[tokio::test]
async fn sha256_and_row_count_mismatches_are_rejected() {
    let f = fixture().await;
    let (bdir, mut m) = write_batch(f.dir.path(), &id(2), Mode::Full, &good_files());
    m.files.iter_mut().find(|e| e.name == "po.csv").unwrap().sha256 = "ab".repeat(32);
    assert_rejected(&f, &bdir, &m, &["po.csv: sha256 mismatch"]).await;

    let (bdir, mut m) = write_batch(f.dir.path(), &id(3), Mode::Full, &good_files());
    m.files.iter_mut().find(|e| e.name == "ut_001.csv").unwrap().rows = 3;
    assert_rejected(&f, &bdir, &m, &["ut_001.csv: row count mismatch: manifest says 3 rows, received file has 2"])
        .await;
}

#[tokio::test]
async fn truncated_bzip2_is_rejected() {
    let f = fixture().await;
    let (bdir, m) = write_batch(f.dir.path(), &id(2), Mode::Full, &with_file("po.csv", po(3000)));
    let path = bdir.join("po.csv.bz2");
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    assert_rejected(&f, &bdir, &m, &["po.csv.bz2: truncated or corrupt bzip2 data", "cut short"]).await;
}

#[tokio::test]
async fn corrupt_bzip2_is_rejected() {
    let f = fixture().await;
    let (bdir, m) = write_batch(f.dir.path(), &id(2), Mode::Full, &good_files());
    let path = bdir.join("master.csv.bz2");
    let mut bytes = std::fs::read(&path).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x55;
    std::fs::write(&path, &bytes).unwrap();
    assert_rejected(&f, &bdir, &m, &["master.csv.bz2: truncated or corrupt bzip2 data"]).await;

    let (bdir, m) = write_batch(f.dir.path(), &id(3), Mode::Full, &good_files());
    std::fs::write(bdir.join("location.csv.bz2"), b"this is not bzip2 at all").unwrap();
    assert_rejected(&f, &bdir, &m, &["location.csv.bz2: truncated or corrupt bzip2 data"]).await;
}

#[tokio::test]
async fn missing_file_is_rejected_and_a_fixed_batch_is_accepted_later() {
    let f = fixture().await;
    let (bdir, m) = write_batch(f.dir.path(), &id(2), Mode::Full, &with_file("sales.csv", sales(7)));
    std::fs::remove_file(bdir.join("supplier.csv.bz2")).unwrap();
    assert_rejected(&f, &bdir, &m, &["supplier.csv.bz2: file is missing from the batch"]).await;

    // the same batch re-sent complete is imported
    let (bdir, m) = write_batch(f.dir.path(), &id(2), Mode::Full, &with_file("sales.csv", sales(7)));
    let r = import_batch(&f.inst, &bdir, &m, &ImportLimits::default()).await.unwrap();
    assert_eq!(r.state, BatchState::Imported, "{:?}", r.detail);
    assert_eq!(f.inst.count_rows("sales").await.unwrap(), 7);
    let logged = f.inst.batch(&id(2)).await.unwrap().unwrap();
    assert_eq!(logged.state, BatchState::Imported);
    assert_eq!(logged.detail, None);
}

#[tokio::test]
async fn malformed_row_is_rejected_with_line_and_column() {
    let f = fixture().await;
    // line 1234 of sales.csv carries a quantity that is not a number
    let mut content = String::new();
    for i in 1..=2000 {
        if i == 1234 {
            content.push_str("\"I1\",\"L1\",\"C1\",2026/01/02,2026/01/02,abc,,,,\"bad\"\n");
        } else {
            content.push_str(&sales_row(i));
        }
    }
    let (bdir, m) = write_batch(f.dir.path(), &id(2), Mode::Full, &with_file("sales.csv", content));
    assert_rejected(&f, &bdir, &m, &["sales.csv:1234: column 6 (qty): qty \"abc\" is not a decimal number"]).await;

    // a missing required value and an impossible date
    let files =
        with_file("po.csv", format!("{}\"I9\",\"L1\",\"S1\",\"PO9\",\"1\",2026/02/30,1,2026/03/01,1,\"P\",\n", po(2)));
    let (bdir, m) = write_batch(f.dir.path(), &id(3), Mode::Full, &files);
    assert_rejected(&f, &bdir, &m, &["po.csv:3: column 6 (order_date): order_date \"2026/02/30\" is not a date"]).await;

    let files = with_file("location.csv", format!("{},\"no code\",1,,\"DC\"\n", location(4)));
    let (bdir, m) = write_batch(f.dir.path(), &id(4), Mode::Full, &files);
    assert_rejected(&f, &bdir, &m, &["location.csv:5: column 1 (location): location is required but empty"]).await;
}

#[tokio::test]
async fn invalid_utf8_is_rejected() {
    let f = fixture().await;
    let dir = f.dir.path().join(id(2).as_str());
    std::fs::create_dir_all(&dir).unwrap();
    let mut entries = Vec::new();
    for (name, content) in good_files() {
        let mut bytes = content.into_bytes();
        if name == "supplier.csv" {
            bytes.extend_from_slice(b"\"S9\",\"Caf\xe9\",\"local\",3\n");
        }
        let bz = compress(&bytes);
        std::fs::write(dir.join(format!("{name}.bz2")), &bz).unwrap();
        entries.push(entry(name, &bytes, &bz));
    }
    let m = manifest(&id(2), Mode::Full, entries);
    assert_rejected(&f, &dir, &m, &["supplier.csv:3: column 2 (description): not valid UTF-8"]).await;
}

#[tokio::test]
async fn wrong_column_count_is_rejected() {
    let f = fixture().await;
    let mut content = sales(16);
    content.push_str("\"I1\",\"L1\",\"C1\",2026/01/02,2026/01/02,1,2,3,4\n");
    content.push_str(&sales(3));
    let (bdir, m) = write_batch(f.dir.path(), &id(2), Mode::Full, &with_file("sales.csv", content));
    assert_rejected(&f, &bdir, &m, &["sales.csv: expected 10 columns, found 9 at line 17"]).await;

    let files = with_file("ut_001.csv", "region,target\n\"R1\",1\n\"R2\",2,3\n".into());
    let (bdir, m) = write_batch(f.dir.path(), &id(3), Mode::Full, &files);
    assert_rejected(&f, &bdir, &m, &["ut_001.csv: expected 2 columns (as in its header), found 3 at line 3"]).await;
}

#[tokio::test]
async fn bad_manifest_and_overlong_lines_are_rejected() {
    let f = fixture().await;
    let (bdir, mut m) = write_batch(f.dir.path(), &id(2), Mode::Full, &good_files());
    m.files[0].name = "../../etc/passwd".into();
    assert_rejected(&f, &bdir, &m, &["not a standard file"]).await;

    let long = format!("\"S1\",\"{}\",\"local\",14\n", "x".repeat(3 << 20));
    let (bdir, m) = write_batch(f.dir.path(), &id(3), Mode::Full, &with_file("supplier.csv", long));
    assert_rejected(&f, &bdir, &m, &["supplier.csv:1: line is longer than"]).await;
}

#[tokio::test]
async fn bzip2_bomb_is_stopped_by_the_cap() {
    let f = fixture().await;
    let (bdir, mut m) = write_batch(f.dir.path(), &id(2), Mode::Full, &good_files());
    // 200 MB of zeros compress to a few hundred bytes
    let mut enc = BzEncoder::new(Vec::new(), Compression::best());
    let zeros = vec![0u8; 1 << 20];
    for _ in 0..200 {
        enc.write_all(&zeros).unwrap();
    }
    let bomb = enc.finish().unwrap();
    assert!(bomb.len() < 10_000, "{}", bomb.len());
    std::fs::write(bdir.join("master.csv.bz2"), &bomb).unwrap();
    let e = m.files.iter_mut().find(|e| e.name == "master.csv").unwrap();
    e.bytes = 100;
    e.compressed_bytes = bomb.len() as u64;
    let started = Instant::now();
    assert_rejected(&f, &bdir, &m, &["master.csv: decompressed size exceeds the cap", "manifest says 100 bytes"]).await;
    assert!(started.elapsed() < Duration::from_secs(5), "the cap must stop a bomb early: {:?}", started.elapsed());

    // a ratio limit refuses it before decompressing anything
    let limits = ImportLimits { max_ratio: Some(1000), ..ImportLimits::default() };
    m.files.iter_mut().find(|e| e.name == "master.csv").unwrap().bytes = 200 << 20;
    let r = import_batch(&f.inst, &bdir, &m, &limits).await.unwrap();
    assert_eq!(r.state, BatchState::Rejected);
    assert!(r.detail.unwrap().contains("master.csv.bz2: the manifest announces 209715200 bytes"));

    // and a file announced beyond the per-file limit is refused outright
    let limits = ImportLimits { max_decompressed_per_file: 1 << 20, ..ImportLimits::default() };
    let r = import_batch(&f.inst, &bdir, &m, &limits).await.unwrap();
    assert!(r.detail.unwrap().contains("more than this server accepts per file"));
    assert_eq!(counts(&f.inst).await, f.good);
}

#[tokio::test]
async fn instances_reopen_with_their_data() {
    let f = fixture().await;
    let path = f.inst.path().to_path_buf();
    f.inst.close().await;
    let inst = Instance::open(&path).await.unwrap();
    assert_eq!(counts(&inst).await, f.good);
    assert_eq!(inst.batch(&id(1)).await.unwrap().unwrap().state, BatchState::Imported);
    assert!(inst.batch(&id(9)).await.unwrap().is_none());
}

/// `cargo test -p ferry-app --test it -- --ignored --nocapture import::import_speed`
#[tokio::test]
#[ignore = "benchmark: imports 1M sales rows"]
async fn import_speed() {
    const ROWS: usize = 1_000_000;
    let dir = TempDir::new().unwrap();
    let inst = Instance::open(&dir.path().join("bench.db")).await.unwrap();
    let t = Instant::now();
    let files = with_file("sales.csv", sales(ROWS));
    let plain = files.iter().map(|(_, c)| c.len()).sum::<usize>();
    let (bdir, m) = write_batch(dir.path(), &id(1), Mode::Full, &files);
    eprintln!("prepared {plain} bytes of CSV in {:?}", t.elapsed());

    let t = Instant::now();
    let r = import_batch(&inst, &bdir, &m, &ImportLimits::default()).await.unwrap();
    let secs = t.elapsed().as_secs_f64();
    assert_eq!(r.state, BatchState::Imported, "{:?}", r.detail);
    assert_eq!(inst.count_rows("sales").await.unwrap(), ROWS as u64);
    eprintln!(
        "imported {ROWS} sales rows in {secs:.2} s: {:.0} rows/s, {:.1} MB/s of plain CSV",
        ROWS as f64 / secs,
        plain as f64 / secs / 1e6
    );
}

// ----------------------------------------------------------------------------------------------------------------
// The streamed path: multi-stream files decoded in parallel while earlier rows are already being inserted.

/// `files` as our Connector writes them: independent bzip2 streams of at most 900 kB of CSV each.
fn write_multistream_batch(dir: &Path, batch: &BatchId, files: &[(&str, String)]) -> (std::path::PathBuf, Manifest) {
    let bdir = dir.join(batch.as_str());
    std::fs::create_dir_all(&bdir).unwrap();
    let mut entries = Vec::new();
    for (name, content) in files {
        let mut w = ferry_io::bz::ParallelBzWriter::new(Vec::new(), 1, 2);
        w.write_all(content.as_bytes()).unwrap();
        let bz = w.finish().unwrap();
        std::fs::write(bdir.join(format!("{name}.bz2")), &bz).unwrap();
        entries.push(entry(name, content.as_bytes(), &bz));
    }
    (bdir, manifest(batch, Mode::Full, entries))
}

/// Byte offsets of the bzip2 stream headers of a file our writer made.
fn stream_starts(bz: &[u8]) -> Vec<usize> {
    (0..bz.len().saturating_sub(9)).filter(|&i| &bz[i..i + 4] == b"BZh1" && &bz[i + 4..i + 10] == b"1AY&SY").collect()
}

/// Every row of `sales`, in insertion order: what the import wrote, to compare two imports.
async fn all_sales(inst: &Instance) -> Vec<(String, String, Option<String>, String, String)> {
    sqlx::query_as("SELECT item, location, customer, invoice_date, qty FROM sales ORDER BY rowid")
        .fetch_all(inst.pool())
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_multistream_batch_imports_exactly_as_a_single_stream_one() {
    let dir = TempDir::new().unwrap();
    let files = with_file("sales.csv", sales(40_000));
    let (bdir, m) = write_multistream_batch(dir.path(), &id(1), &files);
    let bz = std::fs::read(bdir.join("sales.csv.bz2")).unwrap();
    assert!(stream_starts(&bz).len() >= 3, "sales.csv.bz2 should hold several streams");
    let multi = Instance::open(&dir.path().join("multi.db")).await.unwrap();
    let r = import_batch(&multi, &bdir, &m, &ImportLimits::default()).await.unwrap();
    assert_eq!(r.state, BatchState::Imported, "{:?}", r.detail);

    let single = Instance::open(&dir.path().join("single.db")).await.unwrap();
    let (bdir, m) = write_batch(dir.path(), &id(2), Mode::Full, &files);
    let r = import_batch(&single, &bdir, &m, &ImportLimits::default()).await.unwrap();
    assert_eq!(r.state, BatchState::Imported, "{:?}", r.detail);
    assert_eq!(counts(&multi).await, counts(&single).await);
    let rows = all_sales(&multi).await;
    assert_eq!(rows.len(), 40_000);
    assert_eq!(rows, all_sales(&single).await);
    assert_eq!(rows[0], ("I1".into(), "L1".into(), Some("C1".into()), "2026-01-02".into(), "1.5".into()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_stream_found_after_the_import_started_rolls_it_all_back() {
    let f = fixture().await;
    let before = all_sales(&f.inst).await;
    // sales.csv (the 5th file) holds ~2.7 MB in 3+ streams: the files before it and its first streams are parsed
    // and inserted before the damage in its last stream is reached.
    let files = with_file("sales.csv", sales(40_000));
    // (a) the checksum at the end of the last stream: every row decodes, then bzip2 refuses the stream;
    // (b) a byte inside the second stream: the damaged block may yield garbage rows before its checksum fails.
    for (case, expect) in
        [("a", &["sales.csv.bz2: truncated or corrupt bzip2 data after line 399"][..]), ("b", &["sales.csv"][..])]
    {
        let batch = id(if case == "a" { 10 } else { 11 });
        let (bdir, m) = write_multistream_batch(f.dir.path(), &batch, &files);
        let path = bdir.join("sales.csv.bz2");
        let mut bz = std::fs::read(&path).unwrap();
        let starts = stream_starts(&bz);
        let at = if case == "a" { bz.len() - 3 } else { starts[1] + 2_000 };
        bz[at] ^= 0xFF;
        std::fs::write(&path, &bz).unwrap();
        let r = assert_rejected(&f, &bdir, &m, expect).await;
        eprintln!("case {case}: {:?}", r.detail);
        assert_eq!(all_sales(&f.inst).await, before, "no row of the rejected batch may be visible ({case})");
    }
    // a bad row near the end of the largest file: the same
    let mut big = sales(40_000);
    big.push_str("\"I1\",\"L1\",\"C1\",2026/02/30,2026/01/01,1,2,3,1,\"bad date\"\n");
    let (bdir, m) = write_multistream_batch(f.dir.path(), &id(20), &with_file("sales.csv", big));
    assert_rejected(&f, &bdir, &m, &["sales.csv:40001: column 4 (order_date)", "2026/02/30"]).await;
    assert_eq!(all_sales(&f.inst).await, before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_cut_midway_is_imported_whole_or_not_at_all() {
    let f = fixture().await;
    let files = with_file("sales.csv", sales(30_000));
    let names: Vec<&str> = files.iter().map(|(n, _)| *n).collect();
    let mut n = 100;
    for name in &names {
        // cut each file in turn: in the middle of a stream, and (for multi-stream files) exactly between two
        // streams, which leaves a valid but shorter bzip2 file that only the manifest's size and digests catch
        let (bdir, _) = write_multistream_batch(f.dir.path(), &id(n), &files);
        let bz = std::fs::read(bdir.join(format!("{name}.bz2"))).unwrap();
        let starts = stream_starts(&bz);
        let mut cuts = vec![bz.len() / 2];
        if starts.len() > 1 {
            cuts.push(starts[starts.len() - 1]);
        }
        for cut in cuts {
            n += 1;
            let (bdir, m) = write_multistream_batch(f.dir.path(), &id(n), &files);
            std::fs::write(bdir.join(format!("{name}.bz2")), &bz[..cut]).unwrap();
            let r = assert_rejected(&f, &bdir, &m, &[name]).await;
            eprintln!("{name} cut at {cut} of {}: {:?}", bz.len(), r.detail);
        }
    }
    // a file missing at the end of the batch (the transfer stopped there), after the others were inserted
    n += 1;
    let (bdir, m) = write_multistream_batch(f.dir.path(), &id(n), &files);
    std::fs::remove_file(bdir.join("ut_001.csv.bz2")).unwrap();
    assert_rejected(&f, &bdir, &m, &["ut_001.csv.bz2: file is missing from the batch"]).await;
    // the whole batch: imported, all of it
    n += 1;
    let (bdir, m) = write_multistream_batch(f.dir.path(), &id(n), &files);
    let r = import_batch(&f.inst, &bdir, &m, &ImportLimits::default()).await.unwrap();
    assert_eq!(r.state, BatchState::Imported, "{:?}", r.detail);
    assert_eq!(f.inst.count_rows("sales").await.unwrap(), 30_000);
    assert_eq!(f.inst.count_rows("custom_rows").await.unwrap(), 2);
}

/// The plain-CSV path of `ferry bench import` imports the same rows as the `.bz2` path, and still verifies every
/// file against the manifest (a changed byte is rejected, nothing kept).
#[tokio::test]
async fn plain_csv_import_is_the_same_import_and_is_still_verified() {
    use ferry_app::import::{StageClock, import_plain_csv_timed};
    use std::sync::Arc;
    let f = fixture().await;
    let plain = f.dir.path().join("plain");
    std::fs::create_dir_all(&plain).unwrap();
    let files = good_files();
    let mut entries = Vec::new();
    for (name, content) in &files {
        std::fs::write(plain.join(name), content).unwrap();
        entries.push(entry(name, content.as_bytes(), &compress(content.as_bytes())));
    }
    let other = TempDir::new().unwrap();
    let inst = Instance::open(&other.path().join("plain.db")).await.unwrap();
    let clock = Arc::new(StageClock::default());
    let m = manifest(&id(7), Mode::Full, entries.clone());
    let r = import_plain_csv_timed(&inst, &plain, &m, &ImportLimits::default(), &clock).await.unwrap();
    assert_eq!(r.state, BatchState::Imported, "{:?}", r.detail);
    assert_eq!(counts(&inst).await, f.good);
    assert!(clock.insert() > Duration::ZERO);

    // one byte changed in the plain sales file: its digest no longer matches, the batch is rejected
    let mut sales = files.iter().find(|(n, _)| *n == "sales.csv").unwrap().1.clone().into_bytes();
    let at = sales.iter().position(|&b| b == b'5').unwrap();
    sales[at] = b'6';
    std::fs::write(plain.join("sales.csv"), &sales).unwrap();
    let m = manifest(&id(8), Mode::Full, entries);
    let r = import_plain_csv_timed(&f.inst, &plain, &m, &ImportLimits::default(), &clock).await.unwrap();
    assert_eq!(r.state, BatchState::Rejected);
    assert!(r.detail.as_deref().unwrap_or_default().contains("sales.csv: md5 mismatch"), "{:?}", r.detail);
    assert_eq!(counts(&f.inst).await, f.good);
}
