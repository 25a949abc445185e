//! The conformance suites of the ERP boundaries (object_store's pattern): every backend of
//! [`Source`](ferry_connector::erp::source::Source) runs [`source_conformance`], every backend of
//! [`WriteBack`](ferry_connector::erp::writeback::WriteBack) runs [`writeback_conformance`] — the checks are
//! written once, here, and a backend that passes them behaves like every other one.
//!
//! Who runs them: `erp_sources.rs` (SQLite always; PostgreSQL and MySQL/MariaDB with `FERRY_TEST_POSTGRES_URL` /
//! `FERRY_TEST_MYSQL_URL`), `odbc_csv.rs` (ODBC with `FERRY_TEST_ODBC_SQLITE` / `FERRY_TEST_ODBC_PG`) and
//! `delivery.rs` (the SQLite write-back). The CSV-folder source speaks its own small query language, so it is held
//! to the others by `odbc_csv.rs`'s byte-identical extract of the sample ERP instead.
//!
//! Why a support module of the integration tests and not a `conformance` feature of the crate: the suites need
//! only the crate's public API, and the library is then built once for the binary and the tests alike.

use ferry_connector::erp::ErpConfig;
use ferry_connector::erp::source::{Source, SourceError, SqlValue};
use ferry_connector::erp::writeback::{Ledger, Records, Statement, WriteBackError, WriteJob, open_writeback};
use ferry_connector::extract::format_value;
use ferry_proto::spec::{Column, Kind};
use futures::StreamExt;

/// The ERP-like table every source backend is checked against, in `backend`'s natural types (`sqlite`,
/// `postgres` or `mysql`): money NUMERIC/DECIMAL (exact), dates DATE, flags BOOLEAN, timestamps, text; and rows
/// of values that every backend stores its own way. Statements end with `;\n`.
pub fn items_schema(backend: &str) -> String {
    let (money, boolean, ts, text) = match backend {
        "postgres" => ("NUMERIC(18,4)", "BOOLEAN", "TIMESTAMP", "TEXT"),
        "mysql" => ("DECIMAL(18,4)", "BOOLEAN", "DATETIME", "TEXT"),
        // SQLite has no exact decimal type: an ERP on SQLite keeps money as text
        _ => ("TEXT", "BOOLEAN", "TEXT", "TEXT"),
    };
    let (t, f) = if backend == "sqlite" { ("1", "0") } else { ("TRUE", "FALSE") };
    let mut s = format!(
        "CREATE TABLE items (code VARCHAR(20) PRIMARY KEY, descr {text}, price {money}, cost {money}, weight DOUBLE PRECISION, \
         active {boolean}, created DATE, changed {ts}, qty INTEGER);\n"
    );
    let rows = [
        ("A-001", "Widget, large", "12.5000", "7.25", "1.5", t, "2026-01-31", "2026-11-28 13:45:00", "12"),
        (
            "A-002",
            "Say \"hi\" — Café",
            "0.0000",
            "123456789012.3456",
            "0.1",
            f,
            "2025-12-01",
            "2026-11-27 00:00:01",
            "-3",
        ),
        ("B-100", "  padded  ", "-5.5000", "0.0001", "1e-7", t, "2024-02-29", "2000-01-01 23:59:59", "0"),
        ("C-7", "line\nbreak", "1000000", "99.9900", "12345.678", f, "1999-12-31", "2026-06-15 12:00:00", "2147483647"),
    ];
    for (code, descr, price, cost, weight, active, created, changed, qty) in rows {
        let descr = descr.replace('\'', "''");
        let (price, cost) =
            if backend == "sqlite" { (format!("'{price}'"), format!("'{cost}'")) } else { (price.into(), cost.into()) };
        s.push_str(&format!(
            "INSERT INTO items VALUES ('{code}', '{descr}', {price}, {cost}, {weight}, {active}, '{created}', '{changed}', {qty});\n"
        ));
    }
    s.push_str("INSERT INTO items (code) VALUES ('N-NULL');\n");
    s
}

