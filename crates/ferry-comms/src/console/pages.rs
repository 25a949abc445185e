//! The console's pages and actions. Every action goes through [`crate::admin::Admin`] (the CLI's and the admin
//! API's operations: same checks, same audit entries) and then reloads access in this server at once.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Redirect, Response};
use chrono::{DateTime, Utc};
use ferry_proto::api::valid_tenant_name;
use ferry_web::page::Form;
use maud::{Markup, html};

use super::operators::Session;
use super::{Auth, ConsoleState, Peer, St, check_csrf, internal, page, refusal};
use crate::admin::Admin;
use crate::db::{self, BatchDetail};
use crate::limits::{Limit, parse_size};

/// The operator actions, acting as this session from `peer` (the audit log's actor).
fn admin(c: &ConsoleState, s: &Session, peer: &Peer) -> Admin {
    let from = peer.0.map(|p| p.to_string()).unwrap_or_else(|| "?".into());
    Admin {
        cfg: c.st.cfg.clone(),
        db: c.st.db.clone(),
        identity: c.st.identity.clone(),
        actor: format!("console ({}) from {from}", s.who),
    }
}

/// An operator mistake (unknown tenant, bad name or value) as a page; anything else is logged.
fn refused(e: &anyhow::Error) -> Response {
    let msg = format!("{e:#}");
    if msg.starts_with("no tenant") {
        refusal(StatusCode::NOT_FOUND, &format!("Not done: {msg}."))
    } else {
        refusal(StatusCode::UNPROCESSABLE_ENTITY, &format!("Not done: {msg}."))
    }
}

/// A tenant name from the path that names a tenant, or the 404 page.
async fn known_tenant(c: &ConsoleState, name: &str) -> Result<(), Response> {
    let exists = valid_tenant_name(name) && db::tenant_exists(&c.st.db, name).await.map_err(|e| internal(&e))?;
    if exists { Ok(()) } else { Err(refusal(StatusCode::NOT_FOUND, "There is no such tenant.")) }
}

// ------------------------------------------------------------------------------------------------------------
// Formatting

/// `1.5 MB` (decimal units, as people read sizes).
fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut x = n as f64;
    let mut u = 0;
    while x >= 1000.0 && u < UNITS.len() - 1 {
        x /= 1000.0;
        u += 1;
    }
    if u == 0 { format!("{n} B") } else { format!("{x:.1} {}", UNITS[u]) }
}

/// `850 ms`, `12.3 s`, `4.0 min`, `2.5 h`, `3.0 d`.
fn span(secs: f64) -> String {
    let s = secs.max(0.0);
    if s < 1.0 {
        format!("{:.0} ms", s * 1000.0)
    } else if s < 60.0 {
        format!("{s:.1} s")
    } else if s < 3600.0 {
        format!("{:.1} min", s / 60.0)
    } else if s < 86_400.0 {
        format!("{:.1} h", s / 3600.0)
    } else {
        format!("{:.1} d", s / 86_400.0)
    }
}

fn between(a: Option<DateTime<Utc>>, b: Option<DateTime<Utc>>) -> Option<f64> {
    Some((b? - a?).num_milliseconds() as f64 / 1000.0)
}

fn ago(t: Option<DateTime<Utc>>) -> String {
    match between(t, Some(Utc::now())) {
        Some(s) => format!("{} ago", span(s)),
        None => "never".into(),
    }
}

/// The stages of a batch and how long each took: extract (at the ERP site), upload (extract end to completion
/// here), relay (to the App), import (the App's verdict).
fn timings(b: &BatchDetail) -> Markup {
    let stages = [
        ("extract", between(b.extract_started, b.extract_finished)),
        ("upload", between(b.extract_finished, b.completed_at)),
        ("relay", between(b.completed_at, b.relayed_at)),
        ("import", between(b.relayed_at, b.judged_at)),
    ];
    html! {
        span.timings {
            @for (i, (name, secs)) in stages.iter().enumerate() {
                @if i > 0 { " · " }
                span class=(format!("stage-{name}")) { (name) " " (secs.map(span).unwrap_or_else(|| "–".into())) }
            }
        }
    }
}

