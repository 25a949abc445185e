//! Plans a buyer reviews and releases (`docs/planner.md`, "Release"). Recommended orders are a proposal: each
//! plan is stored with an id; a new plan supersedes every line of the previous one that is still proposed; only
//! released lines go down to the ERP, as one `po_NNNNNN.csv` per supplier and release, published exactly once.
//!
//! * **Policy** per tenant: `review` (the default: nothing goes down until a buyer releases) or `auto` (every line
//!   of a new plan is released at once, through the same [`release`]).
//! * **Released quantities count as on order** in every later plan ([`new_plan`]) until the ERP's own extract
//!   shows them (an order line of `po`/`pohist` for the same item, location and supplier, dated on or after the
//!   release and not already there when it was released, consumes the released quantity, recorded in
//!   `release_matches` so it is never counted twice), or until they expire (release date + `release_expiry_days`,
//!   default the line's lead time plus the review period).
//!
//! Tables live in the tenant's instance database: `settings`, `plans`, `plan_lines` (line ids unique across
//! plans: `AUTOINCREMENT`), `releases`, `release_matches`. Every value is bound; no SQL is built from input.
//!
//! Crash safety: a release is first committed (lines `released`, a `releases` row with its sequence number and no
//! file yet), then its file is written and published; a release left without a file (crash in between) is
//! published by the next [`release`] or plan ([`publish_pending`]). `outbox::publish` refuses a second file of the
//! same name, so each release's file goes down once.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;

use anyhow::Context;
use chrono::{Days, NaiveDate, Utc};
use serde::Serialize;
use sqlx::Row;

use crate::instance::Instance;
use crate::outbox;
use crate::planner::{self, LeadTimeSource, Plan, PlanLine, PlanParams};

const EPS: f64 = 1e-9;

/// Largest quantity a buyer may enter (keeps files and sums sane).
pub const MAX_QTY: f64 = 1e12;

/// The newest releases [`releases`] returns.
pub const MAX_RELEASES_LISTED: i64 = 500;

/// How a tenant's plans go down.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Policy {
    /// Nothing goes down until a buyer releases lines (the default).
    Review,
    /// Every line of a new plan is released as soon as it is planned.
    Auto,
}

impl Policy {
    pub fn as_str(self) -> &'static str {
        match self {
            Policy::Review => "review",
            Policy::Auto => "auto",
        }
    }

    pub fn parse(s: &str) -> Option<Policy> {
        match s {
            "review" => Some(Policy::Review),
            "auto" => Some(Policy::Auto),
            _ => None,
        }
    }
}

impl std::fmt::Display for Policy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Policy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Policy::parse(s).ok_or_else(|| format!("{s:?} is not a release policy: use review or auto"))
    }
}

/// Where a line of a plan stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LineState {
    /// Recommended, waiting for a buyer (only lines of the current plan can be proposed).
    Proposed,
    /// A buyer rejected it; it goes nowhere (the next plan may recommend it again).
    Rejected,
    /// Released: sent down in the release `release_id`.
    Released,
    /// A newer plan replaced it before it was released; it never goes down.
    Superseded,
}

impl LineState {
    pub fn as_str(self) -> &'static str {
        match self {
            LineState::Proposed => "proposed",
            LineState::Rejected => "rejected",
            LineState::Released => "released",
            LineState::Superseded => "superseded",
        }
    }

    pub fn parse(s: &str) -> Option<LineState> {
        [LineState::Proposed, LineState::Rejected, LineState::Released, LineState::Superseded]
            .into_iter()
            .find(|l| l.as_str() == s)
    }
}

impl std::fmt::Display for LineState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One stored plan.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PlanInfo {
    pub id: i64,
    /// RFC 3339 UTC.
    pub created_at: String,
    /// Number of recommended lines.
    pub lines: u64,
}

/// One recommended line of a plan, with its why.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Rec {
    /// Unique across the tenant's plans.
    pub id: i64,
    pub plan_id: i64,
    pub supplier: String,
    pub item: String,
    pub location: String,
    /// What the planner recommended.
    pub planned_qty: f64,
    /// What goes down: the buyer's edit, or the planned quantity.
    pub qty: f64,
    /// `stock.purchase_cost` exactly as the extract gave it.
    pub unit_cost: String,
    pub due_date: NaiveDate,
    pub state: LineState,
    /// Demand per day (Croston–SBA).
    pub rate: f64,
    pub safety_stock: f64,
    pub reorder_point: f64,
    pub target: f64,
    /// Net position at planning, released quantities still on order included.
    pub position: f64,
    pub lead_time_days: f64,
    pub lead_time_source: String,
    /// The part of `position` that is earlier releases the ERP did not show yet.
    pub released_on_order: f64,
    /// The release that sent this line down (state `Released`).
    pub release_id: Option<i64>,
}

