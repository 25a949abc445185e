//! An item's chart, hand-written SVG rendered on the server: weekly demand of the last two years (from the
//! instance's `sales`), and as level lines the demand rate (per week), safety stock, reorder point, net
//! position and open orders (the ERP's `po` plus released orders the ERP does not show yet) of the current plan's
//! line. Each series is one `<g id="series-…" class="series">` so that it can be found (and tested).

use chrono::{Days, NaiveDate};
use maud::{Markup, html};
use sqlx::Row;

use crate::instance::Instance;
use crate::release::{self, Rec};

/// Weeks of demand shown.
pub const WEEKS: usize = 104;

pub struct ChartData {
    /// First day of the first week.
    pub start: NaiveDate,
    /// Net demand per week (returns reduce their own week; never below 0), oldest first, [`WEEKS`] of them.
    pub weekly: Vec<f64>,
    /// Open quantity of the ERP's purchase orders (`po.outstanding_qty`).
    pub erp_open: f64,
    /// The current plan's line for the item, if it has one.
    pub rec: Option<Rec>,
}

/// The chart's data for `item` at `location`; `None` when the tenant has no such item there (no stock row and
/// no line in the current plan).
pub async fn load(inst: &Instance, item: &str, location: &str, today: NaiveDate) -> anyhow::Result<Option<ChartData>> {
    let rec = match release::current_plan(inst).await? {
        Some(p) => release::lines(inst, p.id).await?.into_iter().find(|r| r.item == item && r.location == location),
        None => None,
    };
    let known: Option<i64> = sqlx::query_scalar("SELECT 1 FROM stock WHERE item = ? AND location = ? LIMIT 1")
        .bind(item)
        .bind(location)
        .fetch_optional(inst.pool())
        .await?;
    if rec.is_none() && known.is_none() {
        return Ok(None);
    }
    let start = today.checked_sub_days(Days::new(WEEKS as u64 * 7 - 1)).unwrap_or(today);
    let start_iso = start.format("%Y-%m-%d").to_string();
    let rows = sqlx::query(
        "SELECT CAST((julianday(invoice_date) - julianday(?)) / 7 AS INTEGER) AS week, TOTAL(CAST(qty AS REAL)) AS qty
           FROM sales WHERE item = ? AND location = ? AND invoice_date >= ? AND invoice_date <= ?
          GROUP BY week",
    )
    .bind(&start_iso)
    .bind(item)
    .bind(location)
    .bind(&start_iso)
    .bind(today.format("%Y-%m-%d").to_string())
    .fetch_all(inst.pool())
    .await?;
    let mut weekly = vec![0.0; WEEKS];
    for r in rows {
        let week: Option<i64> = r.try_get("week")?;
        let qty: f64 = r.try_get("qty")?;
        if let Some(w) = week.and_then(|w| usize::try_from(w).ok()).filter(|w| *w < WEEKS)
            && qty.is_finite()
        {
            weekly[w] = qty.max(0.0);
        }
    }
    let erp_open: f64 =
        sqlx::query_scalar("SELECT TOTAL(CAST(outstanding_qty AS REAL)) FROM po WHERE item = ? AND location = ?")
            .bind(item)
            .bind(location)
            .fetch_one(inst.pool())
            .await?;
    Ok(Some(ChartData { start, weekly, erp_open, rec }))
}

impl ChartData {
    /// The level lines: (id, label, value, colour).
    fn levels(&self) -> Vec<(&'static str, &'static str, f64, &'static str)> {
        let open = self.erp_open + self.rec.as_ref().map_or(0.0, |r| r.released_on_order);
        let mut v = Vec::new();
        if let Some(r) = &self.rec {
            v.push(("series-rate", "demand rate per week", r.rate * 7.0, "#1b7f3b"));
            v.push(("series-safety-stock", "safety stock", r.safety_stock, "#b35c00"));
            v.push(("series-reorder-point", "reorder point", r.reorder_point, "#b00020"));
            v.push(("series-position", "net position", r.position, "#5b2a86"));
        }
        v.push(("series-open-orders", "open orders", open, "#00639b"));
        v
    }
}

const W: f64 = 860.0;
const H: f64 = 340.0;
const LEFT: f64 = 56.0;
const RIGHT: f64 = 190.0;
const TOP: f64 = 16.0;
const BOTTOM: f64 = 34.0;

fn f(x: f64) -> String {
    format!("{x:.1}")
}

