//! Helpers shared by the integration tests: a started system, hand-built batches (to send exactly the bad
//! input a test needs), and instance row counts.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use ferry::cluster::Cluster;
use ferry_connector::agent::Connector;
use ferry_io::digest::HashingWriter;
use ferry_proto::batch::BatchId;
use ferry_proto::manifest::{MANIFEST_NAME, Manifest, ManifestFile, Mode};
use ferry_proto::spec;

/// Polls `check` every 50 ms until it holds; returns how long that took, or `None` once `limit` has passed
/// without it holding. Tests wait for a condition with this, never for a fixed time.
pub async fn eventually(limit: Duration, mut check: impl AsyncFnMut() -> bool) -> Option<Duration> {
    let t = Instant::now();
    loop {
        if check().await {
            return Some(t.elapsed());
        }
        if t.elapsed() >= limit {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub async fn cluster() -> (tempfile::TempDir, Cluster) {
    let dir = tempfile::tempdir().expect("tempdir");
    let c = Cluster::start(dir.path()).await.expect("cluster starts");
    (dir, c)
}

/// A registered connector for a new tenant `name` (its ERP database need not exist for hand-built batches).
pub async fn tenant(c: &Cluster, name: &str) -> Connector {
    let token = c.add_tenant(name).await.expect("tenant add");
    let erp = c.dir.join(format!("{name}-erp.db"));
    c.connector(name, &erp, &token).await.expect("connector registers")
}

/// A small valid full batch: (file name, CSV text).
pub fn good_files() -> Vec<(&'static str, String)> {
    vec![
        ("location.csv", "\"L1\",\"Main store\",1,\"G\",\"ST\"\n\"DC\",\"Warehouse\",1,,\"DC\"\n".into()),
        ("master.csv", "\"A1\",\"Bolt, 10mm \"\"zinc\"\"\",\"EA\",0.1,0.2,,,,\"u-1\"\n\"B2\",\"Nut\",\"EA\",,,,,,\"u-2\"\n".into()),
        (
            "stock.csv",
            "\"A1\",\"L1\",2024/01/05,1.50,1.20,2.99,10,0,\"EX\",\"S1\",\"S1\",\"BOX\",12,7,24,12,,,,,\n\"B2\",\"L1\",,0.5,0.4,,3,1,\"EX\",\"S1\",\"S1\",,,,,,,,,,\n".into(),
        ),
        ("supplier.csv", "\"S1\",\"Supplier One\",\"local\",7\n".into()),
        (
            "sales.csv",
            "\"A1\",\"L1\",\"C1\",2026/01/02,2026/01/03,5,7.5,15,,\"INV-1\"\n\"A1\",\"L1\",\"C2\",2026/02/02,2026/02/03,-1,-1.5,-3,,\"CR-2\"\n\"B2\",\"L1\",,2026/03/01,2026/03/01,2.5,,,,\n".into(),
        ),
        ("po.csv", "\"A1\",\"L1\",\"S1\",\"PO1\",\"1\",2026/11/01,24,2026/12/01,24,\"P\",1.2\n".into()),
    ]
}

/// Write the files compressed into the connector's spool for a new batch id, with a correct manifest.
pub fn spool_batch(conn: &Connector, files: &[(&str, String)]) -> Manifest {
    let id = BatchId::new(chrono::Utc::now());
    let dir = conn.spool_dir(&id);
    std::fs::create_dir_all(&dir).expect("spool dir");
    let mut entries = Vec::new();
    for (name, text) in files {
        let path = dir.join(format!("{name}.bz2"));
        let out = std::fs::File::create(&path).expect("create");
        let mut w = HashingWriter::new(ferry_io::bz::ParallelBzWriter::new(out, 9, 1));
        w.write_all(text.as_bytes()).expect("write");
        let (bz, d) = w.finish();
        bz.finish().expect("finish bz2");
        entries.push(ManifestFile {
            name: name.to_string(),
            rows: text.lines().count() as u64,
            bytes: d.bytes,
            compressed_bytes: std::fs::metadata(&path).expect("meta").len(),
            compressed_sha256: Some(ferry_io::digest::file_sha256(&path).expect("sha256").1),
            md5: d.md5,
            sha256: d.sha256,
            scope: None,
        });
    }
    let now = chrono::Utc::now();
    let m = Manifest {
        batch_id: id,
        tenant: String::new(),
        spec_version: ferry_proto::SPEC_VERSION.into(),
        connector_version: ferry_proto::FERRY_VERSION.into(),
        mode: Mode::Full,
        extract_started: now,
        extract_finished: now,
        files: entries,
    };
    write_manifest(conn, &m);
    m
}

pub fn write_manifest(conn: &Connector, m: &Manifest) {
    let dir = conn.spool_dir(&m.batch_id);
    std::fs::write(dir.join(MANIFEST_NAME), serde_json::to_vec(m).expect("json")).expect("manifest");
}

/// Rows per standard table in a tenant's instance.
pub async fn counts(c: &Cluster, tenant: &str) -> BTreeMap<&'static str, u64> {
    let inst = c.app.state.instance(tenant).await.expect("open").expect("instance exists");
    let mut out = BTreeMap::new();
    for f in spec::STANDARD_FILES {
        out.insert(f.table, inst.0.count_rows(f.table).await.expect("count"));
    }
    out
}

pub fn quiet(_: &str) {}

pub fn file_size(p: &Path) -> u64 {
    std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)
}

/// `examples/mappings/<name>/` of the repository (an example ERP schema and its mapping).
pub fn example_dir(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/mappings").join(name)
}

/// Create the SQLite database `db` from the SQL script `schema` (tables and rows).
pub async fn load_schema(db: &Path, schema: &Path) {
    use sqlx::Connection;
    let sql = std::fs::read_to_string(schema).expect("read schema");
    let mut conn =
        sqlx::SqliteConnection::connect(&format!("sqlite:{}?mode=rwc", db.display())).await.expect("create erp db");
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql)).execute(&mut conn).await.expect("load schema");
    conn.close().await.expect("close");
}

