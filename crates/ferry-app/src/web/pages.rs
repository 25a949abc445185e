//! The pages of a logged-in buyer: the current plan grouped by supplier (with the why of each line, filters and
//! sorting, quantity edits, rejections, releases), an item's chart, and the released orders with their receipts.
//! Every handler takes the tenant from the session ([`Auth`]) and works in that tenant's instance only.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use maud::{Markup, html};

use super::users::Session;
use super::{Auth, CheckCsrf, Form, St, WebState, internal, page, refusal};
use crate::release::{self, LineState, Rec, ReleaseError, ReleasedOrder};
use crate::server::SharedInstance;

/// The tenant's instance and its policy, or the refusal to answer.
async fn tenant(st: &WebState, s: &Session) -> Result<(SharedInstance, String), Response> {
    let inst = match st.app.instance(&s.tenant).await {
        Ok(Some(i)) => i,
        Ok(None) => return Err(refusal(StatusCode::NOT_FOUND, "Your tenant has no instance on this server yet.")),
        Err(e) => return Err(internal(&format!("{e:#}"))),
    };
    let policy = release::policy(&inst.0).await.map_err(|e| internal(&format!("{e:#}")))?;
    Ok((inst, policy.as_str().to_string()))
}

fn release_refusal(e: &ReleaseError) -> Response {
    let status = match e {
        ReleaseError::NotFound => StatusCode::NOT_FOUND,
        ReleaseError::NotProposed | ReleaseError::Superseded => StatusCode::CONFLICT,
        ReleaseError::BadQty | ReleaseError::NothingSelected => StatusCode::UNPROCESSABLE_ENTITY,
        ReleaseError::Io(_) => return internal(e),
    };
    refusal(status, &format!("Not done: {e}."))
}

/// `qty × unit_cost` (0 when the cost is not a number).
fn value(r: &Rec) -> f64 {
    r.unit_cost.trim().parse::<f64>().map(|c| c * r.qty).unwrap_or(0.0)
}

pub fn num(x: f64) -> String {
    crate::planner::fmt_num(x, 2)
}

fn money(x: f64) -> String {
    format!("{x:.2}")
}

fn item_href(item: &str, location: &str) -> String {
    let q = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("item", item)
        .append_pair("location", location)
        .finish();
    format!("/item?{q}")
}

// ------------------------------------------------------------------------------------------------------------
// The plan

#[derive(serde::Deserialize, Default)]
pub struct PlanQuery {
    #[serde(default)]
    supplier: String,
    #[serde(default)]
    q: String,
    #[serde(default)]
    state: String,
    #[serde(default)]
    sort: String,
}

const SORTS: [(&str, &str); 4] =
    [("item", "Item"), ("value", "Value (largest first)"), ("due", "Due date"), ("qty", "Quantity (largest first)")];