/// The chart as inline SVG (`role="img"` with a title; the numbers are also in [`table`]). Inside HTML an SVG
/// element is never void: every `line`/`polyline` gets its end tag (`{}`), or what follows would nest in it.
pub fn svg(d: &ChartData, title: &str) -> Markup {
    let levels = d.levels();
    let max = d.weekly.iter().copied().chain(levels.iter().map(|l| l.2)).fold(1.0_f64, f64::max) * 1.1;
    let min = levels.iter().map(|l| l.2).fold(0.0_f64, f64::min);
    let plot_w = W - LEFT - RIGHT;
    let plot_h = H - TOP - BOTTOM;
    let y = |v: f64| TOP + plot_h * (1.0 - (v - min) / (max - min));
    let x = |i: usize| LEFT + plot_w * i as f64 / (WEEKS - 1) as f64;
    let points: Vec<String> = d.weekly.iter().enumerate().map(|(i, v)| format!("{},{}", f(x(i)), f(y(*v)))).collect();
    let ticks = [min, (min + max) / 2.0, max];
    html! {
        svg #chart xmlns="http://www.w3.org/2000/svg" viewBox=(format!("0 0 {W} {H}")) role="img" aria-labelledby="chart-title" {
            title #chart-title { "Weekly demand of " (title) " over the last two years, with its planning levels" }
            g.axes stroke="#888" stroke-width="1" {
                line x1=(f(LEFT)) y1=(f(TOP)) x2=(f(LEFT)) y2=(f(TOP + plot_h)) {}
                line x1=(f(LEFT)) y1=(f(TOP + plot_h)) x2=(f(LEFT + plot_w)) y2=(f(TOP + plot_h)) {}
            }
            g.labels font-size="11" fill="#333" {
                @for t in ticks {
                    text x=(f(LEFT - 6.0)) y=(f(y(t) + 4.0)) text-anchor="end" { (super::pages::num(t)) }
                }
                text x=(f(LEFT)) y=(f(H - 8.0)) { (d.start.format("%Y-%m-%d")) }
                text x=(f(LEFT + plot_w)) y=(f(H - 8.0)) text-anchor="end" { "this week" }
            }
            g #series-demand .series data-points=(d.weekly.len()) {
                polyline points=(points.join(" ")) fill="none" stroke="#333" stroke-width="1.5" {}
                text x=(f(LEFT + plot_w + 8.0)) y=(f(TOP + 10.0)) font-size="12" fill="#333" { "weekly demand" }
            }
            @for (i, (id, label, v, colour)) in levels.iter().enumerate() {
                g #(id) .series data-value=(super::pages::num(*v)) {
                    line x1=(f(LEFT)) y1=(f(y(*v))) x2=(f(LEFT + plot_w)) y2=(f(y(*v))) stroke=(colour) stroke-width="2" stroke-dasharray=(if i % 2 == 0 { "6 3" } else { "2 3" }) {}
                    text x=(f(LEFT + plot_w + 8.0)) y=(f(TOP + 28.0 + 18.0 * i as f64)) font-size="12" fill=(colour) {
                        (label) " " (super::pages::num(*v))
                    }
                }
            }
        }
    }
}

/// The same numbers as a table (screen readers, copying).
pub fn table(d: &ChartData) -> Markup {
    let total: f64 = d.weekly.iter().sum();
    let last13: f64 = d.weekly.iter().rev().take(13).sum();
    html! {
        table #levels {
            caption { "Planning levels" }
            tbody {
                tr { th scope="row" { "Demand, last 104 weeks" } td.num { (super::pages::num(total)) } }
                tr { th scope="row" { "Demand, last 13 weeks" } td.num { (super::pages::num(last13)) } }
                @for (_, label, v, _) in d.levels() { tr { th scope="row" { (label) } td.num { (super::pages::num(v)) } } }
                @if let Some(r) = &d.rec {
                    tr { th scope="row" { "lead time (days)" } td.num { (super::pages::num(r.lead_time_days)) " (" (r.lead_time_source) ")" } }
                    tr { th scope="row" { "recommended quantity" } td.num { (super::pages::num(r.qty)) " (" (r.state.as_str()) ")" } }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_series_is_a_labelled_group() {
        let d = ChartData {
            start: NaiveDate::from_ymd_opt(2025, 1, 6).unwrap(),
            weekly: (0..WEEKS).map(|w| (w % 7) as f64).collect(),
            erp_open: 4.0,
            rec: None,
        };
        let svg = svg(&d, "A <b> at L1").into_string();
        assert!(svg.contains("id=\"series-demand\""), "{svg}");
        assert!(svg.contains("id=\"series-open-orders\""), "{svg}");
        assert!(svg.contains(">weekly demand</text>"), "{svg}");
        assert_eq!(svg.matches("<line").count(), svg.matches("</line>").count(), "end tags: {svg}");
        assert!(svg.contains("A &lt;b&gt; at L1"), "escaped: {svg}");
    }
}
