//! Every source against the SQLite source: the sample ERP copied into PostgreSQL and MariaDB, reached through the
//! SQLite ODBC driver, and exported to a folder of CSV files, extracts to byte-identical standard files; tricky values come through
//! ODBC as the right `SqlValue`s (SQLite driver, and PostgreSQL through psqlODBC when configured); the ODBC source
//! and write-back pass the conformance suites (`conformance`); the CSV folder refuses escapes and reports
//! file, line and column.
//!
//! Drivers: `FERRY_TEST_ODBC_SQLITE` (e.g. `Driver=/usr/lib/x86_64-linux-gnu/odbc/libsqlite3odbc.so`) and
//! `FERRY_TEST_ODBC_PG` (e.g. `Driver=/usr/lib/x86_64-linux-gnu/odbc/psqlodbcw.so;Server=127.0.0.1;Port=5432;
//! Database=ferry_test;UID=postgres`) are connection-string prefixes. Unset: the test prints SKIPPED and returns,
//! unless `FERRY_CI=1`, where it fails.

use std::collections::BTreeMap;
use std::path::Path;

use crate::conformance::{ORDERS_TABLE, SourceBackend, items_schema, source_conformance, writeback_conformance};
use chrono::NaiveDate;
use ferry_connector::erp::source::{CsvDirSource, OdbcSource, Source, SqlValue, SqliteSource, open_source};
use ferry_connector::erp::{ErpConfig, ErpKind};
use ferry_connector::extract::{ExtractOptions, extract_batch, format_float};
use ferry_connector::mapping::{FileMapping, Mapping};
use ferry_proto::batch::BatchId;
use ferry_proto::manifest::ManifestFile;
use ferry_sample::{SampleSize, generate_sample_erp_at};
use futures::StreamExt;
use sqlx::Connection;
use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection};

/// The driver prefix from `var`, or `None` after printing why the test skips (a failure under `FERRY_CI=1`).
fn driver(var: &str, test: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(v) if !v.trim().is_empty() => Some(v.trim().trim_end_matches(';').to_string()),
        _ if std::env::var("FERRY_CI").as_deref() == Ok("1") => {
            panic!("{test}: {var} is not set but FERRY_CI=1; .ci/run installs the ODBC drivers and sets it")
        }
        _ => {
            eprintln!("SKIPPED: {test}: set {var} (see README)");
            None
        }
    }
}

async fn all_rows(src: &dyn Source, sql: &str) -> Vec<Vec<SqlValue>> {
    src.rows(sql).map(|r| r.unwrap()).collect().await
}

/// Extract `mapping` from `src`; the manifest entries by file name (rows, bytes, MD5 and SHA-256 of the plain CSV).
async fn extract(src: &dyn Source, mapping: &Mapping, spool: &Path) -> BTreeMap<String, ManifestFile> {
    let batch = BatchId::parse("20261128T051600Z-3fa2b7c1").unwrap();
    let (manifest, _) = extract_batch(src, mapping, spool, &batch, &ExtractOptions::default(), &|_, _, _| {})
        .await
        .unwrap_or_else(|e| panic!("{} extract: {e}", src.kind()));
    manifest.files.into_iter().map(|f| (f.name.clone(), f)).collect()
}

/// The plain CSV of `name` in the one batch under `spool`.
fn plain(spool: &Path, name: &str) -> String {
    use std::io::Read;
    let bz = std::fs::read(spool.join("20261128T051600Z-3fa2b7c1").join(format!("{name}.bz2"))).unwrap();
    let mut out = String::new();
    ferry_io::bz::capped_decoder(&bz[..], u64::MAX).read_to_string(&mut out).unwrap();
    out
}

/// Panics with the first differing line of the first differing file.
fn assert_same_files(names: impl Iterator<Item = String>, want: &Path, got: &Path, what: &str) {
    for name in names {
        let (w, g) = (plain(want, &name), plain(got, &name));
        if let Some((i, (a, b))) = w.lines().zip(g.lines()).enumerate().find(|(_, (a, b))| a != b) {
            panic!("{what}: {name} line {}:\n  sqlite: {a}\n  other:  {b}", i + 1);
        }
    }
}

