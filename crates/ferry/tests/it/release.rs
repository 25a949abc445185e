//! Plans a buyer reviews and releases, end to end on real servers (`ferry_app::release`): repeated syncs with no
//! change in the ERP send each recommended line to the ERP once under both policies; a plan that supersedes an
//! unreleased one lets nothing of it go down; a released line counts as on order until the ERP's own extract shows
//! it, then the ERP's order counts instead (never both).

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::common::*;
use ferry::cluster::Cluster;
use ferry_app::release::{self, LineState, PlanInfo, Policy, ReleaseError};
use ferry_app::server::SharedInstance;
use ferry_connector::agent::Connector;
use ferry_connector::receive::Outcome;
use ferry_proto::api::BatchState;
use ferry_sample::{SampleSize, generate_sample_erp};
use sqlx::Connection;

struct Setup {
    _dir: tempfile::TempDir,
    c: Cluster,
    conn: Connector,
    inst: SharedInstance,
    erp: std::path::PathBuf,
}

async fn setup(policy: Option<Policy>) -> Setup {
    let (dir, c) = cluster().await;
    let erp = dir.path().join("erp.db");
    generate_sample_erp(&erp, SampleSize::Small).await.unwrap();
    let token = c.add_tenant("acme").await.unwrap();
    let inst = c.app.state.instance("acme").await.unwrap().unwrap();
    assert_eq!(release::policy(&inst.0).await.unwrap(), Policy::Review, "a new tenant reviews");
    if let Some(p) = policy {
        release::set_policy(&inst.0, p).await.unwrap();
    }
    let conn = c.connector_with_write_back("acme", &erp, &token).await.unwrap();
    Setup { _dir: dir, c, conn, inst, erp }
}

impl Setup {
    /// Sync (upstream) and wait for the plan the App makes after the import.
    async fn sync_and_plan(&self) -> PlanInfo {
        let before = release::current_plan(&self.inst.0).await.unwrap().map_or(0, |p| p.id);
        let r = self.conn.sync(&quiet).await.unwrap();
        assert_eq!(r.status.state, BatchState::Imported);
        let mut plan = None;
        let planned = async || {
            plan = release::current_plan(&self.inst.0).await.unwrap().filter(|p| p.id > before);
            plan.is_some()
        };
        assert!(eventually(Duration::from_secs(60), planned).await.is_some(), "no plan after the import");
        let plan = plan.unwrap();
        // under `auto` the release follows the plan in the same task, after the plan is committed: wait until no
        // line of it is still proposed and every release has its file
        let auto = release::policy(&self.inst.0).await.unwrap() == Policy::Auto;
        let settled = async || {
            let proposed = if auto { release::proposed_ids(&self.inst.0, plan.id).await.unwrap().len() } else { 0 };
            proposed == 0
                && release::releases(&self.inst.0).await.unwrap().iter().all(|r| !r.release.file_id.is_empty())
        };
        assert!(eventually(Duration::from_secs(30), settled).await.is_some(), "the automatic release did not settle");
        plan
    }

    async fn release(&self, ids: &[i64]) -> Result<Vec<release::Release>, ReleaseError> {
        let today = chrono::Utc::now().date_naive();
        let r = release::release(&self.inst.0, "acme", &self.c.app.state.sftp_root(), ids, "buyer@acme", today).await;
        self.c.app.state.announce_wakeup.notify_one();
        r
    }

    async fn outbox(&self) -> usize {
        ferry_app::outbox::receipts(&self.inst.0).await.unwrap().len()
    }

    /// Receive until `n` files in all were applied to the ERP (or a minute passed); then check nothing more comes.
    async fn receive_all(&self, n: usize) -> usize {
        let t = Instant::now();
        let mut applied = 0;
        while applied < n && t.elapsed() < Duration::from_secs(60) {
            let out = self.conn.receive(5, &quiet).await.unwrap();
            applied += out.iter().filter(|o| matches!(o, Outcome::Applied { .. })).count();
        }
        let more = self.conn.receive(1, &quiet).await.unwrap();
        assert!(more.is_empty(), "more files than released: {more:?}");
        applied
    }

    fn inbound_files(&self) -> BTreeSet<String> {
        let dir = self.conn.cfg.base.join("from_cloud");
        std::fs::read_dir(dir)
            .map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
            .unwrap_or_default()
    }

    async fn erp_orders(&self) -> (i64, i64) {
        erp_orders(&self.erp).await
    }
}

