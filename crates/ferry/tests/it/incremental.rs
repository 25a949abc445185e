//! Incremental extracts end to end, against real servers on 127.0.0.1: day 1 is a full extract (first run); on day 2
//! the ERP gains rows and changes and deletes rows inside the window (which overlaps day 1), the sync sends only
//! the window, and the instance then equals, row for row, a full extract of day 2 loaded into a fresh instance.
//! `--full` and the schedule force full extracts; the manifest marks every file full or as its window.

use crate::common::*;
use chrono::NaiveDate;
use ferry_connector::agent::{Connector, SyncOptions};
use ferry_connector::journal::Journal;
use ferry_proto::api::BatchState;
use ferry_proto::manifest::{Manifest, Mode, Scope, Window};

fn day(m: u32, d: u32) -> NaiveDate {
    NaiveDate::from_ymd_opt(2026, m, d).unwrap()
}

/// Sync as of `today` (optionally `--full`); the batch must be imported.
async fn sync_on(conn: &Connector, today: NaiveDate, full: bool) -> Manifest {
    let opts = SyncOptions { full, allow_warnings: false, today: Some(today) };
    let lines = std::sync::Mutex::new(Vec::new());
    let r = conn.sync_with(&opts, &|l: &str| lines.lock().unwrap().push(l.to_string())).await.expect("sync");
    eprintln!("sync on {today} (full: {full}):\n{}", lines.lock().unwrap().join("\n"));
    assert_eq!(r.status.state, BatchState::Imported, "{:?}", r.status.detail);
    r.manifest
}

fn scope<'a>(m: &'a Manifest, file: &str) -> &'a Scope {
    m.files.iter().find(|f| f.name == file).and_then(|f| f.scope.as_ref()).expect("every file has a scope")
}

fn window(column: &str, from: NaiveDate) -> Scope {
    Scope::Window(Window { column: column.into(), from })
}

/// Every file except the windows is full.
fn assert_full_except(m: &Manifest, windows: &[&str]) {
    for f in &m.files {
        if !windows.contains(&f.name.as_str()) {
            assert_eq!(f.scope, Some(Scope::Full), "{}", f.name);
        }
    }
    assert_eq!(m.mode, if windows.is_empty() { Mode::Full } else { Mode::Incremental });
}

/// Day 2 in the ERP: new invoices (one dated inside day 1's overlap, entered late), a changed and a deleted line
/// inside the window, a new receipt, changed stock. Nothing before the window changes.
const DAY_2: &str = "
INSERT INTO invoice VALUES (8, 'INV-9008', 2, 1, '2026-03-11', '2026-03-11'),
                           (9, 'INV-9009', 3, 2, '2026-03-07', '2026-03-08');
INSERT INTO invoice_line VALUES (8, 1, 102, 2, 11.2000, 43.00), (8, 2, 104, 20, 1.9000, 76.00),
                                (9, 1, 105, 1, 6.7000, 12.40);
UPDATE invoice_line SET qty = 6, amount = 22.80 WHERE invoice_id = 6;
DELETE FROM invoice_line WHERE invoice_id = 5;
INSERT INTO receipt VALUES (5, 2, 1, '2026-03-11', 150), (6, 3, 1, '2026-03-11', 24);
UPDATE product_site SET on_hand = on_hand - 2 WHERE product_id = 102;
";

