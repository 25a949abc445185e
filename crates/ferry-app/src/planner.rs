//! The replenishment planner: recommended purchase orders, computed from a tenant's instance and written back to
//! the ERP as `po_NNNNNN.csv` in the generic order layout (`DATA-SPEC.md`, "Downstream files").
//!
//! Per item x location of `stock.csv` (externally supplied, at a location not marked inactive):
//!
//! * **demand** from `sales.csv`: net quantity per invoice day over the history window ending `today`, a day's net
//!   clamped at 0 (returns reduce their day only); daily rate by Croston's method with the Syntetos–Boylan
//!   correction ([`croston_sba`]), variability as the standard deviation of the daily series ([`std_dev`]);
//! * **lead time** `L` from `stock.csv`, else `supplier.csv`, else the mean observed in `pohist.csv` (item x location,
//!   then supplier), else [`PlanParams::default_lead_time_days`] ([`lead_time`]);
//! * **safety stock** `SS = z(service level) · σ · √(L + R)` with `R` the review period ([`safety_stock`]);
//! * **reorder point** `ROP = rate · L + SS`, **target** `T = rate · (L + R) + SS`;
//! * **net position** `on hand − allocated − open customer orders + open purchase orders + inbound transfers`
//!   ([`net_position`]);
//! * when `position ≤ ROP` (and there is demand) or `position < 0`, **order** `T − position`, rounded up to the
//!   minimum order quantity and then to the order multiple ([`order_quantity`]).
//!
//! The arithmetic is in plain functions, unit-testable without a database; [`plan`] reads and aggregates the
//! instance tables in SQL (every value bound, no SQL built from input) and applies them; [`write_po_files`] writes
//! one file per supplier. `docs/planner.md` derives every formula and lists the choices made.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use chrono::{Days, NaiveDate};
use futures::TryStreamExt;
use sqlx::Row;

use crate::instance::Instance;

/// Net daily quantities whose magnitude is below this are zero (noise from summing decimals as floats).
const EPS: f64 = 1e-9;

/// The largest history window accepted (100 years), so that date arithmetic cannot overflow.
const MAX_HISTORY_DAYS: i64 = 36_500;

/// Largest sequence number of an order file (`po_NNNNNN.csv`: six digits).
pub const MAX_FILE_SEQ: u64 = 999_999;

/// Header row of the generic order layout (`DATA-SPEC.md`, "Downstream files").
pub const ORDER_HEADER: [&str; 10] =
    ["order_number", "line", "item", "location", "supplier", "qty", "unit_cost", "order_date", "due_date", "comment"];

#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("invalid planning parameters: {0}")]
    Params(String),
    #[error("planner query failed: {0}")]
    Db(#[from] sqlx::Error),
    #[error(
        "lead time {days} days of item {item:?} at {location:?} puts its due date beyond the calendar; \
         correct lead_time_days in the extract"
    )]
    DueDate { item: String, location: String, days: f64 },
    #[error("order file sequence {0} does not fit in six digits (po_NNNNNN.csv); the sequence is exhausted")]
    Sequence(u64),
    #[error(
        "order file {} already exists; use a sequence number after the last one written",
        path.display()
    )]
    Exists { path: PathBuf },
    #[error("cannot write order file {}: {source}; check that the directory exists, is writable and has space", path.display())]
    Io { path: PathBuf, source: std::io::Error },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> PlanError + '_ {
    move |source| PlanError::Io { path: path.to_path_buf(), source }
}

// ----------------------------------------------------------------------------------------------------------------
// Parameters and results

/// What the planner aims for and how far back it looks.
#[derive(Debug, Clone, PartialEq)]
pub struct PlanParams {
    /// Probability of not running out during a replenishment cycle (cycle service level), in `[0.5, 1)`.
    pub service_level: f64,
    /// Review period `R` in days: how often orders are placed (the order cycle).
    pub review_days: f64,
    /// Length of the sales history window in days, ending `today` inclusive.
    pub history_days: i64,
    /// The planning date: last day of the history window, first day lead times count from.
    pub today: NaiveDate,
    /// Lead time used when neither stock, supplier nor purchase history gives one.
    pub default_lead_time_days: f64,
    /// Smoothing constant α of Croston's method, in `(0, 1]`.
    pub smoothing_alpha: f64,
}

impl PlanParams {
    /// Defaults: 95 % service level, weekly review, one year of history, 14 days default lead time, α = 0.1.
    pub fn new(today: NaiveDate) -> PlanParams {
        PlanParams {
            service_level: 0.95,
            review_days: 7.0,
            history_days: 365,
            today,
            default_lead_time_days: 14.0,
            smoothing_alpha: 0.1,
        }
    }

    /// Check every parameter; the message names the one that is wrong.
    pub fn validate(&self) -> Result<(), PlanError> {
        let bad = |m: String| Err(PlanError::Params(m));
        if !(self.service_level >= 0.5 && self.service_level < 1.0) {
            return bad(format!("service_level {} must be at least 0.5 and below 1", self.service_level));
        }
        if !(self.review_days.is_finite() && self.review_days >= 0.0) {
            return bad(format!("review_days {} must be zero or more", self.review_days));
        }
        if !(1..=MAX_HISTORY_DAYS).contains(&self.history_days) {
            return bad(format!("history_days {} must be between 1 and {MAX_HISTORY_DAYS}", self.history_days));
        }
        if !(self.default_lead_time_days.is_finite() && self.default_lead_time_days >= 0.0) {
            return bad(format!("default_lead_time_days {} must be zero or more", self.default_lead_time_days));
        }
        if !(self.smoothing_alpha > 0.0 && self.smoothing_alpha <= 1.0) {
            return bad(format!("smoothing_alpha {} must be above 0 and at most 1", self.smoothing_alpha));
        }
        if self.window_start().is_none() {
            return bad(format!(
                "a history of {} days before {} is outside the calendar",
                self.history_days, self.today
            ));
        }
        Ok(())
    }