pub async fn plan(State(st): St, Auth(s): Auth, Query(q): Query<PlanQuery>) -> Response {
    let (inst, policy) = match tenant(&st, &s).await {
        Ok(t) => t,
        Err(r) => return r,
    };
    let current = match release::current_plan(&inst.0).await {
        Ok(c) => c,
        Err(e) => return internal(&format!("{e:#}")),
    };
    let Some(current) = current else {
        let body = html! { p #no-plan { "No plan yet: one is made after the next import of your ERP's data." } };
        return page(&s, "Recommended orders", &policy, body).into_response();
    };
    let all = match release::lines(&inst.0, current.id).await {
        Ok(l) => l,
        Err(e) => return internal(&format!("{e:#}")),
    };
    let suppliers: Vec<String> = {
        let mut v: Vec<String> = all.iter().map(|r| r.supplier.clone()).collect();
        v.dedup();
        v
    };
    let needle = q.q.trim().to_lowercase();
    let state = LineState::parse(&q.state);
    let mut shown: Vec<&Rec> = all
        .iter()
        .filter(|r| q.supplier.is_empty() || r.supplier == q.supplier)
        .filter(|r| {
            needle.is_empty() || r.item.to_lowercase().contains(&needle) || r.location.to_lowercase().contains(&needle)
        })
        .filter(|r| state.is_none_or(|s| r.state == s))
        .collect();
    match q.sort.as_str() {
        "value" => shown.sort_by(|a, b| value(b).total_cmp(&value(a))),
        "due" => shown.sort_by_key(|r| r.due_date),
        "qty" => shown.sort_by(|a, b| b.qty.total_cmp(&a.qty)),
        _ => shown.sort_by(|a, b| (&a.item, &a.location).cmp(&(&b.item, &b.location))),
    }
    let mut groups: BTreeMap<&str, Vec<&Rec>> = BTreeMap::new();
    for r in shown {
        groups.entry(r.supplier.as_str()).or_default().push(r);
    }
    let proposed = all.iter().filter(|r| r.state == LineState::Proposed).count();
    let body = html! {
        p #plan-info { "Plan " b { "#" (current.id) } " of " (when(&current.created_at)) ": " (current.lines) " lines, "
            (proposed) " waiting for review." }
        form.filters method="get" action="/plan" role="search" {
            label for="f-supplier" { "Supplier" }
            select #f-supplier name="supplier" {
                option value="" { "All" }
                @for sup in &suppliers { option value=(sup) selected[*sup == q.supplier] { (sup) } }
            }
            label for="f-q" { "Item or location" }
            input #f-q type="search" name="q" value=(q.q);
            label for="f-state" { "State" }
            select #f-state name="state" {
                option value="" { "All" }
                @for s in [LineState::Proposed, LineState::Released, LineState::Rejected] {
                    option value=(s.as_str()) selected[state == Some(s)] { (s.as_str()) }
                }
            }
            label for="f-sort" { "Sort by" }
            select #f-sort name="sort" {
                @for (k, label) in SORTS { option value=(k) selected[q.sort == k] { (label) } }
            }
            button type="submit" { "Apply" }
        }
        @if groups.is_empty() { p { "No line matches the filters." } }
        @for (n, (supplier, lines)) in groups.iter().enumerate() {
            (supplier_section(&s, n, supplier, lines))
        }
    };
    page(&s, "Recommended orders", &policy, body).into_response()
}

fn supplier_section(s: &Session, n: usize, supplier: &str, lines: &[&Rec]) -> Markup {
    let form_id = format!("rel-{n}");
    let total: f64 = lines.iter().map(|r| value(r)).sum();
    let open = lines.iter().filter(|r| r.state == LineState::Proposed).count();
    html! {
        section.supplier aria-labelledby=(format!("sup-{n}")) data-supplier=(supplier) {
            h2 #(format!("sup-{n}")) { "Supplier " (supplier) }
            p { (lines.len()) " lines, value " b.value { (money(total)) } ", " (open) " to review." }
            @if open > 0 {
                div.actions {
                    form #(form_id) method="post" action="/release" {
                        input type="hidden" name="csrf" value=(s.csrf);
                        button.release-selected type="submit" { "Release the selected lines" }
                    }
                    form method="post" action="/release-supplier" {
                        input type="hidden" name="csrf" value=(s.csrf);
                        input type="hidden" name="supplier" value=(supplier);
                        button.release-supplier type="submit" data-supplier=(supplier) { "Release all " (open) " lines of " (supplier) }
                    }
                }
            }
            div.scroll {
            table {
                thead { tr {
                    th scope="col" { span.sr { "Select" } }
                    th scope="col" { "Item" } th scope="col" { "Location" } th scope="col" { "Quantity" }
                    th scope="col" { "Value" } th scope="col" { "Due" } th scope="col" { "State" }
                    th scope="col" { "Why" } th scope="col" { span.sr { "Actions" } }
                } }
                tbody {
                    @for r in lines {
                        tr #(format!("line-{}", r.id)) class=(format!("line {}", r.state.as_str())) data-item=(r.item) data-line=(r.id) {
                            td { @if r.state == LineState::Proposed {
                                input type="checkbox" name="line" value=(r.id) form=(form_id) id=(format!("sel-{}", r.id))
                                    aria-label=(format!("Select {} at {}", r.item, r.location));
                            } }
                            td { a.chart href=(item_href(&r.item, &r.location)) { (r.item) } }
                            td { (r.location) }
                            td.num {
                                @if r.state == LineState::Proposed {
                                    form.qty method="post" action=(format!("/lines/{}/qty", r.id)) {
                                        input type="hidden" name="csrf" value=(s.csrf);
                                        label.sr for=(format!("qty-{}", r.id)) { "Quantity of " (r.item) " at " (r.location) }
                                        input #(format!("qty-{}", r.id)) type="number" name="qty" step="any" min="0" value=(num(r.qty));
                                        button type="submit" { "Save" }
                                    }
                                } @else { span.qty { (num(r.qty)) } }
                                @if (r.qty - r.planned_qty).abs() > 1e-9 { br; small { "planned " (num(r.planned_qty)) } }
                            }
                            td.num { (money(value(r))) }
                            td { (r.due_date.format("%Y-%m-%d")) }
                            td.state { (r.state.as_str()) }
                            td.why { (why(r)) }
                            td { @if r.state == LineState::Proposed {
                                form method="post" action=(format!("/lines/{}/reject", r.id)) {
                                    input type="hidden" name="csrf" value=(s.csrf);
                                    button.reject type="submit" aria-label=(format!("Reject {} at {}", r.item, r.location)) { "Reject" }
                                }
                            } @else if let Some(rid) = r.release_id { a href=(format!("/releases/{rid}")) { "release " (rid) } } }
                        }
                    }
                }
            }
            }
        }
    }
}

