//! A sample distributor ERP as an SQLite database, for `ferry connector init --sample`, the demo, tests and
//! benchmarks, with its mapping. It has its **own** schema, the way a real ERP would (not Ferry's file layout), so
//! that [`MAPPING`] is a genuine mapping:
//!
//! | table | holds |
//! |---|---|
//! | `warehouses` | one distribution centre `DC01` and two stores `ST01`, `ST02` |
//! | `vendors`, `customers` | suppliers (local and import, with lead times) and trade/retail customers |
//! | `categories`, `brands`, `items` | the item master; descriptions carry commas, quotes, `Ø`, `è`, `é`, `½`, one a line break |
//! | `item_warehouse` | per item and warehouse: on hand, allocated, costs, price, vendor, supplying warehouse, pack, MOQ |
//! | `sales_lines` | two years of invoiced lines: intermittent (many zero days), lumpy orders, returns, seasonality, trend |
//! | `purchase_orders`, `po_lines` | the DC's orders to vendors: received (history) and open, some partial, some late |
//! | `customer_orders` | open customer order lines, some partly shipped or allocated |
//! | `transfers` | open DC -> store transfers, some shipped, some partly received |
//!
//! Dates are stored the way legacy ERPs do, in several forms: `YYYY-MM-DD` (most), `YYYY-MM-DD HH:MM:SS` (invoice
//! times) and `YYYY/MM/DD` (purchase order dates). Data come from a seeded RNG: the same size and `today` always give
//! the same database.

use std::collections::BTreeMap;
use std::f64::consts::PI;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use chrono::{Datelike, Duration, NaiveDate, Utc, Weekday};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqliteSynchronous};
use sqlx::{AssertSqlSafe, Connection, Executor};

/// The mapping of the sample ERP's schema: what `ferry connector init` writes as `mapping.toml` (and the demo
/// uses). It also serves as a worked example for admins writing their own.
pub const MAPPING: &str = include_str!("mapping.toml");

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SampleSize {
    /// ~300 items, 3 locations, 6 vendors, 2 years of sales (~150k lines); about a second to make.
    Small,
    /// ~3,000 items, 3 locations, 24 vendors, 2 years of sales (~2.4M lines), for benchmarks.
    Medium,
    /// ~15,000 items, 3 locations, 60 vendors, 2 years of sales (~12M lines, ~1 GB of CSV), for benchmarks.
    Large,
}

impl std::str::FromStr for SampleSize {
    type Err = String;

    /// `small`, `medium` or `large`.
    fn from_str(s: &str) -> Result<SampleSize, String> {
        match s {
            "small" => Ok(SampleSize::Small),
            "medium" => Ok(SampleSize::Medium),
            "large" => Ok(SampleSize::Large),
            other => Err(format!("unknown size {other:?}: use small, medium or large")),
        }
    }
}

/// What was generated.
#[derive(Debug, Clone, PartialEq)]
pub struct SampleSummary {
    pub path: PathBuf,
    /// Rows per table of the sample schema.
    pub tables: BTreeMap<&'static str, u64>,
    /// Last day of sales history + 1: open orders are around this day.
    pub today: NaiveDate,
    pub seconds: f64,
}

impl SampleSummary {
    pub fn total_rows(&self) -> u64 {
        self.tables.values().sum()
    }
}

/// Create the sample ERP database at `path` with sales up to yesterday (UTC). Refuses to overwrite an existing file.
pub async fn generate_sample_erp(path: &Path, size: SampleSize) -> Result<SampleSummary> {
    generate_sample_erp_at(path, size, Utc::now().date_naive()).await
}

/// [`generate_sample_erp`] with a fixed "today", for byte-for-byte reproducible databases.
pub async fn generate_sample_erp_at(path: &Path, size: SampleSize, today: NaiveDate) -> Result<SampleSummary> {
    let t0 = Instant::now();
    if path.exists() {
        bail!(
            "{} already exists; the sample ERP is only written to a new file — delete it or choose another path",
            path.display()
        );
    }
    let tmp = PathBuf::from(format!("{}.tmp", path.display()));
    let _ = std::fs::remove_file(&tmp);
    let opts = SqliteConnectOptions::new()
        .filename(&tmp)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Off)
        .synchronous(SqliteSynchronous::Off);
    let result = async {
        let mut conn = SqliteConnection::connect_with(&opts)
            .await
            .with_context(|| format!("cannot create the sample ERP database {}", tmp.display()))?;
        let tables = Generator::new(size, today).run(&mut conn).await?;
        conn.close().await.context("cannot close the sample ERP database")?;
        Ok::<_, anyhow::Error>(tables)
    }
    .await;
    let tables = match result {
        Ok(t) => t,
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
    };
    std::fs::rename(&tmp, path)
        .with_context(|| format!("cannot move the sample ERP database to {}", path.display()))?;
    Ok(SampleSummary { path: path.to_path_buf(), tables, today, seconds: t0.elapsed().as_secs_f64() })
}

const SCHEMA: &str = r#"
CREATE TABLE warehouses (wh_code TEXT PRIMARY KEY, name TEXT NOT NULL, wh_type TEXT NOT NULL, region TEXT,
    is_active INTEGER NOT NULL);
CREATE TABLE vendors (vendor_no TEXT PRIMARY KEY, name TEXT NOT NULL, country TEXT NOT NULL,
    lead_days INTEGER NOT NULL, currency TEXT NOT NULL);
