//! Plans a buyer reviews and releases (`ferry_app::release`) on a real instance database: supersession, edits and
//! rejections, one file per supplier and release published once, released quantities counted as on order until
//! the ERP's extract shows them (then the ERP's order counts, never both) or they expire, and the two policies.
//!
//! The instance: item A at L1 from supplier S1 and item B at L1 from S2, each selling 10 a day over a 10-day window
//! ending 2026-03-10, stock lead time 5 days, nothing on hand. Croston–SBA gives 9.5/day, σ = 0, so ROP = 47.5,
//! T = 9.5 · 12 = 114 and each plans 114 (`docs/planner.md`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use chrono::{Days, NaiveDate};
use ferry_app::instance::Instance;
use ferry_app::planner::PlanParams;
use ferry_app::release::{self, LineState, Policy, Rec, ReleaseError};
use sqlx::SqlitePool;
use tempfile::TempDir;

fn today() -> NaiveDate {
    NaiveDate::from_ymd_opt(2026, 3, 10).unwrap()
}

fn params(day: NaiveDate) -> PlanParams {
    PlanParams { history_days: 10, ..PlanParams::new(day) }
}

struct Fixture {
    _dir: TempDir,
    inst: Instance,
    sftp: PathBuf,
}

async fn fixture() -> Fixture {
    let dir = TempDir::new().unwrap();
    std::fs::create_dir_all(dir.path().join("instances")).unwrap();
    let inst = Instance::open(&dir.path().join("instances/acme.db")).await.unwrap();
    let pool = inst.pool();
    for (item, supplier) in [("A", "S1"), ("B", "S2")] {
        sqlx::query(
            "INSERT INTO stock (item, location, supplier, purchase_cost, on_hand, lead_time_days, supply_type)
             VALUES (?, 'L1', ?, '2.50', 0, '5', 'EX')",
        )
        .bind(item)
        .bind(supplier)
        .execute(pool)
        .await
        .unwrap();
        for d in 1..=10 {
            sqlx::query(
                "INSERT INTO sales (item, location, customer, invoice_date, qty) VALUES (?, 'L1', 'C', ?, '10')",
            )
            .bind(item)
            .bind(format!("2026-03-{d:02}"))
            .execute(pool)
            .await
            .unwrap();
        }
    }
    let sftp = dir.path().join("sftp");
    Fixture { _dir: dir, inst, sftp }
}

impl Fixture {
    async fn plan(&self, day: NaiveDate) -> (i64, Vec<Rec>) {
        let p = release::new_plan(&self.inst, &params(day), 0).await.unwrap();
        let lines = release::lines(&self.inst, p.id).await.unwrap();
        assert_eq!(p.lines, lines.len() as u64);
        (p.id, lines)
    }

    async fn release(&self, ids: &[i64], day: NaiveDate) -> Result<Vec<release::Release>, ReleaseError> {
        release::release(&self.inst, "acme", &self.sftp, ids, "buyer@acme", day).await
    }

    async fn outbox_files(&self) -> Vec<String> {
        let mut names: Vec<String> =
            ferry_app::outbox::receipts(&self.inst).await.unwrap().into_iter().map(|r| r.name).collect();
        names.sort();
        names
    }

    fn file(&self, r: &release::Release) -> String {
        let p = self.sftp.join("acme/outbox").join(&r.file_id).join(&r.file_name);
        std::fs::read_to_string(p).unwrap()
    }

    async fn on_order(&self, day: NaiveDate, expiry: u32) -> HashMap<(String, String), f64> {
        release::released_on_order(&self.inst, day, 7.0, expiry).await.unwrap()
    }

    fn pool(&self) -> &SqlitePool {
        self.inst.pool()
    }
}

fn key(item: &str) -> (String, String) {
    (item.to_string(), "L1".to_string())
}

fn find<'a>(lines: &'a [Rec], item: &str) -> &'a Rec {
    lines.iter().find(|l| l.item == item).unwrap_or_else(|| panic!("no line for {item}: {lines:#?}"))
}