fn assert_identical(want: &BTreeMap<String, ManifestFile>, got: &BTreeMap<String, ManifestFile>, what: &str) {
    assert_eq!(want.keys().collect::<Vec<_>>(), got.keys().collect::<Vec<_>>(), "{what}");
    for (name, w) in want {
        let g = &got[name];
        assert!(w.rows > 0, "{name} is empty");
        assert_eq!((w.rows, w.bytes, &w.md5, &w.sha256), (g.rows, g.bytes, &g.md5, &g.sha256), "{what}: {name}");
    }
}

async fn sample(dir: &Path, mapping: &Mapping) -> (std::path::PathBuf, SqliteSource, BTreeMap<String, ManifestFile>) {
    let db = dir.join("erp.db");
    generate_sample_erp_at(&db, SampleSize::Small, NaiveDate::from_ymd_opt(2026, 11, 28).unwrap()).await.unwrap();
    let src = SqliteSource::open(db.to_str().unwrap()).await.unwrap();
    let want = extract(&src, mapping, &dir.join("spool-sqlite")).await;
    (db, src, want)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sample_erp_through_sqlite_odbc_driver_is_byte_identical() {
    let Some(prefix) = driver("FERRY_TEST_ODBC_SQLITE", "sample_erp_through_sqlite_odbc_driver_is_byte_identical")
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    // The SQLite engine inside the ODBC driver (the system's) and the one sqlx bundles are different versions,
    // and SQLite's ROUND() changed between them (3.40 rounds -3.5 * 5.71 to -19.99, newer ones to -19.98):
    // compare the unrounded product, which both engines compute identically.
    let text = ferry_sample::MAPPING.replace("ROUND(qty * unit_cost, 2)", "qty * unit_cost");
    let mapping = Mapping::from_toml(&text).unwrap();
    let (db, _, want) = sample(dir.path(), &mapping).await;
    let odbc = OdbcSource::open(&format!("{prefix};Database={}", db.display()), None).await.unwrap();
    assert_eq!(odbc.kind(), "odbc");
    let got = extract(&odbc, &mapping, &dir.path().join("spool-odbc")).await;
    assert_same_files(want.keys().cloned(), &dir.path().join("spool-sqlite"), &dir.path().join("spool-odbc"), "ODBC");
    assert_identical(&want, &got, "sqlite via ODBC");
}

/// The sample ERP copied into PostgreSQL and MariaDB, with the types an ERP there would use (dates `TIMESTAMP`
/// or `DATETIME`, since some of the sample's date columns hold times too,
/// quantities and money `DOUBLE PRECISION`, codes and names `VARCHAR` in byte order), extracts to the same
/// standard files as from SQLite, byte for byte. The mapping differs only where the dialects do: MySQL
/// concatenates with `CONCAT`, and the sales cost is the unrounded product (PostgreSQL has no `ROUND` for
/// `DOUBLE PRECISION`; engines differ in rounding halves, see the ODBC test above).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sample_erp_in_postgres_and_mariadb_is_byte_identical() {
    let dir = tempfile::tempdir().unwrap();
    let text = ferry_sample::MAPPING.replace("ROUND(qty * unit_cost, 2)", "qty * unit_cost");
    let (db, _, want) = sample(dir.path(), &Mapping::from_toml(&text).unwrap()).await;
    for (var, backend) in [("FERRY_TEST_POSTGRES_URL", "postgres"), ("FERRY_TEST_MYSQL_URL", "mysql")] {
        let Some(server) = crate::common::server(var, "sample_erp_in_postgres_and_mariadb_is_byte_identical") else {
            continue;
        };
        let url = crate::common::fresh_db(&server, "sample").await;
        let copied = copy_sample(&db, &url, backend).await;
        println!("{backend}: copied {copied} rows of the sample ERP");
        let text = match backend {
            "mysql" => text.replace("invoice_no || '/' || line_no", "CONCAT(invoice_no, '/', line_no)"),
            _ => text.clone(),
        };
        let src = open_source(&ErpConfig::new(ErpKind::parse(backend).unwrap(), &url)).await.unwrap();
        let spool = dir.path().join(format!("spool-{backend}"));
        let got = extract(src.as_ref(), &Mapping::from_toml(&text).unwrap(), &spool).await;
        assert_same_files(want.keys().cloned(), &dir.path().join("spool-sqlite"), &spool, backend);
        assert_identical(&want, &got, backend);
    }
}

