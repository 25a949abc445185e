//! `ferry comms db migrate --to postgres://...`: move a Comms server's metadata from its SQLite file
//! (`<data_dir>/comms.db`) into an EMPTY PostgreSQL database, with the server stopped.
//!
//! One PostgreSQL transaction holds everything: the schema (the same embedded migrations `serve` runs, each in a
//! savepoint), then every table in foreign-key order, streamed from one SQLite read snapshot (taken with
//! `BEGIN IMMEDIATE`, so nothing writes the file meanwhile) in batches of bound multi-row `INSERT`s: no table is
//! held in memory. A failure anywhere rolls the whole transaction back and leaves the target empty. After the
//! commit the row counts of every table are compared and the audit chain is verified on PostgreSQL.
//!
//! Table and column names are read from the PostgreSQL catalog (the schema the migrations just created), checked
//! against the SQLite file's, restricted to `[a-z0-9_]` and quoted: identifiers cannot be bound. Every value is
//! bound.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use anyhow::{Context, bail};
use futures::TryStreamExt;
use sqlx::{AssertSqlSafe, Row};

use crate::db::{self, DatabaseConfig, Db};

/// Rows per `INSERT` (and never more than PostgreSQL's 65,535 bound parameters).
const BATCH_ROWS: usize = 500;

/// What was copied: (table, rows) in copy order, and the audit entries verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MoveReport {
    pub tables: Vec<(String, u64)>,
    pub audit_entries: u64,
    /// Sequences set past the largest id copied (none today: every id is given by the application).
    pub sequences: Vec<String>,
}

impl MoveReport {
    pub fn rows(&self) -> u64 {
        self.tables.iter().map(|t| t.1).sum()
    }
}

/// A column's kind, from its PostgreSQL type: how a SQLite value is read and bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Int,
    Text,
    Real,
    Bool,
}

enum Val {
    Int(Option<i64>),
    Text(Option<String>),
    Real(Option<f64>),
    Bool(Option<bool>),
}

fn kind_of(table: &str, column: &str, pg_type: &str) -> anyhow::Result<Kind> {
    Ok(match pg_type {
        "bigint" | "integer" | "smallint" => Kind::Int,
        "text" | "character varying" | "character" => Kind::Text,
        "double precision" | "real" | "numeric" => Kind::Real,
        "boolean" => Kind::Bool,
        other => bail!("{table}.{column} has the PostgreSQL type {other}, which this migration does not copy yet"),
    })
}

/// A catalog name fit to be quoted into a statement: `[a-z0-9_]` only.
fn ident(name: &str) -> anyhow::Result<String> {
    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_') {
        bail!("unexpected table or column name {name:?} in the schema: not copied");
    }
    Ok(format!("\"{name}\""))
}