async fn erp_po(pool: &SqlitePool, item: &str, supplier: &str, number: &str, date: &str, qty: &str) {
    sqlx::query(
        "INSERT INTO po (item, location, supplier, order_number, line, order_date, order_qty, expected_date,
                         outstanding_qty)
         VALUES (?, 'L1', ?, ?, '1', ?, ?, '2026-03-20', ?)",
    )
    .bind(item)
    .bind(supplier)
    .bind(number)
    .bind(date)
    .bind(qty)
    .bind(qty)
    .execute(pool)
    .await
    .unwrap();
}

#[tokio::test]
async fn a_new_plan_supersedes_the_unreleased_one_and_nothing_of_it_goes_down() {
    let f = fixture().await;
    assert_eq!(release::policy(&f.inst).await.unwrap(), Policy::Review, "review is the default");
    assert!(release::current_plan(&f.inst).await.unwrap().is_none());
    let (p1, old) = f.plan(today()).await;
    assert_eq!(old.len(), 2);
    let a = find(&old, "A");
    assert_eq!((a.supplier.as_str(), a.planned_qty, a.qty, a.state), ("S1", 114.0, 114.0, LineState::Proposed));
    assert!((a.reorder_point - 47.5).abs() < 1e-9 && (a.target - 114.0).abs() < 1e-9, "{a:?}");
    assert_eq!((a.position, a.released_on_order, a.lead_time_source.as_str()), (0.0, 0.0, "stock"));
    assert_eq!(a.due_date, today().checked_add_days(Days::new(5)).unwrap());

    let (p2, new) = f.plan(today()).await;
    assert!(p2 > p1);
    assert_eq!(release::current_plan(&f.inst).await.unwrap().unwrap().id, p2);
    // line ids are unique across plans
    assert!(new.iter().all(|n| old.iter().all(|o| o.id != n.id)));
    let old_now = release::lines(&f.inst, p1).await.unwrap();
    assert!(old_now.iter().all(|l| l.state == LineState::Superseded), "{old_now:?}");

    // nothing of the old plan can be edited, rejected or released, and no file is written
    let old_a = find(&old_now, "A").id;
    assert!(matches!(f.release(&[old_a], today()).await, Err(ReleaseError::Superseded)));
    assert!(matches!(release::set_qty(&f.inst, old_a, 5.0).await, Err(ReleaseError::Superseded)));
    assert!(matches!(release::reject(&f.inst, old_a).await, Err(ReleaseError::Superseded)));
    // one old line among current ones refuses the whole release
    let ids: Vec<i64> = new.iter().map(|l| l.id).chain([old_a]).collect();
    assert!(matches!(f.release(&ids, today()).await, Err(ReleaseError::Superseded)));
    assert!(matches!(f.release(&[i64::MAX], today()).await, Err(ReleaseError::NotFound)));
    assert!(matches!(f.release(&[], today()).await, Err(ReleaseError::NothingSelected)));
    assert!(f.outbox_files().await.is_empty());
    assert!(release::releases(&f.inst).await.unwrap().is_empty());
    assert!(release::lines(&f.inst, p2).await.unwrap().iter().all(|l| l.state == LineState::Proposed));
}