fn why(r: &Rec) -> Markup {
    html! {
        "position " b { (num(r.position)) } " vs reorder point " b { (num(r.reorder_point)) }
        " · safety stock " (num(r.safety_stock))
        " · demand " (num(r.rate)) "/day"
        " · lead time " (num(r.lead_time_days)) " d (" (r.lead_time_source) ")"
        @if r.released_on_order > 1e-9 { " · released, not yet in the ERP: " (num(r.released_on_order)) }
    }
}

// ------------------------------------------------------------------------------------------------------------
// Actions

// a refusal is the handler's answer, returned at once: its size does not matter
#[allow(clippy::result_large_err)]
fn parse_form(s: &Session, body: &[u8]) -> Result<Form, Response> {
    let f = Form::parse(body);
    f.check_csrf(s)?;
    Ok(f)
}

pub async fn set_qty(State(st): St, Auth(s): Auth, Path(id): Path<i64>, body: axum::body::Bytes) -> Response {
    let form = match parse_form(&s, &body) {
        Ok(f) => f,
        Err(r) => return r,
    };
    let Some(qty) = form.get("qty").and_then(|q| q.trim().parse::<f64>().ok()) else {
        return refusal(StatusCode::UNPROCESSABLE_ENTITY, "The quantity must be a number.");
    };
    let (inst, _) = match tenant(&st, &s).await {
        Ok(t) => t,
        Err(r) => return r,
    };
    match release::set_qty(&inst.0, id, qty).await {
        Ok(()) => {
            tracing::info!(tenant = %s.tenant, user = %s.email, line = id, qty, "web: quantity changed");
            Redirect::to(&format!("/plan#line-{id}")).into_response()
        }
        Err(e) => release_refusal(&e),
    }
}

pub async fn reject(State(st): St, Auth(s): Auth, Path(id): Path<i64>, body: axum::body::Bytes) -> Response {
    if let Err(r) = parse_form(&s, &body) {
        return r;
    }
    let (inst, _) = match tenant(&st, &s).await {
        Ok(t) => t,
        Err(r) => return r,
    };
    match release::reject(&inst.0, id).await {
        Ok(()) => {
            tracing::info!(tenant = %s.tenant, user = %s.email, line = id, "web: line rejected");
            Redirect::to(&format!("/plan#line-{id}")).into_response()
        }
        Err(e) => release_refusal(&e),
    }
}