    /// First day of the history window: `today − (history_days − 1)`.
    pub fn window_start(&self) -> Option<NaiveDate> {
        let back = u64::try_from(self.history_days.checked_sub(1)?).ok()?;
        self.today.checked_sub_days(Days::new(back))
    }
}

/// Where a lead time came from, in order of preference.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LeadTimeSource {
    /// `stock.csv` `lead_time_days` of the item x location.
    Stock,
    /// `supplier.csv` lead time of the item's supplier.
    Supplier,
    /// Mean `receipt_date − order_date` of the item x location in `pohist.csv`.
    PoHistoryItem,
    /// Mean `receipt_date − order_date` of every receipt from the supplier in `pohist.csv`.
    PoHistorySupplier,
    /// [`PlanParams::default_lead_time_days`].
    Default,
}

impl LeadTimeSource {
    /// Short name used in comments and reports: `stock`, `supplier`, `pohist-item`, `pohist-supplier`, `default`.
    pub fn as_str(self) -> &'static str {
        match self {
            LeadTimeSource::Stock => "stock",
            LeadTimeSource::Supplier => "supplier",
            LeadTimeSource::PoHistoryItem => "pohist-item",
            LeadTimeSource::PoHistorySupplier => "pohist-supplier",
            LeadTimeSource::Default => "default",
        }
    }
}

impl LeadTimeSource {
    /// The source named by [`LeadTimeSource::as_str`]; None for any other text.
    pub fn parse(s: &str) -> Option<LeadTimeSource> {
        [
            LeadTimeSource::Stock,
            LeadTimeSource::Supplier,
            LeadTimeSource::PoHistoryItem,
            LeadTimeSource::PoHistorySupplier,
            LeadTimeSource::Default,
        ]
        .into_iter()
        .find(|l| l.as_str() == s)
    }
}

impl std::fmt::Display for LeadTimeSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One recommended purchase-order line, with the numbers that led to it. Quantities are in the item's planning
/// unit of measure.
#[derive(Debug, Clone, PartialEq)]
pub struct PlanLine {
    pub item: String,
    pub location: String,
    pub supplier: String,
    /// Quantity to order: `T − position` rounded up to the minimum order qty, then to the order multiple.
    pub qty: f64,
    /// `stock.csv` purchase unit cost, exactly as the extract gave it.
    pub unit_cost: String,
    /// `today + ⌈L⌉`.
    pub due_date: NaiveDate,
    /// Forecast demand per day (Croston–SBA).
    pub rate: f64,
    pub safety_stock: f64,
    pub reorder_point: f64,
    /// Order-up-to level `T`.
    pub target: f64,
    /// Net inventory position before this order (released quantities still on order included).
    pub position: f64,
    /// The part of `position` that is released lines not yet shown by the ERP ([`plan_with_released`]).
    pub released_on_order: f64,
    pub lead_time_days: f64,
    pub lead_time_source: LeadTimeSource,
}

/// The recommended orders, sorted by (supplier, item, location), so the lines of one supplier are adjacent.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Plan {
    pub lines: Vec<PlanLine>,
}

impl Plan {
    /// The lines grouped per supplier, in order (assumes the sorted order [`plan`] returns).
    pub fn by_supplier(&self) -> impl Iterator<Item = (&str, &[PlanLine])> {
        self.lines.chunk_by(|a, b| a.supplier == b.supplier).map(|g| (g[0].supplier.as_str(), g))
    }
}

// ----------------------------------------------------------------------------------------------------------------
// Demand

/// Net demand per day of a window of `days` days: the quantities of each day (0-based day index) summed, returns
/// being negative; then each day clamped at 0, so that a return only reduces the demand of its own day. Entries
/// outside the window are ignored; a net below 1e-9 is 0.
pub fn daily_series(days: usize, entries: impl IntoIterator<Item = (usize, f64)>) -> Vec<f64> {
    let mut series = vec![0.0; days];
    for (day, qty) in entries {
        if let Some(d) = series.get_mut(day) {
            *d += qty;
        }
    }
    for d in &mut series {
        if *d < EPS {
            *d = 0.0;
        }
    }
    series
}

/// Croston's estimates with the Syntetos–Boylan approximation (SBA).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Croston {
    /// Smoothed size of a non-zero demand, `z`.
    pub size: f64,
    /// Smoothed interval between demands in days, `p`.
    pub interval: f64,
    /// Demand per day, `(1 − α/2) · z / p`; 0 without any demand.
    pub rate: f64,
}

/// Croston–SBA daily rate of a daily demand series (`series[0]` the oldest day).
///
/// Let the days with demand be `t_1 < … < t_k` (1-based) with sizes `d_1 … d_k`, `n = series.len()`:
///
/// * initialise with the window means `z = (d_1 + … + d_k) / k`, `p = n / k` (the mean interval counts the quiet
///   days before the first and after the last demand, so a lone demand at either end of the window does not look
///   frequent);
/// * for `i = 2 … k`: `z ← z + α (d_i − z)`, `p ← p + α ((t_i − t_{i−1}) − p)`;
/// * stale guard: the interval since the last demand, `a = n − t_k`, is still running, so if `a > p` then
///   `p ← p + α (a − p)` (a lower bound on the current interval pulls `p` up; demand that stopped fades);
/// * `rate = (1 − α/2) · z / p`.
pub fn croston_sba(series: &[f64], alpha: f64) -> Croston {
    let demands: Vec<(usize, f64)> =
        series.iter().enumerate().filter(|(_, d)| **d > 0.0).map(|(i, d)| (i + 1, *d)).collect();
    let Some(&(last, _)) = demands.last() else {
        return Croston::default();
    };
    let k = demands.len() as f64;
    let mut z = demands.iter().map(|(_, d)| d).sum::<f64>() / k;
    let mut p = series.len() as f64 / k;
    for w in demands.windows(2) {
        let ((t0, _), (t1, d1)) = (w[0], w[1]);
        z += alpha * (d1 - z);
        p += alpha * ((t1 - t0) as f64 - p);
    }
    let open = (series.len() - last) as f64;
    if open > p {
        p += alpha * (open - p);
    }
    Croston { size: z, interval: p, rate: (1.0 - alpha / 2.0) * z / p }
}