fn state_class(state: &str) -> &'static str {
    match state {
        "imported" | "active" | "delivered" => "ok",
        "rejected" | "disabled" | "revoked" => "bad",
        _ => "",
    }
}

// ------------------------------------------------------------------------------------------------------------
// Tenants

pub async fn tenants(State(c): St, Auth(s): Auth) -> Response {
    let (list, last, contacts) =
        match tokio::try_join!(db::list_tenants(&c.st.db), db::last_batches(&c.st.db), db::last_contacts(&c.st.db)) {
            Ok(x) => x,
            Err(e) => return internal(&e),
        };
    let last: HashMap<String, BatchDetail> = last.into_iter().map(|b| (b.tenant.clone(), b)).collect();
    let contacts: HashMap<String, DateTime<Utc>> = contacts.into_iter().collect();
    let app = &c.st.cfg.app.api_url;
    let content = html! {
        p { "App server: " b #app { (if app.is_empty() { "(not set)" } else { app.as_str() }) }
            " · " (list.len()) " tenants" " · every App server: " code #app-list-hint { "ferry comms app list" } }
        div.scroll {
            table #tenants {
                thead { tr {
                    th { "Tenant" } th { "State" } th { "App server" } th { "Keys" } th { "Connector" } th { "Last contact" }
                    th { "Last batch" } th { "Size" } th { "Stages" } th { "Bytes today / quota" }
                } }
                tbody {
                    @for t in &list {
                        @let b = last.get(&t.name);
                        @let limits = c.st.limits.of(&t.name);
                        @let today = c.st.usage.today(&t.name);
                        tr #(format!("tenant-{}", t.name)) {
                            td { a href=(format!("/console/tenants/{}", t.name)) { (t.name) } }
                            td.state class=(state_class(&t.status)) { (t.status) }
                            td.app { (t.app.as_deref().unwrap_or("–")) }
                            td.num { (t.keys) }
                            td.version { (b.map(|b| b.connector_version.as_str()).unwrap_or("–")) }
                            td.contact { (ago(contacts.get(&t.name).copied())) }
                            @if let Some(b) = b {
                                td.last-batch {
                                    span.state class=(state_class(&b.state)) { (b.state) } " "
                                    span.age { (ago(b.updated_at)) }
                                    @if let Some(d) = &b.detail { br; span.why { (d) } }
                                }
                                td.size { (bytes(b.compressed_bytes)) ", " (b.files) " files, " (b.rows) " rows" }
                                td { (timings(b)) }
                            } @else {
                                td.last-batch { "none yet" } td {} td {}
                            }
                            td.num.quota { (bytes(today)) " / " (bytes(limits.upload_bytes_per_day))
                                " (" (format!("{:.1}", 100.0 * today as f64 / limits.upload_bytes_per_day.max(1) as f64)) " %)" }
                        }
                    }
                }
            }
        }
        h2 { "Add a tenant" }
        form.actions method="post" action="/console/tenants" {
            input type="hidden" name="csrf" value=(s.csrf);
            label for="name" { "Name" }
            input #name type="text" name="name" required pattern="[a-z][a-z0-9-]{0,31}" maxlength="32"
                title="1-32 lowercase letters, digits and '-', starting with a letter";
            button #add type="submit" { "Add tenant" }
        }
        p.hint { "Creates the tenant's instance on the App server and shows its registration token once." }
    };
    page(&s, "Tenants", content).into_response()
}

/// The one-time registration token, shown once (never stored in clear, never logged).
fn token_page(s: &Session, c: &ConsoleState, tenant: &str, token: &str, what: &str) -> Response {
    let content = html! {
        p #done role="status" { (what) }
        p { "Registration token for " b { (tenant) } " (single use, expires in " (c.st.cfg.token_ttl_hours)
            " h). Copy it now: it is not shown again." }
        pre #token { (token) }
        p { "On the ERP site: " code { "ferry connector register --token <token>" } }
        p { a href=(format!("/console/tenants/{tenant}")) { "To the tenant" } }
    };
    page(s, "Registration token", content).into_response()
}