pub async fn release_lines(State(st): St, Auth(s): Auth, body: axum::body::Bytes) -> Response {
    let form = match parse_form(&s, &body) {
        Ok(f) => f,
        Err(r) => return r,
    };
    let ids: Result<Vec<i64>, _> = form.all("line").map(|v| v.trim().parse::<i64>()).collect();
    let Ok(ids) = ids else { return refusal(StatusCode::UNPROCESSABLE_ENTITY, "A selected line is not a line id.") };
    do_release(&st, &s, &ids).await
}

pub async fn release_supplier(State(st): St, Auth(s): Auth, body: axum::body::Bytes) -> Response {
    let form = match parse_form(&s, &body) {
        Ok(f) => f,
        Err(r) => return r,
    };
    let supplier = form.get("supplier").unwrap_or_default();
    let (inst, _) = match tenant(&st, &s).await {
        Ok(t) => t,
        Err(r) => return r,
    };
    let lines = match release::current_plan(&inst.0).await {
        Ok(Some(p)) => release::lines(&inst.0, p.id).await,
        Ok(None) => Ok(Vec::new()),
        Err(e) => Err(e),
    };
    let ids: Vec<i64> = match lines {
        Ok(l) => l.iter().filter(|r| r.supplier == supplier && r.state == LineState::Proposed).map(|r| r.id).collect(),
        Err(e) => return internal(&format!("{e:#}")),
    };
    if ids.is_empty() {
        return refusal(
            StatusCode::UNPROCESSABLE_ENTITY,
            "That supplier has no line waiting for review in the current plan.",
        );
    }
    do_release(&st, &s, &ids).await
}

async fn do_release(st: &Arc<WebState>, s: &Session, ids: &[i64]) -> Response {
    let (inst, _) = match tenant(st, s).await {
        Ok(t) => t,
        Err(r) => return r,
    };
    let today = chrono::Utc::now().date_naive();
    let sftp_root = st.app.sftp_root();
    match release::release(&inst.0, &s.tenant, &sftp_root, ids, &s.email, today).await {
        Ok(done) => {
            st.app.metrics.released(done.len());
            for r in &done {
                tracing::info!(tenant = %s.tenant, user = %s.email, release = r.id, file = %r.file_name, lines = r.lines, "web: released");
            }
            st.app.announce_wakeup.notify_one();
            Redirect::to("/releases").into_response()
        }
        Err(e) => release_refusal(&e),
    }
}

// ------------------------------------------------------------------------------------------------------------
// Released orders

pub async fn releases(State(st): St, Auth(s): Auth) -> Response {
    let (inst, policy) = match tenant(&st, &s).await {
        Ok(t) => t,
        Err(r) => return r,
    };
    let all = match release::releases(&inst.0).await {
        Ok(r) => r,
        Err(e) => return internal(&format!("{e:#}")),
    };
    let body = html! {
        @if all.is_empty() { p #no-releases { "Nothing released yet." } }
        @else {
            div.scroll { table #releases {
                thead { tr {
                    th scope="col" { "Release" } th scope="col" { "Supplier" } th scope="col" { "File" }
                    th scope="col" { "Lines" } th scope="col" { "Released" } th scope="col" { "Progress" }
                } }
                tbody { @for r in &all {
                    tr.release data-release=(r.release.id) data-supplier=(r.release.supplier) {
                        td { a href=(format!("/releases/{}", r.release.id)) { "#" (r.release.id) } }
                        td { (r.release.supplier) }
                        td { code { (r.release.file_name) } }
                        td.num { (r.release.lines) }
                        td { (when(&r.release.created_at)) br; small { "by " (r.release.by) } }
                        td { (receipts(r)) }
                    }
                } }
            } }
        }
    };
    page(&s, "Released orders", &policy, body).into_response()
}