/// A cluster and a registered Connector for tenant `acme` on the "normalised" example ERP with its mapping.
async fn normalised_erp() -> (tempfile::TempDir, ferry::cluster::Cluster, std::path::PathBuf, String, Connector) {
    let (dir, c) = cluster().await;
    let erp = dir.path().join("erp.db");
    let example = example_dir("normalised");
    load_schema(&erp, &example.join("schema.sql")).await;
    let mapping = std::fs::read_to_string(example.join("mapping.toml")).unwrap();
    let token = c.add_tenant("acme").await.unwrap();
    let conn = c.connector("acme", &erp, &token).await.unwrap();
    set_mapping(&conn, &mapping);
    (dir, c, erp, mapping, conn)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_window_leaves_the_instance_equal_to_a_full_refresh() {
    let (_dir, c, erp, mapping, conn) = normalised_erp().await;

    // Day 1 (2026-03-10): the first run is full, every file.
    let m1 = sync_on(&conn, day(3, 10), false).await;
    assert_full_except(&m1, &[]);
    let journal = Journal::open(conn.cfg.journal_path()).await.unwrap();
    let marks = journal.watermarks().await.unwrap();
    assert_eq!(marks.keys().collect::<Vec<_>>(), ["pohist.csv", "sales.csv"]);
    assert_eq!((marks["sales.csv"].through, marks["sales.csv"].last_full), (day(3, 10), day(3, 10)));
    let sales_day1 = counts(&c, "acme").await["sales"];
    assert_eq!(sales_day1, 10);

    // Day 2 (2026-03-11): the window starts 3 days (the overlap) before day 1's extract: 2026-03-07.
    erp_exec(&erp, DAY_2).await;
    let m2 = sync_on(&conn, day(3, 11), false).await;
    assert_full_except(&m2, &["sales.csv", "pohist.csv"]);
    assert_eq!(scope(&m2, "sales.csv"), &window("invoice_date", day(3, 7)));
    assert_eq!(scope(&m2, "pohist.csv"), &window("receipt_date", day(3, 7)));
    // only the window's rows travelled: invoices 4 (03-07), 9 (03-08), 6 (03-09), 7 (03-10), 8 (03-11)
    let sent = |m: &Manifest, f: &str| m.files.iter().find(|e| e.name == f).unwrap().rows;
    assert_eq!(sent(&m2, "sales.csv"), 2 + 1 + 1 + 1 + 2);
    assert_eq!(sent(&m2, "pohist.csv"), 2 + 1, "the receipt of 03-09 (overlap) and the two of 03-11");
    let marks = journal.watermarks().await.unwrap();
    assert_eq!((marks["sales.csv"].through, marks["sales.csv"].last_full), (day(3, 11), day(3, 10)));

    // The reference: the same ERP (day 2) extracted in full into a fresh instance.
    let token = c.add_tenant("fresh").await.unwrap();
    let fresh = c.connector("fresh", &erp, &token).await.unwrap();
    set_mapping(&fresh, &mapping);
    let mf = sync_on(&fresh, day(3, 11), false).await;
    assert_full_except(&mf, &[]);
    let reference = instance_rows(&c, "fresh").await;
    assert_eq!(reference["sales"].len(), 10 + 3 - 1, "3 lines added, 1 deleted");
    let got = instance_rows(&c, "acme").await;
    for (table, rows) in &reference {
        assert_eq!(&got[table], rows, "table {table}: the window must leave the instance equal to a full refresh");
    }

    // --full forces a full extract of the incremental files too; the instance stays equal.
    let m3 = sync_on(&conn, day(3, 11), true).await;
    assert_full_except(&m3, &[]);
    assert_eq!(instance_rows(&c, "acme").await, reference);
    assert_eq!(journal.watermarks().await.unwrap()["sales.csv"].last_full, day(3, 11));

    // The schedule: a window until the last full extract is 7 days old (full_every_days = 7), then a full one.
    let m4 = sync_on(&conn, day(3, 17), false).await;
    assert_eq!(scope(&m4, "sales.csv"), &window("invoice_date", day(3, 8)));
    let m5 = sync_on(&conn, day(3, 18), false).await;
    assert_full_except(&m5, &[]);
    assert_eq!(instance_rows(&c, "acme").await, reference);

    // A changed query (or column) makes the next extract full: the old rows may not match the new query.
    set_mapping(&conn, &mapping.replace("ORDER BY i.invoice_date, i.invoice_no, l.line_no", "ORDER BY i.invoice_no"));
    let m6 = sync_on(&conn, day(3, 19), false).await;
    assert_eq!(scope(&m6, "sales.csv"), &Scope::Full);
    assert_eq!(scope(&m6, "pohist.csv"), &window("receipt_date", day(3, 15)));
    assert_eq!(instance_rows(&c, "acme").await, reference);
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_batch_refused_by_validation_does_not_move_the_watermark() {
    let (_dir, c, _erp, mapping, conn) = normalised_erp().await;
    let journal = Journal::open(conn.cfg.journal_path()).await.unwrap();

    // refused by validation (an unknown item in the window): no watermark, and the next run is still a first run
    let mut ghost = ferry_connector::mapping::Mapping::from_toml(&mapping).unwrap();
    let q = &mut ghost.files.get_mut("sales.csv").unwrap().query;
    *q = format!(
        "SELECT * FROM ({q}) UNION ALL SELECT 'GHOST', 'ST1', NULL, '2026-03-10', '2026-03-10', 1, NULL, NULL, NULL, 'X/1'"
    );
    set_mapping(&conn, &toml::to_string(&ghost).unwrap());
    let opts = SyncOptions { today: Some(day(3, 10)), ..SyncOptions::default() };
    let err = conn.sync_with(&opts, &quiet).await.expect_err("unknown item");
    assert!(format!("{err:#}").contains("item \"GHOST\" is not an item of master.csv"), "{err:#}");
    assert!(journal.watermarks().await.unwrap().is_empty());

    // an empty incremental date is an error in every extract (the row would belong to no window): the second
    // receipt loses its date
    set_mapping(
        &conn,
        &mapping
            .replace(", r.qty, r.received_on,", ", r.qty, CASE r.receipt_id WHEN 2 THEN NULL ELSE r.received_on END,"),
    );
    let err = conn.sync_with(&opts, &quiet).await.expect_err("empty receipt date");
    let msg = format!("{err:#}");
    assert!(msg.contains("pohist.csv:2:11: error: receipt_date is empty, but pohist.csv is incremental"), "{msg}");
    assert!(journal.watermarks().await.unwrap().is_empty());

    set_mapping(&conn, &mapping);
    let m = sync_on(&conn, day(3, 10), false).await;
    assert_full_except(&m, &[]);
    assert_eq!(journal.watermarks().await.unwrap()["sales.csv"].through, day(3, 10));
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_batch_the_app_rejects_does_not_move_the_watermark() {
    // an App that accepts at most 600 bytes per file: stock.csv (about 1.2 kB) gets the batch rejected
    let dir = tempfile::tempdir().unwrap();
    let c = ferry::cluster::Cluster::start_with(dir.path(), |a| a.max_decompressed_bytes = 600, |_| {}).await.unwrap();
    let erp = dir.path().join("erp.db");
    let example = example_dir("normalised");
    load_schema(&erp, &example.join("schema.sql")).await;
    let token = c.add_tenant("acme").await.unwrap();
    let conn = c.connector("acme", &erp, &token).await.unwrap();
    set_mapping(&conn, &std::fs::read_to_string(example.join("mapping.toml")).unwrap());
    let opts = SyncOptions { today: Some(day(3, 10)), ..SyncOptions::default() };
    let r = conn.sync_with(&opts, &quiet).await.expect("sent");
    assert_eq!(r.status.state, BatchState::Rejected, "{:?}", r.status.detail);
    let journal = Journal::open(conn.cfg.journal_path()).await.unwrap();
    assert!(journal.watermarks().await.unwrap().is_empty(), "a rejected batch moves no watermark");
    assert!(journal.awaiting_verdict().await.unwrap().is_empty(), "its verdict is journaled");
    c.stop().await;
}