/// One released order: one file, one supplier.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Release {
    pub id: i64,
    pub supplier: String,
    /// `po_NNNNNN.csv`.
    pub file_name: String,
    /// The outbox file id (empty only while the file is not yet published: a crash between the release and
    /// its file, repaired by the next release or plan).
    pub file_id: String,
    pub lines: u64,
    /// RFC 3339 UTC.
    pub created_at: String,
    /// Who released it (a buyer's login, `auto`, `demo`...).
    pub by: String,
}

/// A release with its lines and the receipts of its file.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ReleasedOrder {
    pub release: Release,
    pub lines: Vec<Rec>,
    /// `created` | `announced` | `relayed` | `delivered` (from the outbox receipts; `pending` while the file is
    /// not yet published).
    pub file_state: String,
    /// RFC 3339 UTC.
    pub delivered_at: Option<String>,
    /// Every line of the release was matched in full with order lines of the ERP's own extract.
    pub seen_in_erp: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum ReleaseError {
    #[error("no such line in this tenant's plans")]
    NotFound,
    #[error("the line is no longer proposed: it was already released or rejected")]
    NotProposed,
    #[error("the line belongs to a plan that a newer plan replaced; review the current plan")]
    Superseded,
    #[error("the quantity must be a number above 0 (at most 1e12)")]
    BadQty,
    #[error("no lines were selected")]
    NothingSelected,
    #[error("{0:#}")]
    Io(#[from] anyhow::Error),
}

impl From<sqlx::Error> for ReleaseError {
    fn from(e: sqlx::Error) -> Self {
        ReleaseError::Io(e.into())
    }
}

// ----------------------------------------------------------------------------------------------------------------
// Schema and policy

const SCHEMA: [&str; 7] = [
    "CREATE TABLE IF NOT EXISTS settings (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS plans (id INTEGER PRIMARY KEY AUTOINCREMENT, created_at TEXT NOT NULL,
        plan_date TEXT NOT NULL, lines INTEGER NOT NULL)",
    "CREATE TABLE IF NOT EXISTS plan_lines (id INTEGER PRIMARY KEY AUTOINCREMENT, plan_id INTEGER NOT NULL,
        supplier TEXT NOT NULL, item TEXT NOT NULL, location TEXT NOT NULL, planned_qty REAL NOT NULL,
        qty REAL NOT NULL, unit_cost TEXT NOT NULL, due_date TEXT NOT NULL, state TEXT NOT NULL,
        rate REAL NOT NULL, safety_stock REAL NOT NULL, reorder_point REAL NOT NULL, target REAL NOT NULL,
        position REAL NOT NULL, lead_time_days REAL NOT NULL, lead_time_source TEXT NOT NULL,
        released_on_order REAL NOT NULL, release_id INTEGER,
        preexisting TEXT NOT NULL DEFAULT '[]', settled INTEGER NOT NULL DEFAULT 0)",
    "CREATE INDEX IF NOT EXISTS plan_lines_plan ON plan_lines (plan_id, state)",
    "CREATE INDEX IF NOT EXISTS plan_lines_open ON plan_lines (state, settled)",
    "CREATE TABLE IF NOT EXISTS releases (id INTEGER PRIMARY KEY AUTOINCREMENT, supplier TEXT NOT NULL,
        seq INTEGER NOT NULL, file_name TEXT NOT NULL UNIQUE, file_id TEXT, lines INTEGER NOT NULL,
        order_date TEXT NOT NULL, created_at TEXT NOT NULL, released_by TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS release_matches (line_id INTEGER NOT NULL, order_number TEXT NOT NULL,
        po_line TEXT NOT NULL, qty REAL NOT NULL, matched_at TEXT NOT NULL,
        PRIMARY KEY (line_id, order_number, po_line))",
];

async fn ensure_schema(inst: &Instance) -> sqlx::Result<()> {
    for q in SCHEMA {
        sqlx::query(q).execute(inst.pool()).await?;
    }
    Ok(())
}

const POLICY_KEY: &str = "release_policy";

/// The tenant's release policy (`review` unless set).
pub async fn policy(inst: &Instance) -> anyhow::Result<Policy> {
    ensure_schema(inst).await?;
    let v: Option<String> = sqlx::query_scalar("SELECT value FROM settings WHERE key = ?")
        .bind(POLICY_KEY)
        .fetch_optional(inst.pool())
        .await?;
    Ok(v.as_deref().and_then(Policy::parse).unwrap_or(Policy::Review))
}