/// The type a sample ERP column gets on a database server.
#[derive(Debug, Clone, Copy)]
enum ServerType {
    Int,
    Float,
    Date,
    Text,
}

impl ServerType {
    fn of(name: &str, declared: &str) -> ServerType {
        match declared {
            "INTEGER" => ServerType::Int,
            "REAL" => ServerType::Float,
            _ if name.ends_with("_date") || name.ends_with("_on") || name == "eta" => ServerType::Date,
            _ => ServerType::Text,
        }
    }

    fn sql(self, backend: &str) -> &'static str {
        match (self, backend) {
            (ServerType::Int, _) => "BIGINT",
            (ServerType::Float, _) => "DOUBLE PRECISION",
            (ServerType::Date, "postgres") => "TIMESTAMP",
            (ServerType::Date, _) => "DATETIME",
            (ServerType::Text, "postgres") => "VARCHAR(200) COLLATE \"C\"",
            (ServerType::Text, _) => "VARCHAR(200) COLLATE utf8mb4_bin",
        }
    }
}

/// Copies every table of the SQLite ERP at `db` into the (empty) database at `url`; returns the rows copied.
async fn copy_sample(db: &Path, url: &str, backend: &str) -> usize {
    let mut lite = SqliteConnection::connect_with(&SqliteConnectOptions::new().filename(db)).await.unwrap();
    let tables: Vec<String> =
        sqlx::query_scalar("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")
            .fetch_all(&mut lite)
            .await
            .unwrap();
    let src = SqliteSource::open(db.to_str().unwrap()).await.unwrap();
    let mut copied = 0;
    for t in tables {
        let cols: Vec<(String, String)> = sqlx::query_as("SELECT name, type FROM pragma_table_info(?) ORDER BY cid")
            .bind(&t)
            .fetch_all(&mut lite)
            .await
            .unwrap();
        let types: Vec<ServerType> = cols.iter().map(|(n, d)| ServerType::of(n, d)).collect();
        let defs: Vec<String> =
            cols.iter().zip(&types).map(|((n, _), ty)| format!("{n} {}", ty.sql(backend))).collect();
        let names: Vec<&str> = cols.iter().map(|(n, _)| n.as_str()).collect();
        let insert = format!("INSERT INTO {t} ({}) VALUES ", names.join(", "));
        let rows = all_rows(&src, &format!("SELECT * FROM {t} ORDER BY rowid")).await;
        copied += rows.len();
        let create = format!("CREATE TABLE {t} ({})", defs.join(", "));
        if backend == "postgres" {
            let mut c = sqlx::PgConnection::connect(url).await.unwrap();
            insert_rows::<sqlx::Postgres>(&mut c, true, &create, &insert, &types, &rows).await;
        } else {
            let mut c = sqlx::MySqlConnection::connect(url).await.unwrap();
            insert_rows::<sqlx::MySql>(&mut c, false, &create, &insert, &types, &rows).await;
        }
    }
    copied
}

