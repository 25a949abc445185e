//! Downstream delivery on the ERP side: a recommended-orders file compressed like the Comms server does it is
//! decompressed and verified (and refused when damaged), then delivered into an inbound folder, written back
//! into an SQLite ERP table in one transaction, and handed to a command; the journal keeps each file's state.

use std::io::Write;
use std::path::{Path, PathBuf};

use ferry_connector::delivery::{
    Delivery, DeliveryConfig, DeliveryError, DeliveryReport, SqlWriteBack, decompress_verified, deliver, deliver_file,
};
use ferry_connector::erp::{ErpConfig, ErpKind};
use ferry_connector::journal::{Journal, ReceivedState};
use ferry_io::bz::ParallelBzWriter;
use ferry_io::digest::Digests;
use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection};
use sqlx::{Connection, Row};

const HEADER: &str = "order_number,line,item,location,supplier,qty,unit_cost,order_date,due_date,comment\n";

/// Header + 3 lines; the second has a quoted comment with a comma.
fn po_file() -> String {
    format!(
        "{HEADER}\
         PO000001,1,ITEM-001,WH1,SUP-A,120,3.25,2026-03-02,2026-03-16,\n\
         PO000001,2,ITEM-002,WH1,SUP-A,48,12.5,2026-03-02,2026-03-16,\"urgent, split if needed\"\n\
         PO000002,1,ITEM-003,WH2,SUP-B,7,99,2026-03-02,2026-03-30,regular\n"
    )
}

fn bzip2(data: &[u8]) -> Vec<u8> {
    let mut w = ParallelBzWriter::new(Vec::new(), 9, 2);
    w.write_all(data).unwrap();
    w.finish().unwrap()
}

fn files_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    names
}

/// An ERP database with the table the write-back fills (item NOT NULL) and one for comments.
async fn erp_db(dir: &Path) -> (String, SqliteConnection) {
    let path = dir.join("erp.db");
    let opts = SqliteConnectOptions::new().filename(&path).create_if_missing(true);
    let mut conn = SqliteConnection::connect_with(&opts).await.unwrap();
    sqlx::query(
        "CREATE TABLE recommended_orders(order_number TEXT NOT NULL, line INTEGER NOT NULL, item TEXT NOT NULL,
         location TEXT, supplier TEXT, qty REAL, due_date TEXT, PRIMARY KEY(order_number, line))",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    sqlx::query("CREATE TABLE order_comments(order_number TEXT, line INTEGER, comment TEXT NOT NULL)")
        .execute(&mut conn)
        .await
        .unwrap();
    (path.display().to_string(), conn)
}

fn write_back_config() -> Vec<SqlWriteBack> {
    vec![
        SqlWriteBack {
            statement: "INSERT INTO recommended_orders(order_number, line, item, location, supplier, qty, due_date)
                        VALUES (?, ?, ?, ?, ?, ?, ?)"
                .into(),
            params: ["order_number", "line", "item", "location", "supplier", "qty", "due_date"]
                .map(String::from)
                .to_vec(),
        },
        SqlWriteBack {
            statement: "INSERT INTO order_comments(order_number, line, comment) SELECT ?, ?, ? WHERE ? IS NOT NULL"
                .into(),
            params: ["order_number", "line", "comment", "comment"].map(String::from).to_vec(),
        },
    ]
}

async fn count(conn: &mut SqliteConnection, table: &str) -> i64 {
    sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT COUNT(*) FROM {table}"))).fetch_one(conn).await.unwrap()
}

/// A verified plain file in `dir`, as the download path produces it.
fn plain_file(dir: &Path, name: &str, content: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, content).unwrap();
    path
}

#[test]
fn decompress_verified_writes_the_promised_file() {
    let dir = tempfile::tempdir().unwrap();
    let plain = po_file();
    let bz2 = dir.path().join("f1.bz2");
    std::fs::write(&bz2, bzip2(plain.as_bytes())).unwrap();
    let want = Digests::of(plain.as_bytes());
    let out = dir.path().join("plain").join("po_000001.csv");

    let got = decompress_verified(&bz2, &out, want.bytes, &want.sha256.to_uppercase()).unwrap();
    assert_eq!(got, want);
    assert_eq!(std::fs::read_to_string(&out).unwrap(), plain);
    assert_eq!(files_in(out.parent().unwrap()), ["po_000001.csv"]);
}