/// created -> relayed -> delivered at T -> seen in the ERP, each step marked done or not yet.
fn receipts(r: &ReleasedOrder) -> Markup {
    let rank = match r.file_state.as_str() {
        "delivered" => 3,
        "relayed" => 2,
        "created" | "announced" => 1,
        _ => 0,
    };
    let steps = [
        (rank >= 1, "created".to_string()),
        (rank >= 2, "relayed".to_string()),
        (
            rank >= 3,
            match &r.delivered_at {
                Some(t) => format!("delivered at {}", when(t)),
                None => "delivered".to_string(),
            },
        ),
        (r.seen_in_erp, "seen in the ERP".to_string()),
    ];
    html! {
        ol.receipts data-state=(r.file_state) {
            @for (done, label) in steps {
                li class=(if done { "done" } else { "todo" }) {
                    (if done { "✓ " } else { "… " }) (label)
                }
            }
        }
    }
}

pub async fn release_detail(State(st): St, Auth(s): Auth, Path(id): Path<i64>) -> Response {
    let (inst, policy) = match tenant(&st, &s).await {
        Ok(t) => t,
        Err(r) => return r,
    };
    let all = match release::releases(&inst.0).await {
        Ok(r) => r,
        Err(e) => return internal(&format!("{e:#}")),
    };
    let Some(r) = all.into_iter().find(|r| r.release.id == id) else {
        return refusal(StatusCode::NOT_FOUND, "There is no such release in your tenant.");
    };
    let body = html! {
        p { "Supplier " b { (r.release.supplier) } ", file " code { (r.release.file_name) } ", released "
            (when(&r.release.created_at)) " by " (r.release.by) "." }
        (receipts(&r))
        div.scroll { table {
            thead { tr { th scope="col" { "Item" } th scope="col" { "Location" } th scope="col" { "Quantity" }
                th scope="col" { "Value" } th scope="col" { "Due" } } }
            tbody { @for l in &r.lines {
                tr { td { a href=(item_href(&l.item, &l.location)) { (l.item) } } td { (l.location) }
                    td.num { (num(l.qty)) } td.num { (money(value(l))) } td { (l.due_date.format("%Y-%m-%d")) } }
            } }
        } }
    };
    page(&s, &format!("Release #{id}"), &policy, body).into_response()
}

// ------------------------------------------------------------------------------------------------------------
// An item's chart

#[derive(serde::Deserialize)]
pub struct ItemQuery {
    #[serde(default)]
    item: String,
    #[serde(default)]
    location: String,
}

pub async fn item(State(st): St, Auth(s): Auth, Query(q): Query<ItemQuery>) -> Response {
    let (inst, policy) = match tenant(&st, &s).await {
        Ok(t) => t,
        Err(r) => return r,
    };
    let today = chrono::Utc::now().date_naive();
    let data = match super::chart::load(&inst.0, &q.item, &q.location, today).await {
        Ok(Some(d)) => d,
        Ok(None) => return refusal(StatusCode::NOT_FOUND, "There is no such item at that location in your tenant."),
        Err(e) => return internal(&format!("{e:#}")),
    };
    let title = format!("{} at {}", q.item, q.location);
    let body = html! {
        p { a href="/plan" { "← Recommended orders" } }
        (super::chart::svg(&data, &title))
        (super::chart::table(&data))
    };
    page(&s, &title, &policy, body).into_response()
}

/// A stored RFC 3339 time as people read it: `2026-12-03 07:48 UTC` (the stored text when it does not parse).
fn when(t: &str) -> String {
    match chrono::DateTime::parse_from_rfc3339(t) {
        Ok(d) => d.with_timezone(&chrono::Utc).format("%Y-%m-%d %H:%M UTC").to_string(),
        Err(_) => t.to_string(),
    }
}

#[cfg(test)]
mod when_tests {
    #[test]
    fn times_read_as_minutes_in_utc() {
        assert_eq!(super::when("2026-12-03T07:48:08.283354361+00:00"), "2026-12-03 07:48 UTC");
        assert_eq!(super::when("2026-12-03T09:48:08+02:00"), "2026-12-03 07:48 UTC");
        assert_eq!(super::when("yesterday"), "yesterday");
    }
}
