//! The key vault's migrations against a real PostgreSQL: a fresh database, adopting the
//! legacy table, re-runs, races with legacy writers, and the grants Supabase's API roles get.
//!
//! Every test creates its own PostgreSQL database (dropped at the end), so tests run in
//! parallel and never see each other's rows; no mock of PostgreSQL anywhere. PostgreSQL:
//! `TORN_QUOTA_TEST_DATABASE_URL`, default `postgres://postgres@127.0.0.1:5432/test` (a role
//! that may create databases).

mod common;

use std::borrow::Cow;
use std::time::{Duration, Instant};

use common::pg::TestDb;
use common::vault::{count, new_user};
use sqlx::PgPool;
use sqlx::migrate::Migrator;
use torn_quota::vault::{MIGRATOR, migrate};

// ---------------------------------------------------------------------------------------
// Migrations
// ---------------------------------------------------------------------------------------

/// Tables, columns, indexes and views of the database, to compare before and after a run.
async fn schema(pool: &PgPool) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT table_schema || '.' || table_name || '.' || column_name || ':' || data_type \
           FROM information_schema.columns WHERE table_schema IN ('public', 'auth') \
         UNION ALL SELECT schemaname || '.' || indexname || ':' || indexdef FROM pg_indexes \
           WHERE schemaname IN ('public', 'auth') \
         UNION ALL SELECT 'view ' || table_name FROM information_schema.views \
           WHERE table_schema = 'public' \
         ORDER BY 1",
    )
    .fetch_all(pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn migrations_build_an_empty_database_and_a_second_run_is_a_no_op() {
    let db = TestDb::new("vault").await;
    let first = migrate(&db.pool).await.unwrap();
    let versions: Vec<i64> = first.applied.iter().map(|m| m.version).collect();
    assert_eq!(versions, [1, 2, 3, 4, 5, 6, 7]);
    assert_eq!(first.already_applied, 0);
    let before = schema(&db.pool).await;
    for table in [
        "public.sentinel_user_keys.api_key_hash:text",
        "public.sentinel_user_keys.max_requests_per_minute:integer",
        "public.sentinel_user_keys.disabled_reason:smallint",
        "public.sentinel_api_key_user_mapping.torn_user_id:bigint",
        "public.sentinel_rate_limit_requests.user_id:uuid",
        "auth.users.id:uuid",
    ] {
        assert!(
            before.iter().any(|c| c == table),
            "{table} missing: {before:#?}"
        );
    }
    assert!(
        before
            .iter()
            .any(|c| c.contains("sentinel_rate_limit_requests_user_idx")
                && c.contains("(user_id, requested_at DESC)")),
        "{before:#?}"
    );

    let second = migrate(&db.pool).await.unwrap();
    assert!(second.applied.is_empty(), "{second:?}");
    assert_eq!(second.already_applied, 7);
    assert_eq!(schema(&db.pool).await, before);
    assert_eq!(
        count(&db.pool, "SELECT count(*) FROM _sqlx_migrations").await,
        7
    );
}

#[tokio::test]
async fn migrations_adopt_a_legacy_table_keep_every_row_and_backfill() {
    let db = TestDb::new("vault").await;
    // The legacy limiter's table as production has it, with a column of its own.
    sqlx::raw_sql(
        "CREATE TABLE sentinel_rate_limit_requests_per_user (
             id bigserial PRIMARY KEY,
             api_key_hash text NOT NULL,
             requested_at timestamptz NOT NULL DEFAULT now(),
             endpoint text);
         INSERT INTO sentinel_rate_limit_requests_per_user (api_key_hash, requested_at, endpoint)
             SELECT CASE WHEN i % 3 = 0 THEN repeat('a', 64)
                         WHEN i % 3 = 1 THEN repeat('b', 64) ELSE repeat('c', 64) END,
                    now() - i * interval '1 second', 'user/' || i
             FROM generate_series(1, 600) AS i;",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let legacy_ids: Vec<i64> =
        sqlx::query_scalar("SELECT id FROM sentinel_rate_limit_requests_per_user ORDER BY id")
            .fetch_all(&db.pool)
            .await
            .unwrap();

    // Up to the mapping first, as a database that stored mappings before the move would be.
    let partial = Migrator {
        migrations: Cow::Owned(MIGRATOR.migrations[..4].to_vec()),
        ..Migrator::DEFAULT
    };
    partial.run(&db.pool).await.unwrap();
    let user = new_user(&db.pool).await;
    sqlx::query(
        "INSERT INTO sentinel_api_key_user_mapping (api_key_hash, user_id, torn_user_id) \
         VALUES ($1, $2, 4), ($3, NULL, 5)",
    )
    .bind("a".repeat(64))
    .bind(user.get())
    .bind("b".repeat(64))
    .execute(&db.pool)
    .await
    .unwrap();

    let report = migrate(&db.pool).await.unwrap();
    assert_eq!(report.applied.len(), 3);
    assert_eq!(report.already_applied, 4);

    let ids: Vec<i64> =
        sqlx::query_scalar("SELECT id FROM sentinel_rate_limit_requests ORDER BY id")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    assert_eq!(ids, legacy_ids, "every legacy row is kept, ids included");
    let by_user: Vec<(String, Option<uuid::Uuid>, i64)> = sqlx::query_as(
        "SELECT left(api_key_hash, 1), user_id, count(*) FROM sentinel_rate_limit_requests \
         GROUP BY 1, 2 ORDER BY 1",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        by_user,
        [
            ("a".to_owned(), Some(user.get()), 200),
            ("b".to_owned(), None, 200),
            ("c".to_owned(), None, 200),
        ]
    );
    assert_eq!(
        count(
            &db.pool,
            "SELECT count(*) FROM sentinel_rate_limit_requests WHERE endpoint IS NULL"
        )
        .await,
        0,
        "the adopted table's own columns survive"
    );

    // Legacy writers keep inserting under the old name, into the new table.
    sqlx::query("INSERT INTO sentinel_rate_limit_requests_per_user (api_key_hash) VALUES ($1)")
        .bind("d".repeat(64))
        .execute(&db.pool)
        .await
        .unwrap();
    assert_eq!(
        count(
            &db.pool,
            "SELECT count(*) FROM sentinel_rate_limit_requests"
        )
        .await,
        601
    );

    let again = migrate(&db.pool).await.unwrap();
    assert!(again.applied.is_empty());
    assert_eq!(
        count(
            &db.pool,
            "SELECT count(*) FROM sentinel_rate_limit_requests"
        )
        .await,
        601
    );
}

#[tokio::test]
async fn migrations_are_safe_where_the_rename_already_happened() {
    let db = TestDb::new("vault").await;
    sqlx::raw_sql(
        "CREATE TABLE sentinel_rate_limit_requests (
             id bigserial PRIMARY KEY,
             api_key_hash text NOT NULL,
             requested_at timestamptz NOT NULL DEFAULT now());
         INSERT INTO sentinel_rate_limit_requests (api_key_hash)
             SELECT md5(i::text) || md5(i::text) FROM generate_series(1, 50) AS i;",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    migrate(&db.pool).await.unwrap();
    assert_eq!(
        count(
            &db.pool,
            "SELECT count(*) FROM sentinel_rate_limit_requests"
        )
        .await,
        50
    );
    let kind: String = sqlx::query_scalar(
        "SELECT relkind::text FROM pg_class \
         WHERE oid = to_regclass('sentinel_rate_limit_requests_per_user')",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        kind, "v",
        "the old name is the compatibility view, not a second table"
    );
}

#[tokio::test]
async fn migrations_merge_a_recreated_legacy_table_without_losing_rows() {
    let db = TestDb::new("vault").await;
    sqlx::raw_sql(
        "CREATE TABLE sentinel_rate_limit_requests (
             id bigserial PRIMARY KEY, api_key_hash text NOT NULL,
             requested_at timestamptz NOT NULL DEFAULT now());
         CREATE TABLE sentinel_rate_limit_requests_per_user (
             id bigserial PRIMARY KEY, api_key_hash text NOT NULL,
             requested_at timestamptz NOT NULL DEFAULT now());
         INSERT INTO sentinel_rate_limit_requests (api_key_hash)
             SELECT 'new' FROM generate_series(1, 30);
         INSERT INTO sentinel_rate_limit_requests_per_user (api_key_hash)
             SELECT 'old' FROM generate_series(1, 20);",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    migrate(&db.pool).await.unwrap();
    assert_eq!(
        count(
            &db.pool,
            "SELECT count(*) FROM sentinel_rate_limit_requests"
        )
        .await,
        50
    );
    assert_eq!(
        count(
            &db.pool,
            "SELECT count(*) FROM sentinel_rate_limit_requests WHERE api_key_hash = 'old'"
        )
        .await,
        20
    );
}

#[tokio::test]
async fn concurrent_migrations_apply_each_migration_once() {
    let db = TestDb::new("vault").await;
    let runs = (0..4).map(|_| {
        let pool = db.pool.clone();
        tokio::spawn(async move { migrate(&pool).await.unwrap() })
    });
    let mut applied = 0;
    for run in runs {
        applied += run.await.unwrap().applied.len();
    }
    assert_eq!(applied, 7);
}

/// Supabase's API roles (cluster-wide: created once, if absent) and its default grants in
/// this database: `anon` and `authenticated` get every privilege on every table, sequence
/// and view of `public`, those created later included.
async fn supabase_grants(pool: &PgPool) {
    for role in ["anon", "authenticated"] {
        // Tests in parallel may race to create a role: either one wins.
        let created = sqlx::raw_sql(&format!(
            "DO $$ BEGIN \
               IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{role}') THEN \
                 CREATE ROLE {role} NOLOGIN; \
               END IF; \
             EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; \
             END $$;"
        ))
        .execute(pool)
        .await;
        if let Err(e) = created {
            assert!(e.to_string().contains("concurrently"), "create {role}: {e}");
        }
    }
    sqlx::raw_sql(
        "GRANT USAGE ON SCHEMA public TO anon, authenticated;
         GRANT ALL ON ALL TABLES IN SCHEMA public TO anon, authenticated;
         GRANT ALL ON ALL SEQUENCES IN SCHEMA public TO anon, authenticated;
         ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT ALL ON TABLES TO anon, authenticated;
         ALTER DEFAULT PRIVILEGES IN SCHEMA public
             GRANT ALL ON SEQUENCES TO anon, authenticated;",
    )
    .execute(pool)
    .await
    .expect("supabase grants");
}

/// What `role` manages against a relation: rows it reads, whether its insert got in, rows
/// its delete removed, whether its truncate ran. Each try in a transaction rolled back,
/// so the rows stay for the next.
async fn as_role(pool: &PgPool, role: &str, relation: &str) -> (i64, bool, u64, bool) {
    let mut conn = pool.acquire().await.unwrap();
    let mut attempt = async |sql: &str| -> Result<u64, sqlx::Error> {
        sqlx::raw_sql("BEGIN").execute(&mut *conn).await?;
        sqlx::raw_sql(&format!("SET LOCAL ROLE {role}"))
            .execute(&mut *conn)
            .await?;
        let done = sqlx::query(sql).execute(&mut *conn).await;
        sqlx::raw_sql("ROLLBACK").execute(&mut *conn).await?;
        done.map(|d| d.rows_affected())
    };
    let read = attempt(&format!(
        "SELECT 1 FROM {relation} WHERE api_key_hash IS NOT NULL"
    ))
    .await
    .map_or(0, |n| i64::try_from(n).unwrap());
    let inserted = attempt(&format!(
        "INSERT INTO {relation} (api_key_hash) VALUES (repeat('e', 64))"
    ))
    .await
    .is_ok();
    let deleted = attempt(&format!("DELETE FROM {relation}"))
        .await
        .unwrap_or(0);
    let truncated = attempt(&format!("TRUNCATE {relation}")).await.is_ok();
    (read, inserted, deleted, truncated)
}

#[tokio::test]
async fn anon_and_authenticated_cannot_touch_legacy_rows_on_fresh_or_adopted_databases() {
    for adopted in [false, true] {
        let db = TestDb::new("vault").await;
        if adopted {
            sqlx::raw_sql(
                "CREATE TABLE sentinel_rate_limit_requests_per_user (
                     id bigserial PRIMARY KEY, api_key_hash text NOT NULL,
                     requested_at timestamptz NOT NULL DEFAULT now());",
            )
            .execute(&db.pool)
            .await
            .unwrap();
        }
        supabase_grants(&db.pool).await;
        migrate(&db.pool).await.unwrap();
        sqlx::query(
            "INSERT INTO sentinel_rate_limit_requests (api_key_hash) \
             SELECT repeat('f', 64) FROM generate_series(1, 7)",
        )
        .execute(&db.pool)
        .await
        .unwrap();

        for role in ["anon", "authenticated"] {
            for relation in [
                "sentinel_rate_limit_requests",
                "sentinel_rate_limit_requests_per_user",
            ] {
                let (read, inserted, deleted, _) = as_role(&db.pool, role, relation).await;
                assert_eq!(read, 0, "adopted {adopted}: {role} reads {relation}");
                assert!(
                    !inserted,
                    "adopted {adopted}: {role} inserts into {relation}"
                );
                assert_eq!(
                    deleted, 0,
                    "adopted {adopted}: {role} deletes from {relation}"
                );
            }
            let (.., truncated) = as_role(&db.pool, role, "sentinel_rate_limit_requests").await;
            assert!(!truncated, "adopted {adopted}: {role} truncates the table");
        }
        // The owner (and BYPASSRLS roles such as service_role) still see every row, through
        // the view too: the legacy writer keeps working.
        assert_eq!(
            count(
                &db.pool,
                "SELECT count(*) FROM sentinel_rate_limit_requests_per_user"
            )
            .await,
            7
        );
        let without: Vec<String> = sqlx::query_scalar(
            "SELECT c.relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p') AND NOT c.relrowsecurity \
             ORDER BY 1",
        )
        .fetch_all(&db.pool)
        .await
        .unwrap();
        assert!(
            without.is_empty(),
            "adopted {adopted}: tables in public without row-level security: {without:?}"
        );
        let invoker: bool = sqlx::query_scalar(
            "SELECT coalesce('security_invoker=true' = ANY(reloptions), false) FROM pg_class \
             WHERE oid = to_regclass('sentinel_rate_limit_requests_per_user')",
        )
        .fetch_one(&db.pool)
        .await
        .unwrap();
        assert!(
            invoker,
            "adopted {adopted}: the view runs with its caller's rights"
        );
    }
}

