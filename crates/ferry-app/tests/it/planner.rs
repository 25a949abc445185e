//! The replenishment planner with hand-worked numbers: every expected value below is derived in the comments
//! from the formulas of `docs/planner.md`, then checked against the pure functions and against `plan` on a real
//! instance database.
//!
//! Common to all: service level 0.95, so z = Φ⁻¹(0.95) = 1.6448536; review period R = 7 days; α = 0.1, so the
//! SBA factor is 1 − α/2 = 0.95; today = 2026-03-10.

use std::path::Path;

use chrono::NaiveDate;
use ferry_app::instance::Instance;
use ferry_app::planner::{
    self, LeadTimeFacts, LeadTimeSource, Plan, PlanError, PlanLine, PlanParams, croston_sba, daily_series, demand,
    inverse_normal_cdf, lead_time, net_position, order_quantity, order_up_to, reorder_point, safety_stock, std_dev,
    write_po_files,
};
use sqlx::SqlitePool;
use tempfile::TempDir;

const Z95: f64 = 1.644_853_627;

fn date(y: i32, m: u32, d: u32) -> NaiveDate {
    NaiveDate::from_ymd_opt(y, m, d).unwrap()
}

fn today() -> NaiveDate {
    date(2026, 3, 10)
}

/// Defaults with a history window of `days` days ending today.
fn params(days: i64) -> PlanParams {
    PlanParams { history_days: days, ..PlanParams::new(today()) }
}

#[track_caller]
fn close(got: f64, want: f64, what: &str) {
    assert!((got - want).abs() <= 1e-6 * want.abs().max(1.0), "{what}: got {got}, want {want}");
}

// ----------------------------------------------------------------------------------------------------------------
// An instance on a temp file, filled with plain INSERTs.

async fn instance() -> (TempDir, Instance) {
    let dir = TempDir::new().unwrap();
    let inst = Instance::open(&dir.path().join("tenant.db")).await.unwrap();
    (dir, inst)
}

/// A stock row; decimals as text like the import stores them.
#[derive(Clone, Copy)]
struct Stock<'a> {
    item: &'a str,
    location: &'a str,
    supplier: &'a str,
    cost: &'a str,
    on_hand: i64,
    allocated: Option<&'a str>,
    lead_time: Option<&'a str>,
    moq: Option<&'a str>,
    multiple: Option<&'a str>,
    supply_type: Option<&'a str>,
    date_added: Option<&'a str>,
}

impl<'a> Stock<'a> {
    fn new(item: &'a str, location: &'a str, supplier: &'a str) -> Self {
        Stock {
            item,
            location,
            supplier,
            cost: "1.00",
            on_hand: 0,
            allocated: None,
            lead_time: None,
            moq: None,
            multiple: None,
            supply_type: Some("EX"),
            date_added: None,
        }
    }

    async fn insert(self, pool: &SqlitePool) {
        sqlx::query(
            "INSERT INTO stock (item, location, supplier, inventory_cost, purchase_cost, on_hand, allocated, \
             lead_time_days, min_order_qty, order_multiple, supply_type, date_added) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
        )
        .bind(self.item)
        .bind(self.location)
        .bind(self.supplier)
        .bind(self.cost)
        .bind(self.cost)
        .bind(self.on_hand)
        .bind(self.allocated)
        .bind(self.lead_time)
        .bind(self.moq)
        .bind(self.multiple)
        .bind(self.supply_type)
        .bind(self.date_added)
        .execute(pool)
        .await
        .unwrap();
    }
}

/// A sale (or a return, when `qty` is negative) invoiced on `day` (ISO).
async fn sale(pool: &SqlitePool, item: &str, location: &str, day: &str, qty: &str) {
    sqlx::query("INSERT INTO sales (item, location, customer, order_date, invoice_date, qty) VALUES (?,?,'C1',?,?,?)")
        .bind(item)
        .bind(location)
        .bind(day)
        .bind(day)
        .bind(qty)
        .execute(pool)
        .await
        .unwrap();
}

/// `qty` sold on each day of March 2026 from `first` to `last`.
async fn sell_daily(pool: &SqlitePool, item: &str, location: &str, first: u32, last: u32, qty: &str) {
    for d in first..=last {
        sale(pool, item, location, &format!("2026-03-{d:02}"), qty).await;
    }
}