#[tokio::test]
async fn edited_quantities_go_down_once_per_supplier_and_are_not_recommended_again() {
    let f = fixture().await;
    let (p1, lines) = f.plan(today()).await;
    let (a, b) = (find(&lines, "A").id, find(&lines, "B").id);
    for bad in [0.0, -1.0, f64::NAN, f64::INFINITY, 1e13] {
        assert!(matches!(release::set_qty(&f.inst, a, bad).await, Err(ReleaseError::BadQty)), "{bad}");
    }
    release::set_qty(&f.inst, a, 120.0).await.unwrap();
    assert!(matches!(release::set_qty(&f.inst, 999_999, 1.0).await, Err(ReleaseError::NotFound)));

    let released = f.release(&[b, a, a], today()).await.unwrap();
    assert_eq!(released.len(), 2, "one release (and file) per supplier");
    assert_eq!(
        released.iter().map(|r| (r.supplier.as_str(), r.file_name.as_str(), r.lines)).collect::<Vec<_>>(),
        [("S1", "po_000001.csv", 1), ("S2", "po_000002.csv", 1)]
    );
    assert!(released.iter().all(|r| r.by == "buyer@acme" && !r.file_id.is_empty()));
    let text = f.file(&released[0]);
    let mut rows = text.lines();
    assert_eq!(rows.next(), Some("order_number,line,item,location,supplier,qty,unit_cost,order_date,due_date,comment"));
    let row = rows.next().unwrap();
    assert!(row.starts_with("REC-000001,1,A,L1,S1,120,2.50,2026/03/10,2026/03/15,"), "{row}");
    assert_eq!(rows.next(), None);
    assert_eq!(f.outbox_files().await, ["po_000001.csv", "po_000002.csv"]);

    // released lines cannot be touched again; nothing goes down twice
    assert!(matches!(f.release(&[a], today()).await, Err(ReleaseError::NotProposed)));
    assert!(matches!(release::set_qty(&f.inst, a, 5.0).await, Err(ReleaseError::NotProposed)));
    let now = release::lines(&f.inst, p1).await.unwrap();
    assert_eq!(find(&now, "A").state, LineState::Released);
    assert_eq!(find(&now, "A").release_id, Some(released[0].id));
    assert_eq!(find(&now, "A").qty, 120.0);
    assert_eq!(find(&now, "A").planned_qty, 114.0);

    // the next plans count the released quantities as on order: nothing is recommended again
    for _ in 0..3 {
        let (_, lines) = f.plan(today()).await;
        assert!(lines.is_empty(), "{lines:#?}");
    }
    assert_eq!(f.on_order(today(), 0).await, HashMap::from([(key("A"), 120.0), (key("B"), 114.0)]));
    assert_eq!(f.outbox_files().await.len(), 2);

    let listed = release::releases(&f.inst).await.unwrap();
    assert_eq!(listed.len(), 2);
    assert_eq!(listed[0].release.file_name, "po_000002.csv", "newest first");
    assert_eq!(listed[1].lines.len(), 1);
    assert_eq!(listed[1].lines[0].qty, 120.0);
    assert!(listed.iter().all(|r| r.file_state == "created" && r.delivered_at.is_none() && !r.seen_in_erp));
}

#[tokio::test]
async fn a_rejected_line_goes_nowhere_and_the_next_plan_may_recommend_it_again() {
    let f = fixture().await;
    let (p1, lines) = f.plan(today()).await;
    let (a, b) = (find(&lines, "A").id, find(&lines, "B").id);
    release::reject(&f.inst, b).await.unwrap();
    assert!(matches!(release::reject(&f.inst, b).await, Err(ReleaseError::NotProposed)));
    assert!(matches!(f.release(&[a, b], today()).await, Err(ReleaseError::NotProposed)));
    let r = f.release(&[a], today()).await.unwrap();
    assert_eq!(r.len(), 1);
    assert_eq!(
        release::lines(&f.inst, p1).await.unwrap().iter().map(|l| l.state).collect::<Vec<_>>(),
        [LineState::Released, LineState::Rejected]
    );
    // B was never released: still needed, so recommended again; A is on order
    let (_, lines) = f.plan(today()).await;
    assert_eq!(lines.iter().map(|l| l.item.as_str()).collect::<Vec<_>>(), ["B"]);
    assert_eq!(f.outbox_files().await, ["po_000001.csv"]);
}

