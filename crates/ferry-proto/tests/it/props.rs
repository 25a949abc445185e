//! Property tests of the parsers that see untrusted input: the manifest (any bytes, any JSON-ish document) and
//! the CSV field checks (any text; formatting then parsing a valid value gives the value back). Case counts stay
//! modest so CI stays fast.

use ferry_proto::manifest::Manifest;
use ferry_proto::spec::{self, Column, Kind, Value, format_field, parse_field};
use proptest::prelude::*;
use serde_json::Value as Json;

fn json() -> impl Strategy<Value = Json> {
    let leaf = prop_oneof![
        Just(Json::Null),
        any::<bool>().prop_map(Json::Bool),
        any::<i64>().prop_map(Json::from),
        any::<u64>().prop_map(Json::from),
        any::<f64>().prop_map(|f| serde_json::Number::from_f64(f).map(Json::Number).unwrap_or(Json::Null)),
        ".{0,40}".prop_map(Json::String),
        prop::sample::select(vec!["stock.csv", "../x.csv", "ut_001.csv", "full", "incremental", "1"])
            .prop_map(|s| Json::String(s.into())),
    ];
    leaf.prop_recursive(4, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..8).prop_map(Json::Array),
            prop::collection::btree_map(".{0,12}", inner, 0..8).prop_map(|m| Json::Object(m.into_iter().collect())),
        ]
    })
}

/// A valid manifest as JSON (the shape every mutation starts from).
fn valid_manifest() -> Json {
    let files: Vec<Json> = spec::STANDARD_FILES
        .iter()
        .filter(|f| f.required)
        .map(|f| {
            serde_json::json!({ "name": f.name, "rows": 1, "bytes": 10, "compressed_bytes": 50,
                "md5": "0".repeat(32), "sha256": "a".repeat(64) })
        })
        .collect();
    serde_json::json!({
        "batch_id": "20261128T051600Z-3fa2b7c1", "tenant": "acme", "spec_version": ferry_proto::SPEC_VERSION,
        "connector_version": "0.1.0", "mode": "full", "extract_started": "2026-11-28T05:16:00Z",
        "extract_finished": "2026-11-28T05:17:00Z", "files": files,
    })
}