#[test]
fn damaged_downloads_are_refused_and_leave_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let plain = po_file();
    let good = bzip2(plain.as_bytes());
    let want = Digests::of(plain.as_bytes());
    let mut flipped = good.clone();
    let mid = flipped.len() / 2;
    flipped[mid] ^= 0x55;
    let other = Digests::of(b"something else");
    let big = bzip2(&vec![b'x'; 4 << 20]);

    let cases: [(&str, &[u8], u64, &str, &str); 5] = [
        ("wrong sha-256", &good, want.bytes, &other.sha256, "its SHA-256 is"),
        ("wrong size", &good, want.bytes + 1, &want.sha256, "decompresses to"),
        ("corrupt", &flipped, want.bytes, &want.sha256, "cannot be decompressed"),
        ("truncated", &good[..good.len() - 10], want.bytes, &want.sha256, "cannot be decompressed"),
        ("bomb", &big, 1_000, &want.sha256, "more than"),
    ];
    for (what, data, bytes, sha, reason) in cases {
        let bz2 = dir.path().join("f.bz2");
        std::fs::write(&bz2, data).unwrap();
        let out = dir.path().join("out").join("po_000001.csv");
        let err = decompress_verified(&bz2, &out, bytes, sha).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, DeliveryError::Checksum { .. }), "{what}: {err:?}");
        assert!(err.refetch(), "{what}");
        assert!(msg.contains(reason), "{what}: {msg}");
        assert!(msg.contains("will be fetched again"), "{what}: {msg}");
        assert!(!out.exists(), "{what}: output left behind");
        assert!(files_in(out.parent().unwrap()).is_empty(), "{what}: temp file left behind");
    }
}

#[tokio::test]
async fn delivers_into_the_inbound_folder_and_the_erp_tables() {
    let dir = tempfile::tempdir().unwrap();
    let (url, mut erp) = erp_db(dir.path()).await;
    let inbound = dir.path().join("from_cloud");
    let file = plain_file(dir.path(), "po_000001.csv", &po_file());
    let cfg = DeliveryConfig {
        inbound_dir: Some(inbound.clone()),
        sql: write_back_config(),
        only: vec!["po_".into()],
        ..DeliveryConfig::default()
    };

    let report = deliver(&cfg, Some(&ErpConfig::new(ErpKind::Sqlite, &url)), &file, "po_000001.csv").await.unwrap();
    assert_eq!(
        report,
        DeliveryReport {
            sql_rows: 3,
            already_in_ledger: false,
            inbound_path: Some(inbound.join("po_000001.csv")),
            command_status: None
        }
    );
    assert_eq!(files_in(&inbound), ["po_000001.csv"]);
    assert_eq!(std::fs::read_to_string(inbound.join("po_000001.csv")).unwrap(), po_file());

    let rows = sqlx::query("SELECT order_number, line, item, location, supplier, qty, due_date FROM recommended_orders ORDER BY order_number, line")
        .fetch_all(&mut erp)
        .await
        .unwrap();
    let rows: Vec<(String, i64, String, String, String, f64, String)> =
        rows.iter().map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4), r.get(5), r.get(6))).collect();
    let s = String::from;
    assert_eq!(
        rows,
        [
            (s("PO000001"), 1, s("ITEM-001"), s("WH1"), s("SUP-A"), 120.0, s("2026-03-16")),
            (s("PO000001"), 2, s("ITEM-002"), s("WH1"), s("SUP-A"), 48.0, s("2026-03-16")),
            (s("PO000002"), 1, s("ITEM-003"), s("WH2"), s("SUP-B"), 7.0, s("2026-03-30")),
        ]
    );
    // The empty comment was bound as NULL (skipped); the quoted one arrived whole.
    let comments: Vec<(String, String)> =
        sqlx::query_as("SELECT order_number, comment FROM order_comments ORDER BY rowid")
            .fetch_all(&mut erp)
            .await
            .unwrap();
    assert_eq!(comments, [(s("PO000001"), s("urgent, split if needed")), (s("PO000002"), s("regular"))]);

    // A report outside `only`: inbound folder yes, SQL no (no database needed).
    let report_file = plain_file(dir.path(), "rp_000002.csv", "a,b\n1,2\n");
    let r = deliver(&cfg, None, &report_file, "rp_000002.csv").await.unwrap();
    assert_eq!(r.sql_rows, 0);
    assert_eq!(files_in(&inbound), ["po_000001.csv", "rp_000002.csv"]);

    // Delivering a file of the same name again replaces it atomically.
    let newer = plain_file(dir.path(), "newer.csv", "a,b\n3,4\n");
    deliver(&cfg, None, &newer, "rp_000002.csv").await.unwrap();
    assert_eq!(std::fs::read_to_string(inbound.join("rp_000002.csv")).unwrap(), "a,b\n3,4\n");
    assert_eq!(files_in(&inbound), ["po_000001.csv", "rp_000002.csv"]);
}