pub async fn set_policy(inst: &Instance, p: Policy) -> anyhow::Result<()> {
    ensure_schema(inst).await?;
    sqlx::query("INSERT INTO settings(key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value")
        .bind(POLICY_KEY)
        .bind(p.as_str())
        .execute(inst.pool())
        .await?;
    Ok(())
}

// ----------------------------------------------------------------------------------------------------------------
// Reading plans and lines

/// The newest plan, if any.
pub async fn current_plan(inst: &Instance) -> anyhow::Result<Option<PlanInfo>> {
    ensure_schema(inst).await?;
    let r = sqlx::query("SELECT id, created_at, lines FROM plans ORDER BY id DESC LIMIT 1")
        .fetch_optional(inst.pool())
        .await?;
    Ok(r.map(|r| PlanInfo {
        id: r.get(0),
        created_at: r.get(1),
        lines: u64::try_from(r.get::<i64, _>(2)).unwrap_or(0),
    }))
}

const LINE_COLUMNS: &str = "id, plan_id, supplier, item, location, planned_qty, qty, unit_cost, due_date, state, rate, \
     safety_stock, reorder_point, target, position, lead_time_days, lead_time_source, released_on_order, release_id";

fn rec_from_row(r: &sqlx::sqlite::SqliteRow) -> anyhow::Result<Rec> {
    let id: i64 = r.try_get("id")?;
    let state: String = r.try_get("state")?;
    let due: String = r.try_get("due_date")?;
    Ok(Rec {
        id,
        plan_id: r.try_get("plan_id")?,
        supplier: r.try_get("supplier")?,
        item: r.try_get("item")?,
        location: r.try_get("location")?,
        planned_qty: r.try_get("planned_qty")?,
        qty: r.try_get("qty")?,
        unit_cost: r.try_get("unit_cost")?,
        due_date: NaiveDate::parse_from_str(&due, "%Y-%m-%d")
            .with_context(|| format!("plan line {id} has an unreadable due date {due:?}"))?,
        state: LineState::parse(&state).with_context(|| format!("plan line {id} has an unknown state {state:?}"))?,
        rate: r.try_get("rate")?,
        safety_stock: r.try_get("safety_stock")?,
        reorder_point: r.try_get("reorder_point")?,
        target: r.try_get("target")?,
        position: r.try_get("position")?,
        lead_time_days: r.try_get("lead_time_days")?,
        lead_time_source: r.try_get("lead_time_source")?,
        released_on_order: r.try_get("released_on_order")?,
        release_id: r.try_get("release_id")?,
    })
}

/// Every line of plan `plan_id` (any state), by supplier, item, location.
pub async fn lines(inst: &Instance, plan_id: i64) -> anyhow::Result<Vec<Rec>> {
    ensure_schema(inst).await?;
    let q = format!("SELECT {LINE_COLUMNS} FROM plan_lines WHERE plan_id = ? ORDER BY supplier, item, location, id");
    let rows = sqlx::query(sqlx::AssertSqlSafe(q)).bind(plan_id).fetch_all(inst.pool()).await?;
    rows.iter().map(rec_from_row).collect()
}

async fn release_lines(inst: &Instance, release_id: i64) -> anyhow::Result<Vec<Rec>> {
    let q = format!("SELECT {LINE_COLUMNS} FROM plan_lines WHERE release_id = ? ORDER BY item, location, id");
    let rows = sqlx::query(sqlx::AssertSqlSafe(q)).bind(release_id).fetch_all(inst.pool()).await?;
    rows.iter().map(rec_from_row).collect()
}

/// Check that `line_id` is a proposed line of the current plan (inside the caller's transaction).
async fn check_proposed(conn: &mut sqlx::SqliteConnection, line_id: i64) -> Result<(), ReleaseError> {
    let row = sqlx::query(
        "SELECT l.state, l.plan_id = (SELECT MAX(id) FROM plans) AS current FROM plan_lines l WHERE l.id = ?",
    )
    .bind(line_id)
    .fetch_optional(&mut *conn)
    .await?;
    let Some(row) = row else { return Err(ReleaseError::NotFound) };
    let state: String = row.try_get(0)?;
    let current: bool = row.try_get(1)?;
    match LineState::parse(&state) {
        Some(LineState::Released | LineState::Rejected) => Err(ReleaseError::NotProposed),
        Some(LineState::Superseded) => Err(ReleaseError::Superseded),
        Some(LineState::Proposed) if !current => Err(ReleaseError::Superseded),
        Some(LineState::Proposed) => Ok(()),
        None => Err(ReleaseError::Io(anyhow::anyhow!("plan line {line_id} has an unknown state {state:?}"))),
    }
}