const FIELDS: &[&str] = &[
    "batch_id",
    "tenant",
    "spec_version",
    "connector_version",
    "mode",
    "extract_started",
    "extract_finished",
    "files",
];
const FILE_FIELDS: &[&str] = &["name", "rows", "bytes", "compressed_bytes", "md5", "sha256"];

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn manifest_parse_never_panics_on_any_bytes(bytes in prop::collection::vec(any::<u8>(), 0..2048)) {
        let _ = Manifest::parse(&bytes);
    }

    #[test]
    fn manifest_parse_never_panics_on_any_json(doc in json()) {
        let _ = Manifest::parse(&serde_json::to_vec(&doc).unwrap());
    }

    /// One field of a valid manifest (top level or of one file entry) replaced by anything: parsed or refused
    /// with an error, never a panic; whatever is accepted names only known files.
    #[test]
    fn a_valid_manifest_with_one_field_replaced_parses_or_is_refused(
        top in any::<bool>(), field in 0usize..8, file_field in 0usize..6, file in 0usize..6, value in json(),
    ) {
        let mut doc = valid_manifest();
        if top {
            doc[FIELDS[field]] = value;
        } else if let Some(f) = doc["files"].get_mut(file) {
            f[FILE_FIELDS[file_field]] = value;
        }
        if let Ok(m) = Manifest::parse(&serde_json::to_vec(&doc).unwrap()) {
            prop_assert!(m.files.iter().all(|f| spec::is_known_file(&f.name)));
        }
    }

    /// Sizes that add up beyond `MAX_TOTAL` are refused (checked sums, nothing wraps); sums within it pass.
    #[test]
    fn sums_beyond_max_total_are_refused(doc in any_valid_manifest(), extra in any::<u64>()) {
        let mut doc = doc;
        let files = doc["files"].as_array_mut().unwrap();
        let last = files.len() - 1;
        files[last]["compressed_bytes"] = Json::from(extra);
        let total: u128 = files.iter().map(|f| u128::from(f["compressed_bytes"].as_u64().unwrap())).sum();
        let m = Manifest::parse(&serde_json::to_vec(&doc).unwrap());
        prop_assert_eq!(m.is_ok(), total <= u128::from(ferry_proto::manifest::MAX_TOTAL), "{:?}", m.err());
    }

    /// Any full manifest with the required files, any of the optional and custom ones, in any order, with any
    /// counts, digests, ids and times is accepted, and reads back as written.
    #[test]
    fn every_valid_manifest_is_accepted(doc in any_valid_manifest()) {
        let m = Manifest::parse(&serde_json::to_vec(&doc).unwrap());
        prop_assert!(m.is_ok(), "{:?}: {doc}", m.err());
        let m = m.unwrap();
        prop_assert_eq!(m.batch_id.as_str(), doc["batch_id"].as_str().unwrap());
        prop_assert_eq!(&m.tenant, doc["tenant"].as_str().unwrap());
        let names: Vec<&str> = m.files.iter().map(|f| f.name.as_str()).collect();
        let want: Vec<&str> = doc["files"].as_array().unwrap().iter().map(|f| f["name"].as_str().unwrap()).collect();
        prop_assert_eq!(names, want);
        for (f, j) in m.files.iter().zip(doc["files"].as_array().unwrap()) {
            let n = |k: &str| j[k].as_u64().unwrap();
            prop_assert_eq!((f.rows, f.bytes, f.compressed_bytes), (n("rows"), n("bytes"), n("compressed_bytes")));
            prop_assert_eq!(&f.md5, j["md5"].as_str().unwrap());
            prop_assert_eq!(&f.sha256, j["sha256"].as_str().unwrap());
        }
    }
}

/// One file entry of a valid manifest named `name`: counts up to 2^56 (a manifest's totals must stay under
/// 2^63, `MAX_TOTAL`; sums beyond it are refused, see `sums_beyond_max_total_are_refused`), any lowercase hex
/// digests.
fn file_entry(name: String) -> impl Strategy<Value = Json> {
    let count = 0..=(1u64 << 56);
    (count.clone(), count.clone(), count, "[0-9a-f]{32}", "[0-9a-f]{64}").prop_map(
        move |(rows, bytes, compressed_bytes, md5, sha256)| {
            serde_json::json!({ "name": name, "rows": rows, "bytes": bytes, "compressed_bytes": compressed_bytes,
                "md5": md5, "sha256": sha256 })
        },
    )
}

/// A valid full manifest (as JSON): every required standard file, any subset of the optional ones and up to
/// four custom files, shuffled; any batch id, tenant, version and extract times.
fn any_valid_manifest() -> impl Strategy<Value = Json> {
    let optional: Vec<&str> = spec::STANDARD_FILES.iter().filter(|f| !f.required).map(|f| f.name).collect();
    let names = (
        prop::sample::subsequence(optional.clone(), 0..=optional.len()),
        prop::collection::btree_set(0u32..1_000_000, 0..4),
    )
        .prop_map(|(optional, custom)| {
            let required = spec::STANDARD_FILES.iter().filter(|f| f.required).map(|f| f.name.to_string());
            let custom = custom.into_iter().map(|n| format!("ut_{n:03}.csv"));
            required.chain(optional.into_iter().map(String::from)).chain(custom).collect::<Vec<_>>()
        })
        .prop_shuffle();
    let files = names.prop_flat_map(|names| names.into_iter().map(file_entry).collect::<Vec<_>>());
    let time = (0i64..4_102_444_800).prop_map(|t| chrono::DateTime::from_timestamp(t, 0).unwrap().to_rfc3339());
    (files, "[0-9]{8}T[0-9]{6}Z-[0-9a-f]{8}", ".{0,40}", "[0-9]{1,3}\\.[0-9]{1,3}\\.[0-9]{1,3}", time.clone(), time)
        .prop_map(|(files, batch_id, tenant, version, started, finished)| {
            serde_json::json!({
                "batch_id": batch_id, "tenant": tenant, "spec_version": ferry_proto::SPEC_VERSION,
                "connector_version": version, "mode": "full", "extract_started": started,
                "extract_finished": finished, "files": files,
            })
        })
}

