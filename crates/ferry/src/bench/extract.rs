//! `ferry bench extract`: how fast the Connector reads the ERP, against `sqlite3 -csv` on the same mapping
//! queries of the same database (issue 11, item 2: reading within 1.5x of `sqlite3`).
//!
//! Three contenders take turns for `--rounds` rounds, and each one's median is printed with its ratio to
//! `sqlite3`:
//! - `sqlite3 -csv`: every mapping query exported by `sqlite3 -bail -batch -readonly -csv` into `/dev/null`
//!   (one process per query, as the shell pipeline runs it);
//! - `ferry read`: every query streamed through the SQLite source ([`Source::row_chunks`]), rows only;
//! - `ferry read+validate`: [`check_mapping`], what `ferry connector check` runs: the rows converted to the
//!   standard CSV fields and every check of the extract (keys, references, dates), nothing written.
//!
//! With `--erp postgres://...` (and `--mapping`) the same on a PostgreSQL ERP: `psql -c "COPY (<query>) TO STDOUT
//! (FORMAT csv)"` into `/dev/null` is the yardstick, `ferry read` goes through the PostgreSQL source's COPY path,
//! and `ferry read row by row` is the sqlx row-by-row path it replaced (kept for types COPY cannot give exactly).
//! The password of the URL goes to `psql` in `PGPASSWORD`, never on its command line.
//!
//! Wall and CPU seconds (ours: this process; `sqlite3`/`psql`: their processes).

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};

use anyhow::{Context, bail};
use ferry_connector::check::CheckLimits;
use ferry_connector::erp::source::{PostgresSource, Recycle, Source, SqliteSource};
use ferry_connector::erp::{TextEncoding, redact_url};
use ferry_connector::extract::check_mapping;
use ferry_connector::mapping::Mapping;
use ferry_sample::generate_sample_erp;
use futures::StreamExt;

use super::measure::{Clock, Timed, load_average};
use super::report::{int, print_grid, secs};

#[derive(clap::Args, Debug)]
pub struct ExtractArgs {
    /// Sample ERP size (ferry sample-erp): small, medium or large.
    #[arg(long, default_value = "small", value_parser = ["small", "medium", "large"])]
    size: String,
    /// An existing ERP instead of a generated sample (with --mapping): an SQLite file, or a `postgres://` URL.
    #[arg(long, requires = "mapping")]
    erp: Option<String>,
    /// The mapping whose queries are run (default: the sample ERP's).
    #[arg(long, requires = "erp")]
    mapping: Option<PathBuf>,
    /// Rounds; each contender runs once per round, taking turns, and its median is kept.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=20))]
    rounds: u32,
    /// Working folder for the generated ERP, new or empty, kept afterwards (default: a temporary folder).
    #[arg(long)]
    dir: Option<PathBuf>,
}

/// The ERP a bench runs on.
enum Erp {
    Sqlite(PathBuf),
    Postgres(String),
}