/// (order lines in the ERP's `recommended_orders`, item x locations that appear more than once there)
async fn erp_orders(erp: &Path) -> (i64, i64) {
    let mut db = sqlx::SqliteConnection::connect(&format!("sqlite:{}", erp.display())).await.unwrap();
    let lines = sqlx::query_scalar("SELECT COUNT(*) FROM recommended_orders").fetch_one(&mut db).await.unwrap();
    let repeated = sqlx::query_scalar(
        "SELECT COUNT(*) FROM (SELECT item, location FROM recommended_orders GROUP BY item, location HAVING COUNT(*) > 1)",
    )
    .fetch_one(&mut db)
    .await
    .unwrap();
    (lines, repeated)
}

/// Four syncs with no change in the ERP: the first plan goes down (released by a buyer under `review`, by itself
/// under `auto`), the three later plans recommend nothing, and the ERP holds each line once.
async fn four_syncs(policy: Policy) {
    let s = setup(Some(policy)).await;
    let first = s.sync_and_plan().await;
    assert!(first.lines > 0, "the sample ERP gives recommendations");
    let lines = release::lines(&s.inst.0, first.id).await.unwrap();
    let suppliers = lines.iter().map(|l| &l.supplier).collect::<BTreeSet<_>>().len();
    match policy {
        Policy::Review => {
            assert_eq!(s.outbox().await, 0, "nothing goes down before a buyer releases");
            assert!(lines.iter().all(|l| l.state == LineState::Proposed));
            let ids: Vec<i64> = lines.iter().map(|l| l.id).collect();
            assert_eq!(s.release(&ids).await.unwrap().len(), suppliers);
        }
        Policy::Auto => {
            let lines = release::lines(&s.inst.0, first.id).await.unwrap();
            assert!(lines.iter().all(|l| l.state == LineState::Released), "auto released every line");
        }
    }
    assert_eq!(s.outbox().await, suppliers);
    assert_eq!(s.receive_all(suppliers).await, suppliers);
    assert_eq!(s.erp_orders().await, (first.lines as i64, 0));

    for round in 2..=4 {
        let plan = s.sync_and_plan().await;
        let recs = release::lines(&s.inst.0, plan.id).await.unwrap();
        assert_eq!(plan.lines, 0, "{policy} sync {round} recommended again: {recs:#?}");
    }
    assert_eq!(s.outbox().await, suppliers, "{policy}: no file after the first plan's");
    assert_eq!(s.receive_all(0).await, 0);
    assert_eq!(s.inbound_files().len(), suppliers);
    assert_eq!(s.erp_orders().await, (first.lines as i64, 0), "{policy}: each line once in the ERP");
    s.c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn four_syncs_without_erp_change_send_each_line_once_under_review() {
    four_syncs(Policy::Review).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn four_syncs_without_erp_change_send_each_line_once_under_auto() {
    four_syncs(Policy::Auto).await;
}

/// A plan superseded before anyone released it: none of its lines can go down; the current plan's can, with the
/// buyer's edited quantity, one supplier at a time.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nothing_of_a_superseded_plan_goes_down() {
    let s = setup(None).await;
    let old = s.sync_and_plan().await;
    let new = s.sync_and_plan().await;
    assert!(new.id > old.id && new.lines == old.lines && old.lines > 0);
    let old_lines = release::lines(&s.inst.0, old.id).await.unwrap();
    assert!(old_lines.iter().all(|l| l.state == LineState::Superseded));
    let old_ids: Vec<i64> = old_lines.iter().map(|l| l.id).collect();
    assert!(matches!(s.release(&old_ids).await, Err(ReleaseError::Superseded)));
    assert!(matches!(s.release(&old_ids[..1]).await, Err(ReleaseError::Superseded)));
    assert!(matches!(release::set_qty(&s.inst.0, old_ids[0], 7.0).await, Err(ReleaseError::Superseded)));
    assert_eq!(s.outbox().await, 0);
    assert!(s.conn.receive(1, &quiet).await.unwrap().is_empty());
    assert_eq!(s.erp_orders().await, (0, 0));

    // The current plan: edit one line of the first supplier, release that supplier only.
    let lines = release::lines(&s.inst.0, new.id).await.unwrap();
    let supplier = lines[0].supplier.clone();
    let group: Vec<_> = lines.iter().filter(|l| l.supplier == supplier).collect();
    let edited = group[0];
    let qty = edited.planned_qty + 13.0;
    release::set_qty(&s.inst.0, edited.id, qty).await.unwrap();
    let released = s.release(&group.iter().map(|l| l.id).collect::<Vec<_>>()).await.unwrap();
    assert_eq!(released.len(), 1);
    assert_eq!(s.receive_all(1).await, 1);
    let text = std::fs::read_to_string(s.conn.cfg.base.join("from_cloud").join(&released[0].file_name)).unwrap();
    let row = text.lines().find(|r| r.contains(&format!(",{},{},{},", edited.item, edited.location, supplier)));
    let row = row.unwrap_or_else(|| panic!("{} not in {text}", edited.item));
    assert!(row.contains(&format!(",{},", ferry_app::planner::fmt_num(qty, 6))), "{row}");
    assert_eq!(s.erp_orders().await, (group.len() as i64, 0));
    // the other suppliers' lines stay proposed; the old plan's stay superseded
    let after = release::lines(&s.inst.0, new.id).await.unwrap();
    assert!(after.iter().all(|l| (l.supplier == supplier) == (l.state == LineState::Released)));
    let old_after = release::lines(&s.inst.0, old.id).await.unwrap();
    assert!(old_after.iter().all(|l| l.state == LineState::Superseded));
    s.c.stop().await;
}

/// A released line counts as on order until the ERP's extract shows it as an open purchase order; from then on
/// the ERP's order counts and the release no longer does (no double count); lines the ERP does not show yet still
/// count. Nothing is recommended again either way.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_released_line_counts_until_the_erp_shows_it_then_the_erps_order_counts() {
    let s = setup(None).await;
    let plan = s.sync_and_plan().await;
    let lines = release::lines(&s.inst.0, plan.id).await.unwrap();
    let ids: Vec<i64> = lines.iter().map(|l| l.id).collect();
    let released = s.release(&ids).await.unwrap();
    let n = released.len();
    assert_eq!(s.receive_all(n).await, n);

    // The ERP's buyer turns the first release into a purchase order (its own number, dated today).
    let first = &release::releases(&s.inst.0).await.unwrap().into_iter().find(|r| r.release.id == released[0].id);
    let first = first.as_ref().unwrap();
    let today = chrono::Utc::now().date_naive().format("%Y-%m-%d").to_string();
    let mut db = sqlx::SqliteConnection::connect(&format!("sqlite:{}", s.erp.display())).await.unwrap();
    for (i, l) in first.lines.iter().enumerate() {
        let po = format!("ERP-{i}");
        sqlx::query(
            "INSERT INTO purchase_orders (po_no, vendor_no, wh_code, order_date, status) VALUES (?, ?, ?, ?, 'OPEN')",
        )
        .bind(&po)
        .bind(&l.supplier)
        .bind(&l.location)
        .bind(&today)
        .execute(&mut db)
        .await
        .unwrap();
        sqlx::query(
            "INSERT INTO po_lines (po_no, line_no, sku, qty_ordered, qty_received, unit_cost, due_date)
             VALUES (?, 1, ?, ?, 0, 1.0, ?)",
        )
        .bind(&po)
        .bind(&l.item)
        .bind(l.qty)
        .bind(l.due_date.format("%Y-%m-%d").to_string())
        .execute(&mut db)
        .await
        .unwrap();
    }
    db.close().await.unwrap();
    let shown: BTreeSet<(String, String)> = first.lines.iter().map(|l| (l.item.clone(), l.location.clone())).collect();

    let after = s.sync_and_plan().await;
    assert_eq!(after.lines, 0, "{:#?}", release::lines(&s.inst.0, after.id).await.unwrap());
    let listed = release::releases(&s.inst.0).await.unwrap();
    for r in &listed {
        assert_eq!(r.seen_in_erp, r.release.id == first.release.id, "{}", r.release.file_name);
    }
    let delivered = async || {
        let listed = release::releases(&s.inst.0).await.unwrap();
        listed.iter().all(|r| r.file_state == "delivered" && r.delivered_at.is_some())
    };
    assert!(eventually(Duration::from_secs(30), delivered).await.is_some(), "the App never saw the files delivered");
    // What still counts as released: every line except the ones the ERP now shows (its po.csv carries those).
    let today = chrono::Utc::now().date_naive();
    let on_order = release::released_on_order(&s.inst.0, today, 7.0, 0).await.unwrap();
    let all: BTreeSet<(String, String)> = lines.iter().map(|l| (l.item.clone(), l.location.clone())).collect();
    let open: BTreeSet<(String, String)> = on_order.keys().cloned().collect();
    assert_eq!(open, all.difference(&shown).cloned().collect::<BTreeSet<_>>());
    // The instance's po table holds the ERP's orders for the shown lines: they carry the position now.
    for (item, location) in &shown {
        let n: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM po WHERE item = ? AND location = ? AND order_number LIKE 'ERP-%'")
                .bind(item)
                .bind(location)
                .fetch_one(s.inst.0.pool())
                .await
                .unwrap();
        assert_eq!(n, 1, "{item} at {location}");
    }
    assert_eq!(s.outbox().await, n, "nothing more went down");
    assert_eq!(s.erp_orders().await, (plan.lines as i64, 0));
    s.c.stop().await;
}