async fn supplier(pool: &SqlitePool, code: &str, lead_time: Option<&str>) {
    sqlx::query("INSERT INTO supplier (supplier, description, lead_time_days) VALUES (?, 'x', ?)")
        .bind(code)
        .bind(lead_time)
        .execute(pool)
        .await
        .unwrap();
}

async fn location(pool: &SqlitePool, code: &str, active: i64) {
    sqlx::query("INSERT INTO location (location, active) VALUES (?, ?)")
        .bind(code)
        .bind(active)
        .execute(pool)
        .await
        .unwrap();
}

async fn receipt(pool: &SqlitePool, item: &str, location: &str, supplier: &str, ordered: &str, received: Option<&str>) {
    sqlx::query(
        "INSERT INTO pohist (item, location, supplier, order_date, receipt_date, received_qty) VALUES (?,?,?,?,?,'1')",
    )
    .bind(item)
    .bind(location)
    .bind(supplier)
    .bind(ordered)
    .bind(received)
    .execute(pool)
    .await
    .unwrap();
}

async fn customer_order(pool: &SqlitePool, item: &str, location: &str, outstanding: &str) {
    sqlx::query("INSERT INTO co (item, location, order_number, outstanding_qty) VALUES (?,?,'SO1',?)")
        .bind(item)
        .bind(location)
        .bind(outstanding)
        .execute(pool)
        .await
        .unwrap();
}

async fn purchase_order(pool: &SqlitePool, item: &str, location: &str, outstanding: &str) {
    sqlx::query(
        "INSERT INTO po (item, location, supplier, order_number, line, expected_date, outstanding_qty) \
         VALUES (?,?,'S1','PO1','1','2026-03-20',?)",
    )
    .bind(item)
    .bind(location)
    .bind(outstanding)
    .execute(pool)
    .await
    .unwrap();
}

async fn transfer(pool: &SqlitePool, item: &str, from: &str, to: &str, to_receive: &str) {
    sqlx::query(
        "INSERT INTO transfer (item, source_location, dest_location, transfer_number, qty_to_receive) \
         VALUES (?,?,?,'T1',?)",
    )
    .bind(item)
    .bind(from)
    .bind(to)
    .bind(to_receive)
    .execute(pool)
    .await
    .unwrap();
}

fn line<'a>(plan: &'a Plan, item: &str, location: &str) -> &'a PlanLine {
    plan.lines
        .iter()
        .find(|l| l.item == item && l.location == location)
        .unwrap_or_else(|| panic!("no line for {item} at {location} in {plan:#?}"))
}

// ----------------------------------------------------------------------------------------------------------------
// (a) zero demand

#[tokio::test]
async fn a_zero_demand_orders_nothing() {
    // Pure: no demand -> rate 0, σ 0, SS 0, ROP 0, T 0; position 0 is not below 0 and rate is 0: no order,
    // even with a minimum order quantity.
    let d = demand(&[0.0; 10], 0.1);
    assert_eq!((d.rate, d.sigma, d.demand_days), (0.0, 0.0, 0));
    assert_eq!(order_quantity(0.0, 0.0, 0.0, 0.0, Some(50.0), None), 0.0);

    let (_dir, inst) = instance().await;
    let pool = inst.pool();
    // Z1: never sold. Z2: sold only before the 10-day window (2026-03-01..10). Z3: sold and fully returned on
    // the same day (net 0). Z4: sold 5 on a day after `today`. All with nothing on hand and a MOQ.
    for item in ["Z1", "Z2", "Z3", "Z4"] {
        Stock { moq: Some("50"), ..Stock::new(item, "L1", "S1") }.insert(pool).await;
    }
    sale(pool, "Z2", "L1", "2026-02-28", "40").await;
    sale(pool, "Z3", "L1", "2026-03-05", "12").await;
    sale(pool, "Z3", "L1", "2026-03-05", "-12").await;
    sale(pool, "Z4", "L1", "2026-03-11", "5").await;
    let plan = planner::plan(&inst, &params(10)).await.unwrap();
    assert!(plan.lines.is_empty(), "{plan:#?}");
}

// ----------------------------------------------------------------------------------------------------------------
// (b) steady demand