/// Change the quantity of a proposed line of the current plan.
pub async fn set_qty(inst: &Instance, line_id: i64, qty: f64) -> Result<(), ReleaseError> {
    if !(qty.is_finite() && qty > 0.0 && qty <= MAX_QTY) {
        return Err(ReleaseError::BadQty);
    }
    ensure_schema(inst).await?;
    let mut tx = inst.pool().begin_with("BEGIN IMMEDIATE").await?;
    check_proposed(&mut tx, line_id).await?;
    sqlx::query("UPDATE plan_lines SET qty = ? WHERE id = ?").bind(qty).bind(line_id).execute(&mut *tx).await?;
    tx.commit().await?;
    Ok(())
}

/// Reject a proposed line of the current plan: it goes nowhere.
pub async fn reject(inst: &Instance, line_id: i64) -> Result<(), ReleaseError> {
    ensure_schema(inst).await?;
    let mut tx = inst.pool().begin_with("BEGIN IMMEDIATE").await?;
    check_proposed(&mut tx, line_id).await?;
    sqlx::query("UPDATE plan_lines SET state = 'rejected' WHERE id = ?").bind(line_id).execute(&mut *tx).await?;
    tx.commit().await?;
    Ok(())
}

// ----------------------------------------------------------------------------------------------------------------
// Releasing