/// Sample standard deviation `σ = √(Σ (x − x̄)² / (n − 1))` of the daily series, zero days included; 0 when
/// `n < 2`. This is the variability of demand *per day*, which is what `√(L + R)` scales.
pub fn std_dev(series: &[f64]) -> f64 {
    if series.len() < 2 {
        return 0.0;
    }
    let n = series.len() as f64;
    let mean = series.iter().sum::<f64>() / n;
    let ss: f64 = series.iter().map(|x| (x - mean).powi(2)).sum();
    (ss / (n - 1.0)).sqrt()
}

/// Demand of one item x location.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Demand {
    /// Forecast per day (Croston–SBA).
    pub rate: f64,
    /// Standard deviation of daily demand.
    pub sigma: f64,
    /// Plain mean of the daily series (for comparison; not used to order).
    pub mean: f64,
    /// Days with demand.
    pub demand_days: usize,
    /// Days in the series.
    pub days: usize,
}

/// Rate, variability and plain mean of a daily series.
pub fn demand(series: &[f64], alpha: f64) -> Demand {
    let days = series.len();
    Demand {
        rate: croston_sba(series, alpha).rate,
        sigma: std_dev(series),
        mean: if days == 0 { 0.0 } else { series.iter().sum::<f64>() / days as f64 },
        demand_days: series.iter().filter(|d| **d > 0.0).count(),
        days,
    }
}

// ----------------------------------------------------------------------------------------------------------------
// Lead time, safety stock, reorder point, target, position, quantity

/// The lead times known for an item x location, in days.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct LeadTimeFacts {
    /// `stock.csv` `lead_time_days`.
    pub stock: Option<f64>,
    /// `supplier.csv` lead time of the item's supplier.
    pub supplier: Option<f64>,
    /// Mean observed lead time of the item x location in `pohist.csv`.
    pub pohist_item: Option<f64>,
    /// Mean observed lead time of the supplier in `pohist.csv`.
    pub pohist_supplier: Option<f64>,
}

/// The lead time to plan with and where it came from: the first of stock, supplier, item x location history,
/// supplier history, `default_days`. A stated lead time (stock, supplier) counts only when above 0 — ERPs write 0
/// for "not set"; an observed mean counts when 0 or more.
pub fn lead_time(facts: &LeadTimeFacts, default_days: f64) -> (f64, LeadTimeSource) {
    let stated = |v: Option<f64>| v.filter(|d| d.is_finite() && *d > 0.0);
    let observed = |v: Option<f64>| v.filter(|d| d.is_finite() && *d >= 0.0);
    if let Some(d) = stated(facts.stock) {
        (d, LeadTimeSource::Stock)
    } else if let Some(d) = stated(facts.supplier) {
        (d, LeadTimeSource::Supplier)
    } else if let Some(d) = observed(facts.pohist_item) {
        (d, LeadTimeSource::PoHistoryItem)
    } else if let Some(d) = observed(facts.pohist_supplier) {
        (d, LeadTimeSource::PoHistorySupplier)
    } else {
        (default_days, LeadTimeSource::Default)
    }
}

/// Inverse of the standard normal CDF, `z = Φ⁻¹(p)`, by Acklam's rational approximation (relative error below
/// 1.15e-9 over `(0, 1)`): a central rational function for `0.02425 ≤ p ≤ 0.97575` and one in `√(−2 ln p)` for
/// each tail. `−∞` at 0, `+∞` at 1, NaN outside `[0, 1]`.
pub fn inverse_normal_cdf(p: f64) -> f64 {
    const A: [f64; 6] = [
        -3.969_683_028_665_376e1,
        2.209_460_984_245_205e2,
        -2.759_285_104_469_687e2,
        1.383_577_518_672_69e2,
        -3.066_479_806_614_716e1,
        2.506_628_277_459_239,
    ];
    const B: [f64; 5] = [
        -5.447_609_879_822_406e1,
        1.615_858_368_580_409e2,
        -1.556_989_798_598_866e2,
        6.680_131_188_771_972e1,
        -1.328_068_155_288_572e1,
    ];
    const C: [f64; 6] = [
        -7.784_894_002_430_293e-3,
        -3.223_964_580_411_365e-1,
        -2.400_758_277_161_838,
        -2.549_732_539_343_734,
        4.374_664_141_464_968,
        2.938_163_982_698_783,
    ];
    const D: [f64; 4] =
        [7.784_695_709_041_462e-3, 3.224_671_290_700_398e-1, 2.445_134_137_142_996, 3.754_408_661_907_416];
    const P_LOW: f64 = 0.02425;
    let tail = |q: f64| {
        (((((C[0] * q + C[1]) * q + C[2]) * q + C[3]) * q + C[4]) * q + C[5])
            / ((((D[0] * q + D[1]) * q + D[2]) * q + D[3]) * q + 1.0)
    };
    if p.is_nan() || !(0.0..=1.0).contains(&p) {
        f64::NAN
    } else if p == 0.0 {
        f64::NEG_INFINITY
    } else if p == 1.0 {
        f64::INFINITY
    } else if p < P_LOW {
        tail((-2.0 * p.ln()).sqrt())
    } else if p <= 1.0 - P_LOW {
        let q = p - 0.5;
        let r = q * q;
        (((((A[0] * r + A[1]) * r + A[2]) * r + A[3]) * r + A[4]) * r + A[5]) * q
            / (((((B[0] * r + B[1]) * r + B[2]) * r + B[3]) * r + B[4]) * r + 1.0)
    } else {
        -tail((-2.0 * (1.0 - p).ln()).sqrt())
    }
}