#[tokio::test]
async fn b_steady_demand_by_hand() {
    // 10 days: 20 on the first day, then 10 every day. Stock lead time L = 5, MOQ 100, multiple 24, on hand 60.
    let series = [20.0, 10.0, 10.0, 10.0, 10.0, 10.0, 10.0, 10.0, 10.0, 10.0];

    // Croston: demand every day, k = 10, n = 10.
    //   init z = (20 + 9·10) / 10 = 11, p = n/k = 1
    //   nine updates with size 10, interval 1: z = 10 + (11 − 10)·0.9⁹ = 10 + 0.387420489 = 10.387420489, p = 1
    //   last demand today: no stale update
    //   rate = 0.95 · 10.387420489 / 1 = 9.868049465  (plain mean would be 11)
    let c = croston_sba(&series, 0.1);
    close(c.size, 10.387_420_489, "z");
    close(c.interval, 1.0, "p");
    close(c.rate, 9.868_049_465, "rate");

    // σ: mean 11; squared deviations (20−11)² + 9·(10−11)² = 81 + 9 = 90; 90 / (10 − 1) = 10; σ = √10 = 3.16227766
    let sigma = std_dev(&series);
    close(sigma, 10f64.sqrt(), "sigma");

    // SS = 1.6448536 · 3.16227766 · √(5 + 7) = 1.6448536 · √120 = 1.6448536 · 10.95445115 = 18.01846871
    let z = inverse_normal_cdf(0.95);
    close(z, Z95, "z(0.95)");
    let ss = safety_stock(z, sigma, 5.0, 7.0);
    close(ss, 18.018_468_71, "ss");
    // ROP = 9.868049465 · 5 + 18.01846871 = 49.34024732 + 18.01846871 = 67.35871603
    let rop = reorder_point(c.rate, 5.0, ss);
    close(rop, 67.358_716_03, "rop");
    // T = 9.868049465 · 12 + 18.01846871 = 118.41659358 + 18.01846871 = 136.43506229
    let t = order_up_to(c.rate, 5.0, 7.0, ss);
    close(t, 136.435_062_29, "target");
    // position 60 ≤ ROP 67.36: need = 136.435 − 60 = 76.435; below MOQ -> 100; 100/24 = 4.17 -> 5 · 24 = 120
    assert_eq!(order_quantity(60.0, rop, t, c.rate, Some(100.0), Some(24.0)), 120.0);
    // without MOQ: 76.435/24 = 3.18 -> 4 · 24 = 96; with neither: whole units, 77
    assert_eq!(order_quantity(60.0, rop, t, c.rate, None, Some(24.0)), 96.0);
    assert_eq!(order_quantity(60.0, rop, t, c.rate, None, None), 77.0);
    // at 68 on hand the position is above the ROP: nothing
    assert_eq!(order_quantity(68.0, rop, t, c.rate, Some(100.0), Some(24.0)), 0.0);

    // The same through the database.
    let (_dir, inst) = instance().await;
    let pool = inst.pool();
    Stock {
        on_hand: 60,
        lead_time: Some("5"),
        moq: Some("100"),
        multiple: Some("24"),
        cost: "2.50",
        ..Stock::new("A1", "L1", "S1")
    }
    .insert(pool)
    .await;
    // the 20 of day 1 as two invoices of the same day
    sale(pool, "A1", "L1", "2026-03-01", "12").await;
    sale(pool, "A1", "L1", "2026-03-01", "8").await;
    sell_daily(pool, "A1", "L1", 2, 10, "10").await;
    let plan = planner::plan(&inst, &params(10)).await.unwrap();
    assert_eq!(plan.lines.len(), 1);
    let l = &plan.lines[0];
    close(l.rate, 9.868_049_465, "db rate");
    close(l.safety_stock, 18.018_468_71, "db ss");
    close(l.reorder_point, 67.358_716_03, "db rop");
    close(l.target, 136.435_062_29, "db target");
    assert_eq!((l.position, l.qty), (60.0, 120.0));
    assert_eq!((l.lead_time_days, l.lead_time_source), (5.0, LeadTimeSource::Stock));
    assert_eq!(l.due_date, date(2026, 3, 15));
    assert_eq!(l.unit_cost, "2.50");
}

// ----------------------------------------------------------------------------------------------------------------
// (c) one huge order in a year