/// Serialises publishing within this process (another process is kept out by the outbox's unique file names).
static PUBLISHING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Release the given proposed lines of the current plan: one `po_NNNNNN.csv` per supplier (generic order layout,
/// with the edited quantities, order date `today`), each published through `outbox::publish` exactly once.
/// Returns one [`Release`] per file, in supplier order. All or nothing: one line that is not a proposed line of
/// the current plan refuses the whole call.
pub async fn release(
    inst: &Instance,
    tenant: &str,
    sftp_root: &Path,
    line_ids: &[i64],
    by: &str,
    today: NaiveDate,
) -> Result<Vec<Release>, ReleaseError> {
    let ids: Vec<i64> = line_ids.iter().copied().collect::<std::collections::BTreeSet<_>>().into_iter().collect();
    if ids.is_empty() {
        return Err(ReleaseError::NothingSelected);
    }
    ensure_schema(inst).await?;
    outbox::ensure_schema(inst).await?;
    let today_iso = today.format("%Y-%m-%d").to_string();
    let now = Utc::now().to_rfc3339();
    let mut tx = inst.pool().begin_with("BEGIN IMMEDIATE").await?;
    let mut by_supplier: BTreeMap<String, Vec<(i64, String, String)>> = BTreeMap::new();
    for &id in &ids {
        check_proposed(&mut tx, id).await?;
        let r = sqlx::query("SELECT supplier, item, location FROM plan_lines WHERE id = ?")
            .bind(id)
            .fetch_one(&mut *tx)
            .await?;
        by_supplier.entry(r.try_get(0)?).or_default().push((id, r.try_get(1)?, r.try_get(2)?));
    }
    let first = outbox::reserve_sequence_in(&mut tx, "po", by_supplier.len() as u64).await?;
    let mut release_ids = Vec::new();
    for (i, (supplier, group)) in by_supplier.iter().enumerate() {
        let seq = first + i as u64;
        if seq > planner::MAX_FILE_SEQ {
            return Err(anyhow::anyhow!(
                "order file sequence {seq} does not fit in six digits (po_NNNNNN.csv); the sequence is exhausted"
            )
            .into());
        }
        let name = format!("po_{seq:06}.csv");
        let rid: i64 = sqlx::query_scalar(
            "INSERT INTO releases(supplier, seq, file_name, lines, order_date, created_at, released_by)
             VALUES (?, ?, ?, ?, ?, ?, ?) RETURNING id",
        )
        .bind(supplier)
        .bind(i64::try_from(seq).context("sequence")?)
        .bind(&name)
        .bind(group.len() as i64)
        .bind(&today_iso)
        .bind(&now)
        .bind(by)
        .fetch_one(&mut *tx)
        .await?;
        for (id, item, location) in group {
            // ERP order lines that already match on the release day were there before: they never consume it.
            let pre = preexisting_orders(&mut tx, item, location, supplier, &today_iso).await?;
            sqlx::query("UPDATE plan_lines SET state = 'released', release_id = ?, preexisting = ? WHERE id = ?")
                .bind(rid)
                .bind(serde_json::to_string(&pre).context("preexisting orders")?)
                .bind(id)
                .execute(&mut *tx)
                .await?;
        }
        release_ids.push(rid);
    }
    tx.commit().await?;
    publish_pending(inst, tenant, sftp_root).await?;
    let mut out = Vec::new();
    for rid in release_ids {
        out.extend(release_by_id(inst, rid).await?);
    }
    Ok(out)
}

/// The ERP order lines (`order_number`, `line`) of an item x location x supplier dated on or after `date`.
async fn preexisting_orders(
    conn: &mut sqlx::SqliteConnection,
    item: &str,
    location: &str,
    supplier: &str,
    date: &str,
) -> sqlx::Result<Vec<(String, String)>> {
    let rows = sqlx::query(
        "SELECT order_number, COALESCE(line, '') FROM po
          WHERE item = ? AND location = ? AND supplier = ? AND order_date >= ? AND order_number IS NOT NULL
         UNION
         SELECT order_number, COALESCE(line, '') FROM pohist
          WHERE item = ? AND location = ? AND supplier = ? AND order_date >= ? AND order_number IS NOT NULL",
    )
    .bind(item)
    .bind(location)
    .bind(supplier)
    .bind(date)
    .bind(item)
    .bind(location)
    .bind(supplier)
    .bind(date)
    .fetch_all(&mut *conn)
    .await?;
    rows.iter().map(|r| Ok((r.try_get(0)?, r.try_get(1)?))).collect()
}

fn release_from_row(r: &sqlx::sqlite::SqliteRow) -> sqlx::Result<Release> {
    Ok(Release {
        id: r.try_get("id")?,
        supplier: r.try_get("supplier")?,
        file_name: r.try_get("file_name")?,
        file_id: r.try_get::<Option<String>, _>("file_id")?.unwrap_or_default(),
        lines: u64::try_from(r.try_get::<i64, _>("lines")?).unwrap_or(0),
        created_at: r.try_get("created_at")?,
        by: r.try_get("released_by")?,
    })
}

const RELEASE_COLUMNS: &str = "id, supplier, file_name, file_id, lines, created_at, released_by";

async fn release_by_id(inst: &Instance, id: i64) -> anyhow::Result<Option<Release>> {
    let q = format!("SELECT {RELEASE_COLUMNS} FROM releases WHERE id = ?");
    let r = sqlx::query(sqlx::AssertSqlSafe(q)).bind(id).fetch_optional(inst.pool()).await?;
    Ok(r.as_ref().map(release_from_row).transpose()?)
}

/// Write and publish the file of every release that has none yet (normally the ones just committed; after a
/// crash, the ones left behind). Returns how many were published.
pub async fn publish_pending(inst: &Instance, tenant: &str, sftp_root: &Path) -> anyhow::Result<usize> {
    ensure_schema(inst).await?;
    let _one = PUBLISHING.lock().await;
    let pending = sqlx::query("SELECT id, seq, file_name, order_date FROM releases WHERE file_id IS NULL ORDER BY id")
        .fetch_all(inst.pool())
        .await?;
    let mut n = 0;
    for r in pending {
        let (rid, seq, name, order_date): (i64, i64, String, String) = (r.get(0), r.get(1), r.get(2), r.get(3));
        let file_id = match outbox::file_id_by_name(inst, &name).await? {
            Some(id) => id, // published, but the crash came before it was recorded here
            None => {
                let order_date = NaiveDate::parse_from_str(&order_date, "%Y-%m-%d")
                    .with_context(|| format!("release {rid} has an unreadable order date {order_date:?}"))?;
                let recs = release_lines(inst, rid).await?;
                let plan = Plan { lines: recs.iter().map(plan_line).collect() };
                let tmp = temp_dir(sftp_root)?;
                let seq = u64::try_from(seq).context("release sequence")?;
                let written = planner::write_po_files(&plan, tmp.path(), seq, order_date)?;
                let Some((path, _)) = written.first() else {
                    anyhow::bail!("release {rid} has no lines to write");
                };
                match outbox::publish(inst, tenant, sftp_root, path, &name).await {
                    Ok(f) => f.file_id.as_str().to_string(),
                    // another process published it meanwhile: the outbox holds it once
                    Err(e) => outbox::file_id_by_name(inst, &name).await?.ok_or(e)?,
                }
            }
        };
        sqlx::query("UPDATE releases SET file_id = ? WHERE id = ? AND file_id IS NULL")
            .bind(&file_id)
            .bind(rid)
            .execute(inst.pool())
            .await?;
        tracing::info!(tenant, release = rid, file = %name, "released order published");
        n += 1;
    }
    Ok(n)
}

/// A working folder next to the SFTP area (never inside it: the Comms server reads there).
fn temp_dir(sftp_root: &Path) -> anyhow::Result<tempfile::TempDir> {
    let base = sftp_root.parent().map(|p| p.join("tmp")).unwrap_or_else(std::env::temp_dir);
    std::fs::create_dir_all(&base).with_context(|| format!("cannot create {}", base.display()))?;
    Ok(tempfile::Builder::new().prefix("release-").tempdir_in(base)?)
}

fn plan_line(r: &Rec) -> PlanLine {
    PlanLine {
        item: r.item.clone(),
        location: r.location.clone(),
        supplier: r.supplier.clone(),
        qty: r.qty,
        unit_cost: r.unit_cost.clone(),
        due_date: r.due_date,
        rate: r.rate,
        safety_stock: r.safety_stock,
        reorder_point: r.reorder_point,
        target: r.target,
        position: r.position,
        released_on_order: r.released_on_order,
        lead_time_days: r.lead_time_days,
        lead_time_source: LeadTimeSource::parse(&r.lead_time_source).unwrap_or(LeadTimeSource::Default),
    }
}

/// The newest releases (at most [`MAX_RELEASES_LISTED`]), newest first, with their lines and file receipts.
pub async fn releases(inst: &Instance) -> anyhow::Result<Vec<ReleasedOrder>> {
    ensure_schema(inst).await?;
    outbox::ensure_schema(inst).await?;
    let q = format!("SELECT {RELEASE_COLUMNS} FROM releases ORDER BY id DESC LIMIT ?");
    let rows = sqlx::query(sqlx::AssertSqlSafe(q)).bind(MAX_RELEASES_LISTED).fetch_all(inst.pool()).await?;
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        let release = release_from_row(&r)?;
        let lines = release_lines(inst, release.id).await?;
        let file = sqlx::query("SELECT state, announced, delivered_at FROM outbox WHERE file_id = ?")
            .bind(&release.file_id)
            .fetch_optional(inst.pool())
            .await?;
        let (file_state, delivered_at) = match file {
            None => ("pending".to_string(), None),
            Some(f) => {
                let state: String = f.try_get(0)?;
                let announced: i64 = f.try_get(1)?;
                let state = if state == "created" && announced != 0 { "announced".to_string() } else { state };
                (state, f.try_get::<Option<String>, _>(2)?)
            }
        };
        let unmatched: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM plan_lines l WHERE l.release_id = ?
               AND (SELECT TOTAL(m.qty) FROM release_matches m WHERE m.line_id = l.id) < l.qty - 1e-9",
        )
        .bind(release.id)
        .fetch_one(inst.pool())
        .await?;
        let seen_in_erp = !lines.is_empty() && unmatched == 0;
        out.push(ReleasedOrder { release, lines, file_state, delivered_at, seen_in_erp });
    }
    Ok(out)
}