pub const ITEMS_SQL: &str =
    "SELECT code, descr, price, cost, weight, active, created, changed, qty FROM items ORDER BY code";
const ITEMS_KINDS: &[Kind] =
    &[Kind::Code, Kind::Text, Kind::Dec, Kind::Dec, Kind::Dec, Kind::Flag, Kind::Date, Kind::Date, Kind::Int];
/// What [`ITEMS_SQL`] extracts to on every backend.
const ITEMS_CSV: &str = "\"A-001\",\"Widget, large\",12.5,7.25,1.5,1,2026/01/31,2026/11/28,12\n\
     \"A-002\",\"Say \"\"hi\"\" — Café\",0,123456789012.3456,0.1,0,2025/12/01,2026/11/27,-3\n\
     \"B-100\",\"  padded\",-5.5,0.0001,0.0000001,1,2024/02/29,2000/01/01,0\n\
     \"C-7\",\"line break\",1000000,99.99,12345.678,0,1999/12/31,2026/06/15,2147483647\n\
     \"N-NULL\",,,,,,,,\n";

/// Extract `sql` from `src` and format it as CSV with `kinds`, as the extract writes standard files. The rows
/// are read the way the extract reads them ([`Source::row_chunks`], chunks recycled; PostgreSQL through COPY) and
/// must equal what [`Source::rows`] gives, value for value.
pub async fn extract_csv(src: &dyn Source, sql: &str, kinds: &[Kind]) -> String {
    let one_by_one: Vec<Vec<SqlValue>> =
        src.rows(sql).map(|r| r.unwrap_or_else(|e| panic!("{} {sql}: {e}", src.kind()))).collect().await;
    let recycle = ferry_connector::erp::source::Recycle::default();
    let mut chunked = Vec::new();
    let mut chunks = src.row_chunks(sql, 2, recycle.clone());
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk.unwrap_or_else(|e| panic!("{} {sql} in chunks: {e}", src.kind()));
        chunked.extend(chunk.iter().cloned());
        recycle.give(chunk);
    }
    assert_eq!(chunked, one_by_one, "{}: the extract's chunks differ from the rows of {sql}", src.kind());
    let mut out = String::new();
    for row in one_by_one {
        for (i, (v, k)) in row.iter().zip(kinds).enumerate() {
            if i > 0 {
                out.push(',');
            }
            let col = Column { name: "c", kind: *k, required: false };
            format_value(&col, v, &mut out).unwrap_or_else(|e| panic!("{} column {i} {v:?}: {e}", src.kind()));
        }
        out.push('\n');
    }
    out
}

/// What a source backend is, for [`source_conformance`].
pub struct SourceBackend {
    /// What [`Source::kind`] says.
    pub kind: &'static str,
    /// Whether the source refuses to write (every kind but ODBC, which is read-only by convention).
    pub read_only: bool,
}

/// The checks every [`Source`] passes; `src` holds the table of [`items_schema`].
pub async fn source_conformance(src: &dyn Source, backend: SourceBackend) {
    let kind = backend.kind;
    assert_eq!(src.kind(), kind);
    // the columns of a query, without running it
    assert_eq!(
        src.columns(ITEMS_SQL).await.unwrap_or_else(|e| panic!("{kind}: {e}")),
        ["code", "descr", "price", "cost", "weight", "active", "created", "changed", "qty"],
        "{kind}"
    );
    // the same data gives byte-identical standard CSV on every backend
    assert_eq!(extract_csv(src, ITEMS_SQL, ITEMS_KINDS).await, ITEMS_CSV, "{kind} differs from the reference");
    // a query the database refuses is a query error naming what is wrong, from `columns` and from `rows`
    let e = src.columns("SELECT nope FROM items").await.unwrap_err();
    assert!(matches!(&e, SourceError::Query(m) if m.contains("nope")), "{kind}: {e:?}");
    assert!(e.to_string().starts_with("the query failed"), "{kind}: {e}");
    let first = src.rows("SELECT * FROM missing_table").next().await;
    assert!(
        matches!(&first, Some(Err(SourceError::Query(m))) if m.contains("missing_table")),
        "{kind}: the error is the stream's first item: {first:?}"
    );
    // an empty result is an empty stream
    let none: Vec<_> = src.rows("SELECT code FROM items WHERE code = 'nothing'").collect().await;
    assert!(none.is_empty(), "{kind}: {none:?}");
    if backend.read_only {
        let r: Vec<_> = src.rows("INSERT INTO items (code) VALUES ('W-1')").collect().await;
        assert!(r.first().is_some_and(Result::is_err), "{kind}: the source must be read-only: {r:?}");
        let n: Vec<_> = src.rows("SELECT COUNT(*) FROM items WHERE code = 'W-1'").collect().await;
        assert!(matches!(n[0].as_ref().unwrap()[0], SqlValue::Int(0) | SqlValue::Decimal(_)), "{kind}: {n:?}");
    }
}