/// Creates the table and inserts `rows` in one transaction (`pg`: `$n` placeholders, else `?`).
async fn insert_rows<DB>(
    c: &mut DB::Connection,
    pg: bool,
    create: &str,
    insert: &str,
    types: &[ServerType],
    rows: &[Vec<SqlValue>],
) where
    DB: sqlx::Database,
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
    DB::Arguments: sqlx::IntoArguments<DB>,
    for<'q> Option<i64>: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    for<'q> Option<f64>: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    for<'q> Option<chrono::NaiveDateTime>: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    for<'q> Option<String>: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
{
    use sqlx::AssertSqlSafe;
    sqlx::query::<DB>(AssertSqlSafe(create.to_string()))
        .execute(&mut *c)
        .await
        .unwrap_or_else(|e| panic!("{create}: {e}"));
    sqlx::query::<DB>("BEGIN").execute(&mut *c).await.unwrap();
    // many rows per statement: 500 x the columns stays far below both servers' limit on parameters
    for chunk in rows.chunks(500) {
        let mut n = 0;
        let tuples: Vec<String> = chunk
            .iter()
            .map(|_| {
                let marks: Vec<String> = types
                    .iter()
                    .map(|_| {
                        n += 1;
                        if pg { format!("${n}") } else { "?".to_string() }
                    })
                    .collect();
                format!("({})", marks.join(", "))
            })
            .collect();
        let sql = format!("{insert}{}", tuples.join(", "));
        let mut q = sqlx::query::<DB>(AssertSqlSafe(sql));
        for (v, ty) in chunk.iter().flat_map(|row| row.iter().zip(types)) {
            q = match (ty, v) {
                (ServerType::Int, SqlValue::Int(n)) => q.bind(Some(*n)),
                (ServerType::Int, SqlValue::Null) => q.bind(None::<i64>),
                (ServerType::Float, SqlValue::Float(f)) => q.bind(Some(*f)),
                (ServerType::Float, SqlValue::Null) => q.bind(None::<f64>),
                (ServerType::Date, SqlValue::Text(d)) => q.bind(Some(
                    chrono::NaiveDateTime::parse_from_str(d, "%Y-%m-%d %H:%M:%S")
                        .or_else(|_| NaiveDate::parse_from_str(d, "%Y-%m-%d").map(|d| d.and_time(Default::default())))
                        .or_else(|_| NaiveDate::parse_from_str(d, "%Y/%m/%d").map(|d| d.and_time(Default::default())))
                        .unwrap_or_else(|e| panic!("{insert}: {d:?} {e}")),
                )),
                (ServerType::Date, SqlValue::Null) => q.bind(None::<chrono::NaiveDateTime>),
                (ServerType::Text, SqlValue::Text(s)) => q.bind(Some(s.clone())),
                (ServerType::Text, SqlValue::Null) => q.bind(None::<String>),
                other => panic!("{insert}: {other:?}"),
            };
        }
        q.execute(&mut *c).await.unwrap_or_else(|e| panic!("{insert}: {e}"));
    }
    sqlx::query::<DB>("COMMIT").execute(&mut *c).await.unwrap();
}