// ----------------------------------------------------------------------------------------------------------------
// Planning: released quantities on order, supersession

/// A released line still counted as on order.
#[derive(Debug)]
struct OpenRelease {
    id: i64,
    item: String,
    location: String,
    supplier: String,
    qty: f64,
    consumed: f64,
    order_date: NaiveDate,
    lead_time_days: f64,
    preexisting: HashSet<(String, String)>,
}

/// An order line of the ERP's extract that may consume released quantities.
#[derive(Debug)]
struct ErpOrder {
    order_number: String,
    line: String,
    order_date: NaiveDate,
    qty: f64,
    used: f64,
}

/// Match every open released line with the ERP's order lines, record the matches, settle the lines that are fully
/// matched or expired, and return the quantities still on order per item x location.
///
/// An ERP order line (`po`, or `pohist` for one received meanwhile) consumes released quantity when it has the
/// same item, location and supplier, an order date on or after the release date, and was not already in the
/// extract on the release day. Each ERP order line's quantity (`order_qty`, else the outstanding or received
/// quantity) is consumed at most once over all releases (`release_matches`); released lines are served newest
/// release first (the ERP lines that may match an old release are a superset of those of a newer one).
/// Expiry: release date + `expiry_days`, or with `expiry_days` 0 + ⌈lead time + review period⌉.
pub async fn released_on_order(
    inst: &Instance,
    today: NaiveDate,
    review_days: f64,
    expiry_days: u32,
) -> anyhow::Result<HashMap<(String, String), f64>> {
    ensure_schema(inst).await?;
    let mut tx = inst.pool().begin_with("BEGIN IMMEDIATE").await?;
    let rows = sqlx::query(
        "SELECT l.id, l.item, l.location, l.supplier, l.qty, l.lead_time_days, l.preexisting, r.order_date,
                (SELECT TOTAL(m.qty) FROM release_matches m WHERE m.line_id = l.id) AS consumed
           FROM plan_lines l JOIN releases r ON r.id = l.release_id
          WHERE l.state = 'released' AND l.settled = 0
          ORDER BY l.item, l.location, l.supplier, r.order_date DESC, l.id DESC",
    )
    .fetch_all(&mut *tx)
    .await?;
    let mut open: Vec<OpenRelease> = Vec::with_capacity(rows.len());
    for r in rows {
        let id: i64 = r.try_get("id")?;
        let date: String = r.try_get("order_date")?;
        let pre: String = r.try_get("preexisting")?;
        let pre: Vec<(String, String)> = serde_json::from_str(&pre).unwrap_or_default();
        open.push(OpenRelease {
            id,
            item: r.try_get("item")?,
            location: r.try_get("location")?,
            supplier: r.try_get("supplier")?,
            qty: r.try_get("qty")?,
            consumed: r.try_get("consumed")?,
            order_date: NaiveDate::parse_from_str(&date, "%Y-%m-%d")
                .with_context(|| format!("released line {id} has an unreadable release date {date:?}"))?,
            lead_time_days: r.try_get("lead_time_days")?,
            preexisting: pre.into_iter().collect(),
        });
    }
    let now = Utc::now().to_rfc3339();
    let mut out: HashMap<(String, String), f64> = HashMap::new();
    for group in open.chunk_by_mut(|a, b| (&a.item, &a.location, &a.supplier) == (&b.item, &b.location, &b.supplier)) {
        let (item, location, supplier) = (group[0].item.clone(), group[0].location.clone(), group[0].supplier.clone());
        let oldest = group.iter().map(|l| l.order_date).min().unwrap_or(today).format("%Y-%m-%d").to_string();
        let mut erp = erp_orders(&mut tx, &item, &location, &supplier, &oldest).await?;
        for line in group.iter_mut() {
            for o in erp.iter_mut() {
                let want = line.qty - line.consumed;
                if want <= EPS {
                    break;
                }
                let key = (o.order_number.clone(), o.line.clone());
                if o.order_date < line.order_date || line.preexisting.contains(&key) || o.qty - o.used <= EPS {
                    continue;
                }
                let take = want.min(o.qty - o.used);
                o.used += take;
                line.consumed += take;
                sqlx::query(
                    "INSERT INTO release_matches(line_id, order_number, po_line, qty, matched_at) VALUES (?, ?, ?, ?, ?)
                     ON CONFLICT(line_id, order_number, po_line) DO UPDATE SET qty = qty + excluded.qty",
                )
                .bind(line.id)
                .bind(&o.order_number)
                .bind(&o.line)
                .bind(take)
                .bind(&now)
                .execute(&mut *tx)
                .await?;
            }
            let days = if expiry_days > 0 {
                u64::from(expiry_days)
            } else {
                let d = (line.lead_time_days.max(0.0) + review_days.max(0.0) - EPS).ceil().max(0.0);
                if d.is_finite() && d < 1e6 { d as u64 } else { 1_000_000 }
            };
            let expired = line.order_date.checked_add_days(Days::new(days)).is_none_or(|end| today >= end);
            let remaining = line.qty - line.consumed;
            if remaining <= EPS || expired {
                sqlx::query("UPDATE plan_lines SET settled = 1 WHERE id = ?").bind(line.id).execute(&mut *tx).await?;
            } else {
                *out.entry((item.clone(), location.clone())).or_default() += remaining;
            }
        }
    }
    tx.commit().await?;
    Ok(out)
}