/// Every column kind the spec uses (each once required, once optional).
fn columns() -> Vec<Column> {
    let kinds = [
        Kind::Text,
        Kind::Code,
        Kind::Int,
        Kind::Dec,
        Kind::Date,
        Kind::OneOf(&["ST", "DC", "G"]),
        Kind::Flag,
        Kind::Unused,
    ];
    kinds.iter().flat_map(|&kind| [true, false].map(|required| Column { name: "col", kind, required })).collect()
}

/// One CSV field as the App reads it: the formatted text through the `csv` reader.
fn through_csv(formatted: &str) -> String {
    let mut r = csv::ReaderBuilder::new().has_headers(false).from_reader(formatted.as_bytes());
    let mut rec = csv::StringRecord::new();
    if r.read_record(&mut rec).unwrap() { rec.get(0).unwrap_or("").to_string() } else { String::new() }
}

/// A valid value of `kind`, as the ERP holds it, and what `parse_field` must turn it into.
fn valid_value(kind: Kind) -> BoxedStrategy<(String, Value)> {
    match kind {
        Kind::Text => "[^\r\n]{1,40}".prop_map(|s| (s.clone(), Value::Text(s))).boxed(),
        Kind::Code => {
            "[A-Za-z0-9][A-Za-z0-9 ._/\"-]{0,20}[A-Za-z0-9]".prop_map(|s| (s.clone(), Value::Text(s))).boxed()
        }
        Kind::Int => any::<i64>().prop_map(|n| (n.to_string(), Value::Int(n))).boxed(),
        Kind::Dec => (any::<bool>(), "[0-9]{1,12}", prop::option::of("[0-9]{1,6}"))
            .prop_map(|(neg, i, f)| {
                let s = format!("{}{i}{}", if neg { "-" } else { "" }, f.map(|f| format!(".{f}")).unwrap_or_default());
                (s.clone(), Value::Text(s))
            })
            .boxed(),
        Kind::Date => (1900i32..2200, 1u32..13, 1u32..29)
            .prop_map(|(y, m, d)| (format!("{y:04}/{m:02}/{d:02}"), Value::Text(format!("{y:04}-{m:02}-{d:02}"))))
            .boxed(),
        Kind::OneOf(codes) => {
            prop::sample::select(codes.to_vec()).prop_map(|c| (c.to_string(), Value::Text(c.into()))).boxed()
        }
        Kind::Flag => prop::sample::select(vec![0i64, 1]).prop_map(|n| (n.to_string(), Value::Int(n))).boxed(),
        Kind::Unused => ".{0,10}".prop_map(|_| (String::new(), Value::Null)).boxed(),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn parse_field_never_panics(raw in any::<String>(), col in prop::sample::select(columns())) {
        let _ = parse_field(&col, &raw);
        let mut out = String::new();
        format_field(col.kind, &raw, &mut out);
    }

    #[test]
    fn format_then_parse_gives_the_value_back(
        (col, (text, want)) in prop::sample::select(columns()).prop_flat_map(|c| (Just(c), valid_value(c.kind)))
    ) {
        let mut formatted = String::new();
        format_field(col.kind, &text, &mut formatted);
        let field = through_csv(&formatted);
        prop_assert_eq!(parse_field(&col, &field), Ok(want), "{:?} formatted as {:?}", text, formatted);
    }
}
