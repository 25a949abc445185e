//! Helpers of the tests that need a database server (`scripts/test-databases.sh`, README "Database tests").

use sqlx::{AssertSqlSafe, Connection};

/// The server URL in `var`, or `None` after printing why the test skips (a failure under `FERRY_CI=1`).
pub fn server(var: &str, test: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(url) if !url.is_empty() => Some(url),
        _ if std::env::var("FERRY_CI").is_ok_and(|v| v == "1") => {
            panic!("{test}: {var} is not set but FERRY_CI=1; .ci/run starts the servers with scripts/test-databases.sh")
        }
        _ => {
            eprintln!("SKIPPED: {test}: set {var} (see README, Database tests)");
            None
        }
    }
}

/// A fresh database on the server of `url` (so tests can run in parallel), and its URL.
pub async fn fresh_db(url: &str, tag: &str) -> String {
    let name = format!("ferry_{tag}_{}", uuid::Uuid::new_v4().simple().to_string().get(..10).unwrap_or("x"));
    let (base, _) = url.rsplit_once('/').unwrap();
    if url.starts_with("postgres") {
        let mut c = sqlx::PgConnection::connect(url).await.unwrap();
        sqlx::query(AssertSqlSafe(format!("CREATE DATABASE {name}"))).execute(&mut c).await.unwrap();
    } else {
        let mut c = sqlx::MySqlConnection::connect(url).await.unwrap();
        sqlx::query(AssertSqlSafe(format!("CREATE DATABASE {name} CHARACTER SET utf8mb4")))
            .execute(&mut c)
            .await
            .unwrap();
    }
    format!("{base}/{name}")
}