/// Safety stock `SS = z · σ · √(L + R)`: demand over the protection interval (lead time plus review period) is
/// taken as normal with standard deviation `σ √(L + R)`.
pub fn safety_stock(z: f64, sigma: f64, lead_days: f64, review_days: f64) -> f64 {
    z * sigma * (lead_days + review_days).max(0.0).sqrt()
}

/// Reorder point `ROP = rate · L + SS`.
pub fn reorder_point(rate: f64, lead_days: f64, safety_stock: f64) -> f64 {
    rate * lead_days + safety_stock
}

/// Order-up-to level `T = rate · (L + R) + SS`.
pub fn order_up_to(rate: f64, lead_days: f64, review_days: f64, safety_stock: f64) -> f64 {
    rate * (lead_days + review_days) + safety_stock
}

/// Net inventory position `on_hand − allocated − open customer orders + open purchase orders + inbound transfers`.
pub fn net_position(
    on_hand: f64,
    allocated: f64,
    open_customer_orders: f64,
    open_purchase_orders: f64,
    inbound_transfers: f64,
) -> f64 {
    on_hand - allocated - open_customer_orders + open_purchase_orders + inbound_transfers
}

/// Round a positive need up to the minimum order qty, then up to a multiple of the order multiple. Without a
/// multiple (absent or ≤ 0) the multiple is 1: whole planning units. A need that is a multiple within 1e-9 is not
/// bumped to the next one.
pub fn round_order_qty(need: f64, min_order_qty: Option<f64>, order_multiple: Option<f64>) -> f64 {
    let q = need.max(min_order_qty.filter(|m| *m > 0.0).unwrap_or(0.0));
    let m = order_multiple.filter(|m| *m > 0.0).unwrap_or(1.0);
    (q / m - EPS).ceil().max(1.0) * m
}

/// The quantity to order, 0 for none: when `position ≤ ROP` with `rate > 0`, or `position < 0` (backorders),
/// order `T − position` rounded by [`round_order_qty`]; a need of 0 or less orders nothing.
pub fn order_quantity(
    position: f64,
    reorder_point: f64,
    target: f64,
    rate: f64,
    min_order_qty: Option<f64>,
    order_multiple: Option<f64>,
) -> f64 {
    let triggered = (rate > 0.0 && position <= reorder_point) || position < 0.0;
    let need = target - position;
    if triggered && need > EPS { round_order_qty(need, min_order_qty, order_multiple) } else { 0.0 }
}

// ----------------------------------------------------------------------------------------------------------------
// Reading the instance

/// Stock rows with everything the planner needs of the other tables, aggregated per item x location (or supplier)
/// in SQL. Internally supplied rows (`supply_type = 'IN'`, replenished by transfer) and locations marked inactive
/// are left out. Parameter: the first day of the history window (ISO).
const STOCK_SQL: &str = "\
WITH
  co_open AS (SELECT item, location, TOTAL(CAST(outstanding_qty AS REAL)) AS qty FROM co GROUP BY item, location),
  po_open AS (SELECT item, location, TOTAL(CAST(outstanding_qty AS REAL)) AS qty FROM po GROUP BY item, location),
  inbound AS (SELECT item, dest_location AS location, TOTAL(CAST(qty_to_receive AS REAL)) AS qty
              FROM transfer GROUP BY item, dest_location),
  receipts AS (SELECT item, location, supplier, julianday(receipt_date) - julianday(order_date) AS days
               FROM pohist WHERE julianday(receipt_date) >= julianday(order_date)),
  lt_item AS (SELECT item, location, AVG(days) AS days FROM receipts GROUP BY item, location),
  lt_supplier AS (SELECT supplier, AVG(days) AS days FROM receipts GROUP BY supplier),
  supplier_lt AS (SELECT supplier, MAX(CAST(lead_time_days AS REAL)) AS days FROM supplier GROUP BY supplier),
  inactive AS (SELECT location FROM location WHERE active = 0 AND location IS NOT NULL)
SELECT s.item, s.location, s.supplier, s.purchase_cost,
       COALESCE(CAST(s.on_hand AS REAL), 0.0) AS on_hand,
       COALESCE(CAST(s.allocated AS REAL), 0.0) AS allocated,
       CAST(s.lead_time_days AS REAL) AS stock_lt,
       CAST(s.min_order_qty AS REAL) AS moq,
       CAST(s.order_multiple AS REAL) AS multiple,
       CAST(julianday(s.date_added) - julianday(?) AS INTEGER) AS added_day,
       sl.days AS supplier_lt, li.days AS pohist_item_lt, ls.days AS pohist_supplier_lt,
       COALESCE(c.qty, 0.0) AS co_open, COALESCE(p.qty, 0.0) AS po_open, COALESCE(t.qty, 0.0) AS inbound