CREATE TABLE customers (cust_no TEXT PRIMARY KEY, name TEXT NOT NULL, kind TEXT NOT NULL);
CREATE TABLE categories (cat_code TEXT PRIMARY KEY, name TEXT NOT NULL);
CREATE TABLE brands (brand_code TEXT PRIMARY KEY, name TEXT NOT NULL);
CREATE TABLE items (item_id INTEGER PRIMARY KEY, sku TEXT NOT NULL UNIQUE, description TEXT NOT NULL,
    uom TEXT NOT NULL, volume_m3 REAL, weight_kg REAL, category TEXT NOT NULL, brand TEXT,
    vendor_no TEXT NOT NULL, created_on TEXT NOT NULL, discontinued INTEGER NOT NULL DEFAULT 0);
CREATE TABLE item_warehouse (sku TEXT NOT NULL, wh_code TEXT NOT NULL, on_hand INTEGER NOT NULL,
    allocated REAL NOT NULL, avg_cost REAL NOT NULL, last_cost REAL NOT NULL, list_price REAL,
    vendor_no TEXT NOT NULL, supply_wh TEXT, purch_uom TEXT, pack_qty REAL, lead_days INTEGER,
    min_order REAL, order_multiple REAL, added_on TEXT, PRIMARY KEY (sku, wh_code));
CREATE TABLE sales_lines (line_id INTEGER PRIMARY KEY, invoice_no TEXT NOT NULL, line_no INTEGER NOT NULL,
    sku TEXT NOT NULL, wh_code TEXT NOT NULL, cust_no TEXT, order_date TEXT NOT NULL, invoice_date TEXT NOT NULL,
    qty REAL NOT NULL, unit_cost REAL NOT NULL, unit_price REAL NOT NULL, net_amount REAL NOT NULL);
CREATE TABLE purchase_orders (po_no TEXT PRIMARY KEY, vendor_no TEXT NOT NULL, wh_code TEXT NOT NULL,
    order_date TEXT NOT NULL, status TEXT NOT NULL, urgent INTEGER NOT NULL DEFAULT 0);
CREATE TABLE po_lines (po_no TEXT NOT NULL, line_no INTEGER NOT NULL, sku TEXT NOT NULL, qty_ordered REAL NOT NULL,
    qty_received REAL NOT NULL, unit_cost REAL NOT NULL, due_date TEXT NOT NULL, received_date TEXT,
    PRIMARY KEY (po_no, line_no));
CREATE TABLE customer_orders (order_no TEXT NOT NULL, line_no INTEGER NOT NULL, sku TEXT NOT NULL,
    wh_code TEXT NOT NULL, cust_no TEXT NOT NULL, order_date TEXT NOT NULL, requested_date TEXT NOT NULL,
    qty_ordered REAL NOT NULL, qty_shipped REAL NOT NULL, qty_allocated REAL NOT NULL, PRIMARY KEY (order_no, line_no));
CREATE TABLE transfers (transfer_no TEXT NOT NULL, line_no INTEGER NOT NULL, sku TEXT NOT NULL, from_wh TEXT NOT NULL,
    to_wh TEXT NOT NULL, created_on TEXT NOT NULL, eta TEXT NOT NULL, qty REAL NOT NULL, qty_shipped REAL NOT NULL,
    qty_received REAL NOT NULL, PRIMARY KEY (transfer_no, line_no));
"#;

/// A value to insert.
#[derive(Debug, Clone)]
enum V {
    N,
    I(i64),
    F(f64),
    T(String),
}

impl From<i64> for V {
    fn from(v: i64) -> V {
        V::I(v)
    }
}
impl From<f64> for V {
    fn from(v: f64) -> V {
        V::F(v)
    }
}
impl From<&str> for V {
    fn from(v: &str) -> V {
        V::T(v.to_string())
    }
}
impl From<String> for V {
    fn from(v: String) -> V {
        V::T(v)
    }
}
impl<T: Into<V>> From<Option<T>> for V {
    fn from(v: Option<T>) -> V {
        v.map_or(V::N, Into::into)
    }
}

/// Multi-row `INSERT`s of up to a few hundred rows, prepared once per table.
struct Bulk {
    table: &'static str,
    ncols: usize,
    per_stmt: usize,
    full_sql: String,
    prefix: String,
    pending: Vec<V>,
    count: u64,
}

impl Bulk {
    fn new(table: &'static str, cols: &[&str]) -> Bulk {
        let ncols = cols.len();
        let per_stmt = (30_000 / ncols).min(400);
        let prefix = format!("INSERT INTO {table} ({}) VALUES ", cols.join(", "));
        let full_sql = Self::sql(&prefix, ncols, per_stmt);
        Bulk { table, ncols, per_stmt, full_sql, prefix, pending: Vec::with_capacity(ncols * per_stmt), count: 0 }
    }

    fn sql(prefix: &str, ncols: usize, rows: usize) -> String {
        let tuple = format!("({})", vec!["?"; ncols].join(","));
        format!("{prefix}{}", vec![tuple.as_str(); rows].join(","))
    }

    async fn row(&mut self, conn: &mut SqliteConnection, values: Vec<V>) -> Result<()> {
        debug_assert_eq!(values.len(), self.ncols);
        self.pending.extend(values);
        self.count += 1;
        if self.pending.len() >= self.ncols * self.per_stmt {
            self.flush(conn).await?;
        }
        Ok(())
    }