#[tokio::test]
async fn c_single_huge_order_is_intermittent() {
    // 365 days, one order of 365 on day 100, nothing else.
    let mut series = vec![0.0; 365];
    series[99] = 365.0;
    // Naive mean: 365 / 365 = 1 per day.
    // Croston–SBA: k = 1 -> z = 365, p = n/k = 365/1 = 365 (no further updates);
    //   stale guard: a = 365 − 100 = 265 < p, no change; rate = 0.95 · 365 / 365 = 0.95 per day.
    // (Textbook initialisation p = first interval = 100 would give 0.95 · 365/100 = 3.4675 per day, and an order
    // on the first day of the window p = 1, i.e. 346.75 per day: the reason for the window-mean initialisation.)
    let d = demand(&series, 0.1);
    close(d.mean, 1.0, "naive mean");
    close(d.rate, 0.95, "sba rate");
    let mut first_day = vec![0.0; 365];
    first_day[0] = 365.0;
    close(croston_sba(&first_day, 0.1).rate, 0.95, "order on day 1");
    let mut last_day = vec![0.0; 365];
    last_day[364] = 365.0;
    close(croston_sba(&last_day, 0.1).rate, 0.95, "order today");
    // σ: mean 1; squares (365 − 1)² + 364 · 1² = 132496 + 364 = 132860; / 364 = 365; σ = √365 = 19.10497317
    close(d.sigma, 365f64.sqrt(), "sigma");

    // Through the database: window 2025-03-11..2026-03-10, day 100 = 2025-06-18. No lead time anywhere:
    // default L = 14. SS = 1.6448536 · √365 · √21 = 1.6448536 · √7665 = 1.6448536 · 87.54998572 = 144.00691156
    // ROP = 0.95 · 14 + 144.00691156 = 13.3 + 144.00691156 = 157.30691156
    // T = 0.95 · 21 + 144.00691156 = 19.95 + 144.00691156 = 163.95691156; on hand 0 -> 163.96 -> 164.
    let (_dir, inst) = instance().await;
    let pool = inst.pool();
    Stock::new("H1", "L1", "S1").insert(pool).await;
    sale(pool, "H1", "L1", "2025-06-18", "365").await;
    sale(pool, "H1", "L1", "2025-03-10", "1000").await; // the day before the window: ignored
    let plan = planner::plan(&inst, &PlanParams::new(today())).await.unwrap();
    let l = line(&plan, "H1", "L1");
    close(l.rate, 0.95, "db rate");
    close(l.safety_stock, 144.006_911_56, "db ss");
    close(l.reorder_point, 157.306_911_56, "db rop");
    close(l.target, 163.956_911_56, "db target");
    assert_eq!(l.qty, 164.0);
    assert_eq!((l.lead_time_days, l.lead_time_source), (14.0, LeadTimeSource::Default));
    assert_eq!(l.due_date, date(2026, 3, 24));
}

// ----------------------------------------------------------------------------------------------------------------
// (d) returns

