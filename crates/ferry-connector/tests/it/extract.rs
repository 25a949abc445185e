//! End to end on the sample ERP: generate it, extract with the default mapping, then prove every `.bz2` decodes to
//! exactly what the manifest says (rows, bytes, MD5, SHA-256), that every field of every row passes the App's
//! `parse_field`, and that Debian's `bzip2 -t` accepts the files.

use std::io::Read;
use std::path::Path;
use std::sync::Mutex;

use chrono::NaiveDate;
use ferry_connector::check::FieldError;
use ferry_connector::erp::source::{Source, SqlValue, SqliteSource};
use ferry_connector::extract::{ExtractError, ExtractOptions, extract_batch, format_float, format_value};
use ferry_connector::mapping::Mapping;
use ferry_io::digest::Digests;
use ferry_proto::batch::BatchId;
use ferry_proto::manifest::{MANIFEST_NAME, Manifest};
use ferry_proto::spec::{self, Column, Kind};
use ferry_sample::{SampleSize, generate_sample_erp_at};
use futures::StreamExt;

/// Split one CSV line of the standard format into unquoted fields (no line breaks inside fields by spec).
fn split_csv(line: &str) -> Vec<String> {
    let mut r = csv::ReaderBuilder::new().has_headers(false).from_reader(line.as_bytes());
    r.records().next().map(|rec| rec.unwrap().iter().map(str::to_string).collect()).unwrap_or_default()
}

