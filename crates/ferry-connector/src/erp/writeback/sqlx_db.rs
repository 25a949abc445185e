//! The write-back through sqlx, one implementation for SQLite, PostgreSQL and MySQL/MariaDB ([`SqlxWriteBack`]):
//! the one place those databases are opened read-write; one transaction per file (with the optional ledger in
//! it), every value bound as a parameter, never written into the SQL text.
//!
//! SQLite and MySQL convert bound text to the column's type themselves. PostgreSQL does not convert text
//! parameters to numbers or dates, so each CSV field is bound with the type PostgreSQL infers for its placeholder
//! (integers, floats, `NUMERIC` exactly, booleans, dates, timestamps; anything else as text). `?` placeholders are
//! numbered `$1, $2, ...` for PostgreSQL, so one statement works on every backend.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use chrono::{NaiveDate, NaiveDateTime};
use futures::future::BoxFuture;
use sqlx::encode::IsNull;
use sqlx::error::BoxDynError;
use sqlx::mysql::{MySqlConnectOptions, MySqlConnection};
use sqlx::postgres::{PgArgumentBuffer, PgConnectOptions, PgConnection, PgTypeInfo, Postgres};
use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection};
use sqlx::{AssertSqlSafe, Connection, Either, Encode, Executor, SqlSafeStr, SqlStr, Statement as _, Type, TypeInfo};

use super::{Ledger, Statement, WriteBack, WriteBackError, WriteJob, check_count, field, next_record, record_err};
use crate::erp::{ErpConfig, ErpKind, password_in_url, redact_url, scrub};

/// An ERP database of one of the sqlx kinds, open read-write for the write-back.
pub struct SqlxWriteBack {
    conn: SqlxConnection,
    /// A page transaction is open ([`WriteBack::begin_page`]): each file is a savepoint in it.
    in_page: bool,
    /// The database without its password, for messages.
    target: String,
}

enum SqlxConnection {
    Sqlite(SqliteConnection),
    Postgres(PgConnection),
    MySql(MySqlConnection),
}

impl SqlxWriteBack {
    /// Opens `erp` read-write, by its kind. SQLite: `sqlite:` URLs as given, anything else as the path of an
    /// existing file (the Connector never creates the ERP database). PostgreSQL and MySQL/MariaDB: the URL with
    /// the password of `[erp]` (which never appears in a message).
    pub async fn open(erp: &ErpConfig) -> Result<SqlxWriteBack, WriteBackError> {
        let url = erp.url.as_str();
        let target = redact_url(url);
        let url_pw = password_in_url(url);
        let open_err = |reason: String, pw: Option<&str>| WriteBackError::Database {
            target: target.clone(),
            reason: format!("cannot open it for the write-back: {}", scrub(scrub(reason, url_pw.as_deref()), pw)),
        };
        let conn = match erp.kind {
            ErpKind::Sqlite => {
                let opts = if url.starts_with("sqlite:") {
                    SqliteConnectOptions::from_str(url).map_err(|e| open_err(e.to_string(), None))?
                } else {
                    let path = Path::new(url);
                    if !path.is_file() {
                        return Err(open_err("no such file; check url under [erp] in connector.toml".into(), None));
                    }
                    SqliteConnectOptions::new().filename(path)
                };
                let opts = opts.create_if_missing(false).foreign_keys(false).busy_timeout(Duration::from_secs(30));
                SqlxConnection::Sqlite(
                    SqliteConnection::connect_with(&opts).await.map_err(|e| open_err(e.to_string(), None))?,
                )
            }
            ErpKind::Postgres => {
                let password = erp.password().map_err(|e| open_err(e.to_string(), None))?;
                let pw = password.as_deref();
                let mut opts = PgConnectOptions::from_str(url).map_err(|e| open_err(e.to_string(), pw))?;
                if let Some(p) = pw {
                    opts = opts.password(p);
                }
                SqlxConnection::Postgres(
                    PgConnection::connect_with(&opts.application_name("ferry-connector"))
                        .await
                        .map_err(|e| open_err(e.to_string(), pw))?,
                )
            }
            ErpKind::MySql => {
                let password = erp.password().map_err(|e| open_err(e.to_string(), None))?;
                let pw = password.as_deref();
                let mut opts = MySqlConnectOptions::from_str(url).map_err(|e| open_err(e.to_string(), pw))?;
                if let Some(p) = pw {
                    opts = opts.password(p);
                }
                SqlxConnection::MySql(
                    MySqlConnection::connect_with(&opts.charset("utf8mb4"))
                        .await
                        .map_err(|e| open_err(e.to_string(), pw))?,
                )
            }
            other @ (ErpKind::Odbc | ErpKind::Csv) => {
                let password = erp.password().map_err(|e| open_err(e.to_string(), None))?;
                return Err(open_err(
                    format!("the SQL write-back does not support [erp] kind {:?}", other.as_str()),
                    password.as_deref(),
                ));
            }
        };
        Ok(SqlxWriteBack { conn, in_page: false, target })
    }
}