/// The table [`writeback_conformance`] writes into, in SQL every backend (and ODBC driver) understands.
pub const ORDERS_TABLE: &str = "CREATE TABLE recommended_orders (order_number VARCHAR(20) NOT NULL, \
     line INTEGER NOT NULL, item VARCHAR(80) NOT NULL, qty NUMERIC(12,3), due_date DATE, \
     PRIMARY KEY (order_number, line))";

fn records(csv_text: &str) -> Records {
    let input: Box<dyn std::io::Read + Send> = Box::new(std::io::Cursor::new(csv_text.as_bytes().to_vec()));
    let mut r = csv::ReaderBuilder::new().has_headers(true).flexible(false).from_reader(input);
    r.headers().unwrap();
    r
}

fn insert() -> Vec<Statement> {
    vec![Statement {
        sql: "INSERT INTO recommended_orders(order_number, line, item, qty, due_date) VALUES (?, ?, ?, ?, ?)".into(),
        columns: vec![0, 1, 2, 3, 4],
    }]
}

const HEADER: &str = "order_number,line,item,qty,due_date\n";

async fn count(reader: &dyn Source) -> i64 {
    let rows: Vec<_> = reader.rows("SELECT COUNT(*) FROM recommended_orders").collect().await;
    match &rows[0].as_ref().unwrap_or_else(|e| panic!("{e}"))[0] {
        SqlValue::Int(n) => *n,
        SqlValue::Decimal(n) => n.parse().unwrap(),
        v => panic!("{v:?}"),
    }
}

/// Writes `job` through a fresh write-back of `erp`, as the delivery does.
async fn apply(erp: &ErpConfig, job: WriteJob) -> Result<Option<u64>, WriteBackError> {
    let mut wb = open_writeback(erp).await.unwrap_or_else(|e| panic!("{}: {e}", erp.kind));
    let r = wb.apply(job).await;
    wb.close().await;
    r
}