/// Copy the SQLite metadata at `sqlite_path` into the empty PostgreSQL database of `to`. `progress` gets one
/// line per table (and one per 50,000 rows of a large table).
pub async fn sqlite_to_postgres(
    sqlite_path: &Path,
    to: &DatabaseConfig,
    progress: &mut (dyn FnMut(String) + Send),
) -> anyhow::Result<MoveReport> {
    to.validate()?;
    if !to.is_postgres() {
        bail!("--to must be a postgres:// URL");
    }
    if !sqlite_path.is_file() {
        bail!(
            "{} does not exist: nothing to migrate (is --config the comms.toml of the server to move?)",
            sqlite_path.display()
        );
    }
    let shown = db::redact_url(&to.url);
    // brings an older file's schema up to date first, as `serve` would
    let src = match db::open_sqlite(sqlite_path).await? {
        Db::Sqlite(pool) => pool,
        Db::Postgres(_) => bail!("{} did not open as SQLite", sqlite_path.display()),
    };
    let pg = db::connect_postgres(to, 2).await?;

    let existing: Vec<(String, String)> = sqlx::query_as(
        "SELECT table_schema::text, table_name::text FROM information_schema.tables
         WHERE table_schema NOT IN ('pg_catalog', 'information_schema') ORDER BY 1, 2 LIMIT 6",
    )
    .fetch_all(&pg)
    .await
    .with_context(|| format!("cannot read the catalog of {shown}"))?;
    if !existing.is_empty() {
        let names: Vec<String> = existing.iter().take(5).map(|(s, t)| format!("{s}.{t}")).collect();
        bail!(
            "the PostgreSQL database {shown} is not empty (it has tables: {}{}); migrate into a new, empty \
             database (e.g. `createdb -O ferry ferry_comms`) — nothing was changed",
            names.join(", "),
            if existing.len() > 5 { ", ..." } else { "" }
        );
    }

    // the SQLite snapshot: one read transaction that also keeps writers out while it lasts
    let mut s = src.acquire().await?;
    sqlx::query("BEGIN IMMEDIATE").execute(&mut *s).await.with_context(|| {
        format!(
            "cannot lock {} for reading (is a Comms server still running on it? stop it first)",
            sqlite_path.display()
        )
    })?;
    let sqlite_tables: BTreeSet<String> = sqlx::query_scalar(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' AND name <> '_sqlx_migrations'",
    )
    .fetch_all(&mut *s)
    .await?
    .into_iter()
    .collect();

    let mut tx = pg.begin().await?;
    progress(format!("creating the schema on {shown}"));
    sqlx::migrate!("./migrations/postgres")
        .run(&mut *tx)
        .await
        .with_context(|| format!("cannot create the schema on {shown}"))?;

    let pg_tables: BTreeSet<String> = sqlx::query_scalar(
        "SELECT table_name::text FROM information_schema.tables
         WHERE table_schema = current_schema() AND table_type = 'BASE TABLE' AND table_name <> '_sqlx_migrations'",
    )
    .fetch_all(&mut *tx)
    .await?
    .into_iter()
    .collect();
    if pg_tables != sqlite_tables {
        bail!(
            "the SQLite and PostgreSQL schemas differ (only in SQLite: {:?}; only in PostgreSQL: {:?}): is this \
             ferry the version that wrote {}?",
            sqlite_tables.difference(&pg_tables).collect::<Vec<_>>(),
            pg_tables.difference(&sqlite_tables).collect::<Vec<_>>(),
            sqlite_path.display()
        );
    }
    let deps: Vec<(String, String)> = sqlx::query_as(
        "SELECT c.conrelid::regclass::text, c.confrelid::regclass::text FROM pg_constraint c
         JOIN pg_namespace n ON n.oid = c.connamespace
         WHERE c.contype = 'f' AND n.nspname = current_schema()",
    )
    .fetch_all(&mut *tx)
    .await?;
    let order = dependency_order(&pg_tables, &deps)?;

    // rows the migrations seeded (access_version's one row) make way for the copied ones: children first
    for t in order.iter().rev() {
        sqlx::query(AssertSqlSafe(format!("DELETE FROM {}", ident(t)?))).execute(&mut *tx).await?;
    }

    let mut report = MoveReport { tables: Vec::new(), audit_entries: 0, sequences: Vec::new() };
    for table in &order {
        let cols: Vec<(String, String)> = sqlx::query_as(
            "SELECT column_name::text, data_type::text FROM information_schema.columns
             WHERE table_schema = current_schema() AND table_name = $1 ORDER BY ordinal_position",
        )
        .bind(table)
        .fetch_all(&mut *tx)
        .await?;
        let sqlite_cols: BTreeSet<String> = sqlx::query_scalar("SELECT name FROM pragma_table_info($1)")
            .bind(table)
            .fetch_all(&mut *s)
            .await?
            .into_iter()
            .collect();
        let pg_cols: BTreeSet<String> = cols.iter().map(|c| c.0.clone()).collect();
        if pg_cols != sqlite_cols {
            bail!("table {table}: the columns differ between SQLite ({sqlite_cols:?}) and PostgreSQL ({pg_cols:?})");
        }
        let kinds = cols.iter().map(|(c, t)| kind_of(table, c, t)).collect::<anyhow::Result<Vec<Kind>>>()?;
        let col_list = cols.iter().map(|c| ident(&c.0)).collect::<anyhow::Result<Vec<_>>>()?.join(", ");
        let per_insert = BATCH_ROWS.min(60_000 / cols.len().max(1)).max(1);
        let select = format!("SELECT {col_list} FROM {} ORDER BY rowid", ident(table)?);
        let mut rows = sqlx::query(AssertSqlSafe(select)).fetch(&mut *s);
        let mut pending: Vec<Vec<Val>> = Vec::with_capacity(per_insert);
        let mut copied = 0u64;
        loop {
            let next = rows.try_next().await.with_context(|| format!("cannot read table {table} from SQLite"))?;
            if let Some(r) = &next {
                let mut vals = Vec::with_capacity(kinds.len());
                for (i, k) in kinds.iter().enumerate() {
                    let v = match k {
                        Kind::Int => r.try_get(i).map(Val::Int),
                        Kind::Text => r.try_get(i).map(Val::Text),
                        Kind::Real => r.try_get(i).map(Val::Real),
                        Kind::Bool => r.try_get(i).map(Val::Bool),
                    }
                    .with_context(|| format!("table {table}, column {}: a value of the wrong type", cols[i].0))?;
                    vals.push(v);
                }
                pending.push(vals);
            }
            if pending.len() >= per_insert || (next.is_none() && !pending.is_empty()) {
                let n = pending.len() as u64;
                let mut b =
                    sqlx::QueryBuilder::<sqlx::Postgres>::new(format!("INSERT INTO {} ({col_list}) ", ident(table)?));
                b.push_values(pending.drain(..), |mut row, vals| {
                    for v in vals {
                        match v {
                            Val::Int(x) => row.push_bind(x),
                            Val::Text(x) => row.push_bind(x),
                            Val::Real(x) => row.push_bind(x),
                            Val::Bool(x) => row.push_bind(x),
                        };
                    }
                });
                b.build()
                    .execute(&mut *tx)
                    .await
                    .with_context(|| format!("cannot copy rows of {table} into {shown}"))?;
                let before = copied;
                copied += n;
                if copied / 50_000 != before / 50_000 {
                    progress(format!("  {table}: {copied} rows so far"));
                }
            }
            if next.is_none() {
                break;
            }
        }
        drop(rows);
        progress(format!("{table}: {copied} rows"));
        report.tables.push((table.clone(), copied));
    }

    // serial / identity columns (none today) continue after the largest id copied
    let serials: Vec<(String, String)> = sqlx::query_as(
        "SELECT table_name::text, column_name::text FROM information_schema.columns
         WHERE table_schema = current_schema() AND (column_default LIKE 'nextval(%' OR is_identity = 'YES')",
    )
    .fetch_all(&mut *tx)
    .await?;
    for (t, c) in serials {
        let sql = format!(
            "SELECT setval(pg_get_serial_sequence($1, $2), (SELECT COALESCE(max({}), 0) + 1 FROM {}), false)",
            ident(&c)?,
            ident(&t)?
        );
        sqlx::query(AssertSqlSafe(sql)).bind(&t).bind(&c).execute(&mut *tx).await?;
        report.sequences.push(format!("{t}.{c}"));
    }
    tx.commit().await.with_context(|| format!("cannot commit the copy into {shown}"))?;
    progress("committed; verifying".into());

    // verify: row counts per table, then the audit chain, on PostgreSQL against the SQLite snapshot
    for (table, copied) in &report.tables {
        let count = format!("SELECT count(*) FROM {}", ident(table)?);
        let in_sqlite: i64 = sqlx::query_scalar(AssertSqlSafe(count.clone())).fetch_one(&mut *s).await?;
        let in_pg: i64 = sqlx::query_scalar(AssertSqlSafe(count)).fetch_one(&pg).await?;
        if in_sqlite != in_pg || u64::try_from(in_pg).ok() != Some(*copied) {
            bail!("table {table}: SQLite holds {in_sqlite} rows, PostgreSQL {in_pg} after the copy ({copied} copied)");
        }
    }
    sqlx::query("ROLLBACK").execute(&mut *s).await?;
    drop(s);
    let target = Db::Postgres(pg);
    report.audit_entries = match db::verify_audit(&target).await? {
        Ok(n) => n,
        Err(why) => bail!("the audit chain does not verify on PostgreSQL after the copy: {why}"),
    };
    let sqlite_audit = match db::verify_audit(&Db::Sqlite(src.clone())).await? {
        Ok(n) => n,
        Err(why) => bail!("the audit chain of the SQLite file itself does not verify ({why}); copied as it was"),
    };
    if sqlite_audit != report.audit_entries {
        bail!("the audit chain has {sqlite_audit} entries in SQLite but {} on PostgreSQL", report.audit_entries);
    }
    target.close().await;
    src.close().await;
    Ok(report)
}