FROM stock s
LEFT JOIN supplier_lt sl ON sl.supplier = s.supplier
LEFT JOIN lt_item li ON li.item = s.item AND li.location = s.location
LEFT JOIN lt_supplier ls ON ls.supplier = s.supplier
LEFT JOIN co_open c ON c.item = s.item AND c.location = s.location
LEFT JOIN po_open p ON p.item = s.item AND p.location = s.location
LEFT JOIN inbound t ON t.item = s.item AND t.location = s.location
WHERE s.item IS NOT NULL AND s.location IS NOT NULL AND s.supplier IS NOT NULL
  AND (s.supply_type IS NULL OR s.supply_type <> 'IN')
  AND s.location NOT IN (SELECT location FROM inactive)
ORDER BY s.supplier, s.item, s.location, s.rowid";

/// Net sales per item x location x invoice day inside the window, as a 0-based day index. Parameters: window
/// start (for the index), window start, today.
const SALES_SQL: &str = "\
SELECT item, location, CAST(julianday(invoice_date) - julianday(?) AS INTEGER) AS day,
       TOTAL(CAST(qty AS REAL)) AS qty
FROM sales
WHERE invoice_date >= ? AND invoice_date <= ? AND item IS NOT NULL AND location IS NOT NULL
GROUP BY item, location, invoice_date
ORDER BY item, location, invoice_date";

/// One stock row and its aggregates.
#[derive(Debug)]
struct StockFacts {
    item: String,
    location: String,
    supplier: String,
    unit_cost: String,
    position: f64,
    released_on_order: f64,
    moq: Option<f64>,
    multiple: Option<f64>,
    /// Day index of `date_added` in the window, if any.
    added_day: Option<i64>,
    lead: LeadTimeFacts,
}

/// Compute the recommended purchase orders of an instance.
///
/// Reads `stock`, `supplier`, `location`, `sales`, `po`, `pohist`, `co` and `transfer` (aggregated in SQL, sales
/// streamed), plans every item x location of `stock` (the first row wins if one appears twice), and returns
/// the lines that order something, sorted by (supplier, item, location).
pub async fn plan(inst: &Instance, params: &PlanParams) -> Result<Plan, PlanError> {
    plan_with_released(inst, params, &HashMap::new()).await
}

/// [`plan`], with quantities already released to the ERP but not yet in its extract (per item x location) counted
/// as on order: they are added to the net position (`crate::release` computes them).
pub async fn plan_with_released(
    inst: &Instance,
    params: &PlanParams,
    released: &HashMap<(String, String), f64>,
) -> Result<Plan, PlanError> {
    params.validate()?;
    let start = params.window_start().ok_or_else(|| PlanError::Params("history window outside the calendar".into()))?;
    let start_iso = start.format("%Y-%m-%d").to_string();
    let today_iso = params.today.format("%Y-%m-%d").to_string();
    let pool = inst.pool();

    let mut facts: Vec<StockFacts> = Vec::new();
    let mut index: HashMap<(String, String), usize> = HashMap::new();
    let mut duplicates = 0usize;
    let mut rows = sqlx::query(STOCK_SQL).bind(&start_iso).fetch(pool);
    while let Some(r) = rows.try_next().await? {
        let item: String = r.try_get("item")?;
        let location: String = r.try_get("location")?;
        let key = (item, location);
        if index.contains_key(&key) {
            duplicates += 1;
            continue;
        }
        let released_on_order = released.get(&key).copied().filter(|q| q.is_finite() && *q > 0.0).unwrap_or(0.0);
        let position = net_position(
            r.try_get("on_hand")?,
            r.try_get("allocated")?,
            r.try_get("co_open")?,
            r.try_get::<f64, _>("po_open")? + released_on_order,
            r.try_get("inbound")?,
        );
        index.insert(key.clone(), facts.len());
        facts.push(StockFacts {
            item: key.0,
            location: key.1,
            supplier: r.try_get("supplier")?,
            unit_cost: r.try_get::<Option<String>, _>("purchase_cost")?.unwrap_or_default(),
            position,
            released_on_order,
            moq: r.try_get("moq")?,
            multiple: r.try_get("multiple")?,
            added_day: r.try_get("added_day")?,
            lead: LeadTimeFacts {
                stock: r.try_get("stock_lt")?,
                supplier: r.try_get("supplier_lt")?,
                pohist_item: r.try_get("pohist_item_lt")?,
                pohist_supplier: r.try_get("pohist_supplier_lt")?,
            },
        });
    }
    drop(rows);
    if duplicates > 0 {
        tracing::warn!(
            duplicates,
            "stock holds item x location rows more than once; the planner used the first of each"
        );
    }

    let window = params.history_days;
    let alpha = params.smoothing_alpha;
    let mut demands: Vec<Demand> = vec![Demand::default(); facts.len()];
    // Sales arrive ordered by item, location, day: gather one item x location at a time.
    let mut current: Option<(usize, Vec<(i64, f64)>)> = None;
    let mut key: (String, String) = (String::new(), String::new());
    let mut finish = |cur: Option<(usize, Vec<(i64, f64)>)>| {
        if let Some((i, entries)) = cur {
            demands[i] = item_demand(&entries, facts[i].added_day, window, alpha);
        }
    };
    let mut rows = sqlx::query(SALES_SQL).bind(&start_iso).bind(&start_iso).bind(&today_iso).fetch(pool);
    while let Some(r) = rows.try_next().await? {
        let item: &str = r.try_get("item")?;
        let location: &str = r.try_get("location")?;
        if key.0 != item || key.1 != location {
            finish(current.take());
            key = (item.to_string(), location.to_string());
            // sales of an item x location without a stock row are not planned
            current = index.get(&key).map(|&i| (i, Vec::new()));
        }
        let (Some((_, entries)), Some(day)) = (current.as_mut(), r.try_get::<Option<i64>, _>("day")?) else {
            continue;
        };
        entries.push((day, r.try_get("qty")?));
    }
    finish(current.take());
    drop(rows);

    let z = inverse_normal_cdf(params.service_level);
    let mut lines = Vec::new();
    for (f, d) in facts.into_iter().zip(demands) {
        let (lead, source) = lead_time(&f.lead, params.default_lead_time_days);
        let ss = safety_stock(z, d.sigma, lead, params.review_days);
        let rop = reorder_point(d.rate, lead, ss);
        let target = order_up_to(d.rate, lead, params.review_days, ss);
        let qty = order_quantity(f.position, rop, target, d.rate, f.moq, f.multiple);
        if qty <= 0.0 {
            continue;
        }
        let Some(due_date) = add_lead_time(params.today, lead) else {
            return Err(PlanError::DueDate { item: f.item, location: f.location, days: lead });
        };
        lines.push(PlanLine {
            item: f.item,
            location: f.location,
            supplier: f.supplier,
            qty,
            unit_cost: f.unit_cost,
            due_date,
            rate: d.rate,
            safety_stock: ss,
            reorder_point: rop,
            target,
            position: f.position,
            released_on_order: f.released_on_order,
            lead_time_days: lead,
            lead_time_source: source,
        });
    }
    // SQL already sorts, but by SQLite's collation of the stored values; make the order independent of it.
    lines.sort_by(|a, b| (&a.supplier, &a.item, &a.location).cmp(&(&b.supplier, &b.item, &b.location)));
    Ok(Plan { lines })
}

