//! A PostgreSQL database of its own for each test: created on the real server, dropped
//! when the value drops (even on a panic), so tests run in parallel.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use rand::Rng;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection, PgConnection, PgPool};
use torn_quota::vault::migrate;

/// The server's maintenance database (`TORN_QUOTA_TEST_DATABASE_URL`).
pub fn admin_url() -> String {
    std::env::var("TORN_QUOTA_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

/// A database of its own for one test, dropped when the value drops (even on a panic).
pub struct TestDb {
    pub name: String,
    pub url: String,
    pub pool: PgPool,
}

impl TestDb {
    /// An empty database, named after `label` (lowercase letters and `_`).
    pub async fn new(label: &str) -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "tq_{label}_{}_{}_{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed),
            rand::rng().random::<u32>()
        );
        let admin = admin_url();
        let mut conn = PgConnection::connect(&admin).await.unwrap_or_else(|e| {
            panic!(
                "PostgreSQL at {admin} does not answer ({e}). These tests need a real \
                 PostgreSQL: start it (docker compose up -d --wait, or .ci/run) and run them again."
            )
        });
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut conn)
            .await
            .expect("create test database");
        conn.close().await.ok();
        let options: PgConnectOptions = admin.parse().expect("test url");
        let url = {
            let mut u = url::Url::parse(&admin).expect("test url");
            u.set_path(&format!("/{name}"));
            u.to_string()
        };
        let pool = PgPoolOptions::new()
            .max_connections(24)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(options.database(&name))
            .await
            .expect("connect to the test database");
        Self { name, url, pool }
    }

    /// A database with the crate's migrations applied.
    pub async fn migrated(label: &str) -> Self {
        let db = Self::new(label).await;
        migrate(&db.pool).await.expect("migrate");
        db
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Drop runs inside the test's runtime: a thread of its own may block on a new one.
        // The pool's connections belong to the blocked runtime, so FORCE ends them instead
        // of a close that would wait on it.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                if let Ok(mut conn) = PgConnection::connect(&admin_url()).await {
                    let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .execute(&mut conn)
                        .await;
                }
            });
        })
        .join();
    }
}