/// Tables ordered so that every table comes after the tables its foreign keys reference.
fn dependency_order(tables: &BTreeSet<String>, deps: &[(String, String)]) -> anyhow::Result<Vec<String>> {
    let unquote = |s: &str| s.trim_matches('"').rsplit('.').next().unwrap_or(s).trim_matches('"').to_string();
    let mut needs: BTreeMap<String, BTreeSet<String>> = tables.iter().map(|t| (t.clone(), BTreeSet::new())).collect();
    for (child, parent) in deps {
        let (c, p) = (unquote(child), unquote(parent));
        if c != p
            && let Some(n) = needs.get_mut(&c)
        {
            n.insert(p);
        }
    }
    let mut order = Vec::new();
    while !needs.is_empty() {
        let ready: Vec<String> =
            needs.iter().filter(|(_, n)| n.iter().all(|p| !needs.contains_key(p))).map(|(t, _)| t.clone()).collect();
        if ready.is_empty() {
            bail!(
                "the foreign keys between {:?} form a cycle: cannot order the copy",
                needs.keys().collect::<Vec<_>>()
            );
        }
        for t in ready {
            needs.remove(&t);
            order.push(t);
        }
    }
    Ok(order)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parents_come_before_children() {
        let tables: BTreeSet<String> =
            ["keys", "tenants", "app_servers", "audit"].iter().map(|s| s.to_string()).collect();
        let deps =
            vec![("keys".to_string(), "tenants".to_string()), ("tenants".to_string(), "app_servers".to_string())];
        let o = dependency_order(&tables, &deps).unwrap();
        let pos = |t: &str| o.iter().position(|x| x == t).unwrap();
        assert!(pos("app_servers") < pos("tenants") && pos("tenants") < pos("keys"), "{o:?}");
        let cyc = vec![("a".to_string(), "b".to_string()), ("b".to_string(), "a".to_string())];
        let ab: BTreeSet<String> = ["a", "b"].iter().map(|s| s.to_string()).collect();
        assert!(dependency_order(&ab, &cyc).is_err());
    }

    #[test]
    fn only_plain_names_are_quoted_into_statements() {
        assert_eq!(ident("audit").unwrap(), "\"audit\"");
        assert!(ident("a\"; DROP TABLE x; --").is_err());
        assert!(ident("").is_err());
    }
}