async fn count(src: &SqliteSource, query: &str) -> u64 {
    let sql = format!("SELECT COUNT(*) FROM ({query})");
    let rows: Vec<_> = src.rows(&sql).collect().await;
    match rows[0].as_ref().unwrap()[0] {
        SqlValue::Int(n) => n as u64,
        ref v => panic!("count is {v:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sample_erp_extracts_to_valid_standard_files() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("erp.db");
    let today = NaiveDate::from_ymd_opt(2026, 11, 28).unwrap();
    let summary = generate_sample_erp_at(&db, SampleSize::Small, today).await.unwrap();
    eprintln!("sample: {:?} in {:.1}s", summary.tables, summary.seconds);
    assert!((100_000..=300_000).contains(&summary.tables["sales_lines"]), "{:?}", summary.tables);
    assert_eq!(summary.tables["items"], 300);
    assert!(
        generate_sample_erp_at(&db, SampleSize::Small, today).await.unwrap_err().to_string().contains("already exists")
    );

    let src = SqliteSource::open(db.to_str().unwrap()).await.unwrap();
    let mapping = Mapping::from_toml(ferry_sample::MAPPING).unwrap();
    let spool = dir.path().join("spool");
    let batch = BatchId::parse("20261128T051600Z-3fa2b7c1").unwrap();
    let seen = Mutex::new(Vec::new());
    let progress = |file: &str, rows: u64, bytes: u64| seen.lock().unwrap().push((file.to_string(), rows, bytes));
    let (manifest, stats) =
        extract_batch(&src, &mapping, &spool, &batch, &ExtractOptions::default(), &progress).await.unwrap();
    let mb = stats.bytes() as f64 / 1e6;
    eprintln!(
        "extract: {} rows, {:.1} MB plain -> {:.1} MB bz2 in {:.2}s = {:.0} rows/s, {:.1} MB/s",
        stats.rows(),
        mb,
        stats.compressed_bytes() as f64 / 1e6,
        stats.seconds,
        stats.rows() as f64 / stats.seconds,
        mb / stats.seconds
    );
    for f in &stats.files {
        eprintln!(
            "  {:<14} {:>8} rows {:>10} B -> {:>9} B {:.2}s",
            f.name, f.rows, f.bytes, f.compressed_bytes, f.seconds
        );
    }

    // the manifest on disk is the one returned, and passes the App's checks
    let bdir = spool.join(batch.as_str());
    let on_disk = Manifest::parse(&std::fs::read(bdir.join(MANIFEST_NAME)).unwrap()).unwrap();
    assert_eq!(on_disk, manifest);
    assert_eq!(manifest.files.len(), mapping.files.len());
    let names: Vec<_> =
        std::fs::read_dir(&bdir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    assert!(names.iter().all(|n| !n.ends_with(".tmp")), "{names:?}");
    // the last call of each file carries its final counts: rows and the CSV bytes of the manifest
    let sales = manifest.files.iter().find(|m| m.name == "sales.csv").unwrap();
    let last = seen.lock().unwrap().iter().rev().find(|(f, _, _)| f == "sales.csv").cloned().unwrap();
    assert_eq!((last.1, last.2), (sales.rows, sales.bytes));

    let bzip2_cli = Path::new("/usr/bin/bzip2");
    if !bzip2_cli.exists() {
        eprintln!("/usr/bin/bzip2 not found: skipping the `bzip2 -t` check");
    }
    for entry in &manifest.files {
        let path = bdir.join(entry.compressed_name());
        let compressed = std::fs::read(&path).unwrap();
        assert_eq!(compressed.len() as u64, entry.compressed_bytes, "{}", entry.name);
        let mut plain = Vec::new();
        ferry_io::bz::capped_decoder(&compressed[..], u64::MAX).read_to_end(&mut plain).unwrap();
        let d = Digests::of(&plain);
        assert_eq!((d.bytes, &d.md5, &d.sha256), (entry.bytes, &entry.md5, &entry.sha256), "{}", entry.name);

        let text = String::from_utf8(plain).unwrap();
        assert!(text.is_empty() || text.ends_with('\n'), "{}", entry.name);
        let lines: Vec<_> = text.lines().collect();
        assert_eq!(lines.len() as u64, entry.rows, "{}", entry.name);
        let query = &mapping.files[&entry.name].query;
        assert_eq!(count(&src, query).await, entry.rows, "{}: rows vs SELECT COUNT(*)", entry.name);
        assert!(entry.rows > 0, "{} is empty", entry.name);

        let fs = spec::file_spec(&entry.name).unwrap();
        for (i, line) in lines.iter().enumerate() {
            let fields = split_csv(line);
            assert_eq!(fields.len(), fs.columns.len(), "{} line {}: {line}", entry.name, i + 1);
            for (col, raw) in fs.columns.iter().zip(&fields) {
                if let Err(e) = spec::parse_field(col, raw) {
                    panic!("{} line {}: {e}\n{line}", entry.name, i + 1);
                }
            }
        }

        if bzip2_cli.exists() {
            let out = std::process::Command::new(bzip2_cli).arg("-t").arg(&path).output().unwrap();
            assert!(out.status.success(), "bzip2 -t {}: {}", entry.name, String::from_utf8_lossy(&out.stderr));
        }
    }

    // quoting was exercised: a description with a quote, a comma and a non-ASCII character survived intact
    let master = bdir.join("master.csv.bz2");
    let mut text = String::new();
    ferry_io::bz::capped_decoder(std::fs::File::open(master).unwrap(), u64::MAX).read_to_string(&mut text).unwrap();
    assert!(text.contains("\"\"Pro\"\"") && text.contains('Ø') && text.contains("é"), "descriptions not exercised");
    assert!(text.contains("Drill bit set ") && !text.contains("Drill bit set\n"));

    // a second run into the same batch is refused and leaves the batch alone
    let again = extract_batch(&src, &mapping, &spool, &batch, &ExtractOptions::default(), &|_, _, _| {}).await;
    assert!(matches!(again, Err(ExtractError::AlreadyExtracted(_))));
    assert!(bdir.join(MANIFEST_NAME).exists());
}

#[tokio::test]
async fn wrong_column_count_is_a_precise_error_and_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("erp.db");
    generate_sample_erp_at(&db, SampleSize::Small, NaiveDate::from_ymd_opt(2026, 1, 31).unwrap()).await.unwrap();
    let src = SqliteSource::open(db.to_str().unwrap()).await.unwrap();

    let mut mapping = Mapping::from_toml(ferry_sample::MAPPING).unwrap();
    let q =
        mapping.files["stock.csv"].query.replace("i.category, i.brand, NULL, NULL, NULL", "i.category, i.brand, NULL");
    mapping.files.get_mut("stock.csv").unwrap().query = q;
    let spool = dir.path().join("spool");
    let batch = BatchId::parse("20260131T000000Z-00000001").unwrap();
    let err =
        extract_batch(&src, &mapping, &spool, &batch, &ExtractOptions::default(), &|_, _, _| {}).await.unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains(
            "stock.csv:*:20: error: the query returns 19 columns, DATA-SPEC.md stock.csv has 21: column 20 (custom4) \
             and after are missing; add them to the SELECT in order ('' AS custom4 for a column the ERP lacks)"
        ),
        "{msg}"
    );
    assert!(!spool.join(batch.as_str()).exists(), "a failed extract must leave no files behind");

    // a bad value names file, line and column
    let mut mapping = Mapping::from_toml(ferry_sample::MAPPING).unwrap();
    mapping.files.get_mut("location.csv").unwrap().query =
        "SELECT wh_code, name, is_active, region, 'XX' FROM warehouses ORDER BY wh_code".into();
    let err =
        extract_batch(&src, &mapping, &spool, &batch, &ExtractOptions::default(), &|_, _, _| {}).await.unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("location.csv:1:5: error: location_type \"XX\" is not one of ST, DC, CW"), "{msg}");
    assert!(!spool.join(batch.as_str()).exists(), "a batch that fails validation leaves no files behind");

    // a broken query names the file and the database's complaint
    mapping.files.get_mut("location.csv").unwrap().query = "SELECT nope FROM warehouses".into();
    let msg = extract_batch(&src, &mapping, &spool, &batch, &ExtractOptions::default(), &|_, _, _| {})
        .await
        .unwrap_err()
        .to_string();
    assert!(msg.starts_with("location.csv: the query failed") && msg.contains("nope"), "{msg}");
}