    async fn flush(&mut self, conn: &mut SqliteConnection) -> Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let rows = self.pending.len() / self.ncols;
        let sql = if rows == self.per_stmt { self.full_sql.clone() } else { Self::sql(&self.prefix, self.ncols, rows) };
        let mut q = sqlx::query(AssertSqlSafe(sql));
        for v in self.pending.drain(..) {
            q = match v {
                V::N => q.bind(None::<i64>),
                V::I(i) => q.bind(i),
                V::F(f) => q.bind(f),
                V::T(s) => q.bind(s),
            };
        }
        q.execute(&mut *conn).await.with_context(|| format!("cannot insert into {}", self.table))?;
        Ok(())
    }
}

macro_rules! row {
    ($($v:expr),* $(,)?) => { vec![$(V::from($v)),*] };
}

struct Params {
    /// Scales every item's sales rate (lines per day).
    rate_scale: f64,
    items: usize,
    vendors: usize,
    customers: usize,
    days: i64,
}

/// One item at one warehouse, with its demand pattern.
struct ItemLoc {
    item: usize,
    wh: usize,
    /// Mean order lines per (open) day.
    rate: f64,
    season_amp: f64,
    season_phase: f64,
    /// Relative change of demand per year.
    trend: f64,
    /// Typical quantity of a line.
    typical: f64,
    lumpy: bool,
    sold_qty: f64,
}

struct Item {
    /// Index in `CATEGORIES`.
    cat: usize,
    sku: String,
    uom: &'static str,
    cost: f64,
    price: f64,
    vendor: usize,
    created: NaiveDate,
    /// Last day it sells (discontinued items stop).
    until: NaiveDate,
    pack: f64,
}

struct Vendor {
    code: String,
    lead: i64,
}

const WAREHOUSES: [(&str, &str, &str, &str); 3] = [
    ("DC01", "Central DC, Riverside", "DC", "CENTRAL"),
    ("ST01", "Store 1 — Main St.", "STORE", "NORTH"),
    ("ST02", "Store 2 \"Harbour\"", "STORE", "SOUTH"),
];

const CATEGORIES: [(&str, &str); 8] = [
    ("FAST", "Fasteners"),
    ("PLMB", "Plumbing"),
    ("ELEC", "Electrical"),
    ("TOOL", "Hand tools"),
    ("PNT", "Paint & coatings"),
    ("GRDN", "Garden"),
    ("SAFE", "Safety"),
    ("HVAC", "Heating, ventilation"),
];

/// Index in `VENDORS` of each category's main vendor.
const CATEGORY_VENDOR: [usize; 8] = [0, 3, 4, 2, 5, 1, 2, 1];

/// Seasonality per category: (range of amplitude, day of the year demand peaks). Garden peaks in late spring,
/// heating in winter, paint in summer; fasteners and tools barely move.
const CATEGORY_SEASON: [((f64, f64), f64); 8] = [
    ((0.0, 0.15), 120.0),
    ((0.05, 0.25), 300.0),
    ((0.0, 0.2), 320.0),
    ((0.0, 0.2), 340.0),
    ((0.2, 0.45), 180.0),
    ((0.5, 0.9), 140.0),
    ((0.0, 0.15), 90.0),
    ((0.4, 0.8), 15.0),
];

const BRANDS: [(&str, &str); 6] = [
    ("ACME", "Acme"),
    ("NORD", "Nordström"),
    ("PRO", "\"Pro\" Line"),
    ("BLT", "Bolt & Co"),
    ("GRN", "GreenThumb"),
    ("OWN", "House brand"),
];

const VENDORS: [(&str, &str, i64); 6] = [
    ("Acme Fasteners, Inc.", "US", 7),
    ("Müller & Söhne GmbH", "DE", 42),
    ("\"Best\" Tools Ltd.", "GB", 35),
    ("Pacific Pipe Co.", "US", 10),
    ("Shenzhen Bright Electric", "CN", 63),
    ("Northern Paints & Coatings", "US", 5),
];

