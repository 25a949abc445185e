//! The buyer's web page on real servers: a real headless Chromium logs in, sees the plan, opens an item's chart,
//! changes a quantity and releases one supplier, and the Connector receives that file with the edited quantity
//! (screenshots of every page under the test's work folder). And the refusals, over plain HTTPS: a wrong
//! password, a session of one tenant asking for another's item, line or release, a form without (or with a wrong)
//! CSRF token.

use std::time::Duration;

use crate::browser::{Browser, spki_pin};
use crate::common::*;
use fantoccini::Locator;
use ferry::cluster::Cluster;
use ferry_app::release::{self, LineState};
use ferry_app::web::users::Users;
use ferry_connector::receive::Outcome;
use ferry_proto::api::BatchState;
use ferry_sample::{SampleSize, generate_sample_erp};

const PASSWORD: &str = "correct horse battery staple";

/// A tenant with the sample ERP synced once (so it has a plan, policy `review`) and its connector.
async fn synced_tenant(
    c: &Cluster,
    tenant: &str,
) -> (ferry_connector::agent::Connector, ferry_app::server::SharedInstance) {
    let erp = c.dir.join(format!("{tenant}-erp.db"));
    generate_sample_erp(&erp, SampleSize::Small).await.unwrap();
    let token = c.add_tenant(tenant).await.unwrap();
    let conn = c.connector_with_write_back(tenant, &erp, &token).await.unwrap();
    let r = conn.sync(&quiet).await.unwrap();
    assert_eq!(r.status.state, BatchState::Imported);
    let inst = c.app.state.instance(tenant).await.unwrap().unwrap();
    let planned = async || release::current_plan(&inst.0).await.unwrap().is_some_and(|p| p.lines > 0);
    assert!(eventually(Duration::from_secs(60), planned).await.is_some(), "no plan after the import");
    (conn, inst)
}