#[tokio::test]
async fn custom_files_carry_a_header() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("erp.db");
    generate_sample_erp_at(&db, SampleSize::Small, NaiveDate::from_ymd_opt(2026, 1, 31).unwrap()).await.unwrap();
    let src = SqliteSource::open(db.to_str().unwrap()).await.unwrap();
    let mut mapping = Mapping::default();
    for f in spec::STANDARD_FILES.iter().filter(|f| f.required) {
        mapping.files.insert(f.name.into(), Mapping::from_toml(ferry_sample::MAPPING).unwrap().files[f.name].clone());
    }
    let custom = "ut_001.csv".to_string();
    let query = "SELECT wh_code, name AS \"warehouse name\", 1.5 AS x, NULL AS empty FROM warehouses ORDER BY wh_code";
    mapping.files.insert(custom.clone(), ferry_connector::mapping::FileMapping::new(query));
    mapping.validate().unwrap();
    let spool = dir.path().join("spool");
    let batch = BatchId::parse("20260131T000000Z-00000002").unwrap();
    let opts = ExtractOptions { level: 1, threads: 1 };
    let (manifest, _) = extract_batch(&src, &mapping, &spool, &batch, &opts, &|_, _, _| {}).await.unwrap();
    let entry = manifest.files.last().unwrap();
    assert_eq!((entry.name.as_str(), entry.rows), ("ut_001.csv", 3));
    let mut text = String::new();
    ferry_io::bz::capped_decoder(
        std::fs::File::open(spool.join(batch.as_str()).join("ut_001.csv.bz2")).unwrap(),
        u64::MAX,
    )
    .read_to_string(&mut text)
    .unwrap();
    assert_eq!(text.lines().next().unwrap(), "wh_code,\"warehouse name\",x,empty");
    assert_eq!(text.lines().nth(1).unwrap(), "\"DC01\",\"Central DC, Riverside\",1.5,");
}

fn col(kind: Kind, required: bool) -> Column {
    Column { name: "c", kind, required }
}

fn fmt(kind: Kind, v: SqlValue) -> Result<String, String> {
    let mut s = String::new();
    format_value(&col(kind, false), &v, &mut s).map(|_| s).map_err(|e| e.to_string())
}