#[tokio::test]
async fn d_returns_reduce_their_day_only() {
    // 4-day window 2026-03-07..10:
    //   03-07: 8             -> 8
    //   03-08: 10 and −4     -> 6
    //   03-09: 5 and −9      -> −4, clamped to 0 (a return does not eat other days' demand)
    //   03-10: 8             -> 8
    let series = daily_series(4, [(0, 8.0), (1, 10.0), (1, -4.0), (2, 5.0), (2, -9.0), (3, 8.0)]);
    assert_eq!(series, vec![8.0, 6.0, 0.0, 8.0]);
    // Croston: demands at t = 1, 2, 4 with sizes 8, 6, 8; k = 3, n = 4.
    //   init z = 22/3 = 7.333333, p = 4/3 = 1.333333
    //   t=2, size 6, interval 1: z = 7.333333 + 0.1·(6 − 7.333333) = 7.2; p = 1.333333 + 0.1·(1 − 1.333333) = 1.3
    //   t=4, size 8, interval 2: z = 7.2 + 0.1·(8 − 7.2) = 7.28;          p = 1.3 + 0.1·(2 − 1.3) = 1.37
    //   a = 4 − 4 = 0: no stale update
    //   rate = 0.95 · 7.28 / 1.37 = 6.916 / 1.37 = 5.04817518
    let c = croston_sba(&series, 0.1);
    close(c.size, 7.28, "z");
    close(c.interval, 1.37, "p");
    close(c.rate, 5.048_175_18, "rate");
    // σ: mean 22/4 = 5.5; deviations 2.5, 0.5, −5.5, 2.5; squares 6.25 + 0.25 + 30.25 + 6.25 = 43;
    //    43 / 3 = 14.333333; σ = 3.78593890
    close(std_dev(&series), 3.785_938_90, "sigma");
    // Default L = 14: SS = 1.6448536 · 3.7859389 · √21 = 28.53714386
    // ROP = 5.04817518 · 14 + 28.53714386 = 70.67445255 + 28.53714386 = 99.21159641
    // T = 5.04817518 · 21 + 28.53714386 = 106.01167883 + 28.53714386 = 134.54882269; on hand 0 -> 135

    let (_dir, inst) = instance().await;
    let pool = inst.pool();
    Stock::new("R1", "L1", "S1").insert(pool).await;
    for (day, qty) in [
        ("2026-03-06", "-50"), // a return before the window: ignored
        ("2026-03-07", "8"),
        ("2026-03-08", "10"),
        ("2026-03-08", "-4"),
        ("2026-03-09", "5"),
        ("2026-03-09", "-9"),
        ("2026-03-10", "8"),
    ] {
        sale(pool, "R1", "L1", day, qty).await;
    }
    let plan = planner::plan(&inst, &params(4)).await.unwrap();
    let l = line(&plan, "R1", "L1");
    close(l.rate, 5.048_175_18, "db rate");
    close(l.safety_stock, 28.537_143_86, "db ss");
    close(l.reorder_point, 99.211_596_41, "db rop");
    close(l.target, 134.548_822_69, "db target");
    assert_eq!(l.qty, 135.0);
}

// ----------------------------------------------------------------------------------------------------------------
// (e) lead time fallbacks

#[tokio::test]
async fn e_lead_time_falls_back_stock_supplier_pohist_default() {
    let all =
        LeadTimeFacts { stock: Some(3.0), supplier: Some(9.0), pohist_item: Some(11.0), pohist_supplier: Some(27.0) };
    assert_eq!(lead_time(&all, 14.0), (3.0, LeadTimeSource::Stock));
    let no_stock = LeadTimeFacts { stock: None, ..all };
    assert_eq!(lead_time(&no_stock, 14.0), (9.0, LeadTimeSource::Supplier));
    // a stated 0 means "not set" in ERPs
    let zeros = LeadTimeFacts { stock: Some(0.0), supplier: Some(0.0), ..all };
    assert_eq!(lead_time(&zeros, 14.0), (11.0, LeadTimeSource::PoHistoryItem));
    let supplier_history = LeadTimeFacts { pohist_item: None, ..zeros };
    assert_eq!(lead_time(&supplier_history, 14.0), (27.0, LeadTimeSource::PoHistorySupplier));
    assert_eq!(lead_time(&LeadTimeFacts::default(), 14.0), (14.0, LeadTimeSource::Default));
    // an observed mean of 0 (same-day receipts) is a real observation
    let same_day = LeadTimeFacts { pohist_item: Some(0.0), ..LeadTimeFacts::default() };
    assert_eq!(lead_time(&same_day, 14.0), (0.0, LeadTimeSource::PoHistoryItem));

    let (_dir, inst) = instance().await;
    let pool = inst.pool();
    supplier(pool, "SA", Some("9")).await;
    supplier(pool, "SB", None).await;
    // E1: own lead time 3. E2: none, supplier SA says 9. E3: stock says 0, SB has none, receipts of E3 at L1 took
    // 10 and 12 days -> 11. E4: nothing of its own; every SB receipt: 10, 12 (E3 at L1) and 59 (E3 at L2) ->
    // (10 + 12 + 59) / 3 = 27 (a receipt dated before its order and one not yet received are ignored).
    // E5: supplier SC unknown, no history -> default 14.
    for (item, sup, lt) in
        [("E1", "SA", Some("3")), ("E2", "SA", None), ("E3", "SB", Some("0")), ("E4", "SB", None), ("E5", "SC", None)]
    {
        Stock { lead_time: lt, ..Stock::new(item, "L1", sup) }.insert(pool).await;
        sell_daily(pool, item, "L1", 1, 10, "1").await;
    }
    receipt(pool, "E3", "L1", "SB", "2026-01-01", Some("2026-01-11")).await;
    receipt(pool, "E3", "L1", "SB", "2026-02-01", Some("2026-02-13")).await;
    receipt(pool, "E3", "L2", "SB", "2026-01-01", Some("2026-03-01")).await;
    receipt(pool, "E3", "L1", "SB", "2026-02-10", Some("2026-02-01")).await;
    receipt(pool, "E3", "L1", "SB", "2026-03-01", None).await;
    receipt(pool, "E1", "L1", "SA", "2026-01-01", Some("2026-03-01")).await; // E1 has its own lead time

    let plan = planner::plan(&inst, &params(10)).await.unwrap();
    // rate 0.95 / day, σ 0 -> every item orders from nothing on hand; due = today + ⌈L⌉
    for (item, days, source, due) in [
        ("E1", 3.0, LeadTimeSource::Stock, date(2026, 3, 13)),
        ("E2", 9.0, LeadTimeSource::Supplier, date(2026, 3, 19)),
        ("E3", 11.0, LeadTimeSource::PoHistoryItem, date(2026, 3, 21)),
        ("E4", 27.0, LeadTimeSource::PoHistorySupplier, date(2026, 4, 6)),
        ("E5", 14.0, LeadTimeSource::Default, date(2026, 3, 24)),
    ] {
        let l = line(&plan, item, "L1");
        close(l.lead_time_days, days, item);
        assert_eq!((l.lead_time_source, l.due_date), (source, due), "{item}");
        // T = 0.95 · (L + 7); e.g. E4: 0.95 · 34 = 32.3 -> 33
        close(l.target, 0.95 * (days + 7.0), item);
        assert_eq!(l.qty, (0.95 * (days + 7.0) - 1e-9).ceil(), "{item}");
    }
}