/// A user of `tenant` with [`PASSWORD`] set (through the store, as the set-password page does).
async fn user(c: &Cluster, tenant: &str, email: &str) -> String {
    let users = Users::open(&c.app.state.cfg.data_dir).await.unwrap();
    let token = users.add(tenant, email).await.unwrap();
    users.close().await;
    token
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_buyer_reviews_edits_and_releases_in_a_real_browser_and_the_erp_receives_the_edit() {
    let (dir, c) = cluster().await;
    let Some(b) = Browser::start(dir.path(), &[spki_pin(&c.app.state.identity.tls.key_pem)]).await else {
        c.stop().await;
        return;
    };
    let (conn, inst) = synced_tenant(&c, "acme").await;
    let web = c.app.web_url().unwrap();
    let token = user(&c, "acme", "buyer@acme.example").await;
    let text = async |css: &str| b.client.find(Locator::Css(css)).await.unwrap().text().await.unwrap();

    // set the password through the one-time link, then log in
    b.client.goto(&format!("{web}/set-password?token={token}")).await.unwrap();
    b.client.find(Locator::Id("password")).await.unwrap().send_keys(PASSWORD).await.unwrap();
    b.client.find(Locator::Id("confirm")).await.unwrap().send_keys(PASSWORD).await.unwrap();
    b.screenshot("set-password").await;
    b.client.find(Locator::Id("set")).await.unwrap().click().await.unwrap();
    b.wait_for_path("/login").await;
    b.client.find(Locator::Id("email")).await.unwrap().send_keys("buyer@acme.example").await.unwrap();
    b.client.find(Locator::Id("password")).await.unwrap().send_keys(PASSWORD).await.unwrap();
    b.screenshot("login").await;
    b.client.find(Locator::Id("login")).await.unwrap().click().await.unwrap();
    b.wait_for_path("/plan").await;

    // the plan: every line of the first supplier is on the page, with the tenant and its policy
    let plan = release::current_plan(&inst.0).await.unwrap().unwrap();
    let lines = release::lines(&inst.0, plan.id).await.unwrap();
    let supplier = lines[0].supplier.clone();
    let of_supplier: Vec<_> = lines.iter().filter(|l| l.supplier == supplier).collect();
    assert!(text("#policy").await.contains("review"));
    assert!(text("#tenant").await.contains("acme"));
    for l in &of_supplier {
        let row = text(&format!("#line-{}", l.id)).await;
        assert!(row.contains(&l.item) && row.contains("reorder point"), "{row}");
    }
    b.screenshot("plan").await;
    b.resize(820, 1180).await;
    b.screenshot("plan-tablet").await;
    b.resize(1280, 900).await;

    // an item's chart: the SVG with each of its series
    let line = of_supplier[0];
    b.client.find(Locator::Css(&format!("#line-{} a.chart", line.id))).await.unwrap().click().await.unwrap();
    b.wait_for_path("/item").await;
    for series in ["demand", "rate", "safety-stock", "reorder-point", "position", "open-orders"] {
        let label = b.client.find(Locator::Css(&format!("svg#chart g#series-{series} text"))).await.unwrap();
        assert!(label.is_displayed().await.unwrap(), "the {series} label is drawn");
    }
    let points = b.client.find(Locator::Css("g#series-demand polyline")).await.unwrap().attr("points").await.unwrap();
    assert_eq!(points.unwrap().split(' ').count(), 104, "two years of weeks");
    b.screenshot("chart").await;

    // change the quantity of that line
    b.client.goto(&format!("{web}/plan")).await.unwrap();
    let qty = b.client.find(Locator::Id(&format!("qty-{}", line.id))).await.unwrap();
    qty.clear().await.unwrap();
    qty.send_keys("123").await.unwrap();
    b.client.find(Locator::Css(&format!("#line-{} form.qty button", line.id))).await.unwrap().click().await.unwrap();
    b.wait_for_path("/plan").await;
    let saved = async || {
        let l = release::lines(&inst.0, plan.id).await.unwrap();
        l.iter().any(|l| l.id == line.id && l.qty == 123.0)
    };
    assert!(eventually(Duration::from_secs(10), saved).await.is_some());
    let edited = release::lines(&inst.0, plan.id).await.unwrap().into_iter().find(|l| l.id == line.id).unwrap();
    assert_eq!(edited.qty, 123.0);
    assert!(text(&format!("#line-{}", line.id)).await.contains("planned"), "the planned quantity is shown too");

    // release the whole supplier
    let button = format!("button.release-supplier[data-supplier=\"{supplier}\"]");
    b.client.find(Locator::Css(&button)).await.unwrap().click().await.unwrap();
    b.wait_for_path("/releases").await;
    let released = release::releases(&inst.0).await.unwrap();
    assert_eq!(released.len(), 1);
    let file_name = released[0].release.file_name.clone();
    assert_eq!(released[0].lines.len(), of_supplier.len());
    assert!(text("#releases").await.contains(&file_name));
    b.screenshot("releases").await;

    // the Connector receives exactly that file, with the edited quantity
    let mut applied = Vec::new();
    let t = std::time::Instant::now();
    while applied.is_empty() && t.elapsed() < Duration::from_secs(60) {
        applied.extend(
            conn.receive(5, &quiet).await.unwrap().into_iter().filter(|o| matches!(o, Outcome::Applied { .. })),
        );
    }
    assert_eq!(applied.len(), 1, "{applied:?}");
    let delivered = std::fs::read_to_string(conn.cfg.base.join("from_cloud").join(&file_name)).unwrap();
    let mut rd = csv::ReaderBuilder::new().from_reader(delivered.as_bytes());
    let rows: Vec<csv::StringRecord> = rd.records().map(|r| r.unwrap()).collect();
    assert_eq!(rows.len(), of_supplier.len());
    let row = rows.iter().find(|r| &r[2] == line.item.as_str() && &r[3] == line.location.as_str()).unwrap();
    assert_eq!(&row[5], "123", "{row:?}");
    assert!(rows.iter().all(|r| &r[4] == supplier.as_str()));
    // nothing else went down: the other suppliers wait for review
    assert!(conn.receive(0, &quiet).await.unwrap().is_empty());

    // the receipts reach "delivered at"
    let delivered = async || {
        b.client.goto(&format!("{web}/releases")).await.unwrap();
        text("#releases").await.contains("delivered at")
    };
    assert!(eventually(Duration::from_secs(30), delivered).await.is_some(), "{}", text("#releases").await);
    b.screenshot("releases-delivered").await;
    b.client.find(Locator::Css("#releases a")).await.unwrap().click().await.unwrap();
    b.wait_for_path(&format!("/releases/{}", released[0].release.id)).await;
    b.screenshot("release").await;

    // log out: the plan asks for a login again
    b.client.goto(&format!("{web}/plan")).await.unwrap();
    b.client.find(Locator::Css("form[action=\"/logout\"] button")).await.unwrap().click().await.unwrap();
    b.wait_for_path("/login").await;
    b.client.goto(&format!("{web}/plan")).await.unwrap();
    b.wait_for_path("/login").await;
    b.close().await;
    c.stop().await;
}

/// `.form(...)` without reqwest's `form` feature: an urlencoded body.
pub(crate) trait FormBody {
    fn form_body(self, pairs: &[(&str, &str)]) -> Self;
}

impl FormBody for reqwest::RequestBuilder {
    fn form_body(self, pairs: &[(&str, &str)]) -> Self {
        let body = url::form_urlencoded::Serializer::new(String::new()).extend_pairs(pairs).finish();
        self.header("content-type", "application/x-www-form-urlencoded").body(body)
    }
}

/// An HTTPS client pinned to the App's certificate, with its own cookies kept by hand, no redirects followed.
fn client(c: &Cluster) -> reqwest::Client {
    reqwest::Client::builder()
        .tls_backend_preconfigured(ferry_io::tls::client_config(Some(&c.app.state.identity.tls_fingerprint)).unwrap())
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

pub(crate) fn set_cookie(resp: &reqwest::Response, name: &str) -> Option<String> {
    resp.headers()
        .get_all(reqwest::header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with(&format!("{name}=")))
        .map(str::to_string)
}

pub(crate) fn cookie_value(set_cookie: &str) -> String {
    set_cookie.split(';').next().unwrap().split_once('=').unwrap().1.to_string()
}

/// Log in over HTTP: returns the session cookie value, or the refusal's status.
async fn login(http: &reqwest::Client, web: &str, email: &str, password: &str) -> Result<String, reqwest::StatusCode> {
    let page = http.get(format!("{web}/login")).send().await.unwrap();
    let pre = cookie_value(&set_cookie(&page, "ferry_login").unwrap());
    let resp = http
        .post(format!("{web}/login"))
        .header("cookie", format!("ferry_login={pre}"))
        .form_body(&[("csrf", pre.as_str()), ("email", email), ("password", password)])
        .send()
        .await
        .unwrap();
    if resp.status() != reqwest::StatusCode::SEE_OTHER {
        assert!(set_cookie(&resp, "ferry_session").is_none());
        return Err(resp.status());
    }
    let c = set_cookie(&resp, "ferry_session").unwrap();
    for attr in ["HttpOnly", "Secure", "SameSite=Strict"] {
        assert!(c.contains(attr), "{c}");
    }
    Ok(cookie_value(&c))
}

/// The session's CSRF token, from a page's logout form.
async fn csrf(http: &reqwest::Client, web: &str, session: &str) -> String {
    let html =
        http.get(format!("{web}/plan")).header("cookie", format!("ferry_session={session}")).send().await.unwrap();
    let html = html.text().await.unwrap();
    let at = html.find("name=\"csrf\" value=\"").unwrap() + "name=\"csrf\" value=\"".len();
    html[at..at + 64].to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_page_refuses_wrong_passwords_other_tenants_and_forms_without_their_token() {
    let (_dir, c) = cluster().await;
    let (_conn, inst_b) = synced_tenant(&c, "bravo").await;
    tenant(&c, "alpha").await; // an instance of its own, no plan
    let web = c.app.web_url().unwrap();
    let http = client(&c);
    for (t, email) in [("alpha", "a@alpha.example"), ("bravo", "b@bravo.example")] {
        let token = user(&c, t, email).await;
        let r = http
            .post(format!("{web}/set-password"))
            .form_body(&[("token", token.as_str()), ("password", PASSWORD), ("confirm", PASSWORD)])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), reqwest::StatusCode::SEE_OTHER);
        // the link works once
        let again = http
            .post(format!("{web}/set-password"))
            .form_body(&[("token", token.as_str()), ("password", "another password"), ("confirm", "another password")])
            .send()
            .await
            .unwrap();
        assert_eq!(again.status(), reqwest::StatusCode::NOT_FOUND);
    }

    // a wrong password, an unknown user: refused, no session
    assert_eq!(login(&http, &web, "a@alpha.example", "wrong password").await, Err(reqwest::StatusCode::UNAUTHORIZED));
    assert_eq!(login(&http, &web, "nobody@alpha.example", PASSWORD).await, Err(reqwest::StatusCode::UNAUTHORIZED));
    // a login form without its token
    let r = http
        .post(format!("{web}/login"))
        .form_body(&[("email", "a@alpha.example"), ("password", PASSWORD)])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), reqwest::StatusCode::FORBIDDEN);
    // no session: pages send to the login, actions are refused
    let r = http.get(format!("{web}/plan")).send().await.unwrap();
    assert_eq!(r.status(), reqwest::StatusCode::SEE_OTHER);
    assert_eq!(r.headers()["location"], "/login");
    let r = http.post(format!("{web}/release-supplier")).form_body(&[("supplier", "x")]).send().await.unwrap();
    assert_eq!(r.status(), reqwest::StatusCode::UNAUTHORIZED);

    let a = login(&http, &web, "a@alpha.example", PASSWORD).await.unwrap();
    let b = login(&http, &web, "b@bravo.example", PASSWORD).await.unwrap();
    let a_csrf = csrf(&http, &web, &a).await;
    let b_csrf = csrf(&http, &web, &b).await;
    let as_a = |req: reqwest::RequestBuilder| req.header("cookie", format!("ferry_session={a}"));
    let as_b = |req: reqwest::RequestBuilder| req.header("cookie", format!("ferry_session={b}"));

    // bravo's plan, one release
    let plan = release::current_plan(&inst_b.0).await.unwrap().unwrap();
    let lines = release::lines(&inst_b.0, plan.id).await.unwrap();
    let (line, other) = (&lines[0], &lines[lines.len() - 1]);
    let rel = release::release(
        &inst_b.0,
        "bravo",
        &c.app.state.sftp_root(),
        &[other.id],
        "test",
        chrono::Utc::now().date_naive(),
    )
    .await
    .unwrap();
    let query = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("item", &line.item)
        .append_pair("location", &line.location)
        .finish();
    let item_url = format!("{web}/item?{query}");
    let r = as_b(http.get(&item_url)).send().await.unwrap();
    assert_eq!(r.status(), reqwest::StatusCode::OK);
    assert!(r.text().await.unwrap().contains("id=\"series-demand\""));
    assert_eq!(as_b(http.get(format!("{web}/releases/{}", rel[0].id))).send().await.unwrap().status(), 200);

    // alpha asks for bravo's item, line and release: none of it exists for alpha
    assert_eq!(as_a(http.get(&item_url)).send().await.unwrap().status(), reqwest::StatusCode::NOT_FOUND);
    assert_eq!(as_a(http.get(format!("{web}/releases/{}", rel[0].id))).send().await.unwrap().status(), 404);
    let plan_a = as_a(http.get(format!("{web}/plan"))).send().await.unwrap().text().await.unwrap();
    assert!(!plan_a.contains(&line.item) && plan_a.contains("No plan yet"), "alpha sees no line of bravo");
    let r = as_a(http.post(format!("{web}/lines/{}/qty", line.id)))
        .form_body(&[("csrf", a_csrf.as_str()), ("qty", "999")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), reqwest::StatusCode::NOT_FOUND);
    let r = as_a(http.post(format!("{web}/lines/{}/reject", line.id)))
        .form_body(&[("csrf", a_csrf.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), reqwest::StatusCode::NOT_FOUND);
    let r = as_a(http.post(format!("{web}/release")))
        .form_body(&[("csrf", a_csrf.as_str()), ("line", line.id.to_string().as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), reqwest::StatusCode::NOT_FOUND);
    // a tenant name in the form or query changes nothing: the session decides
    let r = as_a(http.post(format!("{web}/release-supplier?tenant=bravo")))
        .form_body(&[("csrf", a_csrf.as_str()), ("supplier", line.supplier.as_str()), ("tenant", "bravo")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), reqwest::StatusCode::UNPROCESSABLE_ENTITY);
    // alpha's token does not work with bravo's session either
    let r = as_b(http.post(format!("{web}/lines/{}/qty", line.id)))
        .form_body(&[("csrf", a_csrf.as_str()), ("qty", "999")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), reqwest::StatusCode::FORBIDDEN);

    // bravo's own forms without (or with a wrong) token: refused
    let r = as_b(http.post(format!("{web}/lines/{}/qty", line.id))).form_body(&[("qty", "999")]).send().await.unwrap();
    assert_eq!(r.status(), reqwest::StatusCode::FORBIDDEN);
    let r = as_b(http.post(format!("{web}/release-supplier")))
        .form_body(&[("supplier", line.supplier.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), reqwest::StatusCode::FORBIDDEN);
    let r = as_b(http.post(format!("{web}/lines/{}/reject", line.id)))
        .form_body(&[("csrf", "0".repeat(64).as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), reqwest::StatusCode::FORBIDDEN);
    let after = release::lines(&inst_b.0, plan.id).await.unwrap();
    let unchanged = after.iter().find(|l| l.id == line.id).unwrap();
    assert_eq!((unchanged.qty, unchanged.state), (line.qty, LineState::Proposed), "nothing changed bravo's line");
    assert_eq!(release::releases(&inst_b.0).await.unwrap().len(), 1);

    // with its token, bravo's own change goes through
    let r = as_b(http.post(format!("{web}/lines/{}/qty", line.id)))
        .form_body(&[("csrf", b_csrf.as_str()), ("qty", "7")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), reqwest::StatusCode::SEE_OTHER);
    let after = release::lines(&inst_b.0, plan.id).await.unwrap();
    assert_eq!(after.iter().find(|l| l.id == line.id).unwrap().qty, 7.0);

    // repeated wrong passwords are limited
    let mut last = Err(reqwest::StatusCode::OK);
    for _ in 0..6 {
        last = login(&http, &web, "b@bravo.example", "wrong password").await;
    }
    assert_eq!(last, Err(reqwest::StatusCode::TOO_MANY_REQUESTS));
    c.stop().await;
}