#[tokio::test]
async fn a_failing_row_writes_nothing_and_names_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let (url, mut erp) = erp_db(dir.path()).await;
    let inbound = dir.path().join("from_cloud");
    // Row 3 (line 4 of the file) has no item: NOT NULL fails.
    let content = format!(
        "{HEADER}PO000003,1,ITEM-001,WH1,SUP-A,5,1,2026-03-02,2026-03-16,\n\
         PO000003,2,ITEM-002,WH1,SUP-A,6,1,2026-03-02,2026-03-16,\"a, b\"\n\
         PO000003,3,,WH1,SUP-A,7,1,2026-03-02,2026-03-16,\n"
    );
    let file = plain_file(dir.path(), "po_000003.csv", &content);
    let cfg =
        DeliveryConfig { inbound_dir: Some(inbound.clone()), sql: write_back_config(), ..DeliveryConfig::default() };

    let err = deliver(&cfg, Some(&ErpConfig::new(ErpKind::Sqlite, &url)), &file, "po_000003.csv").await.unwrap_err();
    let msg = err.to_string();
    assert!(matches!(&err, DeliveryError::WriteBack { line: 4, .. }), "{err:?}");
    assert!(msg.starts_with("po_000003.csv:4: row 3: delivery.sql[0] failed"), "{msg}");
    assert!(msg.contains("NOT NULL"), "{msg}");
    assert!(msg.contains("nothing from this file was written"), "{msg}");
    assert!(!err.refetch());
    assert_eq!(count(&mut erp, "recommended_orders").await, 0);
    assert_eq!(count(&mut erp, "order_comments").await, 0);
    // The inbound copy was staged but never published, and cleaned up.
    assert!(files_in(&inbound).is_empty(), "{:?}", files_in(&inbound));

    // A row with too few fields: a CSV error, with its line.
    let short = plain_file(dir.path(), "po_000004.csv", &format!("{HEADER}PO4,1,I,W,S,1,1,d,d,\nPO4,2,I\n"));
    let err = deliver(&cfg, Some(&ErpConfig::new(ErpKind::Sqlite, &url)), &short, "po_000004.csv").await.unwrap_err();
    assert!(err.to_string().starts_with("po_000004.csv:3: the row has 3 fields, the header has 10"), "{err}");
    assert_eq!(count(&mut erp, "recommended_orders").await, 0);
}

#[tokio::test]
async fn a_missing_header_is_named_with_the_headers_present() {
    let dir = tempfile::tempdir().unwrap();
    let (url, mut erp) = erp_db(dir.path()).await;
    let file = plain_file(dir.path(), "po_000005.csv", "order_number,line,item\nPO5,1,I\n");
    let cfg = DeliveryConfig { sql: write_back_config(), ..DeliveryConfig::default() };
    let err = deliver(&cfg, Some(&ErpConfig::new(ErpKind::Sqlite, &url)), &file, "po_000005.csv").await.unwrap_err();
    let msg = err.to_string();
    assert!(matches!(&err, DeliveryError::MissingHeader { header, .. } if header == "location"), "{err:?}");
    assert!(msg.contains("\"location\""), "{msg}");
    assert!(msg.contains("has only order_number, line, item"), "{msg}");
    assert_eq!(count(&mut erp, "recommended_orders").await, 0);

    // Placeholders and params that disagree are caught before any row.
    let cfg = DeliveryConfig {
        sql: vec![SqlWriteBack {
            statement: "INSERT INTO recommended_orders(order_number, line, item) VALUES (?, ?, ?)".into(),
            params: vec!["order_number".into(), "line".into()],
        }],
        ..DeliveryConfig::default()
    };
    let err = deliver(&cfg, Some(&ErpConfig::new(ErpKind::Sqlite, &url)), &file, "po_000005.csv").await.unwrap_err();
    assert!(err.to_string().contains("has 3 ? placeholders but lists 2 params"), "{err}");
}