#[tokio::test]
async fn a_released_line_counts_until_the_erp_shows_it_then_the_erp_order_counts_once() {
    let f = fixture().await;
    // An order of A the ERP already had on the release day (small, so the plan still orders): it was in the plan's
    // position already and must never consume the release.
    erp_po(f.pool(), "A", "S1", "PO-OLD", "2026-03-10", "4").await;
    let (_, lines) = f.plan(today()).await;
    let a = find(&lines, "A");
    assert_eq!((a.position, a.qty), (4.0, 110.0));
    f.release(&[a.id], today()).await.unwrap();
    let day2 = today().checked_add_days(Days::new(1)).unwrap();
    assert_eq!(f.on_order(day2, 0).await, HashMap::from([(key("A"), 110.0)]));
    // Backorders keep A recommended, so every plan below shows A's position: -1000 + 4 (PO-OLD) + 110 on order.
    sqlx::query("UPDATE stock SET allocated = '1000' WHERE item = 'A'").execute(f.pool()).await.unwrap();
    let position = async |day| {
        let (_, lines) = f.plan(day).await;
        let a = find(&lines, "A");
        (a.position, a.released_on_order)
    };
    assert_eq!(position(day2).await, (-886.0, 110.0));

    // The ERP shows part of the release: its order counts, the released quantity shrinks by as much.
    erp_po(f.pool(), "A", "S1", "PO-1", "2026-03-11", "60").await;
    assert_eq!(position(day2).await, (-886.0, 50.0), "no double count");
    assert_eq!(position(day2).await, (-886.0, 50.0), "PO-1 is not consumed twice");
    assert!(!release::releases(&f.inst).await.unwrap()[0].seen_in_erp, "partly matched is not seen");
    // Another supplier's order and one dated before the release do not match (they count as the ERP's own).
    erp_po(f.pool(), "A", "S2", "PO-X", "2026-03-11", "500").await;
    erp_po(f.pool(), "A", "S1", "PO-EARLY", "2026-03-09", "500").await;
    assert_eq!(f.on_order(day2, 0).await, HashMap::from([(key("A"), 50.0)]));
    sqlx::query("DELETE FROM po WHERE order_number IN ('PO-X', 'PO-EARLY')").execute(f.pool()).await.unwrap();

    // The rest arrives: the release is fully matched, seen in the ERP, and no longer counted.
    erp_po(f.pool(), "A", "S1", "PO-2", "2026-03-12", "50").await;
    assert_eq!(position(day2).await, (-886.0, 0.0));
    assert!(f.on_order(day2, 0).await.is_empty());
    let r = &release::releases(&f.inst).await.unwrap()[0];
    assert!(r.seen_in_erp, "{r:?}");

    // Once settled it stays settled: the orders are received and leave po.csv (the goods are on hand now).
    sqlx::query("DELETE FROM po").execute(f.pool()).await.unwrap();
    sqlx::query("UPDATE stock SET on_hand = '110' WHERE item = 'A'").execute(f.pool()).await.unwrap();
    assert!(f.on_order(day2, 0).await.is_empty());
    assert_eq!(position(day2).await, (-890.0, 0.0));
}

#[tokio::test]
async fn an_erp_order_line_consumes_releases_once_newest_release_first() {
    let f = fixture().await;
    let (_, lines) = f.plan(today()).await;
    let a = find(&lines, "A").id;
    release::set_qty(&f.inst, a, 30.0).await.unwrap();
    f.release(&[a], today()).await.unwrap();
    // a second release of A two days later (the buyer raised demand by hand: a later plan recommends again)
    let day3 = today().checked_add_days(Days::new(2)).unwrap();
    sqlx::query("UPDATE stock SET allocated = '200' WHERE item = 'A'").execute(f.pool()).await.unwrap();
    let (_, lines) = f.plan(day3).await;
    let a2 = find(&lines, "A");
    assert_eq!(a2.released_on_order, 30.0);
    release::set_qty(&f.inst, a2.id, 40.0).await.unwrap();
    f.release(&[a2.id], day3).await.unwrap();
    assert_eq!(f.on_order(day3, 0).await[&key("A")], 70.0);
    // One ERP line dated after both (50) serves the newer release (40) first, then 10 of the older one.
    erp_po(f.pool(), "A", "S1", "PO-9", "2026-03-12", "50").await;
    assert_eq!(f.on_order(day3, 0).await[&key("A")], 20.0);
    // An ERP line dated between the two can only serve the older release.
    erp_po(f.pool(), "A", "S1", "PO-8", "2026-03-11", "100").await;
    assert!(f.on_order(day3, 0).await.is_empty());
}

#[tokio::test]
async fn a_release_the_erp_never_shows_expires_after_lead_time_plus_review() {
    let f = fixture().await;
    let (_, lines) = f.plan(today()).await;
    f.release(&[find(&lines, "A").id], today()).await.unwrap();
    let day = |n: u64| today().checked_add_days(Days::new(n)).unwrap();
    // configured expiry: 3 days
    assert_eq!(f.on_order(day(2), 3).await.len(), 1);
    // default: lead time 5 + review 7 = 12 days
    assert_eq!(f.on_order(day(11), 0).await, HashMap::from([(key("A"), 114.0)]));
    assert!(f.on_order(day(12), 0).await.is_empty(), "expired");
    assert!(f.on_order(day(1), 0).await.is_empty(), "an expired release stays settled");
}