/// Description templates per category: (text with `{a}`/`{b}` placeholders, choices for a, choices for b, uom).
type Template = (&'static str, &'static [&'static str], &'static [&'static str], &'static str);
const TEMPLATES: [&[Template]; 8] = [
    &[
        ("Hex bolt {a} x {b}, zinc plated", &["M6", "M8", "M10", "M12"], &["20", "30", "40", "60", "80"], "EA"),
        ("Wood screw {a} x {b} mm (box of 200)", &["3.5", "4.0", "4.5", "5.0"], &["30", "40", "50"], "BOX"),
        ("Wall plug {a}, \"universal\"", &["6 mm", "8 mm", "10 mm"], &[""], "PK"),
    ],
    &[
        ("Copper pipe Ø{a} mm, {b} m", &["15", "22", "28"], &["2", "3"], "EA"),
        ("Elbow 90° {a} {b}", &["½\"", "¾\"", "1\""], &["brass", "PVC", "copper"], "EA"),
        ("Garden hose {a}, {b}", &["½\"", "¾\""], &["per metre", "reinforced, per metre"], "M"),
    ],
    &[
        ("Cable {a}, {b}, per metre", &["3G1.5", "3G2.5", "5G2.5"], &["grey", "white", "black"], "M"),
        ("Socket outlet {a}, {b}", &["single", "double"], &["white", "brushed steel"], "EA"),
        ("LED bulb {a} {b}", &["E27", "GU10", "E14"], &["4.9 W", "7 W", "9.5 W"], "EA"),
    ],
    &[
        ("Claw hammer {a} \"Pro\"", &["16 oz", "20 oz"], &[""], "EA"),
        ("Screwdriver set, {a} pcs{b}", &["6", "8", "12"], &["", " (insulated)"], "SET"),
        ("Drill bit set\n{a} pcs, {b}", &["10", "19", "25"], &["HSS", "cobalt"], "SET"),
    ],
    &[
        ("Crème white emulsion {a}, {b}", &["1 L", "2.5 L", "5 L"], &["matt", "silk"], "EA"),
        ("Wood stain {a}, {b}", &["250 ml", "750 ml"], &["oak", "walnut", "rosé"], "EA"),
        ("Masking tape {a} x 50 m", &["19 mm", "25 mm", "38 mm"], &[""], "EA"),
    ],
    &[
        ("Lawn seed {a}, \"{b}\"", &["1 kg", "5 kg"], &["shady", "hard-wearing"], "EA"),
        ("Plant pot Ø{a} cm, {b}", &["12", "20", "30"], &["terracotta", "black"], "EA"),
        ("Garden chain {a}, galvanised", &["4 mm", "6 mm"], &[""], "M"),
    ],
    &[
        ("Nitrile gloves, size {a} (box of 100)", &["S", "M", "L", "XL"], &[""], "BOX"),
        ("Safety glasses {a}", &["clear", "tinted"], &[""], "EA"),
        ("Ear defenders {a} dB, {b}", &["27", "32"], &["foldable", "helmet mount"], "EA"),
    ],
    &[
        ("Radiator valve {a} thermostatic, {b}", &["½\"", "¾\""], &["white", "chrome"], "EA"),
        ("Flexible duct Ø{a} mm, {b} m", &["100", "125", "150"], &["3", "6"], "EA"),
        ("Ventilation grille {a} x {b} mm", &["100", "150"], &["100", "150", "200"], "EA"),
    ],
];

struct Generator {
    rng: StdRng,
    p: Params,
    today: NaiveDate,
    start: NaiveDate,
    items: Vec<Item>,
    vendors: Vec<Vendor>,
    locs: Vec<ItemLoc>,
    trade_customers: Vec<String>,
    retail_customers: Vec<String>,
}

fn pick<'a, T>(rng: &mut StdRng, xs: &'a [T]) -> &'a T {
    &xs[rng.gen_range(0..xs.len())]
}

fn ymd(d: NaiveDate) -> String {
    d.format("%Y-%m-%d").to_string()
}

fn round_to(x: f64, step: f64) -> f64 {
    (x / step).round() * step
}

fn r2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

impl Generator {
    fn new(size: SampleSize, today: NaiveDate) -> Generator {
        let (p, seed) = match size {
            SampleSize::Small => {
                (Params { rate_scale: 1.0, items: 300, vendors: 6, customers: 150, days: 730 }, 0x5eed_0001)
            }
            SampleSize::Medium => {
                (Params { rate_scale: 1.6, items: 3000, vendors: 24, customers: 1500, days: 730 }, 0x5eed_0002)
            }
            SampleSize::Large => {
                (Params { rate_scale: 1.6, items: 15000, vendors: 60, customers: 7500, days: 730 }, 0x5eed_0003)
            }
        };
        Generator {
            rng: StdRng::seed_from_u64(seed),
            start: today - Duration::days(p.days),
            p,
            today,
            items: Vec::new(),
            vendors: Vec::new(),
            locs: Vec::new(),
            trade_customers: Vec::new(),
            retail_customers: Vec::new(),
        }
    }

    fn normal(&mut self) -> f64 {
        let u1: f64 = self.rng.gen_range(f64::EPSILON..1.0);
        let u2: f64 = self.rng.r#gen();
        (-2.0 * u1.ln()).sqrt() * (2.0 * PI * u2).cos()
    }

    fn poisson(&mut self, lambda: f64) -> u32 {
        if lambda <= 0.0 {
            return 0;
        }
        let l = (-lambda).exp();
        let mut k = 0;
        let mut p = 1.0;
        loop {
            p *= self.rng.r#gen::<f64>();
            if p <= l || k > 200 {
                return k;
            }
            k += 1;
        }
    }

    fn chance(&mut self, p: f64) -> bool {
        self.rng.gen_bool(p.clamp(0.0, 1.0))
    }