#[test]
fn values_are_formatted_per_spec() {
    let f = |x: f64| {
        let mut s = String::new();
        format_float(x, &mut s).unwrap();
        s
    };
    assert_eq!(f(0.1 + 0.2), "0.3");
    assert_eq!(f(12.0), "12");
    assert_eq!(f(-1.5), "-1.5");
    assert_eq!(f(-0.0), "0");
    assert_eq!(f(1.0 / 3.0), "0.333333333333333");
    assert_eq!(f(1e-7), "0.0000001");
    assert_eq!(f(1.5e16), "15000000000000000");
    assert_eq!(f(19.99 * 3.0), "59.97");
    assert!(format_float(f64::NAN, &mut String::new()).is_err());

    use SqlValue::*;
    assert_eq!(fmt(Kind::Dec, Float(0.1 + 0.2)).unwrap(), "0.3");
    assert_eq!(fmt(Kind::Dec, Float(-2.0)).unwrap(), "-2");
    assert_eq!(fmt(Kind::Dec, Int(-7)).unwrap(), "-7");
    assert_eq!(fmt(Kind::Dec, Text(" 12.50 ".into())).unwrap(), "12.5");
    for (raw, want) in [("+012.3400", "12.34"), ("5.000", "5"), ("-0.0", "0"), (".5", "0.5"), ("-7.", "-7"), ("0", "0")]
    {
        assert_eq!(fmt(Kind::Dec, Decimal(raw.into())).unwrap(), want, "{raw}");
    }
    assert_eq!(fmt(Kind::Dec, Decimal("123456789012345678.123456789".into())).unwrap(), "123456789012345678.123456789");
    assert!(fmt(Kind::Dec, Decimal("1E+2".into())).unwrap_err().contains("not a decimal"));
    assert_eq!(fmt(Kind::Flag, Bool(true)).unwrap(), "1");
    assert_eq!(fmt(Kind::Int, Bool(false)).unwrap(), "0");
    let day = chrono::NaiveDate::from_ymd_opt(2026, 2, 28).unwrap();
    assert_eq!(fmt(Kind::Date, Date(day)).unwrap(), "2026/02/28");
    assert_eq!(fmt(Kind::Date, Timestamp(day.and_hms_opt(23, 59, 59).unwrap())).unwrap(), "2026/02/28");
    assert!(fmt(Kind::Dec, Date(day)).is_err());
    assert!(fmt(Kind::Dec, Text("1,5".into())).unwrap_err().contains("not a decimal"));
    assert_eq!(fmt(Kind::Int, Float(12.0)).unwrap(), "12");
    assert!(fmt(Kind::Int, Float(12.5)).unwrap_err().contains("whole number"));
    assert_eq!(fmt(Kind::Dec, Null).unwrap(), "");

    for d in ["2026-02-28", "2026-02-28 13:45:00", "2026/02/28", "2026-02-28T13:45:00.123", "2026-02-28 13:45"] {
        assert_eq!(fmt(Kind::Date, Text(d.into())).unwrap(), "2026/02/28", "{d}");
    }
    assert_eq!(fmt(Kind::Date, Int(20260228)).unwrap(), "2026/02/28");
    for bad in [
        "2026-02-30",
        "28.02.2026",
        "2026-2-28",
        "26-02-28",
        "20260228",
        "2026-02-28 25:00:00",
        "2026/02/28 10:00",
        "2026-02-28 10:00:0",
        "2026-02-28x",
    ] {
        let e = fmt(Kind::Date, Text(bad.into())).unwrap_err();
        assert!(e.contains("not a date") && e.contains("YYYY-MM-DD"), "{bad}: {e}");
    }
    assert!(fmt(Kind::Date, Float(45000.0)).is_err());

    assert_eq!(fmt(Kind::Text, Text("a \"big\"\nbox, 10\u{e9}  ".into())).unwrap(), "\"a \"\"big\"\" box, 10\u{e9}\"");
    assert_eq!(fmt(Kind::Code, Text("  A-1  ".into())).unwrap(), "\"A-1\"");
    assert_eq!(fmt(Kind::Code, Int(42)).unwrap(), "\"42\"");
    assert_eq!(fmt(Kind::Text, Bytes("é".as_bytes().to_vec())).unwrap(), "\"é\"");
    assert!(fmt(Kind::Text, Bytes(vec![0xff, 0xfe])).unwrap_err().contains("BLOB"));
    assert_eq!(fmt(Kind::Flag, Int(1)).unwrap(), "1");
    assert!(fmt(Kind::Flag, Int(2)).is_err());
    assert_eq!(fmt(Kind::Unused, Text("x".into())).unwrap(), "");

    let mut s = String::new();
    let e = format_value(&Column { name: "supplier", kind: Kind::Code, required: true }, &Text("   ".into()), &mut s);
    assert_eq!(e, Err(FieldError::RequiredEmpty { column: "supplier".into() }), "blank text is empty");
}

/// CPU seconds this process used so far (user + system, all threads), from /proc; 0 where unavailable.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<f64> = after.split_whitespace().map(|x| x.parse().unwrap_or(0.0)).collect();
    // fields 14 and 15 of proc(5) are utime and stime in clock ticks (100 per second on Linux)
    (f.get(11).copied().unwrap_or(0.0) + f.get(12).copied().unwrap_or(0.0)) / 100.0
}