impl WriteBack for SqlxWriteBack {
    fn kind(&self) -> ErpKind {
        match self.conn {
            SqlxConnection::Sqlite(_) => ErpKind::Sqlite,
            SqlxConnection::Postgres(_) => ErpKind::Postgres,
            SqlxConnection::MySql(_) => ErpKind::MySql,
        }
    }

    fn apply(&mut self, mut job: WriteJob) -> BoxFuture<'_, Result<Option<u64>, WriteBackError>> {
        Box::pin(async move {
            let (target, job, page) = (self.target.as_str(), &mut job, self.in_page);
            match &mut self.conn {
                SqlxConnection::Sqlite(c) => apply_sqlx::<sqlx::Sqlite>(c, target, job, page).await,
                SqlxConnection::Postgres(c) => apply_sqlx::<Postgres>(c, target, job, page).await,
                SqlxConnection::MySql(c) => apply_sqlx::<sqlx::MySql>(c, target, job, page).await,
            }
        })
    }

    fn begin_page<'a>(&'a mut self, ledger: &'a Ledger) -> BoxFuture<'a, Result<bool, WriteBackError>> {
        Box::pin(async move {
            if self.in_page {
                return Ok(true);
            }
            let target = self.target.as_str();
            // The ledger table first, outside the transaction (MySQL commits around DDL).
            let r = match &mut self.conn {
                SqlxConnection::Sqlite(c) => begin_page_sqlx::<sqlx::Sqlite>(c, ledger).await,
                SqlxConnection::Postgres(c) => begin_page_sqlx::<Postgres>(c, ledger).await,
                SqlxConnection::MySql(c) => begin_page_sqlx::<sqlx::MySql>(c, ledger).await,
            };
            r.map_err(|e| WriteBackError::Database {
                target: target.to_string(),
                reason: format!("cannot start the page transaction: {e}"),
            })?;
            self.in_page = true;
            Ok(true)
        })
    }

    fn commit_page(&mut self) -> BoxFuture<'_, Result<(), WriteBackError>> {
        Box::pin(async move {
            if !self.in_page {
                return Ok(());
            }
            self.in_page = false;
            let r = match &mut self.conn {
                SqlxConnection::Sqlite(c) => commit_page_sqlx::<sqlx::Sqlite>(c).await,
                SqlxConnection::Postgres(c) => commit_page_sqlx::<Postgres>(c).await,
                SqlxConnection::MySql(c) => commit_page_sqlx::<sqlx::MySql>(c).await,
            };
            r.map_err(|e| WriteBackError::Database {
                target: self.target.clone(),
                reason: format!("cannot commit the page's write-backs: {e}"),
            })
        })
    }

    fn close(self: Box<Self>) -> BoxFuture<'static, ()> {
        Box::pin(async move {
            let _ = match self.conn {
                SqlxConnection::Sqlite(c) => c.close().await,
                SqlxConnection::Postgres(c) => c.close().await,
                SqlxConnection::MySql(c) => c.close().await,
            };
        })
    }
}