/// The ERP's order lines of an item x location x supplier dated on or after `from`, with what earlier releases
/// already consumed of each, oldest first.
async fn erp_orders(
    conn: &mut sqlx::SqliteConnection,
    item: &str,
    location: &str,
    supplier: &str,
    from: &str,
) -> anyhow::Result<Vec<ErpOrder>> {
    let rows = sqlx::query(
        "WITH erp AS (
           SELECT order_number, COALESCE(line, '') AS line, order_date,
                  COALESCE(CAST(order_qty AS REAL), CAST(outstanding_qty AS REAL), 0.0) AS qty
             FROM po WHERE item = ? AND location = ? AND supplier = ? AND order_date >= ? AND order_number IS NOT NULL
           UNION ALL
           SELECT order_number, COALESCE(line, ''), order_date,
                  COALESCE(CAST(order_qty AS REAL), CAST(received_qty AS REAL), 0.0)
             FROM pohist WHERE item = ? AND location = ? AND supplier = ? AND order_date >= ? AND order_number IS NOT NULL)
         SELECT e.order_number, e.line, MIN(e.order_date) AS order_date, MAX(e.qty) AS qty,
                (SELECT TOTAL(m.qty) FROM release_matches m JOIN plan_lines l ON l.id = m.line_id
                  WHERE m.order_number = e.order_number AND m.po_line = e.line
                    AND l.item = ? AND l.location = ? AND l.supplier = ?) AS used
           FROM erp e GROUP BY e.order_number, e.line ORDER BY MIN(e.order_date), e.order_number, e.line",
    )
    .bind(item)
    .bind(location)
    .bind(supplier)
    .bind(from)
    .bind(item)
    .bind(location)
    .bind(supplier)
    .bind(from)
    .bind(item)
    .bind(location)
    .bind(supplier)
    .fetch_all(&mut *conn)
    .await?;
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        let date: String = r.try_get("order_date")?;
        // a date the import accepted is ISO; anything else cannot be compared and is left out
        let Ok(order_date) = NaiveDate::parse_from_str(&date, "%Y-%m-%d") else { continue };
        let qty: f64 = r.try_get("qty")?;
        out.push(ErpOrder {
            order_number: r.try_get("order_number")?,
            line: r.try_get("line")?,
            order_date,
            qty: if qty.is_finite() { qty.max(0.0) } else { 0.0 },
            used: r.try_get("used")?,
        });
    }
    Ok(out)
}