/// Write every mapped query's result into `folder/<file>` as an ERP export job would: a header row, numbers and
/// dates as plain text. `location.csv` is written with `;` and in Windows-1252, with named columns.
async fn export_to_csv(src: &SqliteSource, mapping: &Mapping, folder: &Path) -> Mapping {
    let mut csv_mapping = Mapping::default();
    for (name, fm) in mapping.ordered() {
        let rows = all_rows(src, &fm.query).await;
        let width = src.columns(&fm.query).await.unwrap().len();
        let legacy = name == "location.csv";
        let mut out = Vec::new();
        {
            let mut w = csv::WriterBuilder::new().delimiter(if legacy { b';' } else { b',' }).from_writer(&mut out);
            w.write_record((1..=width).map(|i| format!("col {i}"))).unwrap();
            for row in rows {
                let fields: Vec<String> = row
                    .iter()
                    .map(|v| match v {
                        SqlValue::Null => String::new(),
                        SqlValue::Int(n) => n.to_string(),
                        SqlValue::Float(f) => {
                            let mut s = String::new();
                            format_float(*f, &mut s).unwrap();
                            s
                        }
                        SqlValue::Decimal(d) | SqlValue::Text(d) => d.clone(),
                        SqlValue::Bool(b) => u8::from(*b).to_string(),
                        SqlValue::Date(d) => d.format("%Y-%m-%d").to_string(),
                        SqlValue::Timestamp(t) => t.format("%Y-%m-%d %H:%M:%S").to_string(),
                        SqlValue::Bytes(b) => String::from_utf8(b.clone()).unwrap(),
                    })
                    .collect();
                w.write_record(&fields).unwrap();
            }
            w.flush().unwrap();
        }
        let query = if legacy {
            let (text, _, _) = encoding_rs::WINDOWS_1252.encode(std::str::from_utf8(&out).unwrap());
            std::fs::write(folder.join("legacy").join(name), &text).unwrap();
            let cols: Vec<String> = (1..=width).map(|i| format!("\"col {i}\"")).collect();
            format!("SELECT {} FROM \"legacy/{name}\" WITH (delimiter ';', encoding 'windows-1252')", cols.join(", "))
        } else {
            std::fs::write(folder.join(name), &out).unwrap();
            format!("select * from \"{name}\";")
        };
        csv_mapping.files.insert(name.to_string(), FileMapping::new(query));
    }
    csv_mapping
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sample_erp_through_a_csv_folder_is_byte_identical() {
    let dir = tempfile::tempdir().unwrap();
    let mapping = Mapping::from_toml(ferry_sample::MAPPING).unwrap();
    let (_, src, want) = sample(dir.path(), &mapping).await;
    let folder = dir.path().join("exports");
    std::fs::create_dir_all(folder.join("legacy")).unwrap();
    let csv_mapping = export_to_csv(&src, &mapping, &folder).await;
    let csv = CsvDirSource::open(folder.to_str().unwrap()).unwrap();
    assert_eq!(csv.kind(), "csv");
    let got = extract(&csv, &csv_mapping, &dir.path().join("spool-csv")).await;
    assert_identical(&want, &got, "CSV folder");
}

#[tokio::test]
async fn csv_folder_selects_by_name_and_reports_file_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().join("exports");
    std::fs::create_dir_all(folder.join("sub")).unwrap();
    std::fs::write(dir.path().join("secret.csv"), "a\n1\n").unwrap();
    std::fs::write(
        folder.join("items.csv"),
        "\u{feff}Item No,Desc,Price\nA-1,\"Bolt, 10 \"\"mm\"\"\nzinc\",12.50\nÄ-2,,3\n",
    )
    .unwrap();
    std::fs::write(folder.join("sub/bad.csv"), "a,b\n1,2\n3\n").unwrap();
    std::fs::write(folder.join("latin.csv"), b"x\n\xc9t\xe9\n").unwrap();
    std::os::unix::fs::symlink(dir.path().join("secret.csv"), folder.join("link.csv")).unwrap();
    let src = CsvDirSource::open(folder.to_str().unwrap()).unwrap();

    let q = "SELECT \"Item No\", Price AS p, NULL, 'EA', #2 FROM \"items.csv\"";
    assert_eq!(src.columns(q).await.unwrap(), ["Item No", "p", "NULL", "EA", "Desc"]);
    let rows = all_rows(&src, q).await;
    let t = |s: &str| SqlValue::Text(s.into());
    assert_eq!(
        rows,
        vec![
            vec![t("A-1"), t("12.50"), SqlValue::Null, t("EA"), t("Bolt, 10 \"mm\"\nzinc")],
            vec![t("Ä-2"), t("3"), SqlValue::Null, t("EA"), SqlValue::Null],
        ]
    );
    // no header: positions, and the first line is data
    let first = src.rows("SELECT #2, #1 FROM \"sub/bad.csv\" WITH (header false)").next().await.unwrap().unwrap();
    assert_eq!(first, vec![t("b"), t("a")]);
    // Windows-1252
    let rows = all_rows(&src, "SELECT x FROM \"latin.csv\" WITH (encoding 'windows-1252')").await;
    assert_eq!(rows, vec![vec![t("Été")]]);

    let err = |sql: &'static str| {
        let src = src.clone();
        async move {
            match src.columns(sql).await {
                Err(e) => e.to_string(),
                Ok(_) => {
                    let rows: Vec<_> = src.rows(sql).collect().await;
                    rows.into_iter().find_map(|r| r.err()).expect("an error").to_string()
                }
            }
        }
    };
    for (sql, want) in [
        ("SELECT Sku FROM \"items.csv\"", "items.csv has no column \"Sku\"; its header is: Item No, Desc, Price"),
        ("SELECT a, b FROM \"sub/bad.csv\"", "sub/bad.csv line 3: the row has 1 fields, the first line has 2"),
        ("SELECT x FROM \"latin.csv\"", "latin.csv line 2, column 1: the text is not valid UTF-8"),
        ("SELECT a FROM \"../secret.csv\"", "without `..`"),
        ("SELECT a FROM \"/etc/passwd\"", "without `..`, `.` or a leading `/`"),
        ("SELECT a FROM \"link.csv\"", "leads outside the CSV folder"),
        ("SELECT a FROM \"nope.csv\"", "cannot open nope.csv"),
        ("SELECT #9 FROM \"items.csv\"", "selects #9 but line 1 has 3 fields"),
        ("SELECT a FROM \"items.csv\" WITH (header false)", "select with #N"),
    ] {
        let e = err(sql).await;
        assert!(e.contains(want), "{sql}: {e}");
    }
    let e = CsvDirSource::open(dir.path().join("missing").to_str().unwrap()).unwrap_err().to_string();
    assert!(e.contains("no such folder"), "{e}");
}