#[cfg(unix)]
#[tokio::test]
async fn the_command_runs_and_its_failure_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let inbound = dir.path().join("from_cloud");
    let copied = dir.path().join("copied.csv");
    let file = plain_file(dir.path(), "po_000006.csv", &po_file());
    let mut cfg = DeliveryConfig {
        inbound_dir: Some(inbound.clone()),
        command: Some(vec![
            "/bin/sh".into(),
            "-c".into(),
            "cp \"$1\" \"$2\"".into(),
            "sh".into(),
            "{file}".into(),
            copied.display().to_string(),
        ]),
        ..DeliveryConfig::default()
    };
    let report = deliver(&cfg, None, &file, "po_000006.csv").await.unwrap();
    assert_eq!(report.command_status, Some(0));
    assert_eq!(report.inbound_path, Some(inbound.join("po_000006.csv")));
    assert_eq!(std::fs::read_to_string(&copied).unwrap(), po_file());

    cfg.command = Some(
        ["/bin/sh", "-c", "echo checking {file}; echo 'item ITEM-9 unknown' >&2; exit 7"].map(String::from).to_vec(),
    );
    let err = deliver(&cfg, None, &file, "po_000006.csv").await.unwrap_err();
    assert!(matches!(&err, DeliveryError::Command { code: Some(7), .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains("exit status: 7"), "{msg}");
    assert!(msg.contains("item ITEM-9 unknown"), "{msg}");

    cfg.command = Some(["/bin/sleep", "10"].map(String::from).to_vec());
    cfg.command_timeout_secs = 1;
    let started = std::time::Instant::now();
    let err = deliver(&cfg, None, &file, "po_000006.csv").await.unwrap_err();
    assert!(matches!(&err, DeliveryError::CommandTimeout { secs: 1, .. }), "{err:?}");
    assert!(started.elapsed() < std::time::Duration::from_secs(5));

    cfg.command = Some(vec!["/nonexistent/import-tool".into(), "{file}".into()]);
    let err = deliver(&cfg, None, &file, "po_000006.csv").await.unwrap_err();
    assert!(err.to_string().contains("cannot start the delivery command /nonexistent/import-tool"), "{err}");
}

#[tokio::test]
async fn bad_names_and_configurations_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let file = plain_file(dir.path(), "x.csv", "a\n1\n");
    let inbound = DeliveryConfig { inbound_dir: Some(dir.path().join("in")), ..DeliveryConfig::default() };
    for name in ["../etc/passwd", ".hidden.csv", "PO_1.csv", "a/b.csv", ""] {
        let err = deliver(&inbound, None, &file, name).await.unwrap_err();
        assert!(matches!(err, DeliveryError::InvalidName(_)), "{name}: {err:?}");
    }
    let err = deliver(&DeliveryConfig::default(), None, &file, "x.csv").await.unwrap_err();
    assert!(err.to_string().contains("nothing is set up to receive downstream files"), "{err}");
    let cfg = DeliveryConfig { sql: write_back_config(), ..DeliveryConfig::default() };
    let err = deliver(&cfg, None, &file, "x.csv").await.unwrap_err();
    assert!(err.to_string().contains("no ERP database"), "{err}");
    let cfg = DeliveryConfig { command: Some(vec![]), ..DeliveryConfig::default() };
    assert!(cfg.validate().is_err());
}

