use std::time::Instant;
use sqlx::{AssertSqlSafe, SqlSafeStr};
#[tokio::test]
#[ignore]
async fn ins() {
    let dir = tempfile::TempDir::new().unwrap();
    let inst = ferry_app::instance::Instance::open(&dir.path().join("x.db")).await.unwrap();
    for per in [1usize, 50, 200, 500, 1000] {
        let sql = format!("INSERT INTO sales (item,location,customer,order_date,invoice_date,qty,cost,value,issues_qty,details) VALUES {}",
            vec!["(?,?,?,?,?,?,?,?,?,?)"; per].join(","));
        let sql = AssertSqlSafe(sql).into_sql_str();
        let mut tx = inst.pool().begin().await.unwrap();
        sqlx::query("DELETE FROM sales").execute(&mut *tx).await.unwrap();
        let t = Instant::now();
        let total = 200_000usize;
        let mut i = 0;
        let mut build = std::time::Duration::ZERO;
        while i < total {
            let tb = Instant::now();
            let mut q = sqlx::query(sql.clone());
            for r in 0..per {
                let k = i + r;
                q = q.bind(format!("I{}", k % 500)).bind(format!("L{}", k % 7)).bind(format!("C{}", k % 1000))
                    .bind("2026-01-02".to_string()).bind("2026-01-02".to_string()).bind(format!("{}.5", k % 9))
                    .bind("2.10".to_string()).bind("-3.75".to_string()).bind(1i64).bind(format!("INV {k}"));
            }
            build += tb.elapsed();
            q.execute(&mut *tx).await.unwrap();
            i += per;
        }
        tx.commit().await.unwrap();
        let s = t.elapsed().as_secs_f64();
        eprintln!("per={per}: {:.0} rows/s (build {:?})", total as f64 / s, build);
    }
}