pub async fn add_tenant(State(c): St, Auth(s): Auth, peer: Peer, body: axum::body::Bytes) -> Response {
    let form = Form::parse(&body);
    if let Err(r) = check_csrf(&form, &s) {
        return r;
    }
    let name = form.get("name").unwrap_or_default().trim();
    let a = admin(&c, &s, &peer);
    match a.add_tenant(name, &a.public_url()).await {
        Ok(token) => {
            c.st.refresh_access().await;
            token_page(&s, &c, name, &token, &format!("Tenant {name} added; its instance is ready on the App server."))
        }
        Err(e) => refused(&e),
    }
}

pub async fn new_token(
    State(c): St,
    Auth(s): Auth,
    peer: Peer,
    Path(name): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    if let Err(r) = check_csrf(&Form::parse(&body), &s) {
        return r;
    }
    let a = admin(&c, &s, &peer);
    match a.token(&name, &a.public_url()).await {
        Ok(token) => token_page(&s, &c, &name, &token, "A new registration token was issued."),
        Err(e) => refused(&e),
    }
}

#[derive(serde::Deserialize, Default)]
pub struct DoneQuery {
    #[serde(default)]
    done: String,
}

/// The fixed confirmations an action redirects with (`?done=`): never text from the request.
fn done_message(code: &str) -> Option<&'static str> {
    Some(match code {
        "disabled" => "Tenant disabled: its keys are refused and its open sessions closed.",
        "enabled" => "Tenant enabled.",
        "revoked" => "Key revoked: it is refused from now on and its open sessions closed.",
        "limits" => "Limits saved.",
        _ => return None,
    })
}