#[test]
fn the_toml_section_parses_with_defaults() {
    #[derive(serde::Deserialize)]
    struct File {
        delivery: DeliveryConfig,
    }
    let f: File = toml::from_str(
        r#"
        [delivery]
        inbound_dir = "from_cloud"
        only = ["po_"]
        command = ["/opt/erp/import", "{file}"]

        [[delivery.sql]]
        statement = "INSERT INTO t(a) VALUES (?)"
        params = ["order_number"]
        "#,
    )
    .unwrap();
    let d = f.delivery;
    assert_eq!(d.inbound_dir, Some(PathBuf::from("from_cloud")));
    assert_eq!(d.command_timeout_secs, 300);
    assert_eq!(d.sql.len(), 1);
    assert!(d.validate().is_ok());
    assert!(d.sql_applies_to("po_000001.csv") && !d.sql_applies_to("rp_000001.csv"));

    let empty: File = toml::from_str("[delivery]\n").unwrap();
    assert!(!empty.delivery.is_configured());
    assert_eq!(empty.delivery.command_timeout_secs, 300);
    assert!(toml::from_str::<File>("[delivery]\ninbound = \"x\"\n").is_err());
}

#[tokio::test]
async fn the_journal_remembers_received_files() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("journal.db");
    let j = Journal::open(&path).await.unwrap();
    assert!(j.received("F1").await.unwrap().is_none());

    j.mark_failed("F1", "po_000001.csv", "aa", "the ERP was locked").await.unwrap();
    j.mark_failed("F1", "po_000001.csv", "aa", "the ERP was locked again").await.unwrap();
    let f = j.received("F1").await.unwrap().unwrap();
    assert_eq!(f.state, ReceivedState::Failed);
    assert_eq!(f.attempts, 2);
    assert_eq!(f.error.as_deref(), Some("the ERP was locked again"));
    assert!(!f.is_applied());
    assert!(j.pending_acks().await.unwrap().is_empty());
    // Acknowledging a file that was never applied would lose it.
    assert!(j.mark_acked("F1").await.is_err());
    assert!(j.mark_acked("F404").await.is_err());

    j.mark_applied("F1", "po_000001.csv", "aa").await.unwrap();
    j.mark_applied("F2", "rp_000002.csv", "bb").await.unwrap();
    let f = j.received("F1").await.unwrap().unwrap();
    assert_eq!((f.state, f.attempts, f.error.as_deref()), (ReceivedState::Applied, 3, None));
    assert!(f.is_applied() && f.state == "applied");
    assert!(f.applied_at.is_some() && f.acked_at.is_none());
    let pending: Vec<String> = j.pending_acks().await.unwrap().into_iter().map(|f| f.file_id).collect();
    assert_eq!(pending, ["F1", "F2"]);

    // Once applied, neither a failure nor a second apply changes it.
    j.mark_failed("F1", "po_000001.csv", "aa", "ack failed").await.unwrap();
    j.mark_applied("F1", "po_000001.csv", "aa").await.unwrap();
    assert_eq!(j.received("F1").await.unwrap().unwrap(), f);

    j.mark_acked("F1").await.unwrap();
    let acked = j.received("F1").await.unwrap().unwrap();
    assert_eq!(acked.state, ReceivedState::Acked);
    assert!(acked.acked_at.is_some() && acked.is_applied());
    j.mark_acked("F1").await.unwrap(); // again: fine, unchanged
    assert_eq!(j.received("F1").await.unwrap().unwrap(), acked);
    j.mark_applied("F1", "po_000001.csv", "aa").await.unwrap();
    assert_eq!(j.received("F1").await.unwrap().unwrap().state, ReceivedState::Acked);
    let pending: Vec<String> = j.pending_acks().await.unwrap().into_iter().map(|f| f.file_id).collect();
    assert_eq!(pending, ["F2"]);

    drop(j);
    let j = Journal::open(&path).await.unwrap();
    let recent: Vec<(String, ReceivedState)> =
        j.recent_received(10).await.unwrap().into_iter().map(|f| (f.file_id, f.state)).collect();
    assert_eq!(recent, [("F2".to_string(), ReceivedState::Applied), ("F1".to_string(), ReceivedState::Acked)]);
    assert_eq!(j.recent_received(1).await.unwrap().len(), 1);
}

