//! Every tricky value kind an ERP database returns reaches the App's instance exactly, end to end (extract, CSV,
//! bzip2, SFTP, relay, the App's verified import) against real servers on 127.0.0.1: integers, floats with
//! binary noise, exact decimals beyond a float's precision, decimals stored as text (with redundant zeros), dates
//! stored as text, as `YYYYMMDD` integers and as timestamps, NULL, text with commas, quotes, line breaks and
//! non-ASCII, and a Windows-1252 column (`[erp] encoding`). How each backend decodes its own types into these
//! values (PostgreSQL NUMERIC/DATE/BOOLEAN, MariaDB DECIMAL/DATETIME, ODBC) is proved byte for byte in
//! `ferry-connector/tests/it/erp_sources.rs` and `odbc_csv.rs`.

use crate::common::*;
use ferry_proto::api::BatchState;

/// A table without column types (SQLite keeps each value as inserted) holding one tricky value per cell.
const TRICKY: &str = r#"
CREATE TABLE tricky (item, descr, vol, weight, added, cost, pcost, price, on_hand, alloc, factor);
INSERT INTO tricky VALUES
 ('T-1', 'Bolt, 10 "mm" — Café', 1.5, '012.3400', '2026-02-28', '123456789012.3456', 0.1 + 0.2, NULL, 7, '2.50', 1),
 ('T-2', 'line' || char(10) || 'break  ', 3, NULL, 20260228, 5, '0.0001', -5.5, 0, NULL, 0),
 ('T-3', X'436166E920809394', NULL, 1e-7, '2026-02-27 13:45:00', '-0.0', 2.0, '1000000', -3, 0.5, NULL);
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tricky_values_reach_the_instance_exactly() {
    let (dir, c) = cluster().await;
    let erp = dir.path().join("erp.db");
    let example = example_dir("normalised");
    load_schema(&erp, &example.join("schema.sql")).await;
    erp_exec(&erp, TRICKY).await;
    let mapping = std::fs::read_to_string(example.join("mapping.toml")).unwrap();
    let mapping = mapping
        .replace(
            "ORDER BY p.product_id\n",
            "UNION ALL SELECT item, descr, NULL, vol, weight, NULL, NULL, NULL, item FROM tricky\n",
        )
        .replace(
            "ORDER BY p.sku, s.site_code\n",
            "UNION ALL SELECT item, 'DC1', added, cost, pcost, price, on_hand, alloc, 'EX', 'V-ACME', 'V-ACME', NULL, \
             factor, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL FROM tricky\n",
        );
    assert!(mapping.matches("FROM tricky").count() == 2, "the example mapping changed; adapt this test");
    let token = c.add_tenant("acme").await.unwrap();
    let mut conn = c.connector("acme", &erp, &token).await.unwrap();
    conn.cfg.erp.encoding = ferry_connector::erp::TextEncoding::Windows1252;
    set_mapping(&conn, &mapping);

    let r = conn.sync(&quiet).await.expect("sync");
    assert_eq!(r.status.state, BatchState::Imported, "{:?}", r.status.detail);

    let inst = c.app.state.instance("acme").await.unwrap().unwrap();
    let pool = inst.0.pool();
    let master: Vec<String> = sqlx::query_scalar(
        "SELECT json_array(item, description, uom, unit_volume, unit_weight, uid) FROM master \
         WHERE item LIKE 'T-%' ORDER BY item",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    assert_eq!(
        master,
        [
            r#"["T-1","Bolt, 10 \"mm\" — Café",null,"1.5","12.34","T-1"]"#,
            r#"["T-2","line break",null,"3",null,"T-2"]"#,
            r#"["T-3","Café €“”",null,null,"0.0000001","T-3"]"#,
        ]
    );
    let stock: Vec<String> = sqlx::query_scalar(
        "SELECT json_array(item, location, date_added, inventory_cost, purchase_cost, selling_price, on_hand, \
         allocated, purchase_factor) FROM stock WHERE item LIKE 'T-%' ORDER BY item",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    assert_eq!(
        stock,
        [
            r#"["T-1","DC1","2026-02-28","123456789012.3456","0.3",null,7,"2.5","1"]"#,
            r#"["T-2","DC1","2026-02-28","5","0.0001","-5.5",0,null,"0"]"#,
            r#"["T-3","DC1","2026-02-27","0","2","1000000",-3,"0.5",null]"#,
        ]
    );
}