// ----------------------------------------------------------------------------------------------------------------
// (f) net position

#[tokio::test]
async fn f_position_counts_allocated_orders_and_transfers() {
    // 50 on hand − 5 allocated − (3 + 4) open customer orders + (10 + 2) open purchase orders + 6 inbound = 56
    assert_eq!(net_position(50.0, 5.0, 7.0, 12.0, 6.0), 56.0);

    let (_dir, inst) = instance().await;
    let pool = inst.pool();
    Stock { on_hand: 50, allocated: Some("5"), lead_time: Some("5"), ..Stock::new("F1", "L1", "S1") }
        .insert(pool)
        .await;
    customer_order(pool, "F1", "L1", "3").await;
    customer_order(pool, "F1", "L1", "4").await;
    customer_order(pool, "F1", "L2", "100").await; // other location
    purchase_order(pool, "F1", "L1", "10").await;
    purchase_order(pool, "F1", "L1", "2").await;
    purchase_order(pool, "F1", "L2", "50").await; // other location
    transfer(pool, "F1", "L2", "L1", "6").await; // inbound
    transfer(pool, "F1", "L1", "L2", "40").await; // outbound: not ours to receive
    transfer(pool, "F9", "L2", "L1", "30").await; // other item
    // 20 a day for 10 days: rate 0.95 · 20 = 19, σ 0 -> SS 0; L 5: ROP = 19 · 5 = 95, T = 19 · 12 = 228
    // position 56 ≤ 95 -> order 228 − 56 = 172
    sell_daily(pool, "F1", "L1", 1, 10, "20").await;

    // F2: backorders and no demand: position 0 − 7 = −7 < 0 -> order T − position = 0 + 7 = 7
    Stock::new("F2", "L1", "S1").insert(pool).await;
    customer_order(pool, "F2", "L1", "7").await;
    // F3: the same backorder fully covered by an open PO: position 0 -> nothing
    Stock::new("F3", "L1", "S1").insert(pool).await;
    customer_order(pool, "F3", "L1", "7").await;
    purchase_order(pool, "F3", "L1", "7").await;

    let plan = planner::plan(&inst, &params(10)).await.unwrap();
    let f1 = line(&plan, "F1", "L1");
    assert_eq!(f1.position, 56.0);
    close(f1.reorder_point, 95.0, "rop");
    close(f1.target, 228.0, "target");
    assert_eq!(f1.qty, 172.0);
    let f2 = line(&plan, "F2", "L1");
    assert_eq!((f2.position, f2.qty, f2.rate), (-7.0, 7.0, 0.0));
    assert_eq!(plan.lines.len(), 2, "{plan:#?}");
}

