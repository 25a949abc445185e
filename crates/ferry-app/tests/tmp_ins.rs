use std::time::Instant;
use sqlx::{AssertSqlSafe, SqlSafeStr};
#[tokio::test]
#[ignore]
async fn ins() {
    let dir = tempfile::TempDir::new().unwrap();
    let inst = ferry_app::instance::Instance::open(&dir.path().join("x.db")).await.unwrap();
    let v: String = sqlx::query_scalar("select sqlite_version()").fetch_one(inst.pool()).await.unwrap();
    eprintln!("sqlite {v}");
    let total = 300_000usize;
    for round in 0..2 {
    for per in [500usize] {
        let sql = format!("INSERT INTO sales (item,location,customer,order_date,invoice_date,qty,cost,value,issues_qty,details) VALUES {}",
            vec!["(?,?,?,?,?,?,?,?,?,?)"; per].join(","));
        let sql = AssertSqlSafe(sql).into_sql_str();
        let mut tx = inst.pool().begin().await.unwrap();
        sqlx::query("DELETE FROM sales").execute(&mut *tx).await.unwrap();
        let t = Instant::now();
        let mut i = 0;
        while i < total {
            let mut q = sqlx::query(sql.clone());
            for r in 0..per {
                let k = i + r;
                q = q.bind(format!("I{}", k % 500)).bind(format!("L{}", k % 7)).bind(format!("C{}", k % 1000))
                    .bind("2026-01-02".to_string()).bind("2026-01-02".to_string()).bind(format!("{}.5", k % 9))
                    .bind("2.10".to_string()).bind("-3.75".to_string()).bind(1i64).bind(format!("INV {k}"));
            }
            q.execute(&mut *tx).await.unwrap();
            i += per;
        }
        tx.commit().await.unwrap();
        eprintln!("{round} binds per={per}: {:.0} rows/s", total as f64 / t.elapsed().as_secs_f64());
    }
    for per in [1000usize, 5000] {
        let sql = "INSERT INTO sales (item,location,customer,order_date,invoice_date,qty,cost,value,issues_qty,details) \
          SELECT value->>0, value->>1, value->>2, value->>3, value->>4, value->>5, value->>6, value->>7, value->>8, value->>9 FROM json_each(?)";
        let mut tx = inst.pool().begin().await.unwrap();
        sqlx::query("DELETE FROM sales").execute(&mut *tx).await.unwrap();
        let t = Instant::now();
        let mut i = 0;
        while i < total {
            let mut rows = Vec::with_capacity(per);
            for r in 0..per {
                let k = i + r;
                rows.push(serde_json::json!([format!("I{}", k % 500), format!("L{}", k % 7), format!("C{}", k % 1000),
                    "2026-01-02", "2026-01-02", format!("{}.5", k % 9), "2.10", "-3.75", 1, format!("INV {k}")]));
            }
            let j = serde_json::to_string(&rows).unwrap();
            sqlx::query(sql).bind(j).execute(&mut *tx).await.unwrap();
            i += per;
        }
        tx.commit().await.unwrap();
        eprintln!("{round} json per={per}: {:.0} rows/s", total as f64 / t.elapsed().as_secs_f64());
        let n: i64 = sqlx::query_scalar("select count(*) from sales where typeof(issues_qty)='integer' and qty like '%.5'").fetch_one(inst.pool()).await.unwrap();
        assert_eq!(n as usize, total);
    }
    }
}
