//! Every ERP source and write-back backend passes the conformance suites (`conformance`): the same ERP
//! data in SQLite, PostgreSQL and MariaDB, each with its natural column types (NUMERIC/DECIMAL for money, DATE,
//! BOOLEAN, TIMESTAMP/DATETIME, TEXT), extracts to byte-identical CSV, and the SQL write-back works alike on each.
//! Then what only a server backend does: values decode by the server's types, PostgreSQL binds each CSV field as
//! the type of its placeholder, the password comes from `password_env` and never appears in errors, TLS.
//!
//! The servers come from `scripts/test-databases.sh` (see README "Database tests"): without
//! `FERRY_TEST_POSTGRES_URL` / `FERRY_TEST_MYSQL_URL` a test prints `SKIPPED` and returns, but fails under
//! `FERRY_CI=1`.

use std::path::Path;

use crate::common::{fresh_db, server};
use crate::conformance::{
    ORDERS_TABLE, SourceBackend, extract_csv, items_schema, source_conformance, writeback_conformance,
};

use ferry_connector::delivery::{DeliveryConfig, SqlWriteBack, deliver};
use ferry_connector::erp::source::{Source, SqlValue, open_source};
use ferry_connector::erp::{ErpConfig, ErpKind, Password, TextEncoding};
use ferry_connector::extract::format_value;
use ferry_proto::spec::{Column, Kind};
use futures::StreamExt;
use sqlx::{AssertSqlSafe, Connection};

/// Runs each `;`-separated statement.
async fn exec_all(url: &str, script: &str) {
    let stmts: Vec<&str> = script.split(";\n").map(str::trim).filter(|s| !s.is_empty()).collect();
    if url.starts_with("postgres") {
        let mut c = sqlx::PgConnection::connect(url).await.unwrap();
        for s in stmts {
            sqlx::query(AssertSqlSafe(s.to_string())).execute(&mut c).await.unwrap_or_else(|e| panic!("{s}: {e}"));
        }
    } else if url.starts_with("mysql") {
        let mut c = sqlx::MySqlConnection::connect(url).await.unwrap();
        for s in stmts {
            sqlx::query(AssertSqlSafe(s.to_string())).execute(&mut c).await.unwrap_or_else(|e| panic!("{s}: {e}"));
        }
    } else {
        let mut c = sqlx::SqliteConnection::connect(&format!("sqlite://{url}?mode=rwc")).await.unwrap();
        for s in stmts {
            sqlx::query(AssertSqlSafe(s.to_string())).execute(&mut c).await.unwrap_or_else(|e| panic!("{s}: {e}"));
        }
    }
}

fn col(kind: Kind) -> Column {
    Column { name: "c", kind, required: false }
}

/// The backends of this file: SQLite always, the servers when their URL is set.
fn backends(test: &str) -> Vec<(ErpKind, Option<String>)> {
    let mut out = vec![(ErpKind::Sqlite, None)];
    for (var, kind) in [("FERRY_TEST_POSTGRES_URL", ErpKind::Postgres), ("FERRY_TEST_MYSQL_URL", ErpKind::MySql)] {
        if let Some(url) = server(var, test) {
            out.push((kind, Some(url)));
        }
    }
    out
}