pub async fn run(args: ExtractArgs) -> anyhow::Result<ExitCode> {
    let (tmp, dir) = super::work_dir(args.dir.clone())?;
    let (erp, mapping_text, what) = match (&args.erp, &args.mapping) {
        (Some(erp), Some(m)) => {
            let text = std::fs::read_to_string(m).with_context(|| format!("cannot read {}", m.display()))?;
            let what = format!("--erp {} --mapping {}", redact_url(erp), m.display());
            let erp = if erp.starts_with("postgres://") || erp.starts_with("postgresql://") {
                Erp::Postgres(erp.clone())
            } else {
                Erp::Sqlite(PathBuf::from(erp))
            };
            (erp, text, what)
        }
        _ => {
            let size = crate::demo::parse_size(&args.size)?;
            let erp = dir.join("erp.db");
            let t = std::time::Instant::now();
            let summary = generate_sample_erp(&erp, size).await.context("generating the sample ERP")?;
            println!(
                "sample ERP ({}): {} rows in {:.1} s",
                args.size,
                int(summary.total_rows()),
                t.elapsed().as_secs_f64()
            );
            (Erp::Sqlite(erp), ferry_sample::MAPPING.to_string(), format!("--size {}", args.size))
        }
    };
    let tool = match &erp {
        Erp::Sqlite(_) => "sqlite3",
        Erp::Postgres(_) => "psql",
    };
    if Command::new(tool).arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status().is_err() {
        bail!("{tool} is not installed (Debian: apt-get install {tool}); the bench compares against it");
    }
    let mapping = Mapping::from_toml(&mapping_text).context("the mapping")?;
    println!("ferry bench extract {what} --rounds {}", args.rounds);
    println!("load average {}", load_average());
    let source: Box<dyn Source> = match &erp {
        Erp::Sqlite(path) => Box::new(SqliteSource::open(&path.display().to_string()).await?),
        Erp::Postgres(url) => Box::new(PostgresSource::open(url, None, TextEncoding::Utf8).await?),
    };
    let queries: Vec<(String, String)> =
        mapping.ordered().into_iter().map(|(n, f)| (n.to_string(), f.query.clone())).collect();

    let postgres = matches!(erp, Erp::Postgres(_));
    let contenders = if postgres { 4 } else { 3 };
    let mut runs: Vec<Vec<Timed>> = vec![Vec::new(); contenders];
    let mut rows = 0;
    for round in 1..=args.rounds {
        let q = queries.clone();
        runs[0].push(match &erp {
            Erp::Sqlite(db) => {
                let db = db.clone();
                tokio::task::spawn_blocking(move || sqlite3(&db, &q)).await??
            }
            Erp::Postgres(url) => {
                let url = url.clone();
                tokio::task::spawn_blocking(move || psql(&url, &q)).await??
            }
        });
        let (t, n) = read(source.as_ref(), &queries).await?;
        rows = n;
        runs[1].push(t);
        runs[2].push(validate(source.as_ref(), &mapping).await?);
        if postgres {
            runs[3].push(read_rows(source.as_ref(), &queries).await?);
        }
        let line: Vec<String> = runs.iter().map(|r| secs(r[round as usize - 1].secs)).collect();
        println!("round {round}: {} s", line.join(" s, "));
    }
    println!();
    let base = median(&runs[0]);
    let names: &[&str] = if postgres {
        &[
            "psql COPY (FORMAT csv) > /dev/null",
            "ferry read (PostgreSQL source, COPY)",
            "ferry read+validate (connector check)",
            "ferry read row by row (sqlx)",
        ]
    } else {
        &["sqlite3 -csv > /dev/null", "ferry read (SQLite source)", "ferry read+validate (connector check)"]
    };
    let table: Vec<Vec<String>> = names
        .iter()
        .zip(&runs)
        .map(|(name, r)| {
            let m = median(r);
            let cpu = median_cpu(r).map_or("-".to_string(), secs);
            vec![name.to_string(), secs(m), cpu, format!("{:.2}x", m / base.max(1e-9))]
        })
        .collect();
    print_grid(&["contender", "median s", "median CPU s", &format!("vs {tool}")], &[false, true, true, true], &table);
    println!(
        "{} rows in {} queries; goal (issue 11): ferry read within 1.5x of {tool}; load average {}",
        int(rows),
        queries.len(),
        load_average()
    );
    if let Some(t) = tmp {
        println!("removing {}", t.path().display());
    }
    Ok(ExitCode::SUCCESS)
}