    async fn run(mut self, conn: &mut SqliteConnection) -> Result<BTreeMap<&'static str, u64>> {
        let mut tx = conn.begin().await.context("cannot start a transaction")?;
        tx.execute(SCHEMA).await.context("cannot create the sample schema")?;
        let mut counts = BTreeMap::new();
        self.masters(&mut tx, &mut counts).await?;
        self.sales(&mut tx, &mut counts).await?;
        self.stock(&mut tx, &mut counts).await?;
        self.purchases(&mut tx, &mut counts).await?;
        self.customer_orders(&mut tx, &mut counts).await?;
        self.transfers(&mut tx, &mut counts).await?;
        tx.commit().await.context("cannot commit the sample data")?;
        Ok(counts)
    }

    async fn finish(
        bulk: &mut Bulk,
        conn: &mut SqliteConnection,
        counts: &mut BTreeMap<&'static str, u64>,
    ) -> Result<()> {
        bulk.flush(conn).await?;
        counts.insert(bulk.table, bulk.count);
        Ok(())
    }

    async fn masters(&mut self, conn: &mut SqliteConnection, counts: &mut BTreeMap<&'static str, u64>) -> Result<()> {
        let mut b = Bulk::new("warehouses", &["wh_code", "name", "wh_type", "region", "is_active"]);
        for (code, name, ty, region) in WAREHOUSES {
            b.row(conn, row![code, name, ty, region, 1i64]).await?;
        }
        Self::finish(&mut b, conn, counts).await?;

        let mut b = Bulk::new("categories", &["cat_code", "name"]);
        for (code, name) in CATEGORIES {
            b.row(conn, row![code, name]).await?;
        }
        Self::finish(&mut b, conn, counts).await?;
        let mut b = Bulk::new("brands", &["brand_code", "name"]);
        for (code, name) in BRANDS {
            b.row(conn, row![code, name]).await?;
        }
        Self::finish(&mut b, conn, counts).await?;

        let mut b = Bulk::new("vendors", &["vendor_no", "name", "country", "lead_days", "currency"]);
        for v in 0..self.p.vendors {
            let (name, country, lead) = match VENDORS.get(v) {
                Some((n, c, l)) => (n.to_string(), *c, *l),
                None => {
                    let country = *pick(&mut self.rng, &["US", "US", "US", "DE", "CN", "IT", "MX"]);
                    let lead = if country == "US" { self.rng.gen_range(3..15) } else { self.rng.gen_range(25..75) };
                    let suffix =
                        *pick(&mut self.rng, &["Supply, LLC", "Industries", "Trading Co.", "& Partners", "S.p.A."]);
                    (format!("Vendor {} {suffix}", v + 1), country, lead)
                }
            };
            let currency = match country {
                "US" => "USD",
                "GB" => "GBP",
                "CN" => "CNY",
                "MX" => "MXN",
                _ => "EUR",
            };
            let code = format!("V{:03}", v + 1);
            b.row(conn, row![code.as_str(), name, country, lead, currency]).await?;
            self.vendors.push(Vendor { code, lead });
        }
        Self::finish(&mut b, conn, counts).await?;

        let mut b = Bulk::new("customers", &["cust_no", "name", "kind"]);
        for c in 0..self.p.customers {
            let code = format!("C{:05}", c + 1);
            let trade = c % 3 == 0;
            let name = if trade {
                format!(
                    "{} {}",
                    pick(&mut self.rng, &["Smith", "García", "O'Brien", "Nguyen", "Kowalski", "Rossi"]),
                    pick(&mut self.rng, &["Builders", "Plumbing & Heating", "Electrics, Ltd.", "Renovations"])
                )
            } else {
                format!(
                    "{} {}",
                    pick(&mut self.rng, &["Anna", "Jörg", "Li", "Maria", "Tom", "Zoë"]),
                    pick(&mut self.rng, &["Brown", "Müller", "Chen", "Silva", "Taylor"])
                )
            };
            b.row(conn, row![code.as_str(), name, if trade { "TRADE" } else { "RETAIL" }]).await?;
            if trade { self.trade_customers.push(code) } else { self.retail_customers.push(code) }
        }
        Self::finish(&mut b, conn, counts).await?;

        let mut b = Bulk::new(
            "items",
            &[
                "item_id",
                "sku",
                "description",
                "uom",
                "volume_m3",
                "weight_kg",
                "category",
                "brand",
                "vendor_no",
                "created_on",
                "discontinued",
            ],
        );
        for i in 0..self.p.items {
            let cat = i % CATEGORIES.len();
            let (tpl, a_choices, b_choices, uom) = *pick(&mut self.rng, TEMPLATES[cat]);
            let a = *pick(&mut self.rng, a_choices);
            let bb = *pick(&mut self.rng, b_choices);
            let description = tpl.replace("{a}", a).replace("{b}", bb);
            let id = 10_000 + i as i64;
            let sku = format!("{}-{:05}", CATEGORIES[cat].0, id);
            let brand = *pick(&mut self.rng, &BRANDS);
            // each category is bought from one or two vendors
            // each category has a main vendor (with more vendors, one of its look-alikes); 20% come from another
            let main =
                CATEGORY_VENDOR[cat] + VENDORS.len() * self.rng.gen_range(0..self.p.vendors.div_ceil(VENDORS.len()));
            let vendor = if self.chance(0.2) { self.rng.gen_range(0..self.p.vendors) } else { main % self.p.vendors };
            let cost = r2((2.0 + 0.9 * self.normal()).exp().clamp(0.15, 400.0));
            let price = (cost * self.rng.gen_range(1.35..2.2)).ceil() - 0.01;
            let created = if self.chance(0.12) {
                self.start + Duration::days(self.rng.gen_range(30..self.p.days - 30))
            } else {
                self.start - Duration::days(self.rng.gen_range(30..2000))
            };
            let discontinued = self.chance(0.04);
            let until =
                if discontinued { self.today - Duration::days(self.rng.gen_range(30..300)) } else { self.today };
            let pack =
                if uom == "M" { 50.0 } else { *pick(&mut self.rng, &[1.0, 1.0, 6.0, 10.0, 12.0, 24.0, 50.0, 100.0]) };
            let volume = (!self.chance(0.05)).then(|| round_to(self.rng.gen_range(0.0001..0.08), 0.0001));
            let density = self.rng.gen_range(80.0..900.0); // kg per m3
            let weight = volume.filter(|_| !self.chance(0.05)).map(|v| round_to(v * density, 0.001).max(0.001));
            b.row(
                conn,
                row![
                    id,
                    sku.as_str(),
                    description,
                    uom,
                    volume,
                    weight,
                    CATEGORIES[cat].0,
                    brand.0,
                    self.vendors[vendor].code.as_str(),
                    ymd(created),
                    discontinued as i64
                ],
            )
            .await?;
            self.items.push(Item { cat, sku, uom, cost, price, vendor, created: created.max(self.start), until, pack });
        }
        Self::finish(&mut b, conn, counts).await?;

        // demand pattern per item and warehouse: the DC carries everything, each store ~75% of the range
        for item in 0..self.items.len() {
            for wh in 0..WAREHOUSES.len() {
                if wh > 0 && !self.chance(0.75) {
                    continue;
                }
                let class: f64 = self.rng.r#gen();
                let (rate, lumpy) = if class < 0.08 {
                    (self.rng.gen_range(1.0..2.5), false)
                } else if class < 0.35 {
                    (self.rng.gen_range(0.25..0.9), false)
                } else if class < 0.8 {
                    (self.rng.gen_range(0.04..0.25), false)
                } else {
                    (self.rng.gen_range(0.005..0.04), true)
                };
                let rate = self.p.rate_scale * if wh == 0 { rate * 0.6 } else { rate };
                let (amp, peak) = CATEGORY_SEASON[self.items[item].cat];
                let typical = if self.items[item].uom == "M" {
                    self.rng.gen_range(2.0..15.0)
                } else if wh == 0 {
                    self.rng.gen_range(2.0..12.0)
                } else {
                    self.rng.gen_range(1.0..3.0)
                };
                self.locs.push(ItemLoc {
                    item,
                    wh,
                    rate,
                    season_amp: self.rng.gen_range(amp.0..amp.1),
                    season_phase: 91.0 - peak + self.rng.gen_range(-20.0..20.0),
                    trend: self.rng.gen_range(-0.3..0.35),
                    typical,
                    lumpy,
                    sold_qty: 0.0,
                });
            }
        }
        Ok(())
    }

    async fn sales(&mut self, conn: &mut SqliteConnection, counts: &mut BTreeMap<&'static str, u64>) -> Result<()> {
        let mut b = Bulk::new(
            "sales_lines",
            &[
                "invoice_no",
                "line_no",
                "sku",
                "wh_code",
                "cust_no",
                "order_date",
                "invoice_date",
                "qty",
                "unit_cost",
                "unit_price",
                "net_amount",
            ],
        );
        let mut invoice = 100_000u64;
        for day in 0..self.p.days {
            let date = self.start + Duration::days(day);
            let doy = date.ordinal() as f64;
            let years = day as f64 / 365.0;
            for (wh, _) in WAREHOUSES.iter().enumerate() {
                let weekday = match (wh, date.weekday()) {
                    (0, Weekday::Sat) => 0.15,
                    (0, Weekday::Sun) => 0.0,
                    (0, _) => 1.25,
                    (_, Weekday::Sat) => 1.4,
                    (_, Weekday::Sun) => 0.45,
                    _ => 1.0,
                };
                if weekday == 0.0 {
                    continue;
                }
                // lines of one location and day are grouped into invoices of 1-4 lines
                let mut lines_left = 0u32;
                let mut line_no = 0i64;
                let mut customer: Option<String> = None;
                let mut order_date = date;
                for li in 0..self.locs.len() {
                    let l = &self.locs[li];
                    if l.wh != wh {
                        continue;
                    }
                    let it = &self.items[l.item];
                    if date < it.created || date > it.until {
                        continue;
                    }
                    let season = 1.0 + l.season_amp * (2.0 * PI * (doy + l.season_phase) / 365.25).sin();
                    let trend = (1.0 + l.trend * years).max(0.05);
                    let lambda = l.rate * season * trend * weekday;
                    let (typical, lumpy, uom, cost, price, sku) =
                        (l.typical, l.lumpy, it.uom, it.cost, it.price, it.sku.clone());
                    for _ in 0..self.poisson(lambda) {
                        if lines_left == 0 {
                            invoice += 1;
                            lines_left = self.rng.gen_range(1..5);
                            line_no = 0;
                            customer = if wh == 0 {
                                Some(pick(&mut self.rng, &self.trade_customers).clone())
                            } else if self.chance(0.4) {
                                None // cash sale
                            } else {
                                Some(pick(&mut self.rng, &self.retail_customers).clone())
                            };
                            order_date = if wh == 0 { date - Duration::days(self.rng.gen_range(0..4)) } else { date };
                        }
                        lines_left -= 1;
                        line_no += 1;
                        let mut qty = if uom == "M" {
                            round_to((typical * (0.6 * self.normal()).exp()).max(0.25), 0.25)
                        } else {
                            (typical * (0.5 * self.normal()).exp()).round().max(1.0)
                        };
                        if lumpy && self.chance(0.25) || self.chance(0.01) {
                            qty *= self.rng.gen_range(5..25) as f64;
                        }
                        if self.chance(0.015) {
                            qty = -(qty.min(typical.ceil())); // a return
                        }
                        let unit_price = if wh == 0 { r2(price * self.rng.gen_range(0.75..0.9)) } else { price };
                        let time = if wh == 0 {
                            format!(
                                "{:02}:{:02}:{:02}",
                                self.rng.gen_range(7..17),
                                self.rng.gen_range(0..60),
                                self.rng.gen_range(0..60)
                            )
                        } else {
                            format!(
                                "{:02}:{:02}:{:02}",
                                self.rng.gen_range(8..20),
                                self.rng.gen_range(0..60),
                                self.rng.gen_range(0..60)
                            )
                        };
                        self.locs[li].sold_qty += qty;
                        b.row(
                            conn,
                            row![
                                format!("INV{invoice}"),
                                line_no,
                                sku.as_str(),
                                WAREHOUSES[wh].0,
                                customer.clone(),
                                ymd(order_date),
                                format!("{} {time}", ymd(date)),
                                qty,
                                cost,
                                unit_price,
                                r2(qty * unit_price),
                            ],
                        )
                        .await?;
                    }
                }
            }
        }
        Self::finish(&mut b, conn, counts).await
    }

    async fn stock(&mut self, conn: &mut SqliteConnection, counts: &mut BTreeMap<&'static str, u64>) -> Result<()> {
        let mut b = Bulk::new(
            "item_warehouse",
            &[
                "sku",
                "wh_code",
                "on_hand",
                "allocated",
                "avg_cost",
                "last_cost",
                "list_price",
                "vendor_no",
                "supply_wh",
                "purch_uom",
                "pack_qty",
                "lead_days",
                "min_order",
                "order_multiple",
                "added_on",
            ],
        );
        let days = self.p.days as f64;
        for li in 0..self.locs.len() {
            let (item, wh, sold) = (self.locs[li].item, self.locs[li].wh, self.locs[li].sold_qty);
            let daily = (sold / days).max(0.0);
            let it = &self.items[item];
            let (sku, uom, cost, price, vendor, pack, created) =
                (it.sku.clone(), it.uom, it.cost, it.price, it.vendor, it.pack, it.created);
            let cover: f64 = self.rng.gen_range(0.0..60.0);
            let mut on_hand =
                (daily * cover).round() as i64 + if self.chance(0.2) { self.rng.gen_range(0..6) } else { 0 };
            if self.chance(0.04) {
                on_hand = 0;
            } else if self.chance(0.006) {
                on_hand = -self.rng.gen_range(1..6); // booked out before booked in
            }
            let allocated =
                if on_hand > 0 && self.chance(0.1) { self.rng.gen_range(1..=on_hand.min(20)) as f64 } else { 0.0 };
            let avg_cost = round_to(cost * self.rng.gen_range(0.95..1.05), 0.0001);
            let dc = wh == 0;
            let (supply, purch_uom, pack_qty, min_order, multiple) = if dc {
                let purch = if pack > 1.0 { Some(if uom == "M" { "ROLL" } else { "CTN" }) } else { None };
                (None, purch.or(Some(uom)), pack, pack * if self.chance(0.3) { 2.0 } else { 1.0 }, pack)
            } else {
                (Some(WAREHOUSES[0].0), Some(uom), 1.0, 1.0, 1.0)
            };
            let lead = (dc && self.chance(0.1)).then(|| self.vendors[vendor].lead + self.rng.gen_range(-3..10));
            let added = created.max(self.start - Duration::days(400)) + Duration::days(self.rng.gen_range(0..5));
            b.row(
                conn,
                row![
                    sku.as_str(),
                    WAREHOUSES[wh].0,
                    on_hand,
                    allocated,
                    avg_cost,
                    cost,
                    price,
                    self.vendors[vendor].code.as_str(),
                    supply,
                    purch_uom,
                    pack_qty,
                    lead,
                    min_order,
                    multiple,
                    ymd(added),
                ],
            )
            .await?;
        }
        Self::finish(&mut b, conn, counts).await
    }

    async fn purchases(&mut self, conn: &mut SqliteConnection, counts: &mut BTreeMap<&'static str, u64>) -> Result<()> {
        let mut heads =
            Bulk::new("purchase_orders", &["po_no", "vendor_no", "wh_code", "order_date", "status", "urgent"]);
        let mut lines = Bulk::new(
            "po_lines",
            &["po_no", "line_no", "sku", "qty_ordered", "qty_received", "unit_cost", "due_date", "received_date"],
        );
        // company-wide daily demand per item: the DC buys for the whole network
        let mut demand = vec![0.0; self.items.len()];
        for l in &self.locs {
            demand[l.item] += l.sold_qty.max(0.0) / self.p.days as f64;
        }
        let mut po = 400_000u64;
        for v in 0..self.vendors.len() {
            let lead = self.vendors[v].lead;
            let cycle = self.rng.gen_range(7..22);
            let vendor_items: Vec<usize> = (0..self.items.len()).filter(|&i| self.items[i].vendor == v).collect();
            if vendor_items.is_empty() {
                continue;
            }
            let mut date = self.start + Duration::days(self.rng.gen_range(0..cycle));
            while date < self.today {
                po += 1;
                let po_no = format!("PO{po}");
                let urgent = self.chance(0.05);
                let mut open = false;
                let mut line_no = 0i64;
                for &i in &vendor_items {
                    let it = &self.items[i];
                    let (sku, pack, cost, created, until) = (it.sku.clone(), it.pack, it.cost, it.created, it.until);
                    if date < created || date > until || !self.chance(0.35) {
                        continue;
                    }
                    let need = demand[i] * cycle as f64 * self.rng.gen_range(0.7..1.5);
                    let qty = ((need / pack).ceil().max(1.0)) * pack;
                    let due = date + Duration::days(lead);
                    let arrival = due + Duration::days((self.normal() * 4.0).round() as i64 + 1);
                    let arrival = arrival.max(date + Duration::days(1));
                    line_no += 1;
                    let (received, received_on) = if arrival < self.today {
                        let r = if self.chance(0.08) { (qty * self.rng.gen_range(0.5..0.99)).floor() } else { qty };
                        (r, Some(arrival))
                    } else if date < self.today - Duration::days(lead / 2 + 1) && self.chance(0.1) {
                        (
                            (qty * self.rng.gen_range(0.3..0.7)).floor(),
                            Some(self.today - Duration::days(self.rng.gen_range(1..4))),
                        )
                    } else {
                        (0.0, None)
                    };
                    if received_on.is_none_or(|d| d >= self.today - Duration::days(3)) && received < qty {
                        open = true;
                    }
                    lines
                        .row(
                            conn,
                            row![
                                po_no.as_str(),
                                line_no,
                                sku,
                                qty,
                                if received > 0.0 { received } else { 0.0 },
                                r2(cost * self.rng.gen_range(0.97..1.03)),
                                ymd(due),
                                received_on.filter(|_| received > 0.0).map(ymd)
                            ],
                        )
                        .await?;
                }
                if line_no > 0 {
                    let status = if open { "OPEN" } else { "CLOSED" };
                    heads
                        .row(
                            conn,
                            row![
                                po_no.as_str(),
                                self.vendors[v].code.as_str(),
                                WAREHOUSES[0].0,
                                date.format("%Y/%m/%d").to_string(),
                                status,
                                urgent as i64
                            ],
                        )
                        .await?;
                }
                date += Duration::days(cycle);
            }
        }
        Self::finish(&mut heads, conn, counts).await?;
        Self::finish(&mut lines, conn, counts).await
    }

    async fn customer_orders(
        &mut self,
        conn: &mut SqliteConnection,
        counts: &mut BTreeMap<&'static str, u64>,
    ) -> Result<()> {
        let mut b = Bulk::new(
            "customer_orders",
            &[
                "order_no",
                "line_no",
                "sku",
                "wh_code",
                "cust_no",
                "order_date",
                "requested_date",
                "qty_ordered",
                "qty_shipped",
                "qty_allocated",
            ],
        );
        let orders = self.p.items / 8;
        let mut by_wh = vec![Vec::new(); WAREHOUSES.len()];
        for (i, l) in self.locs.iter().enumerate() {
            by_wh[l.wh].push(i);
        }
        for o in 0..orders {
            let order_no = format!("SO{}", 700_000 + o);
            let wh = if self.chance(0.7) { 0 } else { self.rng.gen_range(1..WAREHOUSES.len()) };
            let cust = if wh == 0 {
                pick(&mut self.rng, &self.trade_customers).clone()
            } else {
                pick(&mut self.rng, &self.retail_customers).clone()
            };
            let ordered = self.today - Duration::days(self.rng.gen_range(0..15));
            let requested = self.today + Duration::days(self.rng.gen_range(0..22));
            for line in 1..=self.rng.gen_range(1..5i64) {
                let li = *pick(&mut self.rng, &by_wh[wh]);
                let (item, typical) = (self.locs[li].item, self.locs[li].typical);
                let qty = (typical * self.rng.gen_range(1.0..6.0)).round().max(1.0);
                let shipped = if self.chance(0.2) { (qty * 0.5).floor() } else { 0.0 };
                let allocated =
                    if self.chance(0.3) { ((qty - shipped) * self.rng.gen_range(0.0..1.0)).floor() } else { 0.0 };
                let sku = self.items[item].sku.clone();
                b.row(
                    conn,
                    row![
                        order_no.as_str(),
                        line,
                        sku,
                        WAREHOUSES[wh].0,
                        cust.as_str(),
                        ymd(ordered),
                        ymd(requested),
                        qty,
                        shipped,
                        allocated
                    ],
                )
                .await?;
            }
        }
        Self::finish(&mut b, conn, counts).await
    }

    async fn transfers(&mut self, conn: &mut SqliteConnection, counts: &mut BTreeMap<&'static str, u64>) -> Result<()> {
        let mut b = Bulk::new(
            "transfers",
            &[
                "transfer_no",
                "line_no",
                "sku",
                "from_wh",
                "to_wh",
                "created_on",
                "eta",
                "qty",
                "qty_shipped",
                "qty_received",
            ],
        );
        let store_locs: Vec<usize> = (0..self.locs.len()).filter(|&l| self.locs[l].wh != 0).collect();
        let count = (self.p.items / 15).max(4);
        for t in 0..count {
            let transfer_no = format!("TR{}", 50_000 + t);
            let to = 1 + t % (WAREHOUSES.len() - 1);
            let created = self.today - Duration::days(self.rng.gen_range(0..6));
            let eta = created + Duration::days(self.rng.gen_range(1..4));
            let state: f64 = self.rng.r#gen();
            let mut line = 0i64;
            for _ in 0..self.rng.gen_range(3..15) {
                let l = *pick(&mut self.rng, &store_locs);
                if self.locs[l].wh != to {
                    continue;
                }
                line += 1;
                let qty = (self.locs[l].typical * self.rng.gen_range(2.0..10.0)).round().max(1.0);
                let (shipped, received) = if state < 0.4 {
                    (0.0, 0.0)
                } else if state < 0.8 {
                    (qty, 0.0)
                } else {
                    (qty, (qty * self.rng.gen_range(0.0..0.9)).floor())
                };
                let sku = self.items[self.locs[l].item].sku.clone();
                b.row(
                    conn,
                    row![
                        transfer_no.as_str(),
                        line,
                        sku,
                        WAREHOUSES[0].0,
                        WAREHOUSES[to].0,
                        ymd(created),
                        ymd(eta),
                        qty,
                        shipped,
                        received
                    ],
                )
                .await?;
            }
        }
        Self::finish(&mut b, conn, counts).await
    }
}