/// A fresh database of `kind` (an SQLite file in `dir`, a new database on a server) holding `script`.
async fn fresh(kind: ErpKind, server_url: Option<&str>, dir: &Path, tag: &str, script: &str) -> ErpConfig {
    let url = match server_url {
        Some(url) => fresh_db(url, tag).await,
        None => dir.join(format!("{tag}.db")).display().to_string(),
    };
    exec_all(&url, script).await;
    ErpConfig::new(kind, &url)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_source_backend_passes_the_conformance_suite() {
    let dir = tempfile::tempdir().unwrap();
    for (kind, url) in backends("every_source_backend_passes_the_conformance_suite") {
        let erp = fresh(kind, url.as_deref(), dir.path(), "xb", &items_schema(kind.as_str())).await;
        let src = open_source(&erp).await.unwrap_or_else(|e| panic!("{kind}: {e}"));
        source_conformance(src.as_ref(), SourceBackend { kind: kind.as_str(), read_only: true }).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_sqlx_write_back_passes_the_conformance_suite() {
    let dir = tempfile::tempdir().unwrap();
    for (kind, url) in backends("every_sqlx_write_back_passes_the_conformance_suite") {
        let erp = fresh(kind, url.as_deref(), dir.path(), "wbc", &format!("{ORDERS_TABLE};\n")).await;
        let reader = open_source(&erp).await.unwrap_or_else(|e| panic!("{kind}: {e}"));
        writeback_conformance(&erp, reader.as_ref()).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_values_decode_by_type() {
    let Some(url) = server("FERRY_TEST_POSTGRES_URL", "postgres_values_decode_by_type") else { return };
    let db = fresh_db(&url, "pgv").await;
    exec_all(
        &db,
        "CREATE TABLE t (n NUMERIC, r REAL, i2 SMALLINT, b BOOLEAN, ts TIMESTAMP, d DATE, bin BYTEA, dtext TEXT, ch CHAR(6));\n\
         INSERT INTO t VALUES (123456789012.3456, 1.1, -7, TRUE, '2026-11-28 10:00:00', '2026-02-01', '\\xe9'::bytea, '00012.500', 'ab')",
    )
    .await;
    let mut erp = ErpConfig::new(ErpKind::Postgres, &db);
    erp.encoding = TextEncoding::Windows1252;
    let src = open_source(&erp).await.unwrap();
    let rows: Vec<_> =
        src.rows("SELECT n, r, i2, b, ts, d, bin, dtext, ch, NULL::int, 0.10::numeric(5,3) FROM t").collect().await;
    let row = rows[0].as_ref().unwrap();
    assert_eq!(row[0], SqlValue::Decimal("123456789012.3456".into()));
    assert_eq!(row[1], SqlValue::Float(1.1));
    assert_eq!(row[2], SqlValue::Int(-7));
    assert_eq!(row[3], SqlValue::Bool(true));
    assert_eq!(
        row[4],
        SqlValue::Timestamp(chrono::NaiveDate::from_ymd_opt(2026, 11, 28).unwrap().and_hms_opt(10, 0, 0).unwrap())
    );
    assert_eq!(row[5], SqlValue::Date(chrono::NaiveDate::from_ymd_opt(2026, 2, 1).unwrap()));
    assert_eq!(row[6], SqlValue::Text("é".into()), "a cp1252 byte becomes UTF-8");
    assert_eq!(row[7], SqlValue::Text("00012.500".into()));
    assert_eq!(row[8], SqlValue::Text("ab    ".into()));
    assert_eq!(row[9], SqlValue::Null);
    assert_eq!(row[10], SqlValue::Decimal("0.100".into()));
    let mut out = String::new();
    format_value(&col(Kind::Dec), &row[7], &mut out).unwrap();
    assert_eq!(out, "12.5", "a decimal stored as text is normalised like a NUMERIC");
    // the session is read-only
    let e = src.rows("INSERT INTO t (n) VALUES (1) RETURNING n").collect::<Vec<_>>().await;
    assert!(e[0].as_ref().unwrap_err().to_string().contains("read-only"), "{:?}", e[0]);
    // a type it cannot read says what to do
    let e = src.rows("SELECT '1 day'::interval").collect::<Vec<_>>().await;
    assert!(e[0].as_ref().unwrap_err().to_string().contains("cast the column"), "{:?}", e[0]);
}

/// Values whose COPY text form needs care: escapes, extremes, float noise, padding, NULL next to the text `\N`.
const PG_COPY_TABLE: &str = r#"CREATE TABLE t (id INT, n NUMERIC(30,6), r REAL, f DOUBLE PRECISION, i2 SMALLINT,
  i8 BIGINT, b BOOLEAN, ts TIMESTAMP, d DATE, txt TEXT, vc VARCHAR(20), ch CHAR(6), j JSONB, u UUID, tz TIMESTAMPTZ,
  bin BYTEA);
INSERT INTO t VALUES
 (1, 123456789012.345678, 1.1, 0.30000000000000004, -7, -9223372036854775808, TRUE, '2026-11-28 10:00:00.25',
  '2026-02-01', E'tab\there\nnew line \\ back\\slash \r end', 'Café — ü', 'ab', '{"a": [1, "x\ty"]}',
  'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '2026-03-01 12:00:00+00', '\x00ff'),
 (2, -0.000001, 3.4028235e38, 1e-300, 32767, 9223372036854775807, FALSE, '1999-12-31 23:59:59.999999',
  '2024-02-29', '', NULL, NULL, NULL, NULL, NULL, NULL),
 (3, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, '\N', ' ', 'null', NULL, NULL, NULL)"#;

/// The extract reads PostgreSQL through `COPY (<query>) TO STDOUT` (issue 11): every value equals the row-by-row
/// path's, for each type COPY is used for and the text escapes of its format (tab, newline, backslash, CR,
/// non-ASCII); a query with a type whose text form would differ (TIMESTAMPTZ, BYTEA) reads row by row, with the
/// same values.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_copy_extract_gives_the_row_paths_values() {
    let Some(url) = server("FERRY_TEST_POSTGRES_URL", "postgres_copy_extract_gives_the_row_paths_values") else {
        return;
    };
    let db = fresh_db(&url, "pgcopy").await;
    exec_all(&db, PG_COPY_TABLE).await;
    let src = ferry_connector::erp::source::PostgresSource::open(&db, None, TextEncoding::Utf8).await.unwrap();
    let copy_sql = "SELECT id, n, r, f, i2, i8, b, ts, d, txt, vc, ch, j, u, n * 2 AS twice, 'lit' AS lit, \
                    NULL::int AS nothing FROM t ORDER BY id";
    let row_sql = "SELECT id, tz, bin, txt FROM t ORDER BY id;";
    assert!(src.reads_with_copy(copy_sql).await, "these types go through COPY");
    assert!(!src.reads_with_copy(row_sql).await, "TIMESTAMPTZ and BYTEA are read row by row");
    for sql in [copy_sql, row_sql] {
        let rows: Vec<_> = src.rows(sql).map(Result::unwrap).collect().await;
        let recycle = ferry_connector::erp::source::Recycle::default();
        let mut chunked = Vec::new();
        let mut chunks = src.row_chunks(sql, 2, recycle.clone());
        while let Some(c) = chunks.next().await {
            let c = c.unwrap_or_else(|e| panic!("{sql}: {e}"));
            chunked.extend(c.iter().cloned());
            recycle.give(c);
        }
        assert_eq!(chunked, rows, "{sql}");
        assert_eq!(rows.len(), 3);
    }
    let rows: Vec<_> = src.rows(copy_sql).map(Result::unwrap).collect().await;
    assert_eq!(rows[0][9], SqlValue::Text("tab\there\nnew line \\ back\\slash \r end".into()));
    assert_eq!(rows[0][2], SqlValue::Float(1.1));
    assert_eq!(rows[2][10], SqlValue::Text("\\N".into()), "the text \\N is not NULL");
    // an error of the query itself comes from the row path with its reason, a NaN from COPY with the row path's
    let e = src.row_chunks("SELECT nope FROM t", 2, Default::default()).next().await.unwrap().unwrap_err();
    assert!(e.to_string().contains("nope"), "{e}");
    let e = src.row_chunks("SELECT 'NaN'::numeric", 2, Default::default()).next().await.unwrap().unwrap_err();
    assert!(e.to_string().contains("NaN has no CSV form"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_values_decode_by_type() {
    let Some(url) = server("FERRY_TEST_MYSQL_URL", "mariadb_values_decode_by_type") else { return };
    let db = fresh_db(&url, "myv").await;
    exec_all(
        &db,
        "CREATE TABLE t (n DECIMAL(20,4), f FLOAT, u TINYINT UNSIGNED, big BIGINT UNSIGNED, flag TINYINT(1), \
         d DATE, dt DATETIME, l1 VARCHAR(20) CHARACTER SET latin1, raw VARBINARY(20), zd DATE)",
    )
    .await;
    let mut c = sqlx::MySqlConnection::connect(&db).await.unwrap();
    sqlx::query("SET SESSION sql_mode = ''").execute(&mut c).await.unwrap();
    sqlx::query("INSERT INTO t VALUES (123456789012.3456, 1.1, 200, 18446744073709551615, 1, '2026-11-28', '2026-11-28 23:59:59', ?, ?, '0000-00-00')")
        .bind("Crème brûlée")
        .bind(b"Caf\xe9 \x80".to_vec())
        .execute(&mut c)
        .await
        .unwrap();
    let mut erp = ErpConfig::new(ErpKind::MySql, &db);
    erp.encoding = TextEncoding::Windows1252;
    let src = open_source(&erp).await.unwrap();
    let rows: Vec<_> = src.rows("SELECT n, f, u, big, flag, d, dt, l1, raw, zd, NULL FROM t").collect().await;
    let row = rows[0].as_ref().unwrap();
    assert_eq!(row[0], SqlValue::Decimal("123456789012.3456".into()));
    assert_eq!(row[1], SqlValue::Float(1.1));
    assert_eq!(row[2], SqlValue::Int(200));
    assert_eq!(row[3], SqlValue::Decimal("18446744073709551615".into()));
    assert_eq!(row[4], SqlValue::Int(1));
    assert_eq!(row[5], SqlValue::Date(chrono::NaiveDate::from_ymd_opt(2026, 11, 28).unwrap()));
    assert_eq!(
        row[6],
        SqlValue::Timestamp(chrono::NaiveDate::from_ymd_opt(2026, 11, 28).unwrap().and_hms_opt(23, 59, 59).unwrap())
    );
    assert_eq!(row[7], SqlValue::Text("Crème brûlée".into()), "a latin1 column arrives as UTF-8");
    assert_eq!(row[8], SqlValue::Text("Café €".into()), "cp1252 bytes are decoded");
    assert_eq!(row[9], SqlValue::Null, "a zero date is NULL");
    assert_eq!(row[10], SqlValue::Null);
    let e = src.rows("INSERT INTO t (n) VALUES (1)").collect::<Vec<_>>().await;
    assert!(e.first().is_some_and(|r| r.is_err()), "the session is read-only: {e:?}");
}

/// The downstream CSV the write-back test applies.
fn po_file(dir: &Path, body: &str) -> std::path::PathBuf {
    let p = dir.join("po.csv");
    std::fs::write(&p, body).unwrap();
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_back_binds_parameters_on_postgres_and_mariadb() {
    let dir = tempfile::tempdir().unwrap();
    for (var, backend, kind) in
        [("FERRY_TEST_POSTGRES_URL", "postgres", ErpKind::Postgres), ("FERRY_TEST_MYSQL_URL", "mysql", ErpKind::MySql)]
    {
        let Some(url) = server(var, "write_back_binds_parameters_on_postgres_and_mariadb") else { continue };
        let db = fresh_db(&url, "wb").await;
        exec_all(
            &db,
            "CREATE TABLE recommended_orders (order_number VARCHAR(20), line INTEGER, item VARCHAR(80), \
             qty NUMERIC(18,4), due_date DATE, urgent BOOLEAN, PRIMARY KEY (order_number, line))",
        )
        .await;
        let cfg = DeliveryConfig {
            sql: vec![SqlWriteBack {
                statement: "INSERT INTO recommended_orders(order_number, line, item, qty, due_date, urgent) \
                            VALUES (?, ?, ?, ?, ?, ?)"
                    .into(),
                params: ["order_number", "line", "item", "qty", "due_date", "urgent"].map(String::from).to_vec(),
            }],
            ..DeliveryConfig::default()
        };
        // the password comes from password_env, not the URL
        let (pw_url, password) = split_password(&db);
        let env = format!("FERRY_TEST_WB_PW_{}", backend.to_uppercase());
        // SAFETY: a variable of this test alone (no other test of the `it` binary reads or sets it); std serialises
        // its own environment access.
        unsafe { std::env::set_var(&env, &password) };
        let mut erp = ErpConfig::new(kind, &pw_url);
        erp.password = Password::Env(env.clone());
        let good = po_file(
            dir.path(),
            "order_number,line,item,qty,due_date,urgent\n\
             PO1,1,\"Robert'); DROP TABLE recommended_orders;--\",123456789012.3456,2026/12/01,1\n\
             PO1,2,Café,0.5,2026-12-02,0\n\
             PO1,3,X,,,\n",
        );
        let report = deliver(&cfg, Some(&erp), &good, "po_000001.csv").await.unwrap();
        assert_eq!(report.sql_rows, 3);
        let src = open_source(&erp).await.unwrap();
        let got = extract_csv(
            src.as_ref(),
            "SELECT order_number, line, item, qty, due_date, urgent FROM recommended_orders ORDER BY line",
            &[Kind::Code, Kind::Int, Kind::Text, Kind::Dec, Kind::Date, Kind::Flag],
        )
        .await;
        assert_eq!(
            got,
            "\"PO1\",1,\"Robert'); DROP TABLE recommended_orders;--\",123456789012.3456,2026/12/01,1\n\
             \"PO1\",2,\"Café\",0.5,2026/12/02,0\n\"PO1\",3,\"X\",,,\n",
            "{backend}"
        );
        // a failing row rolls the whole file back and names its line
        let bad = po_file(
            dir.path(),
            "order_number,line,item,qty,due_date,urgent\nPO2,1,A,1,2026/12/01,1\nPO2,2,B,notanumber,2026/12/01,1\n",
        );
        let e = deliver(&cfg, Some(&erp), &bad, "po_000002.csv").await.unwrap_err().to_string();
        assert!(e.contains("po_000002.csv:3") && e.contains("nothing from this file"), "{backend}: {e}");
        let n: Vec<_> = src.rows("SELECT COUNT(*) FROM recommended_orders WHERE order_number = 'PO2'").collect().await;
        assert_eq!(n[0].as_ref().unwrap()[0], SqlValue::Int(0), "{backend}: rolled back");
        // a wrong password: the error names the target, never the password
        unsafe { std::env::set_var(&env, "wrong-Pa55word-xyz") };
        let e = deliver(&cfg, Some(&erp), &good, "po_000003.csv").await.unwrap_err().to_string();
        assert!(!e.contains("wrong-Pa55word-xyz") && !e.contains(&password), "{e}");
        let e = open_source(&erp).await.err().unwrap().to_string();
        assert!(!e.contains("wrong-Pa55word-xyz") && !e.contains(&password) && e.contains("cannot open"), "{e}");
        let broken = db.replace("127.0.0.1", "127.0.0.1:1");
        let e = open_source(&ErpConfig::new(kind, &broken)).await.err();
        assert!(e.is_some_and(|e| !e.to_string().contains(&password)));
    }
}

/// `scheme://user:pw@host/db` -> (`scheme://user@host/db`, `pw`).
fn split_password(url: &str) -> (String, String) {
    let mut u = url::Url::parse(url).unwrap();
    let pw = u.password().unwrap_or("").to_string();
    u.set_password(None).unwrap();
    (u.to_string(), pw)
}

/// An ERP database on another machine is reached over TLS with the server's certificate verified: `sslmode=
/// verify-full&sslrootcert=<ca>` (PostgreSQL) and `ssl-mode=verify_identity&ssl-ca=<ca>` (MariaDB) in `[erp] url`.
/// The session really is encrypted, and a server whose certificate the Connector cannot verify is refused with a
/// message that says so (never with the password).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_to_postgres_and_mariadb_is_used_and_the_server_verified() {
    let Some(ca) = server("FERRY_TEST_DB_CA", "tls_to_postgres_and_mariadb_is_used_and_the_server_verified") else {
        return;
    };
    let cases = [
        (
            "FERRY_TEST_POSTGRES_URL",
            "postgres",
            format!("sslmode=verify-full&sslrootcert={ca}"),
            "sslmode=verify-full",
            "SELECT version FROM pg_stat_ssl WHERE pid = pg_backend_pid() AND ssl",
        ),
        (
            "FERRY_TEST_MYSQL_URL",
            "mysql",
            format!("ssl-mode=verify_identity&ssl-ca={ca}"),
            "ssl-mode=verify_ca",
            "SELECT VARIABLE_VALUE FROM information_schema.SESSION_STATUS WHERE VARIABLE_NAME = 'Ssl_version'",
        ),
    ];
    for (var, backend, verify, untrusted, version_sql) in cases {
        let kind = ErpKind::parse(backend).unwrap();
        let Some(url) = server(var, "tls_to_postgres_and_mariadb_is_used_and_the_server_verified") else { continue };
        let (_, password) = split_password(&url);
        let tls = format!("{url}?{verify}");
        let src = open_source(&ErpConfig::new(kind, &tls)).await.unwrap_or_else(|e| panic!("{backend}: {e}"));
        let rows: Vec<_> = src.rows(version_sql).collect().await;
        let version = rows.first().and_then(|r| r.as_ref().ok()).and_then(|r| r.first().cloned());
        assert!(
            matches!(&version, Some(SqlValue::Text(v)) if v.starts_with("TLSv1.")),
            "{backend}: the session is not encrypted: {version:?}"
        );
        // the system's roots do not include the test CA: the server is not trusted, and the message says why
        let plain = format!("{url}?{untrusted}");
        let e = open_source(&ErpConfig::new(kind, &plain)).await.err().expect("an untrusted server");
        let e = e.to_string();
        assert!(e.contains("UnknownIssuer") && e.contains("TLS certificate is not trusted"), "{backend}: {e}");
        let ca_param = if backend == "postgres" { "sslrootcert=" } else { "ssl-ca=" };
        assert!(e.contains(ca_param), "{backend}: the message says how to fix it: {e}");
        assert!(!e.contains(&password), "{backend}: {e}");
    }
}