/// What differs between the sqlx backends in the write-back: how one CSV field is bound, and the placeholders.
/// By default a field is bound as text, which SQLite (by column affinity) and MySQL/MariaDB convert themselves.
pub(crate) trait WriteBackDb: sqlx::Database {
    /// Placeholders are numbered `$1, $2, ...` (PostgreSQL) rather than `?`.
    const NUMBERED: bool = false;

    /// Binds `value` (None = NULL) to the next placeholder, whose type the database reported as `ty` ("TEXT"
    /// if it did not say); the error says why the text does not fit.
    fn bind_field<'q>(
        q: sqlx::query::Query<'q, Self, Self::Arguments>,
        _ty: &str,
        value: Option<&str>,
    ) -> Result<sqlx::query::Query<'q, Self, Self::Arguments>, String>
    where
        for<'e> Option<String>: Encode<'e, Self> + Type<Self>,
    {
        Ok(q.bind(value.map(str::to_owned)))
    }
}

impl WriteBackDb for sqlx::Sqlite {}

impl WriteBackDb for sqlx::MySql {}

/// PostgreSQL does not convert text parameters: each field is bound as the type inferred for its placeholder.
impl WriteBackDb for Postgres {
    const NUMBERED: bool = true;

    fn bind_field<'q>(q: PgQuery<'q>, ty: &str, value: Option<&str>) -> Result<PgQuery<'q>, String> {
        bind_pg(q, ty, value)
    }
}

/// Runs `job` for every record of its rows in one transaction, with the ledger's check and record in it; `None`
/// when the ledger shows the file was applied before.
/// Opens the page transaction (sqlx then makes each file's `begin` a savepoint), the ledger table created first.
async fn begin_page_sqlx<DB>(conn: &mut DB::Connection, l: &Ledger) -> sqlx::Result<()>
where
    DB: sqlx::Database,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    DB::Arguments: sqlx::IntoArguments<DB>,
{
    use sqlx_core::transaction::TransactionManager;
    ledger_create::<DB>(conn, l).await;
    DB::TransactionManager::begin(conn, None).await
}

/// Commits the page transaction; a failed commit is rolled back.
async fn commit_page_sqlx<DB>(conn: &mut DB::Connection) -> sqlx::Result<()>
where
    DB: sqlx::Database,
{
    use sqlx_core::transaction::TransactionManager;
    let r = DB::TransactionManager::commit(conn).await;
    if r.is_err() && DB::TransactionManager::get_transaction_depth(conn) > 0 {
        let _ = DB::TransactionManager::rollback(conn).await;
    }
    r
}

/// In a page transaction (`in_page`) the file's transaction is a savepoint of it and the ledger table is not
/// created here (done when the page began).
async fn apply_sqlx<DB>(
    conn: &mut DB::Connection,
    target: &str,
    job: &mut WriteJob,
    in_page: bool,
) -> Result<Option<u64>, WriteBackError>
where
    DB: WriteBackDb,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    DB::Arguments: sqlx::IntoArguments<DB>,
    for<'q> Option<String>: Encode<'q, DB> + Type<DB>,
{
    let (name, ledger, rows) = (job.file.as_str(), job.ledger.as_ref(), &mut job.records);
    let plan: Vec<(SqlStr, &Statement)> = job
        .statements
        .iter()
        .map(|s| {
            let sql = if DB::NUMBERED { super::numbered_placeholders(&s.sql) } else { s.sql.clone() };
            (AssertSqlSafe(sql).into_sql_str(), s)
        })
        .collect();
    let db_err = |what: &str, e: sqlx::Error| WriteBackError::Database {
        target: target.to_string(),
        reason: format!("{what}: {e}"),
    };
    if let Some(l) = ledger
        && !in_page
    {
        ledger_create::<DB>(conn, l).await;
    }
    let mut tx = conn.begin().await.map_err(|e| db_err("cannot start a transaction", e))?;
    let result = async {
        if let Some(l) = ledger
            && ledger_has::<DB>(&mut tx, l).await?
        {
            return Ok(None);
        }
        // the type the database reports for each placeholder (PostgreSQL binds by it)
        let mut types = Vec::with_capacity(plan.len());
        for (i, (sql, s)) in plan.iter().enumerate() {
            let stmt = (&mut *tx)
                .prepare(sql.clone())
                .await
                .map_err(|e| record_err(name, 1, format!("delivery.sql[{i}] is not valid: {e}")))?;
            let count = stmt.parameters().map(|p| match p {
                Either::Left(types) => types.len(),
                Either::Right(n) => n,
            });
            check_count(count, s, i, name)?;
            let names: Vec<String> = match stmt.parameters() {
                Some(Either::Left(t)) => t.iter().map(|t| t.name().to_string()).collect(),
                _ => vec!["TEXT".to_string(); s.columns.len()],
            };
            types.push(names);
        }
        let mut record = csv::StringRecord::new();
        let mut count = 0u64;
        while let Some(line) = next_record(rows, &mut record, name)? {
            count += 1;
            for (i, (sql, s)) in plan.iter().enumerate() {
                let mut q = sqlx::query::<DB>(sql.clone());
                for (k, &c) in s.columns.iter().enumerate() {
                    let ty = types[i].get(k).map_or("TEXT", String::as_str);
                    q = DB::bind_field(q, ty, field(&record, c)).map_err(|reason| {
                        record_err(name, line, format!("row {count}: delivery.sql[{i}] parameter ${}: {reason}", k + 1))
                    })?;
                }
                q.execute(&mut *tx)
                    .await
                    .map_err(|e| record_err(name, line, format!("row {count}: delivery.sql[{i}] failed: {e}")))?;
            }
        }
        if let Some(l) = ledger {
            ledger_record::<DB>(&mut tx, l).await?;
        }
        Ok(Some(count))
    }
    .await;
    finish(tx, result, db_err).await
}

