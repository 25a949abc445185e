//! The window filter and the validation of the extract pipeline on a small SQLite ERP: a window keeps exactly the
//! rows dated on or after its first day, whatever form the source gives the date in; a row without a date, or with
//! a bad one, is an error rather than silently left out; the manifest marks each file full or as its window; and
//! `check_mapping` reports every file, even past a broken query.

use std::io::Read;

use chrono::NaiveDate;
use ferry_connector::check::{CheckLimits, Severity};
use ferry_connector::erp::source::SqliteSource;
use ferry_connector::extract::{ExtractError, ExtractOptions, ExtractPlan, check_mapping, extract_planned};
use ferry_connector::mapping::Mapping;
use ferry_proto::batch::BatchId;
use ferry_proto::manifest::{Mode, Scope, Window};
use sqlx::Executor;

const ERP: &str = "
CREATE TABLE loc (code TEXT);
INSERT INTO loc VALUES ('L1');
CREATE TABLE item (code TEXT, uid INTEGER);
INSERT INTO item VALUES ('A1', 1);
CREATE TABLE sup (code TEXT);
INSERT INTO sup VALUES ('S1');
CREATE TABLE s (id INTEGER PRIMARY KEY, d ANY);
INSERT INTO s (d) VALUES ('2026-03-04 23:59:59'), ('2026-03-05'), (20260305), ('2026/03/06'), ('2026-02-01'),
                         ('2026-03-05T00:00:00.5');
";

fn mapping(sales_date: &str) -> Mapping {
    let text = format!(
        r#"
[files."location.csv"]
query = "SELECT code, NULL, 1, NULL, 'ST' FROM loc"
[files."master.csv"]
query = "SELECT code, NULL, NULL, NULL, NULL, NULL, NULL, NULL, uid FROM item"
[files."stock.csv"]
query = "SELECT 'A1', 'L1', NULL, 1, 1, NULL, 5, NULL, 'EX', 'S1', 'S1', NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL"
[files."supplier.csv"]
query = "SELECT code, NULL, 'local', 7 FROM sup"
[files."sales.csv"]
query = "SELECT 'A1', 'L1', NULL, '2026-01-01', {sales_date}, 1, NULL, NULL, NULL, id FROM s ORDER BY id"
incremental = {{ column = "invoice_date", overlap_days = 2 }}
[files."po.csv"]
query = "SELECT 'A1', 'L1', 'S1', 'P1', '1', NULL, 1, '2026-04-01', 1, 'P', NULL"
"#
    );
    Mapping::from_toml(&text).unwrap()
}

async fn erp(dir: &std::path::Path, extra: &str) -> SqliteSource {
    let path = dir.join("erp.db");
    let opts = sqlx::sqlite::SqliteConnectOptions::new().filename(&path).create_if_missing(true);
    let pool = sqlx::SqlitePool::connect_with(opts).await.unwrap();
    pool.execute(sqlx::AssertSqlSafe(format!("{ERP}{extra}"))).await.unwrap();
    pool.close().await;
    SqliteSource::open(path.to_str().unwrap()).await.unwrap()
}

fn day(m: u32, d: u32) -> NaiveDate {
    NaiveDate::from_ymd_opt(2026, m, d).unwrap()
}

fn window_from(d: NaiveDate) -> ExtractPlan {
    ExtractPlan { windows: [("sales.csv".to_string(), d)].into(), allow_warnings: false }
}

fn read_csv(path: &std::path::Path) -> String {
    let mut text = String::new();
    ferry_io::bz::capped_decoder(std::fs::File::open(path).unwrap(), u64::MAX).read_to_string(&mut text).unwrap();
    text
}