/// The ledger closes the gap between the ERP's commit and the journal: a file whose id the ledger holds is not
/// written back again (the comments table has no key, so a repeat would show), a rolled-back file leaves no
/// record and applies once fixed, and a bad table name is refused before anything runs.
#[tokio::test]
async fn the_ledger_makes_a_replayed_file_a_no_op_and_commits_with_the_write_back() {
    let dir = tempfile::tempdir().unwrap();
    let (url, mut erp) = erp_db(dir.path()).await;
    let erp_cfg = ErpConfig::new(ErpKind::Sqlite, &url);
    let cfg = DeliveryConfig {
        sql: write_back_config(),
        ledger_table: Some("ferry_applied".into()),
        ..DeliveryConfig::default()
    };
    let file = plain_file(dir.path(), "po_000001.csv", &po_file());
    let first = deliver_file(&cfg, Some(&erp_cfg), &file, "po_000001.csv", Some("20261128T101500Z-aaaa")).await;
    assert_eq!(first.unwrap().sql_rows, 3);
    let ledger: Vec<(String, String)> =
        sqlx::query_as("SELECT file_id, file_name FROM ferry_applied").fetch_all(&mut erp).await.unwrap();
    assert_eq!(ledger, [("20261128T101500Z-aaaa".to_string(), "po_000001.csv".to_string())]);

    // the same file again (the journal entry was lost in a crash): nothing is written twice
    let again = deliver_file(&cfg, Some(&erp_cfg), &file, "po_000001.csv", Some("20261128T101500Z-aaaa")).await;
    let again = again.unwrap();
    assert!(again.already_in_ledger && again.sql_rows == 0, "{again:?}");
    assert_eq!(count(&mut erp, "recommended_orders").await, 3);
    assert_eq!(count(&mut erp, "order_comments").await, 2);
    // without the ledger the same replay runs the statements again (here the key refuses it)
    let plain = DeliveryConfig { ledger_table: None, ..cfg.clone() };
    assert!(deliver_file(&plain, Some(&erp_cfg), &file, "po_000001.csv", Some("20261128T101500Z-aaaa")).await.is_err());

    // a file that fails is rolled back with its ledger record, and applies once it is right
    let bad = format!(
        "{HEADER}PO000009,1,ITEM-001,WH1,SUP-A,5,1,2026-03-02,2026-03-16,x\nPO000009,2,,WH1,SUP-A,7,1,2026-03-02,2026-03-16,\n"
    );
    let bad = plain_file(dir.path(), "po_000009.csv", &bad);
    let id = Some("20261128T101600Z-bbbb");
    assert!(deliver_file(&cfg, Some(&erp_cfg), &bad, "po_000009.csv", id).await.is_err());
    assert_eq!(count(&mut erp, "ferry_applied").await, 1);
    assert_eq!(count(&mut erp, "order_comments").await, 2);
    let good = format!("{HEADER}PO000009,1,ITEM-001,WH1,SUP-A,5,1,2026-03-02,2026-03-16,x\n");
    let good = plain_file(dir.path(), "po_000009b.csv", &good);
    assert_eq!(deliver_file(&cfg, Some(&erp_cfg), &good, "po_000009.csv", id).await.unwrap().sql_rows, 1);
    assert_eq!(count(&mut erp, "ferry_applied").await, 2);
    assert_eq!(count(&mut erp, "order_comments").await, 3);

    // a ledger the Connector cannot create (here: a schema SQLite does not have) fails the delivery, nothing is
    // written, and the message gives the statement to create it by hand
    let nowhere = DeliveryConfig { ledger_table: Some("erp.ferry_applied".into()), ..cfg.clone() };
    let e = deliver_file(&nowhere, Some(&erp_cfg), &file, "po_000001.csv", Some("x")).await.unwrap_err().to_string();
    assert!(e.contains("the ledger table erp.ferry_applied cannot be used"), "{e}");
    assert!(
        e.contains("create it with: CREATE TABLE erp.ferry_applied (file_id VARCHAR(64) NOT NULL PRIMARY KEY"),
        "{e}"
    );
    assert_eq!(count(&mut erp, "order_comments").await, 3);

    for bad_name in ["ferry applied", "x;DROP TABLE t", "1abc", "a.b.c", ""] {
        let cfg = DeliveryConfig { ledger_table: Some(bad_name.into()), ..cfg.clone() };
        let e = deliver_file(&cfg, Some(&erp_cfg), &file, "po_000001.csv", Some("x")).await.unwrap_err();
        assert!(e.to_string().contains("is not a table name"), "{bad_name}: {e}");
    }
}