/// Creates the ledger table if the database lacks it. Outside the transaction (MySQL commits around DDL) and only
/// an attempt: if it fails, the check in the transaction says why and how to create the table.
async fn ledger_create<DB>(conn: &mut DB::Connection, l: &Ledger)
where
    DB: sqlx::Database,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    DB::Arguments: sqlx::IntoArguments<DB>,
{
    let _ = sqlx::query::<DB>(AssertSqlSafe(l.create_sql())).execute(&mut *conn).await;
}

/// Whether the ledger already holds the file.
async fn ledger_has<DB>(tx: &mut DB::Connection, l: &Ledger) -> Result<bool, WriteBackError>
where
    DB: WriteBackDb,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    DB::Arguments: sqlx::IntoArguments<DB>,
    for<'q> Option<String>: Encode<'q, DB> + Type<DB>,
{
    let found = sqlx::query::<DB>(AssertSqlSafe(l.check_sql(DB::NUMBERED)))
        .bind(Some(l.file_id.clone()))
        .fetch_optional(&mut *tx)
        .await
        .map_err(|e| l.error(e))?;
    Ok(found.is_some())
}

/// Records the file in the ledger (in the write-back's transaction).
async fn ledger_record<DB>(tx: &mut DB::Connection, l: &Ledger) -> Result<(), WriteBackError>
where
    DB: WriteBackDb,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    DB::Arguments: sqlx::IntoArguments<DB>,
    for<'q> Option<String>: Encode<'q, DB> + Type<DB>,
{
    let (id, file, at) = l.values();
    sqlx::query::<DB>(AssertSqlSafe(l.record_sql(DB::NUMBERED)))
        .bind(Some(id))
        .bind(Some(file))
        .bind(Some(at))
        .execute(&mut *tx)
        .await
        .map_err(|e| l.error(e))?;
    Ok(())
}

async fn finish<DB: sqlx::Database, T>(
    tx: sqlx::Transaction<'_, DB>,
    result: Result<T, WriteBackError>,
    db_err: impl Fn(&str, sqlx::Error) -> WriteBackError,
) -> Result<T, WriteBackError> {
    match result {
        Ok(count) => {
            tx.commit().await.map_err(|e| db_err("cannot commit the write-back", e))?;
            Ok(count)
        }
        Err(e) => {
            let _ = tx.rollback().await;
            Err(e)
        }
    }
}

type PgQuery<'q> = sqlx::query::Query<'q, Postgres, sqlx::postgres::PgArguments>;