/// The demand of one item x location from its net sales per day (`(day index in the window, qty)`, ascending).
/// The series starts at the window start, or at `date_added` when that falls inside the window — but never after
/// the first sale — so a new item's rate is not diluted by days it did not exist.
fn item_demand(entries: &[(i64, f64)], added_day: Option<i64>, window: i64, alpha: f64) -> Demand {
    let first_sale = entries.first().map_or(window, |e| e.0);
    let start = added_day.filter(|d| (1..window).contains(d)).map_or(0, |d| d.min(first_sale).max(0));
    let days = usize::try_from(window - start).unwrap_or(0);
    let series =
        daily_series(days, entries.iter().filter_map(|&(d, q)| usize::try_from(d - start).ok().map(|d| (d, q))));
    demand(&series, alpha)
}

/// `date + ⌈days⌉` (a lead time within 1e-9 of a whole number counts as that number).
fn add_lead_time(date: NaiveDate, days: f64) -> Option<NaiveDate> {
    let whole = (days - EPS).ceil().max(0.0);
    if whole > MAX_HISTORY_DAYS as f64 * 10.0 {
        return None;
    }
    date.checked_add_days(Days::new(whole as u64))
}

// ----------------------------------------------------------------------------------------------------------------
// Writing the order files

/// Write the plan as recommended purchase orders: one file per supplier (suppliers in order), named
/// `po_NNNNNN.csv` with the sequence starting at `first_seq`, order number `REC-NNNNNN` of the same sequence,
/// lines `1..n` in (item, location) order, in the generic order layout with a header row. Dates `YYYY/MM/DD`;
/// `due_date = order_date + ⌈L⌉`; the comment carries the numbers behind the line.
///
/// Each file is written under a temporary name (`.po_NNNNNN.csv.tmp`), synced, and renamed only once every file
/// is written; no existing order file is ever overwritten (checked before anything is written). A failed write
/// leaves no file behind; a failed rename (rare: same directory) leaves the files renamed before it, each
/// complete. Returns each file's path and line count. An empty plan writes nothing.
pub fn write_po_files(
    plan: &Plan,
    dir: &Path,
    first_seq: u64,
    order_date: NaiveDate,
) -> Result<Vec<(PathBuf, u64)>, PlanError> {
    let mut lines: Vec<&PlanLine> = plan.lines.iter().collect();
    lines.sort_by(|a, b| (&a.supplier, &a.item, &a.location).cmp(&(&b.supplier, &b.item, &b.location)));
    let groups: Vec<&[&PlanLine]> = lines.chunk_by(|a, b| a.supplier == b.supplier).collect();

    let mut files = Vec::with_capacity(groups.len());
    for (i, group) in groups.iter().enumerate() {
        let seq = first_seq
            .checked_add(i as u64)
            .filter(|s| *s <= MAX_FILE_SEQ)
            .ok_or(PlanError::Sequence(first_seq.saturating_add(i as u64)))?;
        let path = dir.join(format!("po_{seq:06}.csv"));
        let tmp = dir.join(format!(".po_{seq:06}.csv.tmp"));
        if path.try_exists().map_err(io_err(&path))? {
            return Err(PlanError::Exists { path });
        }
        files.push((seq, *group, path, tmp));
    }

    let written = files.iter().try_for_each(|(seq, group, _, tmp)| write_order_file(tmp, *seq, group, order_date));
    if let Err(e) = written {
        for (_, _, _, tmp) in &files {
            let _ = std::fs::remove_file(tmp);
        }
        return Err(e);
    }
    let mut out = Vec::with_capacity(files.len());
    for (i, (_, group, path, tmp)) in files.iter().enumerate() {
        if let Err(e) = std::fs::rename(tmp, path) {
            // the files renamed so far are complete and stay; the rest are not published
            for (_, _, _, rest) in &files[i..] {
                let _ = std::fs::remove_file(rest);
            }
            return Err(io_err(path)(e));
        }
        out.push((path.clone(), group.len() as u64));
    }
    if !out.is_empty() {
        // make the renames durable; not every platform can open a directory, so best effort
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(out)
}

/// One order file (one supplier) at `path`, synced to disk.
fn write_order_file(path: &Path, seq: u64, lines: &[&PlanLine], order_date: NaiveDate) -> Result<(), PlanError> {
    let file = File::create(path).map_err(io_err(path))?;
    let mut w = csv::WriterBuilder::new().terminator(csv::Terminator::Any(b'\n')).from_writer(BufWriter::new(file));
    let csv_err = |e: csv::Error| PlanError::Io { path: path.to_path_buf(), source: std::io::Error::other(e) };
    w.write_record(ORDER_HEADER).map_err(csv_err)?;
    let order_number = format!("REC-{seq:06}");
    let order_day = order_date.format("%Y/%m/%d").to_string();
    for (n, l) in lines.iter().enumerate() {
        let due = add_lead_time(order_date, l.lead_time_days).ok_or_else(|| PlanError::DueDate {
            item: l.item.clone(),
            location: l.location.clone(),
            days: l.lead_time_days,
        })?;
        let comment = format!(
            "rop={};ss={};target={};position={};rate={};lead_time={}({})",
            fmt_num(l.reorder_point, 2),
            fmt_num(l.safety_stock, 2),
            fmt_num(l.target, 2),
            fmt_num(l.position, 2),
            fmt_num(l.rate, 4),
            fmt_num(l.lead_time_days, 2),
            l.lead_time_source,
        );
        w.write_record([
            order_number.as_str(),
            &(n + 1).to_string(),
            &l.item,
            &l.location,
            &l.supplier,
            &fmt_num(l.qty, 6),
            &l.unit_cost,
            &order_day,
            &due.format("%Y/%m/%d").to_string(),
            &comment,
        ])
        .map_err(csv_err)?;
    }
    let buf = w.into_inner().map_err(|e| io_err(path)(std::io::Error::other(e.to_string())))?;
    let mut file = buf.into_inner().map_err(|e| io_err(path)(std::io::Error::other(e.to_string())))?;
    file.flush().map_err(io_err(path))?;
    file.sync_all().map_err(io_err(path))
}

/// A number with at most `decimals` decimals, trailing zeros dropped: `120`, `2.5`, `0.3333`.
pub fn fmt_num(x: f64, decimals: usize) -> String {
    let s = format!("{x:.decimals$}");
    let s = if s.contains('.') { s.trim_end_matches('0').trim_end_matches('.') } else { &s };
    if s == "-0" { "0".into() } else { s.into() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inverse_normal_matches_tables() {
        // reference values of Φ⁻¹ (Python's statistics.NormalDist, Wichura's AS241, ~1e-16)
        for (p, z) in [
            (0.5, 0.0),
            (0.8, 0.841_621_233_572_914_4),
            (0.9, 1.281_551_565_544_600_8),
            (0.95, 1.644_853_626_951_471_5),
            (0.975, 1.959_963_984_540_053_6),
            (0.99, 2.326_347_874_040_840_8),
            (0.999, 3.090_232_306_167_813),
            (0.01, -2.326_347_874_040_840_8),
            (0.001, -3.090_232_306_167_813),
            (0.02425, -1.972_961_051_311_884_5),
            (0.97575, 1.972_961_051_311_884_7),
            (1e-9, -5.997_807_015_007_686_5),
        ] {
            let got = inverse_normal_cdf(p);
            assert!((got - z).abs() <= 1.2e-9 * z.abs().max(1.0), "p={p}: {got} vs {z}");
        }
        assert_eq!(inverse_normal_cdf(0.0), f64::NEG_INFINITY);
        assert_eq!(inverse_normal_cdf(1.0), f64::INFINITY);
        assert!(inverse_normal_cdf(1.5).is_nan());
        assert!(inverse_normal_cdf(f64::NAN).is_nan());
        // symmetric and increasing
        let mut last = f64::NEG_INFINITY;
        for i in 1..1000 {
            let p = f64::from(i) / 1000.0;
            let z = inverse_normal_cdf(p);
            assert!(z > last, "not increasing at {p}");
            assert!((z + inverse_normal_cdf(1.0 - p)).abs() < 1e-8, "{p}");
            last = z;
        }
    }

    #[test]
    fn rounding_to_moq_and_multiple() {
        assert_eq!(round_order_qty(3.2, None, None), 4.0);
        assert_eq!(round_order_qty(3.0, None, None), 3.0);
        assert_eq!(round_order_qty(3.0 + 1e-12, None, None), 3.0);
        assert_eq!(round_order_qty(3.2, Some(10.0), None), 10.0);
        assert_eq!(round_order_qty(3.2, Some(10.0), Some(4.0)), 12.0);
        assert_eq!(round_order_qty(13.0, Some(10.0), Some(4.0)), 16.0);
        assert_eq!(round_order_qty(0.25, None, Some(0.1)), 0.30000000000000004);
        assert_eq!(fmt_num(round_order_qty(0.25, None, Some(0.1)), 6), "0.3");
        assert_eq!(round_order_qty(1e-10, None, None), 1.0);
        // zero or negative moq / multiple mean "none"
        assert_eq!(round_order_qty(3.2, Some(0.0), Some(0.0)), 4.0);
        assert_eq!(round_order_qty(3.2, Some(-5.0), Some(-2.0)), 4.0);
    }

    #[test]
    fn order_trigger() {
        // above the reorder point: nothing
        assert_eq!(order_quantity(11.0, 10.0, 20.0, 1.0, None, None), 0.0);
        // at it: order up to the target
        assert_eq!(order_quantity(10.0, 10.0, 20.0, 1.0, None, None), 10.0);
        // no demand, no backorder: nothing even below the reorder point
        assert_eq!(order_quantity(0.0, 0.0, 0.0, 0.0, Some(5.0), None), 0.0);
        // backorders without demand: cover them
        assert_eq!(order_quantity(-3.0, 0.0, 0.0, 0.0, None, None), 3.0);
        // reorder point equal to target (R = 0) and position there: zero need, nothing
        assert_eq!(order_quantity(10.0, 10.0, 10.0, 1.0, None, None), 0.0);
    }

    #[test]
    fn croston_edge_cases() {
        assert_eq!(croston_sba(&[], 0.1), Croston::default());
        assert_eq!(croston_sba(&[0.0; 5], 0.1), Croston::default());
        // one day, one demand: z = 4, p = 1/1, rate = 0.95·4
        let c = croston_sba(&[4.0], 0.1);
        assert_eq!((c.size, c.interval), (4.0, 1.0));
        assert!((c.rate - 3.8).abs() < 1e-12);
        // demand that stopped: 10/day for 5 days, then 15 quiet days (n = 20, k = 5)
        // z = 10, p0 = 20/5 = 4, four intervals of 1: p = 1 + 3·0.9^4 = 2.9683;
        // a = 15 > p: p = 2.9683 + 0.1·(15 − 2.9683) = 4.17147; rate = 0.95·10/4.17147 = 2.27738
        let mut s = vec![10.0; 5];
        s.extend([0.0; 15]);
        let c = croston_sba(&s, 0.1);
        let p = 1.0 + 3.0 * 0.9f64.powi(4);
        let p = p + 0.1 * (15.0 - p);
        assert!((c.interval - p).abs() < 1e-12);
        assert!((c.rate - 0.95 * 10.0 / p).abs() < 1e-12);
        assert!((c.rate - 2.277_38).abs() < 1e-5, "{}", c.rate);
    }

    #[test]
    fn std_dev_and_series() {
        assert_eq!(std_dev(&[]), 0.0);
        assert_eq!(std_dev(&[5.0]), 0.0);
        // mean 3; squares 4 + 0 + 4 = 8; 8 / 2 = 4; σ = 2
        assert_eq!(std_dev(&[1.0, 3.0, 5.0]), 2.0);
        // float noise from decimals nets to zero, not a tiny demand
        let s = daily_series(2, [(0, 0.1), (0, 0.2), (0, -0.3), (1, 1.0), (5, 9.0)]);
        assert_eq!(s, vec![0.0, 1.0]);
    }

    #[test]
    fn new_item_series_starts_at_date_added() {
        // 10 days window, item added on day index 6, sells 5/day on days 6..9: series of 4 days of 5
        let entries: Vec<(i64, f64)> = (6..10).map(|d| (d, 5.0)).collect();
        let d = item_demand(&entries, Some(6), 10, 0.1);
        assert_eq!((d.days, d.demand_days), (4, 4));
        assert!((d.rate - 4.75).abs() < 1e-12);
        // a sale before date_added keeps its day in the series
        let mut early = entries.clone();
        early.insert(0, (3, 5.0));
        assert_eq!(item_demand(&early, Some(6), 10, 0.1).days, 7);
        // date_added before the window or in the future: whole window
        assert_eq!(item_demand(&entries, Some(-40), 10, 0.1).days, 10);
        assert_eq!(item_demand(&entries, Some(12), 10, 0.1).days, 10);
        assert_eq!(item_demand(&entries, None, 10, 0.1).days, 10);
    }

    #[test]
    fn params_are_checked() {
        let today = NaiveDate::from_ymd_opt(2026, 3, 10).unwrap();
        let ok = PlanParams::new(today);
        assert!(ok.validate().is_ok());
        assert_eq!(ok.window_start(), NaiveDate::from_ymd_opt(2025, 3, 11), "365 days ending 2026-03-10");
        for (p, word) in [
            (PlanParams { service_level: 1.0, ..ok.clone() }, "service_level"),
            (PlanParams { service_level: 0.4, ..ok.clone() }, "service_level"),
            (PlanParams { review_days: -1.0, ..ok.clone() }, "review_days"),
            (PlanParams { history_days: 0, ..ok.clone() }, "history_days"),
            (PlanParams { default_lead_time_days: f64::NAN, ..ok.clone() }, "default_lead_time_days"),
            (PlanParams { smoothing_alpha: 0.0, ..ok.clone() }, "smoothing_alpha"),
        ] {
            let e = p.validate().unwrap_err().to_string();
            assert!(e.contains(word), "{e}");
        }
    }

    #[test]
    fn numbers_format_compactly() {
        assert_eq!(fmt_num(120.0, 6), "120");
        assert_eq!(fmt_num(2.5, 2), "2.5");
        assert_eq!(fmt_num(18.018_46, 2), "18.02");
        assert_eq!(fmt_num(-0.0001, 2), "0");
        assert_eq!(fmt_num(-3.0, 2), "-3");
        assert_eq!(fmt_num(1.0 / 3.0, 4), "0.3333");
    }

    #[test]
    fn lead_time_days_round_up() {
        let d = NaiveDate::from_ymd_opt(2026, 3, 10).unwrap();
        assert_eq!(add_lead_time(d, 5.0), NaiveDate::from_ymd_opt(2026, 3, 15));
        assert_eq!(add_lead_time(d, 4.2), NaiveDate::from_ymd_opt(2026, 3, 15));
        assert_eq!(add_lead_time(d, 5.000_000_000_1), NaiveDate::from_ymd_opt(2026, 3, 15));
        assert_eq!(add_lead_time(d, 0.0), Some(d));
        assert_eq!(add_lead_time(d, 1e300), None);
    }
}