/// Page mode (issue 11): with a ledger, a page's write-backs go in one ERP transaction, a savepoint per file.
/// A file whose row fails is rolled back to its savepoint alone; nothing of the page is visible in the ERP or
/// the inbound folder until `commit_page`, then the good files are there with their ledger rows; a page that is
/// never committed (a crash, a lost connection) leaves nothing but is not lost: its files are delivered again.
#[tokio::test]
async fn a_page_commits_its_files_together_and_a_failing_file_rolls_back_to_its_savepoint() {
    let dir = tempfile::tempdir().unwrap();
    let (url, mut erp) = erp_db(dir.path()).await;
    let erp_cfg = ErpConfig::new(ErpKind::Sqlite, &url);
    let inbound = dir.path().join("inbound");
    let cfg = DeliveryConfig {
        sql: write_back_config(),
        ledger_table: Some("ferry_applied".into()),
        inbound_dir: Some(inbound.clone()),
        ..DeliveryConfig::default()
    };
    let order = |n: u32, item: &str| {
        format!(
            "{HEADER}PO{n:06},1,ITEM-001,WH1,SUP-A,5,1,2026-03-02,2026-03-16,x\nPO{n:06},2,{item},WH1,SUP-A,7,1,2026-03-02,2026-03-16,\n"
        )
    };
    let good1 = plain_file(dir.path(), "a1.csv", &order(1, "ITEM-002"));
    let bad = plain_file(dir.path(), "a2.csv", &order(2, "")); // item NOT NULL fails on its second row
    let good3 = plain_file(dir.path(), "a3.csv", &order(3, "ITEM-003"));

    // a page never committed: nothing in the ERP, no inbound file, no part left
    let mut lost = Delivery::page(&cfg, Some(&erp_cfg));
    lost.deliver(&good1, "po_000001.csv", Some("id-1")).await.unwrap();
    lost.close().await;
    assert_eq!(count(&mut erp, "recommended_orders").await, 0);
    assert!(files_in(&inbound).is_empty(), "{:?}", files_in(&inbound));

    let mut page = Delivery::page(&cfg, Some(&erp_cfg));
    let r1 = page.deliver(&good1, "po_000001.csv", Some("id-1")).await.unwrap();
    assert_eq!(r1.sql_rows, 2);
    let e = page.deliver(&bad, "po_000002.csv", Some("id-2")).await.unwrap_err().to_string();
    assert!(e.contains("po_000002.csv:3"), "{e}");
    page.deliver(&good3, "po_000003.csv", Some("id-3")).await.unwrap();
    // not committed yet: another connection sees nothing, the inbound copies are hidden
    assert_eq!(count(&mut erp, "recommended_orders").await, 0);
    assert_eq!(files_in(&inbound), [".po_000001.csv.part", ".po_000003.csv.part"]);
    assert!(page.commit_page().await.is_empty());
    assert_eq!(files_in(&inbound), ["po_000001.csv", "po_000003.csv"]);
    let rows: Vec<(String,)> = sqlx::query_as("SELECT DISTINCT order_number FROM recommended_orders ORDER BY 1")
        .fetch_all(&mut erp)
        .await
        .unwrap();
    assert_eq!(rows, [("PO000001".to_string(),), ("PO000003".to_string(),)]);
    let ledger: Vec<(String,)> =
        sqlx::query_as("SELECT file_id FROM ferry_applied ORDER BY 1").fetch_all(&mut erp).await.unwrap();
    assert_eq!(ledger, [("id-1".to_string(),), ("id-3".to_string(),)]);

    // the next page on the same session: a replay is a no-op (ledger), the fixed file applies
    let fixed = plain_file(dir.path(), "a2b.csv", &order(2, "ITEM-009"));
    let again = page.deliver(&good1, "po_000001.csv", Some("id-1")).await.unwrap();
    assert!(again.already_in_ledger, "{again:?}");
    assert_eq!(page.deliver(&fixed, "po_000002.csv", Some("id-2")).await.unwrap().sql_rows, 2);
    assert!(page.commit_page().await.is_empty());
    page.close().await;
    assert_eq!(count(&mut erp, "recommended_orders").await, 6);
    assert_eq!(count(&mut erp, "ferry_applied").await, 3);
    assert_eq!(files_in(&inbound), ["po_000001.csv", "po_000002.csv", "po_000003.csv"]);
}