/// Binds `value` (None = NULL) as the PostgreSQL type `ty`; the error says why the text does not fit.
fn bind_pg<'q>(q: PgQuery<'q>, ty: &str, value: Option<&str>) -> Result<PgQuery<'q>, String> {
    let v = value.map(str::trim);
    let parse_err =
        |what: &str| format!("{:?} is not {what}", value.unwrap_or("").chars().take(40).collect::<String>());
    Ok(match ty {
        "INT2" => q.bind(v.map(|s| s.parse::<i16>()).transpose().map_err(|_| parse_err("a small integer"))?),
        "INT4" => q.bind(v.map(|s| s.parse::<i32>()).transpose().map_err(|_| parse_err("an integer"))?),
        "INT8" => q.bind(v.map(|s| s.parse::<i64>()).transpose().map_err(|_| parse_err("an integer"))?),
        "FLOAT4" => q.bind(v.map(|s| s.parse::<f32>()).transpose().map_err(|_| parse_err("a number"))?),
        "FLOAT8" => q.bind(v.map(|s| s.parse::<f64>()).transpose().map_err(|_| parse_err("a number"))?),
        "NUMERIC" => q.bind(v.map(PgDecimalText::parse).transpose().map_err(|_| parse_err("a decimal number"))?),
        "BOOL" => q.bind(v.map(parse_bool).transpose().map_err(|_| parse_err("a boolean (1/0, true/false)"))?),
        "DATE" => q.bind(v.map(parse_date).transpose().map_err(|_| parse_err("a date (YYYY-MM-DD or YYYY/MM/DD)"))?),
        "TIMESTAMP" => q.bind(v.map(parse_timestamp).transpose().map_err(|_| parse_err("a date or date-time"))?),
        "TIMESTAMPTZ" => q.bind(
            v.map(parse_timestamp)
                .transpose()
                .map_err(|_| parse_err("a date or date-time"))?
                .map(|t| t.and_local_timezone(chrono::Local).earliest().map_or_else(|| t.and_utc(), |l| l.to_utc())),
        ),
        _ => q.bind(value.map(str::to_owned)),
    })
}

fn parse_bool(s: &str) -> Result<bool, ()> {
    match s.to_ascii_lowercase().as_str() {
        "1" | "t" | "true" | "y" | "yes" => Ok(true),
        "0" | "f" | "false" | "n" | "no" => Ok(false),
        _ => Err(()),
    }
}

fn parse_date(s: &str) -> Result<NaiveDate, ()> {
    ["%Y-%m-%d", "%Y/%m/%d", "%Y%m%d"]
        .iter()
        .find_map(|f| NaiveDate::parse_from_str(s, f).ok())
        .or_else(|| parse_timestamp(s).ok().map(|t| t.date()))
        .ok_or(())
}

fn parse_timestamp(s: &str) -> Result<NaiveDateTime, ()> {
    ["%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%dT%H:%M:%S%.f", "%Y/%m/%d %H:%M:%S%.f", "%Y-%m-%d %H:%M", "%Y/%m/%d %H:%M"]
        .iter()
        .find_map(|f| NaiveDateTime::parse_from_str(s, f).ok())
        .or_else(|| {
            ["%Y-%m-%d", "%Y/%m/%d", "%Y%m%d"]
                .iter()
                .find_map(|f| NaiveDate::parse_from_str(s, f).ok())
                .and_then(|d| d.and_hms_opt(0, 0, 0))
        })
        .ok_or(())
}

/// A decimal written as text, bound as PostgreSQL `NUMERIC` in its exact binary form (no float in between).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct PgDecimalText {
    negative: bool,
    /// Base-10000 digits, without leading or trailing zero groups.
    digits: Vec<i16>,
    weight: i16,
    scale: u16,
}