/// The checks every [`WriteBack`](ferry_connector::erp::writeback::WriteBack) passes. `erp` holds an empty
/// [`ORDERS_TABLE`]; `reader` reads the same database (to see what was committed).
pub async fn writeback_conformance(erp: &ErpConfig, reader: &dyn Source) {
    let kind = erp.kind;
    let job = |file: &str, body: &str, ledger: Option<Ledger>| WriteJob {
        file: file.into(),
        statements: insert(),
        records: records(&format!("{HEADER}{body}")),
        ledger,
    };
    // every record in one transaction, values bound (never SQL), an empty field bound as NULL
    let good = "PO1,1,\"Robert'); DROP TABLE recommended_orders;--\",120,2026-03-16\n\
                PO1,2,\"Bolt, 10 \"\"mm\"\" é\",12.5,2026-03-16\n\
                PO1,3,X,,\n";
    assert_eq!(apply(erp, job("po_000001.csv", good, None)).await, Ok(Some(3)), "{kind}");
    let items: Vec<_> = reader.rows("SELECT item, qty FROM recommended_orders ORDER BY line").collect().await;
    let items: Vec<Vec<SqlValue>> = items.into_iter().map(Result::unwrap).collect();
    assert_eq!(items[0][0], SqlValue::Text("Robert'); DROP TABLE recommended_orders;--".into()), "{kind}");
    assert_eq!(items[1][0], SqlValue::Text("Bolt, 10 \"mm\" é".into()), "{kind}");
    assert_eq!(items[2][1], SqlValue::Null, "{kind}: an empty field is NULL");

    // the third record breaks the primary key: the whole file is rolled back, the error says where
    let bad = "PO2,1,A,1,\nPO2,2,B,2,\nPO1,1,C,3,\n";
    match apply(erp, job("po_000002.csv", bad, None)).await {
        Err(WriteBackError::Record { file, line: 4, reason }) => {
            assert_eq!(file, "po_000002.csv", "{kind}");
            assert!(reason.starts_with("row 3: delivery.sql[0] failed"), "{kind}: {reason}");
        }
        other => panic!("{kind}: {other:?}"),
    }
    assert_eq!(count(reader).await, 3, "{kind}: rolled back");

    // a CSV record of the wrong length is an error with its line, and rolls back too
    let short = "PO3,1,A,1,\nPO3,2,B\n";
    let e = apply(erp, job("po_000003.csv", short, None)).await;
    assert_eq!(
        e,
        Err(WriteBackError::Record {
            file: "po_000003.csv".into(),
            line: 3,
            reason: "the row has 3 fields, the header has 5".into()
        }),
        "{kind}"
    );
    assert_eq!(count(reader).await, 3, "{kind}: rolled back");

    // the ledger (created by the write-back where the database understands IF NOT EXISTS): applied once, a replay
    // is a no-op, a rolled-back file leaves no record. Ids are unique per run: a server's database outlives a test.
    let run = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    let ledger = |id: &str, name: &str| {
        Some(Ledger { table: "ferry_applied".into(), file_id: format!("{id}-{run}"), name: name.into() })
    };
    for replay in [false, true] {
        let r = apply(erp, job("po_000004.csv", "PO4,1,L,1,\n", ledger("F4", "po_000004.csv"))).await;
        assert_eq!(r, Ok(if replay { None } else { Some(1) }), "{kind}: replay {replay}");
    }
    assert_eq!(count(reader).await, 4, "{kind}: applied once");
    assert!(apply(erp, job("po_000002.csv", bad, ledger("F2", "po_000002.csv"))).await.is_err(), "{kind}");
    let ids: Vec<_> = reader.rows("SELECT file_id FROM ferry_applied ORDER BY file_id").collect().await;
    let ids: Vec<String> = ids
        .into_iter()
        .map(|r| match &r.unwrap()[0] {
            SqlValue::Text(t) => t.clone(),
            v => panic!("{kind}: {v:?}"),
        })
        .filter(|id| id.ends_with(&format!("-{run}")))
        .collect();
    assert_eq!(ids, [format!("F4-{run}")], "{kind}: only the applied file is in the ledger");
    let r = apply(erp, job("po_000004.csv", "PO4,1,L,1,\n", ledger("F4", "po_000004.csv"))).await;
    assert_eq!(r, Ok(None), "{kind}: the failed file did not disturb the ledger");

    // a statement the database refuses is reported against the file's first line, before any record
    let wrong = WriteJob {
        statements: vec![Statement {
            sql: "INSERT INTO recommended_orders(item) VALUES (?, ?)".into(),
            columns: vec![2],
        }],
        ..job("po_000005.csv", "PO5,1,A,1,\n", None)
    };
    match apply(erp, wrong).await {
        Err(WriteBackError::Record { line: 1, reason, .. }) => {
            assert!(reason.starts_with("delivery.sql[0]"), "{kind}: {reason}")
        }
        other => panic!("{kind}: {other:?}"),
    }
    assert_eq!(count(reader).await, 4, "{kind}");
}
