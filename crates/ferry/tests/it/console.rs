//! The operator console on real servers: a real headless Chromium logs in with the admin token, sees a tenant
//! that synced (state, Connector version, last contact, last batch with its stages), its batches, adds a tenant
//! (whose one-time token then registers a Connector), disables and enables a tenant (the disabled tenant's calls
//! are refused), revokes a key, sets a limit, and reads the audit log with its chain verified (screenshots of
//! every page under the test's work folder). And the refusals over plain HTTPS: no session, a wrong token or
//! password, a form without (or with a wrong) CSRF token; an operator account's set-password link and login.

use std::time::Duration;

use crate::browser::{Browser, spki_pin};
use crate::common::*;
use crate::web::{FormBody, cookie_value, set_cookie};
use fantoccini::Locator;
use ferry::cluster::Cluster;
use ferry_proto::api::BatchState;
use ferry_sample::{SampleSize, generate_sample_erp};

const PASSWORD: &str = "correct horse battery staple";

fn console_url(c: &Cluster) -> String {
    format!("https://{}/console", c.comms.admin_addr.expect("the cluster's admin listener"))
}

fn admin_token(c: &Cluster) -> String {
    std::fs::read_to_string(c.comms.state.cfg.admin_token_path()).unwrap().trim().to_string()
}