pub async fn tenant(State(c): St, Auth(s): Auth, Path(name): Path<String>, Query(q): Query<DoneQuery>) -> Response {
    if let Err(r) = known_tenant(&c, &name).await {
        return r;
    }
    let row = match db::list_tenants(&c.st.db).await {
        Ok(l) => l.into_iter().find(|t| t.name == name),
        Err(e) => return internal(&e),
    };
    let Some(row) = row else { return refusal(StatusCode::NOT_FOUND, "There is no such tenant.") };
    let view =
        Admin { cfg: c.st.cfg.clone(), db: c.st.db.clone(), identity: c.st.identity.clone(), actor: String::new() };
    let (keys, batches, downloads, limits) = match tokio::try_join!(
        async { db::tenant_keys(&c.st.db, &name).await.map_err(anyhow::Error::from) },
        async { db::batch_details(&c.st.db, &name, 100).await.map_err(anyhow::Error::from) },
        async { db::tenant_downloads(&c.st.db, &name, 100).await.map_err(anyhow::Error::from) },
        view.limits(&name),
    ) {
        Ok(x) => x,
        Err(e) => return internal(&format!("{e:#}")),
    };
    // the tenant's App server: its name and address (a tenant not placed yet goes to `default` at the next start)
    let app_url = match (&row.app, db::list_apps(&c.st.db).await) {
        (Some(a), Ok(apps)) => apps.into_iter().find(|r| &r.name == a).map(|r| r.endpoint.api_url),
        (_, Err(e)) => return internal(&e),
        (None, _) => None,
    };
    let active = row.status == "active";
    let today = c.st.usage.today(&name);
    let content = html! {
        @if let Some(m) = done_message(&q.done) { p.ok #done role="status" { (m) } }
        p {
            "State: " b #state class=(state_class(&row.status)) { (row.status) }
            " · App server " b #tenant-app { (row.app.as_deref().unwrap_or("(not placed)")) }
            @if let Some(u) = &app_url { " (" span #tenant-app-url { (u) } ")" }
            " · created " (row.created_at.get(..10).unwrap_or(&row.created_at))
            " · bytes today " span #today { (bytes(today)) " of " (bytes(limits.limits.upload_bytes_per_day)) }
        }
        div.actions {
            form.inline method="post" action=(format!("/console/tenants/{name}/{}", if active { "disable" } else { "enable" })) {
                input type="hidden" name="csrf" value=(s.csrf);
                @if active { button #disable type="submit" { "Disable tenant" } }
                @else { button #enable type="submit" { "Enable tenant" } }
            }
            form.inline method="post" action=(format!("/console/tenants/{name}/token")) {
                input type="hidden" name="csrf" value=(s.csrf);
                button #new-token type="submit" { "New registration token" }
            }
        }

        h2 { "Keys" }
        table #keys {
            thead { tr { th { "Fingerprint" } th { "Host" } th { "State" } th { "Registered" } th {} } }
            tbody {
                @for (fp, status, created, host) in &keys {
                    tr {
                        td { code { (fp) } } td { (host) } td.state class=(state_class(status)) { (status) }
                        td { (created.get(..19).unwrap_or(created)) }
                        td {
                            @if status == "active" {
                                form.inline method="post" action=(format!("/console/tenants/{name}/keys/revoke")) {
                                    input type="hidden" name="csrf" value=(s.csrf);
                                    input type="hidden" name="fingerprint" value=(fp);
                                    button.revoke type="submit" data-fingerprint=(fp) { "Revoke" }
                                }
                            }
                        }
                    }
                }
            }
        }

        h2 { "Limits" }
        form #limits method="post" action=(format!("/console/tenants/{name}/limits")) {
            input type="hidden" name="csrf" value=(s.csrf);
            table {
                thead { tr { th { "Limit" } th { "Effective" } th { "Override (empty: the server's default)" } } }
                tbody {
                    @for l in Limit::ALL {
                        @let overridden = limits.overrides.contains(&l.key());
                        @let value = l.get(&limits.limits);
                        tr {
                            td { label for=(format!("limit-{}", l.key())) { code { (l.key()) } } }
                            td.num #(format!("effective-{}", l.key())) {
                                (value) " " (l.unit()) @if overridden { " (set)" }
                            }
                            td { input #(format!("limit-{}", l.key())) type="text" name=(l.key())
                                value=(if overridden { value.to_string() } else { String::new() })
                                placeholder=(l.get(&c.st.cfg.limits).to_string()) maxlength="24"; }
                        }
                    }
                }
            }
            p { button #save-limits type="submit" { "Save limits" } }
            p.hint { "Sizes take k, M, G suffixes (binary): 10G, 512M." }
        }

        h2 { "Batches" }
        div.scroll {
            table #batches {
                thead { tr {
                    th { "Batch" } th { "State" } th { "Updated" } th { "Size" } th { "Stages" } th { "Connector" } th { "Detail" }
                } }
                tbody {
                    @for b in &batches {
                        tr id=(format!("batch-{}", b.batch_id)) {
                            td { code { (b.batch_id) } }
                            td.state class=(state_class(&b.state)) { (b.state) }
                            td { (ago(b.updated_at)) }
                            td { (bytes(b.compressed_bytes)) ", " (b.files) " files, " (b.rows) " rows" }
                            td { (timings(b)) }
                            td { (b.connector_version) }
                            td.why { (b.detail.as_deref().unwrap_or("")) @if b.attempts > 0 { " (" (b.attempts) " failed attempts)" } }
                        }
                    }
                }
            }
        }

        h2 { "Downstream files" }
        div.scroll {
            table #downloads {
                thead { tr { th { "File" } th { "Name" } th { "State" } th { "Announced" } th { "Last error" } } }
                tbody {
                    @for (id, fname, state, attempts, created, err) in &downloads {
                        tr {
                            td { code { (id) } } td { (fname) } td.state class=(state_class(state)) { (state) }
                            td { (created.get(..19).unwrap_or(created)) }
                            td.why { (err.as_deref().unwrap_or("")) @if *attempts > 0 { " (" (attempts) " attempts)" } }
                        }
                    }
                }
            }
        }
    };
    page(&s, &format!("Tenant {name}"), content).into_response()
}

async fn set_enabled(c: Arc<ConsoleState>, s: Session, peer: Peer, name: String, body: &[u8], on: bool) -> Response {
    if let Err(r) = check_csrf(&Form::parse(body), &s) {
        return r;
    }
    if let Err(e) = admin(&c, &s, &peer).set_enabled(&name, on).await {
        return refused(&e);
    }
    c.st.refresh_access().await;
    Redirect::to(&format!("/console/tenants/{name}?done={}", if on { "enabled" } else { "disabled" })).into_response()
}

