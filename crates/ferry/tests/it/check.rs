//! `ferry connector check` and the validation `sync` runs while extracting, against real servers on 127.0.0.1:
//! the example mappings pass; a broken query, a missing required column, an empty required value, a duplicate key
//! and an unknown item code each give their precise `file:row:column` problem from `check` (the binary) and from
//! `sync`, and nothing reaches the Comms server or the App; `--allow-warnings` lets a batch with only warnings
//! through.

use std::path::Path;
use std::process::Command;

use crate::common::*;
use ferry::cluster::Cluster;
use ferry_connector::agent::{Connector, SyncOptions};
use ferry_connector::mapping::Mapping;
use ferry_proto::api::BatchState;

/// `ferry connector check --config CONFIG [extra]`: (exit code, stdout + stderr).
fn cli_check(config: &Path, extra: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["connector", "check", "--config"])
        .arg(config)
        .args(extra)
        .output()
        .expect("run ferry");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.code().unwrap_or(-1), text)
}

/// A connector.toml for `check` only (no key, no registration needed).
fn check_config(dir: &Path, erp: &Path, mapping: &Path) -> std::path::PathBuf {
    let path = dir.join("connector.toml");
    let text = format!(
        "[erp]\nkind = \"sqlite\"\nurl = {:?}\nmapping = {:?}\n",
        erp.display().to_string(),
        mapping.display().to_string()
    );
    std::fs::write(&path, text).expect("config");
    path
}

#[tokio::test]
async fn the_example_mappings_pass_check() {
    for (name, files) in [("normalised", 8), ("wide", 7)] {
        let dir = tempfile::tempdir().unwrap();
        let erp = dir.path().join("erp.db");
        let example = example_dir(name);
        load_schema(&erp, &example.join("schema.sql")).await;
        let config = check_config(dir.path(), &erp, &example.join("mapping.toml"));
        let (code, out) = cli_check(&config, &[]);
        eprintln!("--- {name}\n{out}");
        assert_eq!(code, 0, "{name}: {out}");
        assert!(out.contains(&format!("{files} files")) && out.contains("no problems; ready to sync"), "{out}");
        // every mapped file has rows, and samples are shown
        let mapping = Mapping::from_toml(&std::fs::read_to_string(example.join("mapping.toml")).unwrap()).unwrap();
        for f in mapping.files.keys() {
            let line = out.lines().find(|l| l.starts_with(f.as_str())).unwrap_or_else(|| panic!("{f} in {out}"));
            assert!(line.contains(" ok") && !line.contains(" 0 rows"), "{line}");
        }
        assert!(out.contains("    | \""), "sample rows are printed: {out}");
    }
}

/// Issue 13 item 7: with stdout and stderr not a terminal (pipes here), `connector check` writes one plain
/// progress line per file on stderr (`  sales.csv  120 rows  0.0 MB  1.2 MB/s  0.0s`), no escape codes, and its
/// report on stdout is unchanged.
#[tokio::test]
async fn check_writes_plain_progress_lines_when_not_a_terminal() {
    let dir = tempfile::tempdir().unwrap();
    let erp = dir.path().join("erp.db");
    let example = example_dir("normalised");
    load_schema(&erp, &example.join("schema.sql")).await;
    let config = check_config(dir.path(), &erp, &example.join("mapping.toml"));
    let out = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["connector", "check", "--config"])
        .arg(&config)
        .env_remove("FERRY_LOG_FORMAT")
        .output()
        .expect("run ferry");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(!stderr.contains('\u{1b}') && !stdout.contains('\u{1b}'), "no escape codes: {stderr:?}");
    assert!(!stdout.contains("MB/s"), "progress stays off stdout: {stdout}");
    let mapping = Mapping::from_toml(&std::fs::read_to_string(example.join("mapping.toml")).unwrap()).unwrap();
    let progress: Vec<&str> = stderr.lines().filter(|l| l.contains(" rows") && l.contains("MB/s")).collect();
    assert_eq!(progress.len(), mapping.files.len(), "one line per file: {stderr}");
    for f in mapping.files.keys() {
        let line = progress
            .iter()
            .find(|l| l.split_whitespace().next() == Some(f.as_str()))
            .unwrap_or_else(|| panic!("a progress line for {f} in {stderr}"));
        let words: Vec<&str> = line.split_whitespace().collect();
        // file, rows, "rows", MB, "MB", rate, "MB/s", elapsed
        assert_eq!(words.len(), 8, "{line}");
        let rows: u64 = words[1].parse().unwrap_or_else(|_| panic!("rows in {line}"));
        assert!(rows > 0, "{line}");
        assert_eq!((words[2], words[4], words[6]), ("rows", "MB", "MB/s"), "{line}");
        let mb: f64 = words[3].parse().unwrap_or_else(|_| panic!("MB in {line}"));
        assert!(mb >= 0.0, "{line}");
        assert!(words[5] == "-" || words[5].parse::<f64>().is_ok_and(|r| r >= 0.0), "{line}");
        assert!(words[7].ends_with('s') && words[7].trim_end_matches('s').parse::<f64>().is_ok(), "{line}");
        // the report on stdout agrees on the rows
        let report = stdout.lines().find(|l| l.starts_with(f.as_str())).unwrap_or_else(|| panic!("{f}: {stdout}"));
        assert!(report.contains(&format!(" {rows} rows")), "{report} vs {line}");
    }
}