/// Throughput of each stage on a generated sample: `FERRY_BENCH_SIZE=medium cargo test --release -p ferry-connector
/// --test it extract::bench -- --ignored --nocapture`. Asserts that every stage saw the whole sample: the query
/// every sales line, the extract every mapped file with rows, bytes and a compression ratio, alike at both levels.
#[tokio::test(flavor = "multi_thread")]
#[ignore]
async fn bench() {
    let size = match std::env::var("FERRY_BENCH_SIZE").as_deref() {
        Ok("medium") => SampleSize::Medium,
        _ => SampleSize::Small,
    };
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("erp.db");
    let summary = generate_sample_erp_at(&db, size, NaiveDate::from_ymd_opt(2026, 11, 28).unwrap()).await.unwrap();
    eprintln!("generate {size:?}: {} rows in {:.1}s ({:?})", summary.total_rows(), summary.seconds, summary.tables);
    let src = SqliteSource::open(db.to_str().unwrap()).await.unwrap();
    let mapping = Mapping::from_toml(ferry_sample::MAPPING).unwrap();

    let q = &mapping.files["sales.csv"].query;
    let (t, c) = (std::time::Instant::now(), cpu_seconds());
    let n = src
        .rows(q)
        .fold(0u64, |n, r| async move {
            r.unwrap();
            n + 1
        })
        .await;
    let s = t.elapsed().as_secs_f64();
    eprintln!("query only: sales.csv {n} rows in {s:.2}s = {:.0} rows/s, {:.2} CPU s", n as f64 / s, cpu_seconds() - c);
    assert_eq!(Some(&n), summary.tables.get("sales_lines"), "the query reads every sales line");

    let rows: Vec<Vec<SqlValue>> = src.rows(q).map(|r| r.unwrap()).collect().await;
    let t = std::time::Instant::now();
    let mut out = String::new();
    for row in &rows {
        for (c, v) in spec::SALES.columns.iter().zip(row) {
            format_value(c, v, &mut out).unwrap();
            out.push(',');
        }
        out.push('\n');
        if out.len() > 1 << 16 {
            out.clear();
        }
    }
    let s = t.elapsed().as_secs_f64();
    eprintln!("format only: sales.csv {} rows in {s:.2}s = {:.0} rows/s", rows.len(), rows.len() as f64 / s);
    assert_eq!(rows.len() as u64, n);
    drop(rows);

    let mapped: Vec<String> = mapping.ordered().into_iter().map(|(name, _)| name.to_string()).collect();
    let mut per_level = Vec::new();

    for level in [9, 1] {
        let batch = BatchId::new(chrono::Utc::now());
        let opts = ExtractOptions { level, threads: 0 };
        let c = cpu_seconds();
        let (_, stats) = extract_batch(&src, &mapping, dir.path(), &batch, &opts, &|_, _, _| {}).await.unwrap();
        let mb = stats.bytes() as f64 / 1e6;
        eprintln!(
            "extract level {level}: {} rows, {mb:.1} MB -> {:.1} MB in {:.2}s = {:.0} rows/s, {:.1} MB/s plain, {:.2} CPU s",
            stats.rows(),
            stats.compressed_bytes() as f64 / 1e6,
            stats.seconds,
            stats.rows() as f64 / stats.seconds,
            mb / stats.seconds,
            cpu_seconds() - c
        );
        let names: Vec<&str> = stats.files.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, mapped, "level {level}: every mapped file, in order");
        for f in &stats.files {
            assert!(f.rows > 0 && f.bytes > 0 && f.compressed_bytes > 0, "level {level}: {f:?}");
        }
        assert_eq!(stats.files.iter().find(|f| f.name == "sales.csv").map(|f| f.rows), Some(n), "level {level}");
        let ratio = stats.bytes() as f64 / stats.compressed_bytes() as f64;
        assert!(ratio > 1.0 && stats.seconds > 0.0, "level {level}: ratio {ratio:.2} in {:.2} s", stats.seconds);
        per_level.push(stats.files.iter().map(|f| (f.name.clone(), f.rows, f.bytes)).collect::<Vec<_>>());
    }
    assert_eq!(per_level[0], per_level[1], "both levels extract the same rows and CSV bytes");
}