/// A table of tricky values, in the dialect both SQLite and PostgreSQL accept.
const TRICKY_TABLE: &str = "CREATE TABLE tricky (id BIGINT, qty DECIMAL(14,4), ratio DOUBLE PRECISION, \
                            day DATE, at TIMESTAMP, note VARCHAR(200))";
const TRICKY_ROWS: [&str; 2] = [
    "INSERT INTO tricky VALUES (1, 12.3400, 0.25, '2026-11-28', '2026-11-28 13:45:10', \
     'a \"quoted\", comma\nnew line é 中')",
    "INSERT INTO tricky VALUES (-9000000000, NULL, NULL, NULL, NULL, NULL)",
];
const TRICKY_SELECT: &str = "SELECT id, qty, ratio, day, at, note FROM tricky ORDER BY id DESC";

fn check_tricky(rows: &[Vec<SqlValue>], decimal: SqlValue) {
    let date = NaiveDate::from_ymd_opt(2026, 11, 28).unwrap();
    assert_eq!(
        rows[0],
        vec![
            SqlValue::Int(1),
            decimal,
            SqlValue::Float(0.25),
            SqlValue::Date(date),
            SqlValue::Timestamp(date.and_hms_opt(13, 45, 10).unwrap()),
            SqlValue::Text("a \"quoted\", comma\nnew line é 中".into()),
        ]
    );
    assert_eq!(rows[1][0], SqlValue::Int(-9_000_000_000));
    assert!(rows[1][1..].iter().all(|v| *v == SqlValue::Null), "{:?}", rows[1]);
}

#[tokio::test]
async fn tricky_values_through_the_sqlite_odbc_driver() {
    let Some(prefix) = driver("FERRY_TEST_ODBC_SQLITE", "tricky_values_through_the_sqlite_odbc_driver") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("t.db");
    let mut conn = SqliteConnection::connect_with(&SqliteConnectOptions::new().filename(&db).create_if_missing(true))
        .await
        .unwrap();
    // the SQLite driver describes only INTEGER (not BIGINT) columns as integers
    let table = TRICKY_TABLE.replace("BIGINT", "INTEGER");
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("{table}; {}; {};", TRICKY_ROWS[0], TRICKY_ROWS[1])))
        .execute(&mut conn)
        .await
        .unwrap();
    conn.close().await.unwrap();

    let src = OdbcSource::open(&format!("{prefix};Database={}", db.display()), None).await.unwrap();
    assert_eq!(src.columns(TRICKY_SELECT).await.unwrap(), ["id", "qty", "ratio", "day", "at", "note"]);
    // SQLite stores DECIMAL as a REAL and its driver describes the column as text: the driver's print of 12.34
    check_tricky(&all_rows(&src, TRICKY_SELECT).await, SqlValue::Text("12.34".into()));
}