/// Run statements against an ERP database (tests change the ERP's data between syncs).
pub async fn erp_exec(db: &Path, sql: &str) {
    use sqlx::Connection;
    let mut conn = sqlx::SqliteConnection::connect(&format!("sqlite:{}", db.display())).await.expect("open erp db");
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_string())).execute(&mut conn).await.expect("erp statements");
    conn.close().await.expect("close");
}

/// Replace a connector's mapping file.
pub fn set_mapping(conn: &Connector, text: &str) {
    std::fs::write(conn.cfg.mapping_path(), text).expect("write mapping");
}

/// Every row of every standard table of a tenant's instance, as JSON arrays, sorted: two instances hold the same
/// data exactly when these are equal.
pub async fn instance_rows(c: &Cluster, tenant: &str) -> BTreeMap<&'static str, Vec<String>> {
    let inst = c.app.state.instance(tenant).await.expect("open").expect("instance exists");
    let mut out = BTreeMap::new();
    for f in spec::STANDARD_FILES {
        let cols: Vec<String> =
            f.columns.iter().filter(|c| c.kind != spec::Kind::Unused).map(|c| format!("\"{}\"", c.name)).collect();
        let sql = format!("SELECT json_array({}) FROM \"{}\"", cols.join(", "), f.table);
        let mut rows: Vec<String> =
            sqlx::query_scalar(sqlx::AssertSqlSafe(sql)).fetch_all(inst.0.pool()).await.expect("read table");
        rows.sort();
        out.insert(f.table, rows);
    }
    out
}

/// Assert that nothing of any batch reached the Comms server or the App for `tenant`, and that the Connector's
/// spool holds no batch.
pub async fn assert_nothing_sent(c: &Cluster, conn: &Connector, tenant: &str) {
    assert!(conn.status(10).await.expect("status").is_empty(), "the Comms server must have no batch");
    let inst = c.app.state.instance(tenant).await.expect("open").expect("instance exists");
    assert!(inst.0.batches().await.expect("batches").is_empty(), "the App must have seen no batch");
    assert!(counts(c, tenant).await.values().all(|n| *n == 0), "the instance must be empty");
    let upload = ferry_comms::tenant_sftp_root(&c.comms.state.cfg.data_dir, tenant).join("upload");
    // `sync` uploads each file as soon as it is complete; a batch refused later is never completed and the
    // files it uploaded are removed again (an empty `upload/<batch>/` folder may stay: SFTP cannot remove it)
    fn files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
        let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
        entries.flatten().flat_map(|e| if e.path().is_dir() { files(&e.path()) } else { vec![e.path()] }).collect()
    }
    let uploaded = files(&upload);
    assert!(uploaded.is_empty(), "nothing may be left uploaded over SFTP: {uploaded:?}");
    let spooled = std::fs::read_dir(conn.cfg.spool_dir()).map(|d| d.count()).unwrap_or(0);
    assert_eq!(spooled, 0, "a refused batch leaves nothing in the spool");
}

/// GET `url` carrying the given signature headers (possibly made for another request: that is the point).
pub async fn signed_get(http: &reqwest::Client, url: &str, h: &ferry_io::httpsig::SignedHeaders) -> reqwest::Response {
    http.get(url)
        .header("content-digest", &h.content_digest)
        .header("signature-input", &h.signature_input)
        .header("signature", &h.signature)
        .send()
        .await
        .unwrap()
}