#[tokio::test]
async fn four_plans_with_no_erp_change_send_each_line_once_under_both_policies() {
    for policy in [Policy::Auto, Policy::Review] {
        let f = fixture().await;
        let dir = f.sftp.parent().unwrap().to_path_buf();
        let cfg = ferry_app::AppConfig { data_dir: dir.clone(), ..Default::default() };
        release::set_policy(&f.inst, policy).await.unwrap();
        assert_eq!(release::policy(&f.inst).await.unwrap(), policy);
        let mut sent = Vec::new();
        for round in 0..4 {
            let p = ferry_app::downstream::plan_and_publish(&cfg, &f.inst, "acme", today()).await.unwrap();
            assert_eq!(p.policy, policy);
            if round == 0 {
                assert_eq!(p.plan.lines, 2, "{policy}");
                if policy == Policy::Review {
                    assert!(p.released.is_empty(), "review releases nothing by itself");
                    let ids = release::proposed_ids(&f.inst, p.plan.id).await.unwrap();
                    sent.extend(f.release(&ids, today()).await.unwrap());
                } else {
                    sent.extend(p.released);
                }
            } else {
                assert_eq!(p.plan.lines, 0, "{policy} round {round}");
                assert!(p.released.is_empty());
            }
        }
        assert_eq!(sent.len(), 2);
        assert_eq!(f.outbox_files().await, ["po_000001.csv", "po_000002.csv"], "{policy}");
        let by: Vec<_> = release::releases(&f.inst).await.unwrap().into_iter().map(|r| r.release.by).collect();
        let want = if policy == Policy::Auto { "auto" } else { "buyer@acme" };
        assert!(by.iter().all(|b| b == want), "{by:?}");
        assert_outbox_under(&dir, &f.sftp);
    }
}

fn assert_outbox_under(data_dir: &Path, sftp: &Path) {
    assert_eq!(sftp, data_dir.join("sftp"));
    // the working files of a release never stay behind in the SFTP area
    let stray = walk(sftp)
        .into_iter()
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with('.'))
        .collect::<Vec<_>>();
    assert!(stray.is_empty(), "{stray:?}");
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[tokio::test]
async fn a_release_left_without_its_file_is_published_once_later() {
    let f = fixture().await;
    let (_, lines) = f.plan(today()).await;
    let r = f.release(&[find(&lines, "A").id], today()).await.unwrap();
    // A crash after publishing but before recording the file id: the outbox has it, the release does not.
    sqlx::query("UPDATE releases SET file_id = NULL").execute(f.pool()).await.unwrap();
    assert_eq!(release::releases(&f.inst).await.unwrap()[0].file_state, "pending");
    assert_eq!(release::publish_pending(&f.inst, "acme", &f.sftp).await.unwrap(), 1);
    assert_eq!(f.outbox_files().await, ["po_000001.csv"], "not published twice");
    assert_eq!(release::releases(&f.inst).await.unwrap()[0].release.file_id, r[0].file_id);
    // A crash before the file was written: the next release (or plan) writes and publishes it.
    let b = find(&lines, "B").id;
    sqlx::query(
        "INSERT INTO releases(supplier, seq, file_name, lines, order_date, created_at, released_by)
                 VALUES ('S2', 7, 'po_000007.csv', 1, '2026-03-10', '2026-03-10T00:00:00Z', 'x')",
    )
    .execute(f.pool())
    .await
    .unwrap();
    sqlx::query("UPDATE plan_lines SET state = 'released', release_id = (SELECT id FROM releases WHERE file_name = 'po_000007.csv') WHERE id = ?")
        .bind(b)
        .execute(f.pool())
        .await
        .unwrap();
    assert_eq!(release::publish_pending(&f.inst, "acme", &f.sftp).await.unwrap(), 1);
    assert_eq!(release::publish_pending(&f.inst, "acme", &f.sftp).await.unwrap(), 0);
    assert_eq!(f.outbox_files().await, ["po_000001.csv", "po_000007.csv"]);
    let r7 = release::releases(&f.inst).await.unwrap().into_iter().find(|r| r.release.file_name == "po_000007.csv");
    assert!(f.file(&r7.unwrap().release).contains("REC-000007,1,B,L1,S2,114,"));
}