/// Plan the instance and store the result as its new current plan: every line still proposed in an older plan
/// becomes superseded. Released quantities still on order ([`released_on_order`]) count in the net position.
/// If a release happens while the plan is computed, the plan is computed again (a plan must know every release
/// made before it is stored, or it would recommend the released lines again).
pub async fn new_plan(inst: &Instance, params: &PlanParams, expiry_days: u32) -> anyhow::Result<PlanInfo> {
    ensure_schema(inst).await?;
    for _attempt in 0..5 {
        let before = last_release(inst).await?;
        let on_order = released_on_order(inst, params.today, params.review_days, expiry_days).await?;
        let plan = planner::plan_with_released(inst, params, &on_order).await.context("planning failed")?;
        let mut tx = inst.pool().begin_with("BEGIN IMMEDIATE").await?;
        let now: i64 = sqlx::query_scalar("SELECT COALESCE(MAX(id), 0) FROM releases").fetch_one(&mut *tx).await?;
        if now != before {
            continue; // rolled back on drop
        }
        let created_at = Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        let plan_id: i64 =
            sqlx::query_scalar("INSERT INTO plans(created_at, plan_date, lines) VALUES (?, ?, ?) RETURNING id")
                .bind(&created_at)
                .bind(params.today.format("%Y-%m-%d").to_string())
                .bind(plan.lines.len() as i64)
                .fetch_one(&mut *tx)
                .await?;
        sqlx::query("UPDATE plan_lines SET state = 'superseded' WHERE state = 'proposed' AND plan_id < ?")
            .bind(plan_id)
            .execute(&mut *tx)
            .await?;
        for l in &plan.lines {
            sqlx::query(
                "INSERT INTO plan_lines(plan_id, supplier, item, location, planned_qty, qty, unit_cost, due_date, state,
                   rate, safety_stock, reorder_point, target, position, lead_time_days, lead_time_source,
                   released_on_order)
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'proposed', ?, ?, ?, ?, ?, ?, ?, ?)",
            )
            .bind(plan_id)
            .bind(&l.supplier)
            .bind(&l.item)
            .bind(&l.location)
            .bind(l.qty)
            .bind(l.qty)
            .bind(&l.unit_cost)
            .bind(l.due_date.format("%Y-%m-%d").to_string())
            .bind(l.rate)
            .bind(l.safety_stock)
            .bind(l.reorder_point)
            .bind(l.target)
            .bind(l.position)
            .bind(l.lead_time_days)
            .bind(l.lead_time_source.as_str())
            .bind(l.released_on_order)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        return Ok(PlanInfo { id: plan_id, created_at, lines: plan.lines.len() as u64 });
    }
    anyhow::bail!("releases kept arriving while planning (5 attempts); plan again")
}

async fn last_release(inst: &Instance) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar("SELECT COALESCE(MAX(id), 0) FROM releases").fetch_one(inst.pool()).await?)
}

/// The proposed lines of the current plan (what `auto` releases).
pub async fn proposed_ids(inst: &Instance, plan_id: i64) -> anyhow::Result<Vec<i64>> {
    ensure_schema(inst).await?;
    Ok(sqlx::query_scalar("SELECT id FROM plan_lines WHERE plan_id = ? AND state = 'proposed' ORDER BY id")
        .bind(plan_id)
        .fetch_all(inst.pool())
        .await?)
}