// ----------------------------------------------------------------------------------------------------------------
// (g) end to end: instance -> plan -> po_NNNNNN.csv

#[tokio::test]
async fn g_end_to_end_order_files() {
    let (_dir, inst) = instance().await;
    let pool = inst.pool();
    location(pool, "L1", 1).await;
    location(pool, "L2", 1).await;
    location(pool, "L9", 0).await;
    supplier(pool, "ACME", Some("9")).await;

    // A1: the steady item of (b): qty 120, L 5 (stock), rate 9.868, SS 18.02, ROP 67.36, T 136.44
    Stock {
        on_hand: 60,
        lead_time: Some("5"),
        moq: Some("100"),
        multiple: Some("24"),
        cost: "2.50",
        ..Stock::new("A1", "L1", "ACME")
    }
    .insert(pool)
    .await;
    sale(pool, "A1", "L1", "2026-03-01", "20").await;
    sell_daily(pool, "A1", "L1", 2, 10, "10").await;

    // "BOLT, M8" (a comma: quoted in the CSV): one sale of 30 on 2026-03-05 (day 5 of 10), on hand 10, L = 9 from
    // supplier ACME.
    //   Croston: z = 30, p = 10/1 = 10; a = 10 − 5 = 5 < 10; rate = 0.95 · 30/10 = 2.85
    //   σ: mean 3; squares 27² + 9 · 3² = 729 + 81 = 810; / 9 = 90; σ = √90 = 9.48683298
    //   SS = 1.6448536 · 9.48683298 · √(9 + 7) = 1.6448536 · 9.48683298 · 4 = 62.41780655
    //   ROP = 2.85 · 9 + 62.4178 = 25.65 + 62.4178 = 88.0678; T = 2.85 · 16 + 62.4178 = 45.6 + 62.4178 = 108.0178
    //   position 10: need 98.0178 -> 99
    Stock { on_hand: 10, cost: "0.125", ..Stock::new("BOLT, M8", "L1", "ACME") }.insert(pool).await;
    sale(pool, "BOLT, M8", "L1", "2026-03-05", "30").await;

    // D1 at L2 from ZETA (no supplier row): backorder of 7, no demand, default L 14 -> qty 7
    Stock { cost: "12", ..Stock::new("D1", "L2", "ZETA") }.insert(pool).await;
    customer_order(pool, "D1", "L2", "7").await;

    // Not ordered: C1 no demand; X1 supplied internally (transfers, not purchases); Y1 at inactive L9.
    Stock::new("C1", "L1", "ACME").insert(pool).await;
    Stock { supply_type: Some("IN"), ..Stock::new("X1", "L1", "ACME") }.insert(pool).await;
    sell_daily(pool, "X1", "L1", 1, 10, "5").await;
    Stock::new("Y1", "L9", "ACME").insert(pool).await;
    sell_daily(pool, "Y1", "L9", 1, 10, "5").await;

    let plan = planner::plan(&inst, &params(10)).await.unwrap();
    let keys: Vec<(&str, &str, &str)> =
        plan.lines.iter().map(|l| (l.supplier.as_str(), l.item.as_str(), l.location.as_str())).collect();
    assert_eq!(keys, [("ACME", "A1", "L1"), ("ACME", "BOLT, M8", "L1"), ("ZETA", "D1", "L2")]);
    let groups: Vec<(&str, usize)> = plan.by_supplier().map(|(s, l)| (s, l.len())).collect();
    assert_eq!(groups, [("ACME", 2), ("ZETA", 1)]);
    assert_eq!(planner::plan(&inst, &params(10)).await.unwrap(), plan, "deterministic");

    let out = TempDir::new().unwrap();
    let order_date = date(2026, 3, 11);
    let files = write_po_files(&plan, out.path(), 42, order_date).unwrap();
    assert_eq!(files, [(out.path().join("po_000042.csv"), 2), (out.path().join("po_000043.csv"), 1)]);
    // due = order date 2026-03-11 + ⌈L⌉: A1 +5 = 03/16, BOLT +9 = 03/20, D1 +14 = 03/25
    let header = "order_number,line,item,location,supplier,qty,unit_cost,order_date,due_date,comment";
    assert_eq!(
        lines_of(&files[0].0),
        [
            header,
            "REC-000042,1,A1,L1,ACME,120,2.50,2026/03/11,2026/03/16,\
             rop=67.36;ss=18.02;target=136.44;position=60;rate=9.868;lead_time=5(stock)",
            "REC-000042,2,\"BOLT, M8\",L1,ACME,99,0.125,2026/03/11,2026/03/20,\
             rop=88.07;ss=62.42;target=108.02;position=10;rate=2.85;lead_time=9(supplier)",
        ]
    );
    assert_eq!(
        lines_of(&files[1].0),
        [
            header,
            "REC-000043,1,D1,L2,ZETA,7,12,2026/03/11,2026/03/25,\
             rop=0;ss=0;target=0;position=-7;rate=0;lead_time=14(default)",
        ]
    );
    let raw = std::fs::read_to_string(&files[1].0).unwrap();
    assert!(raw.ends_with("(default)\n") && !raw.contains('\r'), "{raw:?}");
    assert_eq!(dir_names(out.path()), ["po_000042.csv", "po_000043.csv"]);

    // Never overwrite: the same sequence again fails before anything is written.
    let again = write_po_files(&plan, out.path(), 43, order_date).unwrap_err();
    assert!(matches!(again, PlanError::Exists { .. }), "{again}");
    assert!(again.to_string().contains("po_000043.csv"), "{again}");
    // Sequence beyond six digits: refused, nothing written.
    let seq = write_po_files(&plan, out.path(), 999_999, order_date).unwrap_err();
    assert!(matches!(seq, PlanError::Sequence(1_000_000)), "{seq}");
    assert_eq!(dir_names(out.path()), ["po_000042.csv", "po_000043.csv"]);
    // An empty plan writes nothing.
    assert!(write_po_files(&Plan::default(), out.path(), 1, order_date).unwrap().is_empty());
    assert_eq!(dir_names(out.path()), ["po_000042.csv", "po_000043.csv"]);
    // A directory that does not exist: a clear error naming the file.
    let missing = out.path().join("nope");
    let e = write_po_files(&plan, &missing, 1, order_date).unwrap_err();
    assert!(matches!(e, PlanError::Io { .. }) && e.to_string().contains("nope"), "{e}");
}