/// A cluster, a tenant `acme` whose ERP is the normalised example, and its registered connector.
async fn setup() -> (tempfile::TempDir, Cluster, Connector, std::path::PathBuf, Mapping) {
    let (dir, c) = cluster().await;
    let erp = dir.path().join("erp.db");
    load_schema(&erp, &example_dir("normalised").join("schema.sql")).await;
    let token = c.add_tenant("acme").await.expect("tenant");
    let conn = c.connector("acme", &erp, &token).await.expect("connector");
    let text = std::fs::read_to_string(example_dir("normalised").join("mapping.toml")).unwrap();
    let mapping = Mapping::from_toml(&text).unwrap();
    (dir, c, conn, erp, mapping)
}

/// The example mapping with the query of `file` replaced by `f(old query)`.
fn variant(base: &Mapping, file: &str, f: impl Fn(&str) -> String) -> String {
    let mut m = base.clone();
    let q = m.files.get_mut(file).expect("mapped");
    q.query = f(&q.query);
    toml::to_string(&m).expect("toml")
}

/// `sync` must refuse: its message (with the chain) and nothing sent.
async fn refused(c: &Cluster, conn: &Connector, opts: &SyncOptions) -> String {
    let err = conn.sync_with(opts, &quiet).await.expect_err("sync must refuse this batch");
    let msg = format!("{err:#}");
    eprintln!("sync refused: {msg}");
    assert_nothing_sent(c, conn, "acme").await;
    msg
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn each_mapping_mistake_gives_its_precise_place_and_nothing_is_sent() {
    let (_dir, c, conn, _erp, base) = setup().await;
    let config = conn.cfg.base.join("connector.toml");
    let opts = SyncOptions::default();

    // 1. a broken query: the database's message, the file, what to do
    set_mapping(&conn, &variant(&base, "sales.csv", |_| "SELECT nope FROM invoice_line".into()));
    let (code, out) = cli_check(&config, &[]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("sales.csv: error: the query failed:") && out.contains("no such column: nope"), "{out}");
    assert!(out.contains("check the query for sales.csv in the mapping"), "{out}");
    assert!(out.contains("location.csv") && out.contains("pohist.csv"), "check goes on with every other file: {out}");
    let msg = refused(&c, &conn, &opts).await;
    assert!(msg.contains("sales.csv: the query failed") && msg.contains("no such column: nope"), "{msg}");

    // 2. a missing required column: the query returns 5 of sales.csv's 10 columns (qty is the 6th)
    set_mapping(
        &conn,
        &variant(&base, "sales.csv", |_| {
            "SELECT p.sku, s.site_code, NULL, i.order_date, i.invoice_date FROM invoice_line l \
             JOIN invoice i ON i.invoice_id = l.invoice_id JOIN product p ON p.product_id = l.product_id \
             JOIN site s ON s.site_id = i.site_id"
                .into()
        }),
    );
    let want = "sales.csv:*:6: error: the query returns 5 columns, DATA-SPEC.md sales.csv has 10: column 6 (qty) and \
                after are missing (required: qty)";
    let (code, out) = cli_check(&config, &[]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains(want), "{out}");
    let msg = refused(&c, &conn, &opts).await;
    assert!(msg.contains(want) && msg.contains("ferry connector check"), "{msg}");

    // 3. a required value empty: the expected date of the second open PO line
    set_mapping(
        &conn,
        &variant(&base, "po.csv", |q| {
            q.replace(
                "l.qty, l.due_on,",
                "l.qty, CASE WHEN h.po_no = 'PO-5002' AND l.line_no = 2 THEN NULL ELSE l.due_on END,",
            )
        }),
    );
    let want = "po.csv:2:8: error: expected_date is required but empty; return a value on every row";
    let (code, out) = cli_check(&config, &[]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains(want), "{out}");
    let msg = refused(&c, &conn, &opts).await;
    assert!(msg.contains(want), "{msg}");

    // 4. a duplicate key: the first stock row (HAM-500 at DC1) once more, as row 14
    let dup = variant(&base, "stock.csv", |q| format!("SELECT * FROM ({q}) UNION ALL SELECT * FROM ({q} LIMIT 1)"));
    set_mapping(&conn, &dup);
    let want = "stock.csv:14:1: warning: duplicate key: item \"HAM-500\", location \"DC1\" repeats row 1";
    let (code, out) = cli_check(&config, &[]);
    assert_eq!(code, 2, "warnings only: exit code 2\n{out}");
    assert!(out.contains(want), "{out}");
    let msg = refused(&c, &conn, &opts).await;
    assert!(msg.contains(want) && msg.contains("--allow-warnings"), "{msg}");

    // 5. an unknown item code: a sales line of an item that master.csv does not have, as row 11
    let ghost = variant(&base, "sales.csv", |q| {
        format!(
            "SELECT * FROM ({q}) UNION ALL SELECT 'GHOST-1', 'ST1', NULL, '2026-03-10', '2026-03-10', 1, NULL, NULL, \
             NULL, 'INV-X/1'"
        )
    });
    set_mapping(&conn, &ghost);
    let want = "sales.csv:11:1: warning: item \"GHOST-1\" is not an item of master.csv; add it to the query for \
                master.csv, or leave rows with it out of the query for sales.csv";
    let (code, out) = cli_check(&config, &[]);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains(want), "{out}");
    let (code, out) = cli_check(&config, &["--allow-warnings"]);
    assert_eq!(code, 0, "{out}");
    let msg = refused(&c, &conn, &opts).await;
    assert!(msg.contains(want), "{msg}");

    // the `sync` command itself: non-zero exit, the reason on stderr, nothing sent
    let out = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["connector", "sync", "--config"])
        .arg(&config)
        .output()
        .expect("run ferry");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("was not sent") && stderr.contains(want), "{stderr}");
    assert_nothing_sent(&c, &conn, "acme").await;

    // --allow-warnings lets a batch whose only problems are warnings through: both warnings at once
    let mut both = Mapping::from_toml(&ghost).unwrap();
    both.files.insert("stock.csv".into(), Mapping::from_toml(&dup).unwrap().files["stock.csv"].clone());
    set_mapping(&conn, &toml::to_string(&both).unwrap());
    let msg = refused(&c, &conn, &opts).await;
    assert!(msg.contains("2 warnings"), "{msg}");
    let r = conn
        .sync_with(&SyncOptions { allow_warnings: true, ..SyncOptions::default() }, &quiet)
        .await
        .expect("allowed warnings");
    assert_eq!(r.status.state, BatchState::Imported, "{:?}", r.status.detail);
    let n = counts(&c, "acme").await;
    assert_eq!((n["stock"], n["sales"]), (14, 11), "the App took the batch as sent");

    // errors are never let through, --allow-warnings or not
    set_mapping(&conn, &variant(&base, "sales.csv", |_| "SELECT nope FROM invoice_line".into()));
    let before = instance_rows(&c, "acme").await;
    let err = conn
        .sync_with(&SyncOptions { allow_warnings: true, ..SyncOptions::default() }, &quiet)
        .await
        .expect_err("errors always block");
    assert!(format!("{err:#}").contains("no such column: nope"));
    assert_eq!(instance_rows(&c, "acme").await, before);
    assert_eq!(conn.status(10).await.unwrap().len(), 1, "only the allowed batch reached the Comms server");
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn allow_warnings_in_the_mapping_works_like_the_flag() {
    let (_dir, c, conn, _erp, base) = setup().await;
    let text = variant(&base, "stock.csv", |q| format!("SELECT * FROM ({q}) UNION ALL SELECT * FROM ({q} LIMIT 1)"));
    let mut m = Mapping::from_toml(&text).unwrap();
    m.allow_warnings = true;
    set_mapping(&conn, &toml::to_string(&m).unwrap());
    let (code, out) = cli_check(&conn.cfg.base.join("connector.toml"), &[]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("1 warning") && out.contains("warnings are allowed"), "{out}");
    let r = conn.sync(&quiet).await.expect("sync");
    assert_eq!(r.status.state, BatchState::Imported, "{:?}", r.status.detail);
    c.stop().await;
}