impl PgDecimalText {
    pub(crate) fn parse(s: &str) -> Result<PgDecimalText, ()> {
        let s = s.trim();
        let (negative, body) = match s.as_bytes().first() {
            Some(b'-') => (true, &s[1..]),
            Some(b'+') => (false, &s[1..]),
            _ => (false, s),
        };
        let (int, frac) = body.split_once('.').unwrap_or((body, ""));
        let all_digits = |p: &str| p.bytes().all(|b| b.is_ascii_digit());
        if (int.is_empty() && frac.is_empty()) || !all_digits(int) || !all_digits(frac) || frac.len() > 16383 {
            return Err(());
        }
        let int = int.trim_start_matches('0');
        let int_groups = int.len().div_ceil(4);
        let mut padded = "0".repeat(int_groups * 4 - int.len());
        padded.push_str(int);
        padded.push_str(frac);
        padded.push_str(&"0".repeat((4 - frac.len() % 4) % 4));
        let mut digits: Vec<i16> =
            padded.as_bytes().chunks(4).map(|c| c.iter().fold(0i16, |a, d| a * 10 + i16::from(d - b'0'))).collect();
        let mut weight = i64::try_from(int_groups).map_err(|_| ())? - 1;
        let lead = digits.iter().take_while(|d| **d == 0).count();
        digits.drain(..lead);
        weight -= i64::try_from(lead).map_err(|_| ())?;
        while digits.last() == Some(&0) {
            digits.pop();
        }
        if digits.is_empty() {
            weight = 0;
        }
        Ok(PgDecimalText {
            negative: negative && !digits.is_empty(),
            digits,
            weight: i16::try_from(weight).map_err(|_| ())?,
            scale: u16::try_from(frac.len()).map_err(|_| ())?,
        })
    }
}

impl Type<Postgres> for PgDecimalText {
    fn type_info() -> PgTypeInfo {
        PgTypeInfo::with_oid(sqlx::postgres::types::Oid(1700))
    }
}

impl Encode<'_, Postgres> for PgDecimalText {
    fn encode_by_ref(&self, buf: &mut PgArgumentBuffer) -> Result<IsNull, BoxDynError> {
        let n = i16::try_from(self.digits.len())?;
        buf.extend(n.to_be_bytes());
        buf.extend(self.weight.to_be_bytes());
        buf.extend(if self.negative { 0x4000u16 } else { 0 }.to_be_bytes());
        buf.extend(self.scale.to_be_bytes());
        for d in &self.digits {
            buf.extend(d.to_be_bytes());
        }
        Ok(IsNull::No)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimals_are_encoded_exactly() {
        let d = PgDecimalText::parse("123456789012.3456").unwrap();
        assert_eq!((d.digits.as_slice(), d.weight, d.scale, d.negative), (&[1234, 5678, 9012, 3456][..], 2, 4, false));
        let d = PgDecimalText::parse("-0.000012").unwrap();
        assert_eq!((d.digits.as_slice(), d.weight, d.scale, d.negative), (&[1200][..], -2, 6, true));
        let d = PgDecimalText::parse("70000").unwrap();
        assert_eq!((d.digits.as_slice(), d.weight, d.scale), (&[7][..], 1, 0));
        let d = PgDecimalText::parse("-0.00").unwrap();
        assert_eq!((d.digits.len(), d.weight, d.scale, d.negative), (0, 0, 2, false));
        // what the extract side decodes is what was encoded
        let mut buf = PgArgumentBuffer::default();
        let _ = PgDecimalText::parse("12.3400").unwrap().encode_by_ref(&mut buf).unwrap();
        assert_eq!(crate::erp::source::postgres_numeric_to_string(&buf).unwrap(), "12.3400");
        for bad in ["", "-", "1e5", "1.2.3", "12a", "."] {
            assert!(PgDecimalText::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn csv_text_parses_as_dates_and_booleans() {
        assert_eq!(parse_date("2026/11/28"), Ok(NaiveDate::from_ymd_opt(2026, 11, 28).unwrap()));
        assert_eq!(parse_date("2026-11-28"), parse_date("20261128"));
        assert!(parse_date("28.11.2026").is_err());
        assert_eq!(parse_timestamp("2026-11-28 10:30:00").unwrap().to_string(), "2026-11-28 10:30:00");
        assert_eq!(parse_bool("TRUE"), Ok(true));
        assert!(parse_bool("maybe").is_err());
    }
}