/// An HTTPS client pinned to the Comms certificate, no redirects followed, cookies by hand.
fn client(c: &Cluster) -> reqwest::Client {
    reqwest::Client::builder()
        .tls_backend_preconfigured(ferry_io::tls::client_config(Some(&c.comms.state.identity.tls_fingerprint)).unwrap())
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// The audit entries (event, detail), oldest first.
async fn audit(c: &Cluster) -> Vec<(String, String)> {
    let mut rows = ferry_comms::db::recent_audit(&c.comms.state.db, 1000).await.unwrap();
    rows.reverse();
    rows.into_iter().map(|e| (e.3, e.4)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_operator_runs_the_tenants_from_the_console_in_a_real_browser() {
    let (dir, c) = cluster().await;
    let Some(b) = Browser::start(dir.path(), &[spki_pin(&c.comms.state.identity.tls.key_pem)]).await else {
        c.stop().await;
        return;
    };
    // a tenant that synced once
    let erp = c.dir.join("acme-erp.db");
    generate_sample_erp(&erp, SampleSize::Small).await.unwrap();
    let token = c.add_tenant("acme").await.unwrap();
    let conn = c.connector("acme", &erp, &token).await.unwrap();
    let r = conn.sync(&quiet).await.unwrap();
    assert_eq!(r.status.state, BatchState::Imported);
    let batch = r.status.batch_id.to_string();
    let console = console_url(&c);
    let text = async |css: &str| b.client.find(Locator::Css(css)).await.unwrap().text().await.unwrap();

    // not logged in: the login page
    b.client.goto(&format!("{console}/tenants")).await.unwrap();
    b.wait_for_path("/console/login").await;
    b.screenshot("console-login").await;
    // a wrong token: refused, still the login page
    b.client.find(Locator::Id("token")).await.unwrap().send_keys(&"0".repeat(64)).await.unwrap();
    b.client.find(Locator::Id("login-token")).await.unwrap().click().await.unwrap();
    b.wait_for_path("/console/login").await;
    assert!(text("#login-error").await.contains("Wrong admin token"));
    b.screenshot("console-login-refused").await;
    // the admin token
    b.client.find(Locator::Id("token")).await.unwrap().send_keys(&admin_token(&c)).await.unwrap();
    b.client.find(Locator::Id("login-token")).await.unwrap().click().await.unwrap();
    b.wait_for_path("/console/tenants").await;

    // the tenants: acme with its state, Connector version, last contact, last batch and stages, today's bytes
    let row = text("#tenant-acme").await;
    let version = ferry_comms::db::last_batches(&c.comms.state.db).await.unwrap()[0].connector_version.clone();
    assert!(!version.is_empty());
    for want in ["acme", "active", "imported", version.as_str(), "extract", "upload", "relay", "import", " ago"] {
        assert!(row.contains(want), "{want:?} not in {row:?}");
    }
    assert!(!text("#tenant-acme td.contact").await.contains("never"), "{row}");
    let quota = text("#tenant-acme td.quota").await;
    assert!(
        quota.contains(" / 107.4 GB") && !quota.starts_with("0 B"),
        "today's upload against the default quota: {quota}"
    );
    assert!(text("#app").await.starts_with("https://"));
    // the command is shown as code, not with its Markdown backticks
    let header = b.client.find(Locator::XPath("//b[@id='app']/..")).await.unwrap().text().await.unwrap();
    assert!(!header.contains('`'), "literal backticks in {header:?}");
    assert_eq!(text("p code#app-list-hint").await, "ferry comms app list");
    b.screenshot("console-tenants").await;

    // acme's page: its batch with the stages, its key, its downstream files table
    b.client.find(Locator::Css("#tenant-acme a")).await.unwrap().click().await.unwrap();
    b.wait_for_path("/console/tenants/acme").await;
    let batches = text("#batches").await;
    assert!(batches.contains(&batch) && batches.contains("imported") && batches.contains("import "), "{batches}");
    assert!(text("#keys").await.contains("active"));
    b.client.find(Locator::Id("downloads")).await.unwrap();
    // the tenant's App server: its name and address
    assert_eq!(text("#tenant-app").await, "default");
    assert_eq!(text("#tenant-app-url").await, c.app.url());
    b.screenshot("console-tenant").await;

    // set a limit
    let field = b.client.find(Locator::Id("limit-max_batch_files")).await.unwrap();
    field.clear().await.unwrap();
    field.send_keys("7").await.unwrap();
    b.client.find(Locator::Id("save-limits")).await.unwrap().click().await.unwrap();
    b.wait_for_path("/console/tenants/acme").await;
    assert!(text("#done").await.contains("Limits saved"));
    assert!(text("#effective-max_batch_files").await.contains("7 files (set)"));
    assert_eq!(c.comms.state.limits.of("acme").max_batch_files, 7, "in force in the running server");
    b.screenshot("console-limits").await;

    // disable acme: its calls are refused; enable it again: accepted
    b.client.find(Locator::Id("disable")).await.unwrap().click().await.unwrap();
    b.wait_for_path("/console/tenants/acme").await;
    assert_eq!(text("#state").await, "disabled");
    b.screenshot("console-disabled").await;
    let err = conn.status(5).await.expect_err("a disabled tenant's call is refused");
    assert!(format!("{err:#}").contains("401"), "{err:#}");
    b.client.find(Locator::Id("enable")).await.unwrap().click().await.unwrap();
    b.wait_for_path("/console/tenants/acme").await;
    assert_eq!(text("#state").await, "active");
    assert!(conn.status(5).await.is_ok(), "enabled again");

    // add a tenant: the one-time token is shown and registers a Connector
    b.client.goto(&format!("{console}/tenants")).await.unwrap();
    b.client.find(Locator::Id("name")).await.unwrap().send_keys("beta").await.unwrap();
    b.client.find(Locator::Id("add")).await.unwrap().click().await.unwrap();
    b.wait_for_path("/console/tenants").await;
    let token = text("#token").await.trim().to_string();
    b.screenshot("console-token").await;
    let beta = c.connector("beta", &c.dir.join("beta-erp.db"), &token).await.expect("the console's token registers");
    assert!(beta.status(5).await.is_ok());

    // revoke beta's key: its calls are refused from now on
    b.client.goto(&format!("{console}/tenants/beta")).await.unwrap();
    b.client.find(Locator::Css("button.revoke")).await.unwrap().click().await.unwrap();
    b.wait_for_path("/console/tenants/beta").await;
    assert!(text("#done").await.contains("Key revoked"));
    assert!(text("#keys").await.contains("revoked"));
    b.screenshot("console-revoked").await;
    assert!(beta.status(5).await.is_err(), "a revoked key is refused");

    // the audit log: the chain verified, every action there as the CLI writes it, by the console's session
    b.client.find(Locator::Css("nav a[href=\"/console/audit\"]")).await.unwrap().click().await.unwrap();
    b.wait_for_path("/console/audit").await;
    assert!(text("#audit-status").await.starts_with("Chain verified"));
    let log = text("#audit").await;
    for event in ["console_login", "limits_changed", "tenant_disabled", "tenant_enabled", "tenant_added", "key_revoked"]
    {
        assert!(log.contains(event), "{event} not in the audit page");
    }
    b.screenshot("console-audit").await;
    let entries = audit(&c).await;
    for event in ["limits_changed", "tenant_disabled", "tenant_enabled", "tenant_added", "token_issued", "key_revoked"]
    {
        let (_, detail) = entries.iter().rev().find(|(e, _)| e == event).unwrap();
        assert!(detail.contains("by console (admin token) from 127.0.0.1:"), "{event}: {detail}");
    }
    let (_, d) = entries.iter().rev().find(|(e, _)| e == "limits_changed").unwrap();
    assert!(d.starts_with("max_batch_files = 7 "), "only the changed limit: {d}");
    assert_eq!(ferry_comms::db::verify_audit(&c.comms.state.db).await.unwrap(), Ok(entries.len() as u64));

    // log out: the console asks for a login again
    b.client.find(Locator::Id("logout")).await.unwrap().click().await.unwrap();
    b.wait_for_path("/console/login").await;
    b.client.goto(&format!("{console}/audit")).await.unwrap();
    b.wait_for_path("/console/login").await;
    b.close().await;
    c.stop().await;
}

/// Log in over HTTP with `fields` (`token`, or `email` + `password`): the session cookie, or the refusal.
async fn login(http: &reqwest::Client, console: &str, fields: &[(&str, &str)]) -> Result<String, reqwest::StatusCode> {
    let page = http.get(format!("{console}/login")).send().await.unwrap();
    let pre = cookie_value(&set_cookie(&page, "ferry_console_login").unwrap());
    let mut form = vec![("csrf", pre.as_str())];
    form.extend_from_slice(fields);
    let resp = http
        .post(format!("{console}/login"))
        .header("cookie", format!("ferry_console_login={pre}"))
        .form_body(&form)
        .send()
        .await
        .unwrap();
    if resp.status() != reqwest::StatusCode::SEE_OTHER {
        assert!(set_cookie(&resp, "ferry_console").is_none());
        return Err(resp.status());
    }
    let c = set_cookie(&resp, "ferry_console").unwrap();
    for attr in ["HttpOnly", "Secure", "SameSite=Strict", "Path=/console"] {
        assert!(c.contains(attr), "{c}");
    }
    Ok(cookie_value(&c))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_console_refuses_no_session_wrong_tokens_and_forms_without_their_csrf_token() {
    let (_dir, c) = cluster().await;
    tenant(&c, "acme").await;
    let console = console_url(&c);
    let http = client(&c);
    let active = async || ferry_comms::db::list_tenants(&c.comms.state.db).await.unwrap()[0].status == "active";

    // no session: pages send to the login, actions are refused
    let r = http.get(format!("{console}/tenants")).send().await.unwrap();
    assert_eq!(r.status(), reqwest::StatusCode::SEE_OTHER);
    assert_eq!(r.headers()["location"], "/console/login");
    let r = http.post(format!("{console}/tenants/acme/disable")).form_body(&[("csrf", "x")]).send().await.unwrap();
    assert_eq!(r.status(), reqwest::StatusCode::UNAUTHORIZED);
    // a made-up session cookie is no session
    let r = http.get(format!("{console}/audit")).header("cookie", format!("ferry_console={}", "a".repeat(64)));
    assert_eq!(r.send().await.unwrap().status(), reqwest::StatusCode::SEE_OTHER);

    // a wrong admin token: refused and audited; a login form without its token: refused
    assert_eq!(login(&http, &console, &[("token", &"0".repeat(64))]).await, Err(reqwest::StatusCode::UNAUTHORIZED));
    let r = http.post(format!("{console}/login")).form_body(&[("token", &admin_token(&c))]).send().await.unwrap();
    assert_eq!(r.status(), reqwest::StatusCode::FORBIDDEN);
    let refused = async || audit(&c).await.iter().any(|(e, d)| e == "auth_failed" && d.contains("console login"));
    assert!(eventually(Duration::from_secs(10), refused).await.is_some(), "{:?}", audit(&c).await);

    // the admin token: a session; forms without (or with a wrong) CSRF token change nothing
    let s = login(&http, &console, &[("token", &admin_token(&c))]).await.unwrap();
    let with = |req: reqwest::RequestBuilder| req.header("cookie", format!("ferry_console={s}"));
    let page = with(http.get(format!("{console}/tenants"))).send().await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.headers()["content-security-policy"].to_str().unwrap().contains("default-src 'none'"));
    let html = page.text().await.unwrap();
    let at = html.find("name=\"csrf\" value=\"").unwrap() + "name=\"csrf\" value=\"".len();
    let csrf = html[at..at + 64].to_string();
    let r = with(http.post(format!("{console}/tenants/acme/disable"))).form_body(&[]).send().await.unwrap();
    assert_eq!(r.status(), reqwest::StatusCode::FORBIDDEN);
    let r = with(http.post(format!("{console}/tenants/acme/disable"))).form_body(&[("csrf", &"0".repeat(64))]);
    assert_eq!(r.send().await.unwrap().status(), reqwest::StatusCode::FORBIDDEN);
    let r = with(http.post(format!("{console}/tenants"))).form_body(&[("name", "evil")]).send().await.unwrap();
    assert_eq!(r.status(), reqwest::StatusCode::FORBIDDEN);
    assert!(active().await, "nothing changed");
    assert!(!ferry_comms::db::tenant_exists(&c.comms.state.db, "evil").await.unwrap());
    // with it: done; a bad limit value and an unknown tenant are clear refusals
    let r = with(http.post(format!("{console}/tenants/acme/disable"))).form_body(&[("csrf", &csrf)]);
    assert_eq!(r.send().await.unwrap().status(), reqwest::StatusCode::SEE_OTHER);
    assert!(!active().await);
    let r = with(http.post(format!("{console}/tenants/acme/limits")))
        .form_body(&[("csrf", &csrf), ("max_files", "lots")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), reqwest::StatusCode::UNPROCESSABLE_ENTITY);
    assert!(r.text().await.unwrap().contains("max_files"));
    let r = with(http.post(format!("{console}/tenants/nobody/enable"))).form_body(&[("csrf", &csrf)]);
    assert_eq!(r.send().await.unwrap().status(), reqwest::StatusCode::NOT_FOUND);
    assert_eq!(with(http.get(format!("{console}/tenants/nobody"))).send().await.unwrap().status(), 404);

    // the admin API beside it still wants its bearer token
    let r = http.get(format!("https://{}/admin/v1/tenants", c.comms.admin_addr.unwrap())).send().await.unwrap();
    assert_eq!(r.status(), reqwest::StatusCode::UNAUTHORIZED);

    // an operator account: the one-time link sets the password once, then email + password log in
    let (email, token) =
        ferry_comms::console::operators::add(&c.comms.state.db, "Ops@Example.com", "test").await.unwrap();
    let r = http.get(format!("{console}/set-password?token={token}")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let set = async |t: &str| {
        http.post(format!("{console}/set-password"))
            .form_body(&[("token", t), ("password", PASSWORD), ("confirm", PASSWORD)])
            .send()
            .await
            .unwrap()
            .status()
    };
    assert_eq!(set(&token).await, reqwest::StatusCode::SEE_OTHER);
    assert_eq!(set(&token).await, reqwest::StatusCode::NOT_FOUND, "the link works once");
    let wrong = login(&http, &console, &[("email", &email), ("password", "wrong password")]).await;
    assert_eq!(wrong, Err(reqwest::StatusCode::UNAUTHORIZED));
    let ops = login(&http, &console, &[("email", "OPS@example.com"), ("password", PASSWORD)]).await.unwrap();
    let page = http.get(format!("{console}/audit")).header("cookie", format!("ferry_console={ops}"));
    let page = page.send().await.unwrap().text().await.unwrap();
    assert!(page.contains("ops@example.com") && page.contains("Chain verified"), "{page}");
    // repeated wrong passwords are limited
    let mut last = Ok(String::new());
    for _ in 0..6 {
        last = login(&http, &console, &[("email", &email), ("password", "wrong password")]).await;
    }
    assert_eq!(last, Err(reqwest::StatusCode::TOO_MANY_REQUESTS));
    c.stop().await;
}