#[tokio::test]
async fn new_item_is_not_diluted_by_days_before_it_existed() {
    // 10-day window 03-01..10; N1 added 03-07 and N2 with no date_added both sell 5 a day on 03-07..10.
    //   N1: series 03-07..10 = 5, 5, 5, 5: z = 5, p = 4/4 = 1, rate = 0.95 · 5 = 4.75
    //   N2: series of 10 days, demand on days 7..10: z = 5, p = 10/4 = 2.5; three intervals of 1:
    //       p = 1 + 1.5 · 0.9³ = 1 + 1.0935 = 2.0935; rate = 0.95 · 5 / 2.0935 = 2.26893
    let (_dir, inst) = instance().await;
    let pool = inst.pool();
    Stock { date_added: Some("2026-03-07"), ..Stock::new("N1", "L1", "S1") }.insert(pool).await;
    Stock::new("N2", "L1", "S1").insert(pool).await;
    for item in ["N1", "N2"] {
        sell_daily(pool, item, "L1", 7, 10, "5").await;
    }
    let plan = planner::plan(&inst, &params(10)).await.unwrap();
    close(line(&plan, "N1", "L1").rate, 4.75, "n1");
    close(line(&plan, "N2", "L1").rate, 0.95 * 5.0 / 2.0935, "n2");
}

#[tokio::test]
async fn bad_parameters_are_refused() {
    let (_dir, inst) = instance().await;
    let p = PlanParams { service_level: 1.2, ..PlanParams::new(today()) };
    let e = planner::plan(&inst, &p).await.unwrap_err();
    assert!(e.to_string().contains("service_level 1.2"), "{e}");
}

fn lines_of(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path).unwrap().lines().map(String::from).collect()
}

fn dir_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    names
}