pub async fn disable(
    State(c): St,
    Auth(s): Auth,
    peer: Peer,
    Path(name): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    set_enabled(c, s, peer, name, &body, false).await
}

pub async fn enable(
    State(c): St,
    Auth(s): Auth,
    peer: Peer,
    Path(name): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    set_enabled(c, s, peer, name, &body, true).await
}

pub async fn revoke_key(
    State(c): St,
    Auth(s): Auth,
    peer: Peer,
    Path(name): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    let form = Form::parse(&body);
    if let Err(r) = check_csrf(&form, &s) {
        return r;
    }
    if let Err(r) = known_tenant(&c, &name).await {
        return r;
    }
    let fp = form.get("fingerprint").unwrap_or_default();
    if let Err(e) = admin(&c, &s, &peer).revoke_key(&name, fp).await {
        return refused(&e);
    }
    c.st.refresh_access().await;
    Redirect::to(&format!("/console/tenants/{name}?done=revoked")).into_response()
}

pub async fn set_limits(
    State(c): St,
    Auth(s): Auth,
    peer: Peer,
    Path(name): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    let form = Form::parse(&body);
    if let Err(r) = check_csrf(&form, &s) {
        return r;
    }
    if let Err(r) = known_tenant(&c, &name).await {
        return r;
    }
    let a = admin(&c, &s, &peer);
    let current = match a.limits(&name).await {
        Ok(v) => v,
        Err(e) => return refused(&e),
    };
    // only what changed: an empty field resets an override, a value sets one
    let mut changes = Vec::new();
    for l in Limit::ALL {
        let Some(field) = form.get(l.key()) else { continue };
        let field = field.trim();
        let overridden = current.overrides.contains(&l.key());
        if field.is_empty() {
            if overridden {
                changes.push((l, None));
            }
            continue;
        }
        let v = match parse_size(field) {
            Ok(v) => v,
            Err(e) => {
                return refusal(StatusCode::UNPROCESSABLE_ENTITY, &format!("Not saved: {}: {e}", l.key()));
            }
        };
        if !overridden || l.get(&current.limits) != v {
            changes.push((l, Some(v)));
        }
    }
    if !changes.is_empty() {
        if let Err(e) = a.set_limits(&name, &changes).await {
            return refused(&e);
        }
        c.st.refresh_access().await;
    }
    Redirect::to(&format!("/console/tenants/{name}?done=limits")).into_response()
}

// ------------------------------------------------------------------------------------------------------------
// Audit log

pub async fn audit(State(c): St, Auth(s): Auth) -> Response {
    let verdict = match db::verify_audit(&c.st.db).await {
        Ok(v) => v,
        Err(e) => return internal(&format!("{e:#}")),
    };
    let rows = match db::recent_audit(&c.st.db, 500).await {
        Ok(r) => r,
        Err(e) => return internal(&e),
    };
    let content = html! {
        @match &verdict {
            Ok(n) => p.ok #audit-status role="status" { "Chain verified: " (n) " entries, none edited, inserted or removed." },
            Err(why) => p.error #audit-status role="alert" { "The audit log was TAMPERED with: " (why) },
        }
        p.hint { "The latest " (rows.len()) " entries, newest first. " code { "ferry comms audit verify" } " checks the same chain." }
        div.scroll {
            table #audit {
                thead { tr { th { "#" } th { "At (UTC)" } th { "Tenant" } th { "Event" } th { "Detail" } } }
                tbody {
                    @for (id, at, tenant, event, detail) in &rows {
                        tr {
                            td.num { (id) } td { (at.get(..19).unwrap_or(at)) } td { (tenant.as_deref().unwrap_or("")) }
                            td.event { (event) } td.why { (detail) }
                        }
                    }
                }
            }
        }
    };
    (StatusCode::OK, Html(page(&s, "Audit log", content).0)).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_spans_read_well() {
        assert_eq!(bytes(999), "999 B");
        assert_eq!(bytes(1_500_000), "1.5 MB");
        assert_eq!(span(0.25), "250 ms");
        assert_eq!(span(90.0), "1.5 min");
        assert!(done_message("revoked").is_some());
        assert!(done_message("<script>").is_none());
    }
}