#[tokio::test]
async fn tricky_values_through_postgres_odbc() {
    let Some(prefix) = driver("FERRY_TEST_ODBC_PG", "tricky_values_through_postgres_odbc") else {
        return;
    };
    let src = OdbcSource::open(&prefix, None).await.unwrap();
    // a fresh table per run; the ODBC source is read-only by convention, so set it up through a write-back
    // connection string of its own
    let setup = odbc_exec(&prefix, &["DROP TABLE IF EXISTS tricky", TRICKY_TABLE, TRICKY_ROWS[0], TRICKY_ROWS[1]]);
    setup.unwrap();
    check_tricky(&all_rows(&src, TRICKY_SELECT).await, SqlValue::Decimal("12.3400".into()));
    let rows = all_rows(&src, "SELECT CAST('123456789012345.678901' AS NUMERIC(30,6)), true, false").await;
    assert_eq!(rows[0][0], SqlValue::Decimal("123456789012345.678901".into()));
}

/// Runs statements through ODBC with autocommit (test setup only).
fn odbc_exec(conn_str: &str, statements: &[&str]) -> Result<(), String> {
    let env = odbc_api::environment().map_err(|e| e.to_string())?;
    let conn = env
        .connect_with_connection_string(conn_str, odbc_api::ConnectionOptions::default())
        .map_err(|e| e.to_string())?;
    for s in statements {
        conn.execute(s, (), None).map_err(|e| format!("{s}: {e}"))?;
    }
    Ok(())
}

/// An SQLite database file in `dir` holding `script` (`;`-separated), made with sqlx.
async fn sqlite_db(dir: &Path, name: &str, script: &str) -> std::path::PathBuf {
    let db = dir.join(name);
    let opts = SqliteConnectOptions::new().filename(&db).create_if_missing(true);
    let mut conn = SqliteConnection::connect_with(&opts).await.unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(script.to_string())).execute(&mut conn).await.unwrap();
    conn.close().await.unwrap();
    db
}

#[tokio::test]
async fn the_odbc_source_passes_the_conformance_suite() {
    let Some(prefix) = driver("FERRY_TEST_ODBC_SQLITE", "the_odbc_source_passes_the_conformance_suite") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let db = sqlite_db(dir.path(), "items.db", &items_schema("sqlite")).await;
    let src = OdbcSource::open(&format!("{prefix};Database={}", db.display()), None).await.unwrap();
    source_conformance(&src, SourceBackend { kind: "odbc", read_only: false }).await;
}

#[tokio::test]
async fn the_odbc_write_back_passes_the_conformance_suite_through_the_sqlite_driver() {
    let Some(prefix) = driver("FERRY_TEST_ODBC_SQLITE", "the_odbc_write_back_passes_the_conformance_suite") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let db = sqlite_db(dir.path(), "erp.db", ORDERS_TABLE).await;
    let erp = ErpConfig::new(ErpKind::Odbc, &format!("{prefix};Database={}", db.display()));
    let reader = SqliteSource::open(db.to_str().unwrap()).await.unwrap();
    writeback_conformance(&erp, &reader).await;
    let rows = all_rows(
        &reader,
        "SELECT item, qty, due_date FROM recommended_orders WHERE order_number = 'PO1' ORDER BY line",
    )
    .await;
    assert_eq!(
        rows[1],
        vec![SqlValue::Text("Bolt, 10 \"mm\" é".into()), SqlValue::Float(12.5), SqlValue::Text("2026-03-16".into())]
    );
}

#[tokio::test]
async fn the_odbc_write_back_passes_the_conformance_suite_through_postgres() {
    let Some(prefix) =
        driver("FERRY_TEST_ODBC_PG", "the_odbc_write_back_passes_the_conformance_suite_through_postgres")
    else {
        return;
    };
    odbc_exec(&prefix, &["DROP TABLE IF EXISTS recommended_orders", ORDERS_TABLE]).unwrap();
    let src = OdbcSource::open(&prefix, None).await.unwrap();
    writeback_conformance(&ErpConfig::new(ErpKind::Odbc, &prefix), &src).await;
    let rows =
        all_rows(&src, "SELECT item, qty, due_date FROM recommended_orders WHERE order_number = 'PO1' ORDER BY line")
            .await;
    assert_eq!(
        rows[1],
        vec![
            SqlValue::Text("Bolt, 10 \"mm\" é".into()),
            SqlValue::Decimal("12.500".into()),
            SqlValue::Date(NaiveDate::from_ymd_opt(2026, 3, 16).unwrap())
        ]
    );
}
