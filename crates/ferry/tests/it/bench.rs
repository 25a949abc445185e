//! `ferry bench pipeline` (issue 11): Ferry's three processes against the shell pipeline with real sshd
//! instances, one round on the small sample ERP. Checks that the table holds every contender's row with its
//! figures, Ferry's stages and each process's CPU and peak RSS — never the ratios (the machine is shared).
//! Without sshd, lbzip2, bzip2 or sqlite3 the shell contenders must say what to install; under `FERRY_CI=1`
//! they must run (`.ci/run` installs them).

use crate::procs::ferry_output;

/// The cells of the first table row whose leading cells start with `labels`.
fn row<'a>(out: &'a str, labels: &[&str]) -> Vec<&'a str> {
    out.lines()
        .map(|l| l.split(" | ").map(str::trim).collect::<Vec<_>>())
        .find(|cells| cells.len() > labels.len() && labels.iter().zip(cells).all(|(l, c)| c.starts_with(l)))
        .unwrap_or_else(|| panic!("no row {labels:?} in:\n{out}"))
}

fn number(cell: &str, what: &str, out: &str) -> f64 {
    cell.trim_end_matches(" MiB").replace(',', "").parse().unwrap_or_else(|_| panic!("{what}: {cell:?} in:\n{out}"))
}

fn have(prog: &str) -> bool {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path).chain(["/usr/sbin".into(), "/sbin".into()]).any(|d| d.join(prog).is_file())
}

#[test]
fn bench_pipeline_prints_every_contender_with_figures() {
    let out = ferry_output(&["bench", "pipeline", "--size", "small", "--rounds", "1"]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    println!("{text}");
    assert!(out.status.success(), "{}\n{text}", String::from_utf8_lossy(&out.stderr));

    let ferry = row(&text, &["ferry (3 processes)"]);
    assert!(number(ferry[1], "Ferry's median", &text) > 0.0);
    assert!(number(ferry[3], "Ferry's CPU", &text) > 0.0);
    assert!(number(ferry[6], "Ferry's rows", &text) > 100_000.0, "the small sample's rows");
    for stage in ["extract+validate+bzip2", "upload SFTP", "relay SFTP", "decompress+verify+import"] {
        assert!(number(row(&text, &[stage])[1], stage, &text) > 0.0);
    }
    for process in ["connector sync", "comms serve", "app serve (import"] {
        let r = row(&text, &["ferry (3 processes)", process]);
        number(r[2], process, &text);
        assert!(number(r[3], process, &text) > 0.0, "{process} has a peak RSS");
    }

    let tools = ["sshd", "sftp", "sqlite3", "lbzip2", "bzip2"].iter().all(|p| have(p));
    let ci = std::env::var("FERRY_CI").is_ok_and(|v| v == "1");
    assert!(tools || !ci, "FERRY_CI=1 but a tool is missing (apt-get install openssh-server lbzip2 bzip2 sqlite3)");
    for shell in ["shell lbzip2 -n", "shell bzip2 -9"] {
        let r = row(&text, &[shell]);
        if !tools && r[2].starts_with("skipped:") {
            assert!(r[2].contains("apt-get install"), "{r:?}");
            continue;
        }
        assert!(number(r[1], shell, &text) > 0.0, "{r:?}");
        assert!(number(r[3], shell, &text) > 0.0, "{r:?}");
        assert_eq!(r[6], ferry[6], "the shell loads as many rows as Ferry imports");
        assert!(text.contains(&format!("Ferry / {}", r[0])), "the ratio line names {shell}");
        let script = row(&text, &[r[0], "sh script"]);
        assert!(number(script[3], "the script's peak RSS", &text) > 0.0);
    }
}

/// The value cell of the `name | value` row of `ferry bench cluster`'s output.
fn value(out: &str, name: &str) -> f64 {
    let cells = row(out, &[name]);
    number(cells[1], name, out)
}

/// `ferry bench cluster` (issue 12, item 6) at CI size: 4 Connectors through 3 replicas behind haproxy and 2 App
/// servers, then 50 idle long-polls on one replica. Checks every row is printed with a sane figure. Skips without
/// haproxy or a test PostgreSQL (`FERRY_TEST_POSTGRES_URL`), fails under `FERRY_CI=1`.
#[test]
fn bench_cluster_prints_every_row_with_sane_figures() {
    if crate::replicas::haproxy_bin().is_none() {
        return;
    }
    if std::env::var("FERRY_TEST_POSTGRES_URL").is_err() {
        assert!(!std::env::var("FERRY_CI").is_ok_and(|v| v == "1"), "FERRY_CI=1 but FERRY_TEST_POSTGRES_URL is unset");
        eprintln!("FERRY_TEST_POSTGRES_URL not set: skipped (scripts/test-databases.sh)");
        return;
    }
    let out = ferry_output(&["bench", "cluster", "--connectors", "4", "--idle", "50", "--sales-every", "50"]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    println!("{text}");
    assert!(out.status.success(), "{}\n{text}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(value(&text, "batches imported"), 4.0);
    let wall = value(&text, "wall time s");
    let per_minute = value(&text, "batches per minute");
    assert!((per_minute - 4.0 * 60.0 / wall).abs() / per_minute < 0.1, "{per_minute} per minute in {wall} s");
    let (p50, p95) = (value(&text, "sync start to imported p50 s"), value(&text, "sync start to imported p95 s"));
    assert!(0.0 < p50 && p50 <= p95 && p95 <= wall + 1.0, "p50 {p50} p95 {p95} wall {wall}");
    for process in ["comms-0", "comms-1", "comms-2", "app0", "app1"] {
        let r = row(&text, &[process]);
        let (cpu, rss) = (number(r[1], process, &text), number(r[2], process, &text));
        assert!(cpu >= 0.0 && (1.0..4096.0).contains(&rss), "{process}: CPU {cpu} s, peak RSS {rss} MiB");
    }
    // the replicas that relayed and the App servers that imported did work
    assert!(number(row(&text, &["app0"])[1], "app0", &text) > 0.0);
    assert!(value(&text, "connections held") >= 50.0);
    let (before, after) = (value(&text, "RSS before MiB"), value(&text, "RSS after MiB"));
    assert!(before > 1.0 && after >= before, "RSS {before} -> {after} MiB");
    let per = value(&text, "RSS per connection KiB");
    assert!((0.0..2048.0).contains(&per), "{per} KiB per connection");
    assert_eq!(value(&text, "poll errors"), 0.0);
}