#[tokio::test]
async fn a_window_keeps_exactly_the_rows_from_its_first_day_on() {
    let dir = tempfile::tempdir().unwrap();
    let src = erp(dir.path(), "").await;
    let m = mapping("d");
    let spool = dir.path().join("spool");
    let opts = ExtractOptions { level: 1, threads: 1 };

    let batch = BatchId::parse("20260310T000000Z-00000001").unwrap();
    let e = extract_planned(&src, &m, &spool, &batch, &opts, &window_from(day(3, 5)), &|_, _, _| {}).await.unwrap();
    assert_eq!(e.manifest.mode, Mode::Incremental);
    let sales = e.manifest.files.iter().find(|f| f.name == "sales.csv").unwrap();
    assert_eq!(sales.scope, Some(Scope::Window(Window { column: "invoice_date".into(), from: day(3, 5) })));
    assert_eq!(sales.rows, 4, "the boundary day is in the window, whatever the date's form");
    for f in e.manifest.files.iter().filter(|f| f.name != "sales.csv") {
        assert_eq!(f.scope, Some(Scope::Full), "{}", f.name);
    }
    let text = read_csv(&spool.join(batch.as_str()).join("sales.csv.bz2"));
    let dates: Vec<&str> = text.lines().map(|l| l.split(',').nth(4).unwrap()).collect();
    assert_eq!(dates, ["2026/03/05", "2026/03/05", "2026/03/06", "2026/03/05"]);
    let details: Vec<&str> = text.lines().map(|l| l.split(',').nth(9).unwrap()).collect();
    assert_eq!(details, ["\"2\"", "\"3\"", "\"4\"", "\"6\""], "rows keep their order");
    let report = e.check.file("sales.csv").unwrap();
    assert_eq!((report.rows, report.skipped, report.errors), (4, 2, 0));
    assert!(report.note.contains("window from 2026/03/05 (invoice_date)"), "{}", report.note);
    // the manifest on disk passes the App's checks, and files come in batch order
    let on_disk = std::fs::read(spool.join(batch.as_str()).join("manifest.json")).unwrap();
    let parsed = ferry_proto::manifest::Manifest::parse(&on_disk).unwrap();
    let names: Vec<&str> = parsed.files.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(names, ["location.csv", "master.csv", "stock.csv", "supplier.csv", "sales.csv", "po.csv"]);

    // a window that starts after every row: an empty file, still a window
    let batch = BatchId::parse("20260310T000000Z-00000002").unwrap();
    let e = extract_planned(&src, &m, &spool, &batch, &opts, &window_from(day(4, 1)), &|_, _, _| {}).await.unwrap();
    assert_eq!(e.manifest.files.iter().find(|f| f.name == "sales.csv").unwrap().rows, 0);

    // no window: every row, a full batch
    let batch = BatchId::parse("20260310T000000Z-00000003").unwrap();
    let e = extract_planned(&src, &m, &spool, &batch, &opts, &ExtractPlan::default(), &|_, _, _| {}).await.unwrap();
    assert_eq!(e.manifest.mode, Mode::Full);
    assert!(e.manifest.files.iter().all(|f| f.scope == Some(Scope::Full)));
    assert_eq!(e.manifest.files.iter().find(|f| f.name == "sales.csv").unwrap().rows, 6);

    // a window for a file the mapping does not mark incremental is refused
    let plan = ExtractPlan { windows: [("po.csv".to_string(), day(3, 5))].into(), allow_warnings: false };
    let batch = BatchId::parse("20260310T000000Z-00000004").unwrap();
    let err = extract_planned(&src, &m, &spool, &batch, &opts, &plan, &|_, _, _| {}).await.unwrap_err();
    assert!(err.to_string().contains("po.csv cannot be incremental"), "{err}");
}

#[tokio::test]
async fn rows_without_a_valid_date_are_errors_not_left_out() {
    let dir = tempfile::tempdir().unwrap();
    let src = erp(dir.path(), "INSERT INTO s (d) VALUES (NULL), ('yesterday');").await;
    let m = mapping("d");
    let spool = dir.path().join("spool");
    let batch = BatchId::parse("20260310T000000Z-00000005").unwrap();
    let opts = ExtractOptions { level: 1, threads: 1 };
    let err =
        extract_planned(&src, &m, &spool, &batch, &opts, &window_from(day(3, 5)), &|_, _, _| {}).await.unwrap_err();
    let ExtractError::Invalid { report, .. } = &err else { panic!("{err}") };
    let lines: Vec<String> = report.problems().map(ToString::to_string).collect();
    assert_eq!(report.errors(), 2, "{lines:#?}");
    assert!(lines[0].starts_with("sales.csv:7:5: error: invoice_date is required but empty"), "{lines:?}");
    assert!(lines[1].starts_with("sales.csv:8:5: error: invoice_date: \"yesterday\" is not a date"), "{lines:?}");
    let msg = err.to_string();
    assert!(msg.contains("nothing was sent") && msg.contains("ferry connector check"), "{msg}");
    assert!(!spool.join(batch.as_str()).exists(), "a refused batch leaves no files");
}

#[tokio::test]
async fn check_reports_every_file_past_a_broken_query() {
    let dir = tempfile::tempdir().unwrap();
    let src = erp(dir.path(), "").await;
    let mut m = mapping("d");
    m.files.get_mut("master.csv").unwrap().query = "SELECT nope FROM item".into();
    let report = check_mapping(&src, &m, CheckLimits::default(), &|_, _, _| {}).await;
    assert_eq!(report.files.len(), 6);
    let master = report.file("master.csv").unwrap();
    assert_eq!((master.errors, master.problems[0].severity), (1, Severity::Error));
    let p = master.problems[0].to_string();
    assert!(p.starts_with("master.csv: error: the query failed") && p.contains("no such column: nope"), "{p}");
    // with master.csv broken, items are not checked; everything else is
    let sales = report.file("sales.csv").unwrap();
    assert_eq!((sales.rows, sales.errors, sales.warnings), (6, 0, 0));
    assert_eq!(sales.samples.len(), 3);
    assert!(sales.samples[0].starts_with("\"A1\",\"L1\",,2026/01/01,2026/03/04,1,,,,\"1\""), "{:?}", sales.samples);
    assert!(sales.note.contains("incremental on invoice_date"));
    assert_eq!(report.file("location.csv").unwrap().rows, 1);
    assert!(report.blocks(true));
}