#[tokio::test]
async fn keys_removed_before_the_upgrade_lose_their_ciphertext_too() {
    let db = TestDb::new("vault").await;
    let first_six = Migrator {
        migrations: Cow::Owned(MIGRATOR.migrations[..6].to_vec()),
        ..Migrator::DEFAULT
    };
    first_six.run(&db.pool).await.unwrap();
    let user = new_user(&db.pool).await;
    sqlx::query(
        "INSERT INTO sentinel_user_keys (user_id, api_key_encrypted, api_key_hash, key_version, \
           torn_user_id, access_level, deleted_at) \
         VALUES ($1, 'v1:old:sealed', repeat('a', 64), 'old', 4, 3, now()), \
                ($1, 'v1:old:sealed', repeat('b', 64), 'old', 4, 3, NULL)",
    )
    .bind(user.get())
    .execute(&db.pool)
    .await
    .unwrap();
    migrate(&db.pool).await.unwrap();
    let rows: Vec<(String, Option<String>)> = sqlx::query_as(
        "SELECT left(api_key_hash, 1), api_key_encrypted FROM sentinel_user_keys ORDER BY 1",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        rows,
        [
            ("a".to_owned(), None),
            ("b".to_owned(), Some("v1:old:sealed".to_owned()))
        ]
    );
}