/// Every query through `psql -c "COPY (...) TO STDOUT (FORMAT csv)"`, one process each, output discarded; the
/// URL's password goes in `PGPASSWORD`.
fn psql(url: &str, queries: &[(String, String)]) -> anyhow::Result<Timed> {
    let password = ferry_connector::erp::password_in_url(url);
    let without = without_password(url);
    let clock = Clock::start();
    for (name, sql) in queries {
        let q = sql.trim().trim_end_matches(';');
        let mut cmd = Command::new("psql");
        cmd.args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", without.as_str(), "-c"])
            .arg(format!("COPY (\n{q}\n) TO STDOUT (FORMAT csv)"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if let Some(p) = &password {
            cmd.env("PGPASSWORD", p);
        }
        let out = cmd.output().context("starting psql")?;
        if !out.status.success() {
            bail!("psql failed on {name}: {}", String::from_utf8_lossy(&out.stderr).trim());
        }
    }
    Ok(clock.children(0))
}

/// `url` without the password of its user part (`postgres://user:pw@host/db` -> `postgres://user@host/db`).
fn without_password(url: &str) -> String {
    let Some(start) = url.find("://").map(|i| i + 3) else { return url.to_string() };
    let end = url[start..].find(['/', '?', '#']).map_or(url.len(), |i| start + i);
    match url[start..end].rfind('@').and_then(|at| url[start..start + at].find(':').map(|c| (start + c, start + at))) {
        Some((colon, at)) => format!("{}{}", &url[..colon], &url[at..]),
        None => url.to_string(),
    }
}

/// Every query through [`Source::rows`] (the row-by-row path), rows only.
async fn read_rows(source: &dyn Source, queries: &[(String, String)]) -> anyhow::Result<Timed> {
    let clock = Clock::start();
    for (name, sql) in queries {
        let mut rows = source.rows(sql);
        while let Some(row) = rows.next().await {
            row.with_context(|| format!("reading {name}"))?;
        }
    }
    Ok(clock.ours(0))
}

/// Every query through `sqlite3 -csv`, one process each, output discarded.
fn sqlite3(db: &Path, queries: &[(String, String)]) -> anyhow::Result<Timed> {
    let clock = Clock::start();
    for (name, sql) in queries {
        let mut child = Command::new("sqlite3")
            .args(["-bail", "-batch", "-readonly", "-csv"])
            .arg(db)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting sqlite3")?;
        if let Some(mut stdin) = child.stdin.take() {
            use std::io::Write;
            stdin.write_all(sql.as_bytes())?;
            stdin.write_all(b";\n")?;
        }
        let out = child.wait_with_output()?;
        if !out.status.success() {
            bail!("sqlite3 failed on {name}: {}", String::from_utf8_lossy(&out.stderr).trim());
        }
    }
    Ok(clock.children(0))
}

/// Every query through the source's chunks, rows only (chunks given back for reuse, as the extract does).
async fn read(source: &dyn Source, queries: &[(String, String)]) -> anyhow::Result<(Timed, u64)> {
    let clock = Clock::start();
    let mut rows = 0u64;
    for (name, sql) in queries {
        let recycle = Recycle::default();
        let mut chunks = source.row_chunks(sql, 1024, recycle.clone());
        while let Some(chunk) = chunks.next().await {
            let chunk = chunk.with_context(|| format!("reading {name}"))?;
            rows += chunk.len() as u64;
            recycle.give(chunk);
        }
    }
    Ok((clock.ours(0), rows))
}

/// `ferry connector check`: read, convert and validate every file.
async fn validate(source: &dyn Source, mapping: &Mapping) -> anyhow::Result<Timed> {
    let clock = Clock::start();
    let report = check_mapping(source, mapping, CheckLimits::default(), &|_, _, _| {}).await;
    let t = clock.ours(0);
    if report.errors() > 0 {
        println!("note: the check found {} error(s)", report.errors());
    }
    Ok(t)
}

fn median(runs: &[Timed]) -> f64 {
    let mut v: Vec<f64> = runs.iter().map(|t| t.secs).collect();
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

fn median_cpu(runs: &[Timed]) -> Option<f64> {
    let mut v: Vec<f64> = runs.iter().map(|t| t.cpu).collect::<Option<_>>()?;
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied()
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_password_leaves_the_url() {
        assert_eq!(super::without_password("postgres://u:p%40ss@h:5432/db?x=1"), "postgres://u@h:5432/db?x=1");
        assert_eq!(super::without_password("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(super::without_password("postgres://h/db"), "postgres://h/db");
    }
}