/// The checksum sqlx recorded for 0005 before it learnt to lock the old table.
const OLD_0005_CHECKSUM: &str = "1389c3365026d05ff3b6317f30c3934c52fbe142ffe03d48191dea93575a1944\
                                 c8a626ffbafdb580115dc0ff5446ad23";

#[tokio::test]
async fn a_database_that_applied_the_old_0005_migrates_on_and_an_edited_one_is_refused() {
    let db = TestDb::new("vault").await;
    let first_five = Migrator {
        migrations: Cow::Owned(MIGRATOR.migrations[..5].to_vec()),
        ..Migrator::DEFAULT
    };
    first_five.run(&db.pool).await.unwrap();
    sqlx::query("UPDATE _sqlx_migrations SET checksum = decode($1, 'hex') WHERE version = 5")
        .bind(OLD_0005_CHECKSUM)
        .execute(&db.pool)
        .await
        .unwrap();
    let report = migrate(&db.pool).await.unwrap();
    assert_eq!(report.already_applied, 5, "{report:?}");
    assert!(report.applied.iter().all(|m| m.version > 5), "{report:?}");
    // The record now names the embedded file, so sqlx's own Migrator agrees too.
    MIGRATOR.run(&db.pool).await.unwrap();

    sqlx::query(
        "UPDATE _sqlx_migrations SET checksum = decode(repeat('ab', 48), 'hex') WHERE version = 5",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let err = migrate(&db.pool).await.unwrap_err();
    assert!(
        err.to_string().contains('5') || format!("{err:?}").contains("VersionMismatch(5)"),
        "{err:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_legacy_insert_racing_the_merge_of_a_recreated_table_is_not_lost() {
    let db = TestDb::new("vault").await;
    sqlx::raw_sql(
        "CREATE TABLE sentinel_rate_limit_requests (
             id bigserial PRIMARY KEY, api_key_hash text NOT NULL,
             requested_at timestamptz NOT NULL DEFAULT now());
         CREATE TABLE sentinel_rate_limit_requests_per_user (
             id bigserial PRIMARY KEY, api_key_hash text NOT NULL,
             requested_at timestamptz NOT NULL DEFAULT now());
         INSERT INTO sentinel_rate_limit_requests_per_user (api_key_hash)
             SELECT 'old' FROM generate_series(1, 20);",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    // A legacy writer mid-transaction: its row is in the old table, not yet committed.
    let mut writer = db.pool.acquire().await.unwrap();
    sqlx::raw_sql(
        "BEGIN; INSERT INTO sentinel_rate_limit_requests_per_user (api_key_hash) VALUES ('racing');",
    )
    .execute(&mut *writer)
    .await
    .unwrap();
    let pool = db.pool.clone();
    let migration = tokio::spawn(async move { migrate(&pool).await });
    // Commit only once the migration waits on the writer's lock.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let waiting = count(
            &db.pool,
            &format!(
                "SELECT count(*) FROM pg_stat_activity \
                 WHERE datname = '{}' AND wait_event_type = 'Lock'",
                db.name
            ),
        )
        .await;
        if waiting > 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the migration never waited on the writer"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    sqlx::raw_sql("COMMIT").execute(&mut *writer).await.unwrap();
    migration.await.unwrap().unwrap();
    assert_eq!(
        count(
            &db.pool,
            "SELECT count(*) FROM sentinel_rate_limit_requests WHERE api_key_hash = 'racing'"
        )
        .await,
        1,
        "the legacy row committed during the merge is kept"
    );
    assert_eq!(
        count(
            &db.pool,
            "SELECT count(*) FROM sentinel_rate_limit_requests"
        )
        .await,
        21
    );
}
