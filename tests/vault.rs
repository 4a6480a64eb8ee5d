//! The key vault against a real PostgreSQL: every test creates its own database (dropped at
//! the end), so tests run in parallel and never see each other's rows. No mock of PostgreSQL
//! anywhere; Torn is stood in for by a map of keys (and, for the CLI, a tiny HTTP server).
//!
//! PostgreSQL: `TORN_QUOTA_TEST_DATABASE_URL`, default `postgres://postgres@127.0.0.1:5432/test`
//! (a role that may create databases).

mod common;

use std::borrow::Cow;

use common::pg::TestDb;
use std::collections::HashMap;
use std::num::{NonZeroU32, NonZeroU64};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use rand::Rng;
use serde_json::Value;
use sqlx::migrate::Migrator;
use sqlx::{Connection, PgConnection, PgPool};
use tokio::io::AsyncWriteExt;
use torn_quota::torn::TornErrorCode;
use torn_quota::vault::{
    AddOptions, DatabaseConfig, EncryptionKeyId, KeyInfo, Keyring, MIGRATOR, ResolveOwner,
    StoredKeyId, Vault, migrate,
};
use torn_quota::{AccessLevel, ApiKey, AppUserId, Error, TornUserId};

// ---------------------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------------------

const KEY_A: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
const KEY_B: &str = "ICEiIyQlJicoKSorLC0uLzAxMjM0NTY3ODk6Ozw9Pj8=";

fn keyring(setting: &str) -> Keyring {
    Keyring::parse(setting).expect("test keyring")
}

fn random_key() -> ApiKey {
    let s: String = rand::rng()
        .sample_iter(rand::distr::Alphanumeric)
        .take(16)
        .map(char::from)
        .collect();
    ApiKey::new(&s).expect("16 alphanumerics")
}

async fn new_user(pool: &PgPool) -> AppUserId {
    let id = uuid::Uuid::new_v4();
    sqlx::query("INSERT INTO auth.users (id) VALUES ($1)")
        .bind(id)
        .execute(pool)
        .await
        .expect("insert account");
    AppUserId::new(id)
}

/// Torn, as far as the vault can tell: a map from key to owner and access level. Any other
/// key is incorrect (code 2). Counts its calls, and can be slow on purpose.
#[derive(Default)]
struct MapResolver {
    keys: std::sync::Mutex<HashMap<String, KeyInfo>>,
    calls: AtomicUsize,
    delay: Option<Duration>,
}

impl MapResolver {
    fn with(keys: &[(&ApiKey, u64)]) -> Self {
        let r = Self::default();
        for (k, owner) in keys {
            r.insert(k, *owner);
        }
        r
    }

    fn insert(&self, key: &ApiKey, owner: u64) {
        self.keys.lock().unwrap().insert(
            key.expose().to_owned(),
            KeyInfo {
                owner: TornUserId::new(owner),
                access: AccessLevel::Limited,
            },
        );
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

impl ResolveOwner for MapResolver {
    async fn resolve(&self, key: &ApiKey) -> Result<KeyInfo, Error> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if let Some(d) = self.delay {
            tokio::time::sleep(d).await;
        }
        let found = self.keys.lock().unwrap().get(key.expose()).copied();
        found.ok_or(Error::Torn {
            code: TornErrorCode::INCORRECT_KEY,
            message: "Incorrect Key".into(),
        })
    }
}

async fn count(pool: &PgPool, sql: &str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(pool).await.expect(sql)
}

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

// ---------------------------------------------------------------------------------------
// Crypto
// ---------------------------------------------------------------------------------------

fn crypto_reason(r: Result<ApiKey, Error>) -> String {
    match r {
        Err(Error::Crypto { reason }) => reason,
        other => panic!("expected a crypto error, got {other:?}"),
    }
}

#[test]
fn encryption_round_trips_and_binds_each_ciphertext_to_its_row() {
    let ring = keyring(&format!("a:{KEY_A}"));
    let key = random_key();
    let (alice, bob) = (
        AppUserId::new(uuid::Uuid::new_v4()),
        AppUserId::new(uuid::Uuid::new_v4()),
    );
    let sealed = ring.seal(&key, alice, &key.hash()).unwrap();
    assert!(sealed.starts_with("v1:a:"), "{sealed}");
    assert!(!sealed.contains(key.expose()));
    assert_eq!(ring.open(&sealed, alice, &key.hash()).unwrap(), key);
    assert_eq!(Keyring::key_id_of(&sealed).unwrap().as_str(), "a");

    // Another account's row, or another key's hash: the associated data differs.
    let reason = crypto_reason(ring.open(&sealed, bob, &key.hash()));
    assert!(reason.contains("authentication failed"), "{reason}");
    let other = random_key();
    crypto_reason(ring.open(&sealed, alice, &other.hash()));

    // Any flipped bit of the nonce, body or tag.
    let body = sealed.strip_prefix("v1:a:").unwrap();
    let mut blob = base64_decode(body);
    for i in [0, 12, blob.len() - 1] {
        blob[i] ^= 0x01;
        let tampered = format!("v1:a:{}", base64_encode(&blob));
        let reason = crypto_reason(ring.open(&tampered, alice, &key.hash()));
        assert!(!reason.contains(key.expose()));
        blob[i] ^= 0x01;
    }
    // A truncated one.
    crypto_reason(ring.open(&sealed[..sealed.len() - 4], alice, &key.hash()));

    // The right id with the wrong key material.
    let wrong = keyring(&format!("a:{KEY_B}"));
    let reason = crypto_reason(wrong.open(&sealed, alice, &key.hash()));
    assert!(reason.contains("authentication failed"), "{reason}");
    // A key id that is not configured is named as such.
    let elsewhere = keyring(&format!("b:{KEY_B}"));
    let reason = crypto_reason(elsewhere.open(&sealed, alice, &key.hash()));
    assert!(
        reason.contains("'a'") && reason.contains("not configured"),
        "{reason}"
    );
    // Relabelling a ciphertext with another configured id does not help either.
    let both = keyring(&format!("b:{KEY_B},a:{KEY_A}"));
    crypto_reason(both.open(&format!("v1:b:{body}"), alice, &key.hash()));
    assert_eq!(both.open(&sealed, alice, &key.hash()).unwrap(), key);
}

#[test]
fn a_malformed_encryption_key_setting_names_the_setting_and_not_the_value() {
    for bad in ["", "c2hvcnQ=", "a:not-base64!", &format!("{KEY_A},{KEY_A}")] {
        match Keyring::from_setting(Some(bad)) {
            Err(Error::Config { setting, reason }) => {
                assert_eq!(setting, "TORN_QUOTA_ENCRYPTION_KEY");
                assert!(bad.is_empty() || !reason.contains(bad), "{reason}");
            }
            other => panic!("{bad}: expected a config error, got {other:?}"),
        }
    }
}

fn base64_decode(s: &str) -> Vec<u8> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.decode(s).unwrap()
}

fn base64_encode(b: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(b)
}

#[tokio::test]
async fn a_ciphertext_copied_onto_another_accounts_row_does_not_decrypt() {
    let db = TestDb::migrated("vault").await;
    let vault = Vault::new(db.pool.clone(), keyring(KEY_A));
    let key = random_key();
    let resolver = MapResolver::with(&[(&key, 4)]);
    let (alice, mallory) = (new_user(&db.pool).await, new_user(&db.pool).await);
    vault.add_key(alice, &key, &resolver).await.unwrap();
    vault.add_key(mallory, &key, &resolver).await.unwrap();
    assert_eq!(vault.live_keys(&[mallory]).await.unwrap().len(), 1);

    sqlx::query(
        "UPDATE sentinel_user_keys m SET api_key_encrypted = a.api_key_encrypted \
         FROM sentinel_user_keys a WHERE m.user_id = $1 AND a.user_id = $2",
    )
    .bind(mallory.get())
    .bind(alice.get())
    .execute(&db.pool)
    .await
    .unwrap();
    match vault.live_keys(&[mallory]).await {
        Err(Error::Crypto { reason }) => {
            assert!(reason.contains("authentication failed"), "{reason}");
            assert!(!reason.contains(key.expose()));
        }
        other => panic!("expected a crypto error, got {other:?}"),
    }
    let listed = vault.list_keys(mallory).await.unwrap();
    assert_eq!(listed[0].masked, None, "listed, but not readable");
    assert_eq!(vault.live_keys(&[alice]).await.unwrap()[0].key, key);
}

#[tokio::test]
async fn rotation_reads_old_rows_reencrypts_all_and_then_the_old_key_can_go() {
    let db = TestDb::migrated("vault").await;
    let old = Vault::new(db.pool.clone(), keyring(&format!("old:{KEY_A}")));
    let (u1, u2) = (new_user(&db.pool).await, new_user(&db.pool).await);
    let keys: Vec<ApiKey> = (0..5).map(|_| random_key()).collect();
    let resolver = MapResolver::with(&keys.iter().map(|k| (k, 7)).collect::<Vec<_>>());
    for (i, k) in keys.iter().enumerate() {
        let user = if i % 2 == 0 { u1 } else { u2 };
        old.add_key(user, k, &resolver).await.unwrap();
    }
    // A removed row holds no ciphertext: rotation passes it by, and the old key can still go.
    let gone = old.list_keys(u2).await.unwrap()[0].id;
    assert!(old.remove_key(u2, gone).await.unwrap());

    let both = Vault::new(
        db.pool.clone(),
        keyring(&format!("new:{KEY_B},old:{KEY_A}")),
    );
    assert_eq!(
        both.live_keys(&[u1, u2]).await.unwrap().len(),
        4,
        "old rows still read"
    );
    let fresh = random_key();
    resolver.insert(&fresh, 8);
    let added = both.add_key(u1, &fresh, &resolver).await.unwrap();
    assert_eq!(
        added.key.encryption_key.as_str(),
        "new",
        "the first key encrypts"
    );

    let mut seen = Vec::new();
    let report = both
        .rotate(NonZeroU64::new(2).unwrap(), |p| seen.push(*p))
        .await
        .unwrap();
    assert_eq!(report.rotated, 4);
    assert!(report.failed.is_empty());
    assert_eq!(report.encryption_key, EncryptionKeyId::new("new").unwrap());
    assert_eq!(seen.len(), 2, "batches of 2: {seen:?}");
    assert_eq!(seen.last().map(|p| (p.done, p.total)), Some((4, 4)));
    assert_eq!(
        count(&db.pool, "SELECT count(*) FROM sentinel_user_keys WHERE deleted_at IS NULL AND (key_version <> 'new' OR api_key_encrypted NOT LIKE 'v1:new:%')").await,
        0
    );

    // The old key is gone from the configuration: every row that holds a key opens.
    let new_only = keyring(&format!("new:{KEY_B}"));
    let rows: Vec<(String, uuid::Uuid, String)> = sqlx::query_as(
        "SELECT api_key_encrypted, user_id, api_key_hash FROM sentinel_user_keys \
         WHERE api_key_encrypted IS NOT NULL",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(rows.len(), 5);
    let all: Vec<&ApiKey> = keys.iter().chain([&fresh]).collect();
    for (sealed, user, hash) in &rows {
        let key = all
            .iter()
            .find(|k| k.hash().as_str() == hash)
            .expect("a stored key");
        let opened = new_only
            .open(sealed, AppUserId::new(*user), &key.hash())
            .unwrap_or_else(|e| panic!("a row does not open with the new key alone: {e}"));
        assert_eq!(&opened, *key);
    }
    let after = Vault::new(db.pool.clone(), new_only);
    assert_eq!(after.live_keys(&[u1, u2]).await.unwrap().len(), 5);
    let again = after
        .rotate(NonZeroU64::new(10).unwrap(), |_| {})
        .await
        .unwrap();
    assert_eq!(again.rotated, 0);
}

#[tokio::test]
async fn a_removed_key_leaves_a_tombstone_without_ciphertext_that_rotation_skips() {
    let db = TestDb::migrated("vault").await;
    let vault = Vault::new(db.pool.clone(), keyring(&format!("old:{KEY_A}")));
    let (gone, kept) = (random_key(), random_key());
    let resolver = MapResolver::with(&[(&gone, 4), (&kept, 4)]);
    let user = new_user(&db.pool).await;
    let removed = vault.add_key(user, &gone, &resolver).await.unwrap().key;
    vault.add_key(user, &kept, &resolver).await.unwrap();
    assert!(vault.remove_key(user, removed.id).await.unwrap());

    let (ciphertext, hash, deleted): (Option<String>, String, bool) = sqlx::query_as(
        "SELECT api_key_encrypted, api_key_hash, deleted_at IS NOT NULL \
         FROM sentinel_user_keys WHERE id = $1",
    )
    .bind(removed.id.get())
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(ciphertext, None, "a removed key's ciphertext is destroyed");
    assert_eq!(hash, gone.hash().as_str(), "the tombstone keeps the hash");
    assert!(deleted);
    // The table itself refuses a removed row that still holds a ciphertext.
    let sealed: String = sqlx::query_scalar(
        "SELECT api_key_encrypted FROM sentinel_user_keys WHERE deleted_at IS NULL",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert!(
        sqlx::query("UPDATE sentinel_user_keys SET api_key_encrypted = $1 WHERE id = $2")
            .bind(&sealed)
            .bind(removed.id.get())
            .execute(&db.pool)
            .await
            .is_err()
    );

    let rotating = Vault::new(
        db.pool.clone(),
        keyring(&format!("new:{KEY_B},old:{KEY_A}")),
    );
    let report = rotating
        .rotate(NonZeroU64::new(10).unwrap(), |_| {})
        .await
        .unwrap();
    assert_eq!(report.rotated, 1, "only the live row: {report:?}");
    assert!(report.failed.is_empty(), "{report:?}");

    // The key can be stored again later, as a new row beside its tombstone.
    let back = vault.add_key(user, &gone, &resolver).await.unwrap();
    assert!(back.created);
    assert_ne!(back.key.id, removed.id);
}

// ---------------------------------------------------------------------------------------
// Adding keys
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn adding_a_key_twice_is_a_no_op_that_returns_the_existing_row() {
    let db = TestDb::migrated("vault").await;
    let vault = Vault::new(db.pool.clone(), keyring(KEY_A));
    let key = random_key();
    let resolver = MapResolver::with(&[(&key, 4)]);
    let user = new_user(&db.pool).await;

    let first = vault.add_key(user, &key, &resolver).await.unwrap();
    assert!(first.created);
    assert!(
        first.key.is_primary,
        "an account's first key is its primary"
    );
    assert_eq!(first.key.owner, TornUserId::new(4));
    assert_eq!(first.key.access, AccessLevel::Limited);
    assert_eq!(first.key.masked, Some(key.masked()));
    assert_eq!(first.key.hash, key.hash().as_str());

    let second = vault.add_key(user, &key, &resolver).await.unwrap();
    assert!(!second.created);
    assert_eq!(second.key.id, first.key.id);
    assert!(!second.reenabled);
    assert_eq!(
        resolver.calls(),
        2,
        "a repeat add asks Torn again: the key may have been paused since"
    );
    assert_eq!(
        count(&db.pool, "SELECT count(*) FROM sentinel_user_keys").await,
        1
    );
    assert_eq!(
        count(
            &db.pool,
            "SELECT count(*) FROM sentinel_api_key_user_mapping"
        )
        .await,
        1
    );

    // Removed, then added again: a new live row beside the removed one.
    assert!(vault.remove_key(user, first.key.id).await.unwrap());
    let third = vault.add_key(user, &key, &resolver).await.unwrap();
    assert!(third.created);
    assert_ne!(third.key.id, first.key.id);
    assert_eq!(
        count(
            &db.pool,
            "SELECT count(*) FROM sentinel_user_keys WHERE deleted_at IS NULL"
        )
        .await,
        1
    );
    assert_eq!(
        count(&db.pool, "SELECT count(*) FROM sentinel_api_key_user_mapping WHERE deleted_at IS NULL AND user_id IS NOT NULL").await,
        1,
        "the mapping is live again"
    );
}

#[tokio::test]
async fn concurrent_adds_of_one_key_make_one_row() {
    let db = TestDb::migrated("vault").await;
    let vault = Vault::new(db.pool.clone(), keyring(KEY_A));
    let key = random_key();
    // A slow Torn widens the window in which every add has checked and none has written.
    let resolver = Arc::new(MapResolver {
        delay: Some(Duration::from_millis(50)),
        ..MapResolver::with(&[(&key, 4)])
    });
    let user = new_user(&db.pool).await;
    let barrier = Arc::new(tokio::sync::Barrier::new(12));
    let tasks: Vec<_> = (0..12)
        .map(|_| {
            let (vault, key, resolver, barrier) = (
                vault.clone(),
                key.clone(),
                resolver.clone(),
                barrier.clone(),
            );
            tokio::spawn(async move {
                barrier.wait().await;
                vault.add_key(user, &key, &*resolver).await.unwrap()
            })
        })
        .collect();
    let mut results = Vec::new();
    for t in tasks {
        results.push(t.await.unwrap());
    }
    assert_eq!(results.iter().filter(|r| r.created).count(), 1);
    assert!(results.iter().all(|r| r.key.id == results[0].key.id));
    assert!(resolver.calls() > 1, "the adds really did overlap");
    assert_eq!(
        count(&db.pool, "SELECT count(*) FROM sentinel_user_keys").await,
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_adds_of_different_keys_leave_exactly_one_primary() {
    let db = TestDb::migrated("vault").await;
    let vault = Vault::new(db.pool.clone(), keyring(KEY_A));
    let keys: Vec<ApiKey> = (0..8).map(|_| random_key()).collect();
    let resolver = Arc::new(MapResolver::with(
        &keys.iter().map(|k| (k, 9)).collect::<Vec<_>>(),
    ));
    let user = new_user(&db.pool).await;
    let tasks: Vec<_> = keys
        .iter()
        .cloned()
        .map(|key| {
            let (vault, resolver) = (vault.clone(), resolver.clone());
            tokio::spawn(async move { vault.add_key(user, &key, &*resolver).await.unwrap() })
        })
        .collect();
    for t in tasks {
        assert!(t.await.unwrap().created);
    }
    let listed = vault.list_keys(user).await.unwrap();
    assert_eq!(listed.len(), 8);
    assert_eq!(listed.iter().filter(|k| k.is_primary).count(), 1);
    assert!(listed[0].is_primary, "the primary is listed first");
}

#[tokio::test]
async fn an_incorrect_key_or_an_unknown_account_leaves_nothing_behind() {
    let db = TestDb::migrated("vault").await;
    let vault = Vault::new(db.pool.clone(), keyring(KEY_A));
    let user = new_user(&db.pool).await;
    let resolver = MapResolver::default();
    let key = random_key();
    match vault.add_key(user, &key, &resolver).await {
        Err(Error::Torn { code, .. }) => assert_eq!(code, TornErrorCode::INCORRECT_KEY),
        other => panic!("expected torn's refusal, got {other:?}"),
    }
    resolver.insert(&key, 4);
    let stranger = AppUserId::new(uuid::Uuid::new_v4());
    match vault.add_key(stranger, &key, &resolver).await {
        Err(Error::InvalidArgument { name, reason }) => {
            assert_eq!(name, "user");
            assert!(reason.contains("auth.users"), "{reason}");
        }
        other => panic!("expected an unknown account, got {other:?}"),
    }
    for table in ["sentinel_user_keys", "sentinel_api_key_user_mapping"] {
        assert_eq!(
            count(&db.pool, &format!("SELECT count(*) FROM {table}")).await,
            0,
            "{table}"
        );
    }
}

// One account's life from first key to last, as the batch handler and the CLI see it.
#[allow(clippy::too_many_lines)]
#[tokio::test]
async fn list_remove_primary_disable_and_live_keys() {
    let db = TestDb::migrated("vault").await;
    let vault = Vault::new(db.pool.clone(), keyring(KEY_A));
    let (alice, bob) = (new_user(&db.pool).await, new_user(&db.pool).await);
    let (k1, k2, k3, k4) = (random_key(), random_key(), random_key(), random_key());
    let resolver = MapResolver::with(&[(&k1, 1), (&k2, 1), (&k3, 2), (&k4, 3)]);
    let a1 = vault.add_key(alice, &k1, &resolver).await.unwrap().key;
    let a2 = vault
        .add_key_with(
            alice,
            &k2,
            &resolver,
            AddOptions {
                primary: false,
                max_requests_per_minute: NonZeroU32::new(40),
            },
        )
        .await
        .unwrap()
        .key;
    let a3 = vault.add_key(alice, &k3, &resolver).await.unwrap().key;
    let b4 = vault
        .add_key_with(
            bob,
            &k4,
            &resolver,
            AddOptions {
                primary: true,
                max_requests_per_minute: None,
            },
        )
        .await
        .unwrap()
        .key;
    assert!(a1.is_primary && !a2.is_primary && !a3.is_primary && b4.is_primary);
    assert_eq!(a2.max_requests_per_minute, NonZeroU32::new(40));

    // Listing is masked, never whole.
    let listed = vault.list_keys(alice).await.unwrap();
    assert_eq!(listed.len(), 3);
    let shown = format!("{listed:?}");
    for k in [&k1, &k2, &k3] {
        assert!(!shown.contains(k.expose()), "{shown}");
        assert!(shown.contains(&k.masked()));
    }

    // Primary moves; removing the primary promotes the oldest remaining key.
    vault.set_primary(alice, a3.id).await.unwrap();
    let primary = |keys: &[torn_quota::vault::StoredKey]| {
        keys.iter()
            .filter(|k| k.is_primary)
            .map(|k| k.id)
            .collect::<Vec<_>>()
    };
    assert_eq!(primary(&vault.list_keys(alice).await.unwrap()), [a3.id]);
    assert!(vault.remove_key(alice, a3.id).await.unwrap());
    assert!(
        !vault.remove_key(alice, a3.id).await.unwrap(),
        "already removed"
    );
    assert!(
        !vault.remove_key(bob, a1.id).await.unwrap(),
        "not bob's key"
    );
    assert_eq!(primary(&vault.list_keys(alice).await.unwrap()), [a1.id]);
    assert!(matches!(
        vault.set_primary(bob, a1.id).await,
        Err(Error::InvalidArgument { name: "id", .. })
    ));

    // Disabled keys leave the pool, stay listed with Torn's code, and come back.
    assert!(
        vault
            .disable_key(a1.id, TornErrorCode::KEY_PAUSED)
            .await
            .unwrap()
    );
    let live = vault.live_keys(&[alice, bob]).await.unwrap();
    let live_ids: Vec<StoredKeyId> = live.iter().map(|k| k.id).collect();
    assert_eq!(live_ids, {
        let mut v = vec![a2.id, b4.id];
        v.sort_by_key(|id| if *id == a2.id { alice.get() } else { bob.get() });
        v
    });
    let a2_live = live.iter().find(|k| k.id == a2.id).unwrap();
    assert_eq!(a2_live.key, k2);
    assert_eq!(a2_live.owner, TornUserId::new(1));
    assert_eq!(a2_live.max_requests_per_minute, NonZeroU32::new(40));
    assert!(!format!("{live:?}").contains(k2.expose()));
    let listed = vault.list_keys(alice).await.unwrap();
    let disabled = listed
        .iter()
        .find(|k| k.id == a1.id)
        .unwrap()
        .disabled
        .unwrap();
    assert_eq!(disabled.code, Some(TornErrorCode::KEY_PAUSED));
    assert!(vault.enable_key(a1.id).await.unwrap());
    assert_eq!(vault.live_keys(&[alice]).await.unwrap().len(), 2);

    // Torn's verdict on a key reaches every account that stored it; adding it again
    // re-checks it and enables it.
    let shared = vault.add_key(bob, &k2, &resolver).await.unwrap().key;
    assert_eq!(
        vault
            .disable_key_hash(&k2.hash(), TornErrorCode::OWNER_INACTIVE)
            .await
            .unwrap(),
        2
    );
    assert!(
        vault
            .live_keys(&[alice, bob])
            .await
            .unwrap()
            .iter()
            .all(|k| k.key != k2)
    );
    let calls = resolver.calls();
    let back = vault.add_key(bob, &k2, &resolver).await.unwrap();
    assert!(!back.created);
    assert_eq!(back.key.id, shared.id);
    assert!(back.key.disabled.is_none());
    assert_eq!(resolver.calls(), calls + 1, "a disabled key is re-checked");

    // Use is recorded; the share can change.
    assert!(a2_live_last_used(&vault, alice, a2.id).await.is_none());
    vault.record_uses(&[a2.id, a1.id]).await.unwrap();
    assert!(a2_live_last_used(&vault, alice, a2.id).await.is_some());
    assert!(
        vault
            .set_max_requests_per_minute(alice, a2.id, None)
            .await
            .unwrap()
    );
    assert!(
        vault
            .live_keys(&[alice])
            .await
            .unwrap()
            .iter()
            .all(|k| k.max_requests_per_minute.is_none())
    );
}

async fn a2_live_last_used(
    vault: &Vault,
    user: AppUserId,
    id: StoredKeyId,
) -> Option<chrono::DateTime<chrono::Utc>> {
    vault
        .list_keys(user)
        .await
        .unwrap()
        .into_iter()
        .find(|k| k.id == id)
        .unwrap()
        .last_used_at
}

#[tokio::test]
async fn import_legacy_stores_the_key_and_claims_its_rate_limit_rows() {
    let db = TestDb::migrated("vault").await;
    let vault = Vault::new(db.pool.clone(), keyring(KEY_A));
    let user = new_user(&db.pool).await;
    let key = random_key();
    let other = random_key();
    sqlx::query(
        "INSERT INTO sentinel_rate_limit_requests_per_user (api_key_hash) \
         SELECT CASE WHEN i <= 30 THEN $1 ELSE $2 END FROM generate_series(1, 45) AS i",
    )
    .bind(key.hash().as_str())
    .bind(other.hash().as_str())
    .execute(&db.pool)
    .await
    .unwrap();
    let resolver = MapResolver::with(&[(&key, 4)]);
    let imported = vault.import_legacy(user, &key, &resolver).await.unwrap();
    assert!(imported.added.created);
    assert_eq!(imported.rate_limit_rows, 30);
    let again = vault.import_legacy(user, &key, &resolver).await.unwrap();
    assert!(!again.added.created);
    assert_eq!(again.rate_limit_rows, 0);
    assert_eq!(
        count(
            &db.pool,
            "SELECT count(*) FROM sentinel_rate_limit_requests WHERE user_id IS NOT NULL"
        )
        .await,
        30
    );
    assert_eq!(
        count(
            &db.pool,
            "SELECT count(*) FROM sentinel_rate_limit_requests"
        )
        .await,
        45
    );

    // An incorrect key claims nothing.
    let before = count(
        &db.pool,
        "SELECT count(*) FROM sentinel_rate_limit_requests WHERE user_id IS NOT NULL",
    )
    .await;
    assert!(vault.import_legacy(user, &other, &resolver).await.is_err());
    assert_eq!(
        count(
            &db.pool,
            "SELECT count(*) FROM sentinel_rate_limit_requests WHERE user_id IS NOT NULL"
        )
        .await,
        before
    );
}

// ---------------------------------------------------------------------------------------
// No plaintext at rest
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn a_full_dump_of_the_database_holds_no_plaintext_key() {
    let db = TestDb::migrated("vault").await;
    let vault = Vault::new(db.pool.clone(), keyring(KEY_A));
    let keys: Vec<ApiKey> = (0..4).map(|_| random_key()).collect();
    let resolver = MapResolver::with(&keys.iter().map(|k| (k, 11)).collect::<Vec<_>>());
    let user = new_user(&db.pool).await;
    for k in &keys {
        vault.add_key(user, k, &resolver).await.unwrap();
        vault.user_id_for_key(k, &resolver).await.unwrap();
    }
    vault
        .import_legacy(user, &keys[0], &resolver)
        .await
        .unwrap();

    // Every row of every table, as text.
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT quote_ident(table_schema) || '.' || quote_ident(table_name) \
         FROM information_schema.tables \
         WHERE table_schema NOT IN ('pg_catalog', 'information_schema')",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert!(tables.len() >= 5, "{tables:?}");
    let mut dump = String::new();
    for t in &tables {
        let rows: Vec<String> = sqlx::query_scalar(&format!("SELECT t::text FROM {t} t"))
            .fetch_all(&db.pool)
            .await
            .unwrap();
        dump.extend(rows.into_iter().map(|r| r + "\n"));
    }
    // And pg_dump's view of it, where the tool is installed.
    if let Ok(out) = tokio::process::Command::new("pg_dump")
        .arg(&db.url)
        .output()
        .await
        && out.status.success()
    {
        dump.push_str(&String::from_utf8_lossy(&out.stdout));
    }
    for k in &keys {
        assert!(dump.contains(k.hash().as_str()), "the dump holds the rows");
        assert!(!dump.contains(k.expose()), "plaintext key in the dump");
        let lower = k.expose().to_ascii_lowercase();
        assert!(
            !dump.to_ascii_lowercase().contains(&lower),
            "a case variant leaked"
        );
    }
}

// ---------------------------------------------------------------------------------------
// Owner resolution
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn user_id_for_key_uses_the_mapping_then_torn_and_remembers() {
    let db = TestDb::migrated("vault").await;
    let key = random_key();
    let resolver = MapResolver::with(&[(&key, 42)]);
    let vault = Vault::new(db.pool.clone(), keyring(KEY_A));
    assert_eq!(
        vault.user_id_for_key(&key, &resolver).await.unwrap(),
        TornUserId::new(42)
    );
    assert_eq!(resolver.calls(), 1);
    assert_eq!(
        count(&db.pool, "SELECT count(*) FROM sentinel_api_key_user_mapping WHERE torn_user_id = 42 AND user_id IS NULL").await,
        1,
        "stored, with no account"
    );
    // Another process (an empty cache) finds it in the mapping.
    let other = Vault::new(db.pool.clone(), keyring(KEY_A));
    assert_eq!(
        other.user_id_for_key(&key, &resolver).await.unwrap(),
        TornUserId::new(42)
    );
    assert_eq!(resolver.calls(), 1);
    // An incorrect key is Torn's error, and not remembered.
    let wrong = random_key();
    assert!(matches!(
        vault.user_id_for_key(&wrong, &resolver).await,
        Err(Error::Torn { .. })
    ));
    // A key stored by an account maps without Torn.
    let stored = random_key();
    resolver.insert(&stored, 77);
    let user = new_user(&db.pool).await;
    other.add_key(user, &stored, &resolver).await.unwrap();
    let calls = resolver.calls();
    let third = Vault::new(db.pool.clone(), keyring(KEY_A));
    assert_eq!(
        third.user_id_for_key(&stored, &resolver).await.unwrap(),
        TornUserId::new(77)
    );
    assert_eq!(resolver.calls(), calls);
}

#[tokio::test]
async fn the_owner_cache_answers_while_postgres_is_unavailable() {
    let db = TestDb::migrated("vault").await;
    let (cached, unknown) = (random_key(), random_key());
    let resolver = MapResolver::with(&[(&cached, 5), (&unknown, 6)]);
    // A vault of its own pool, with short waits, on a database this test then drops.
    let config = DatabaseConfig::new(&db.url)
        .unwrap()
        .acquire_timeout(Duration::from_millis(500));
    let vault = Vault::new(config.connect().await.unwrap(), keyring(KEY_A));
    assert_eq!(
        vault.user_id_for_key(&cached, &resolver).await.unwrap(),
        TornUserId::new(5)
    );

    let mut admin = PgConnection::connect(&common::pg::admin_url())
        .await
        .unwrap();
    sqlx::query(&format!("DROP DATABASE {} WITH (FORCE)", db.name))
        .execute(&mut admin)
        .await
        .unwrap();
    assert!(
        vault
            .list_keys(AppUserId::new(uuid::Uuid::new_v4()))
            .await
            .is_err(),
        "postgres is really gone for this vault"
    );

    let calls = resolver.calls();
    let started = Instant::now();
    assert_eq!(
        vault.user_id_for_key(&cached, &resolver).await.unwrap(),
        TornUserId::new(5)
    );
    assert!(
        started.elapsed() < Duration::from_millis(100),
        "served from memory"
    );
    assert_eq!(resolver.calls(), calls);
    // A key never seen is still resolved (by Torn), though it cannot be stored.
    assert_eq!(
        vault.user_id_for_key(&unknown, &resolver).await.unwrap(),
        TornUserId::new(6)
    );
    assert_eq!(resolver.calls(), calls + 1);

    // A closed pool: the same.
    vault.pool().close().await;
    assert_eq!(
        vault.user_id_for_key(&cached, &resolver).await.unwrap(),
        TornUserId::new(5)
    );
    assert_eq!(
        vault.user_id_for_key(&unknown, &resolver).await.unwrap(),
        TornUserId::new(6)
    );
    assert_eq!(resolver.calls(), calls + 1);
}

#[tokio::test]
async fn connecting_to_an_unreachable_server_fails_within_the_timeout_without_the_password() {
    let config = DatabaseConfig::new("postgres://app:hunter2secret@127.0.0.1:9/nowhere")
        .unwrap()
        .acquire_timeout(Duration::from_millis(300));
    let started = Instant::now();
    let err = config.connect().await.unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(matches!(err, Error::DatabaseConnect { .. }), "{err:?}");
    assert!(
        err.to_string().contains("127.0.0.1:9"),
        "the error names host and port: {err}"
    );
    let mut chain = format!("{err} {err:?}");
    let mut source = std::error::Error::source(&err);
    while let Some(s) = source {
        chain.push_str(&s.to_string());
        source = s.source();
    }
    assert!(!chain.contains("hunter2secret"), "{chain}");
    assert!(!format!("{config:?}").contains("hunter2secret"));
}

// ---------------------------------------------------------------------------------------
// The CLI
// ---------------------------------------------------------------------------------------

type StubKeys = Arc<HashMap<String, (u64, u8)>>;

async fn info(
    axum::extract::State(keys): axum::extract::State<StubKeys>,
    headers: axum::http::HeaderMap,
) -> axum::Json<Value> {
    let key = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("ApiKey "))
        .unwrap_or_default();
    axum::Json(match keys.get(key) {
        Some((owner, level)) => serde_json::json!({
            "info": {"user": {"id": owner}, "access": {"level": level, "type": "x"}}
        }),
        None => serde_json::json!({"error": {"code": 2, "error": "Incorrect Key"}}),
    })
}

/// Torn's `/v2/key/info` for a fixed set of keys; anything else is code 2.
async fn torn_stub(keys: &[(&ApiKey, u64, u8)]) -> String {
    let keys: StubKeys = Arc::new(
        keys.iter()
            .map(|(k, owner, level)| (k.expose().to_owned(), (*owner, *level)))
            .collect(),
    );
    let app = axum::Router::new()
        .route("/v2/key/info", axum::routing::get(info))
        .with_state(keys);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}")
}

struct Cli {
    database_url: String,
    torn: String,
    encryption_key: String,
}

struct Ran {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Ran {
    fn json(&self) -> Vec<Value> {
        self.stdout
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect()
    }
}

impl Cli {
    async fn run(&self, args: &[&str], stdin: &str, env: &[(&str, &str)]) -> Ran {
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_torn-quota"));
        cmd.args(args)
            .env("DATABASE_URL", &self.database_url)
            .env("TORN_API_BASE_URL", &self.torn)
            .env("TORN_QUOTA_ENCRYPTION_KEY", &self.encryption_key)
            .env_remove("TORN_QUOTA_CONFIG")
            .env_remove("TORN_API_KEY")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("run torn-quota");
        let mut input = child.stdin.take().unwrap();
        input.write_all(stdin.as_bytes()).await.unwrap();
        drop(input);
        let out = child.wait_with_output().await.unwrap();
        Ran {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

// One operator session end to end: each step starts from the state the previous one left.
#[allow(clippy::too_many_lines)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_migrates_adds_lists_removes_rotates_and_imports() {
    let db = TestDb::new("vault").await;
    let (good, second, legacy, wrong) = (random_key(), random_key(), random_key(), random_key());
    let torn = torn_stub(&[(&good, 4, 4), (&second, 4, 3), (&legacy, 9, 2)]).await;
    let cli = Cli {
        database_url: db.url.clone(),
        torn,
        encryption_key: format!("old:{KEY_A}"),
    };

    let first = cli.run(&["migrate"], "", &[]).await;
    assert_eq!(first.code, Some(0), "{}", first.stderr);
    assert_eq!(first.json()[0]["applied"].as_array().unwrap().len(), 7);
    let second_run = cli.run(&["migrate"], "", &[]).await;
    assert_eq!(second_run.code, Some(0));
    assert_eq!(second_run.json()[0]["applied"].as_array().unwrap().len(), 0);
    assert_eq!(second_run.json()[0]["already_applied"], 7);

    let user = new_user(&db.pool).await.to_string();
    let add = |key: &ApiKey| format!("{}\n", key.expose());

    let added = cli
        .run(&["keys", "add", "--user", &user], &add(&good), &[])
        .await;
    assert_eq!(added.code, Some(0), "{}", added.stderr);
    let row = &added.json()[0];
    assert_eq!(row["created"], true);
    assert_eq!(row["owner"], 4);
    assert_eq!(row["access_level"], 4);
    assert_eq!(row["key"], good.masked());
    assert!(!added.stdout.contains(good.expose()) && !added.stderr.contains(good.expose()));
    let again = cli
        .run(&["keys", "add", "--user", &user], &add(&good), &[])
        .await;
    assert_eq!(again.code, Some(0));
    assert_eq!(again.json()[0]["created"], false);
    assert_eq!(again.json()[0]["id"], row["id"]);

    // Malformed and incorrect keys are refused with exit 1, and nothing is stored.
    for (input, needle) in [
        ("short\n", "16 characters"),
        ("AAAA-bbbb-CCCC-1\n", "A-Z"),
        ("", "no key"),
        (
            &format!("{} {}\n", good.expose(), second.expose()),
            "more than one",
        ),
        // A second key far down the input is still a second key: stdin is read to its end.
        (
            &format!(
                "{}\n{}{}\n",
                good.expose(),
                " ".repeat(4090),
                second.expose()
            ),
            "more than",
        ),
        (
            &format!("{}\n{}", good.expose(), "\n".repeat(5000)),
            "4096 bytes",
        ),
        (&add(&wrong), "incorrect"),
    ] {
        let refused = cli.run(&["keys", "add", "--user", &user], input, &[]).await;
        assert_eq!(refused.code, Some(1), "{input:?}: {}", refused.stderr);
        assert!(
            refused.stderr.contains(needle),
            "{input:?}: {}",
            refused.stderr
        );
        assert_eq!(refused.json()[0]["stored"], false);
        assert!(!refused.stderr.contains(wrong.expose()));
    }
    assert_eq!(
        count(&db.pool, "SELECT count(*) FROM sentinel_user_keys").await,
        1
    );
    // An account that does not exist is an error (exit 2), not a refusal of the key.
    let stranger = uuid::Uuid::new_v4().to_string();
    let no_account = cli
        .run(&["keys", "add", "--user", &stranger], &add(&second), &[])
        .await;
    assert_eq!(no_account.code, Some(2));
    assert!(
        no_account.stderr.contains("auth.users"),
        "{}",
        no_account.stderr
    );

    let added2 = cli
        .run(
            &["keys", "add", "--user", &user, "--max-per-minute", "30"],
            &add(&second),
            &[],
        )
        .await;
    assert_eq!(added2.code, Some(0), "{}", added2.stderr);
    assert_eq!(added2.json()[0]["max_requests_per_minute"], 30);
    assert_eq!(added2.json()[0]["primary"], false);

    let listed = cli.run(&["keys", "list", "--user", &user], "", &[]).await;
    assert_eq!(listed.code, Some(0), "{}", listed.stderr);
    let keys = listed.json();
    assert_eq!(keys.len(), 2);
    assert_eq!(keys[0]["key"], good.masked());
    assert_eq!(keys[0]["primary"], true);
    for k in [&good, &second] {
        assert!(!listed.stdout.contains(k.expose()) && !listed.stderr.contains(k.expose()));
    }

    let id = keys[1]["id"].as_str().unwrap().to_owned();
    let primary = cli
        .run(&["keys", "primary", "--user", &user, "--id", &id], "", &[])
        .await;
    assert_eq!(primary.code, Some(0), "{}", primary.stderr);
    let removed = cli
        .run(&["keys", "remove", "--user", &user, "--id", &id], "", &[])
        .await;
    assert_eq!(removed.code, Some(0), "{}", removed.stderr);
    assert_eq!(removed.json()[0]["removed"], true);
    let twice = cli
        .run(&["keys", "remove", "--user", &user, "--id", &id], "", &[])
        .await;
    assert_eq!(twice.code, Some(1));
    let listed = cli.run(&["keys", "list", "--user", &user], "", &[]).await;
    assert_eq!(listed.json().len(), 1);
    assert_eq!(
        listed.json()[0]["primary"],
        true,
        "the remaining key took over"
    );

    // import-legacy: the key in TORN_API_KEY, and its legacy rows.
    sqlx::query(
        "INSERT INTO sentinel_rate_limit_requests (api_key_hash) \
         SELECT $1 FROM generate_series(1, 12)",
    )
    .bind(legacy.hash().as_str())
    .execute(&db.pool)
    .await
    .unwrap();
    let imported = cli
        .run(
            &["import-legacy", "--user", &user],
            "",
            &[("TORN_API_KEY", legacy.expose())],
        )
        .await;
    assert_eq!(imported.code, Some(0), "{}", imported.stderr);
    assert_eq!(imported.json()[0]["rate_limit_rows"], 12);
    assert_eq!(imported.json()[0]["owner"], 9);
    assert!(
        !imported.stdout.contains(legacy.expose()) && !imported.stderr.contains(legacy.expose())
    );
    let no_key = cli.run(&["import-legacy", "--user", &user], "", &[]).await;
    assert_eq!(no_key.code, Some(2));
    assert!(no_key.stderr.contains("TORN_API_KEY"), "{}", no_key.stderr);

    // Rotation to a new key; then the old key can go.
    let both = format!("new:{KEY_B},old:{KEY_A}");
    let rotated = cli
        .run(
            &["keys", "rotate", "--batch-size", "1"],
            "",
            &[("TORN_QUOTA_ENCRYPTION_KEY", &both)],
        )
        .await;
    assert_eq!(rotated.code, Some(0), "{}", rotated.stderr);
    assert_eq!(
        rotated.json()[0]["rotated"],
        2,
        "the two live rows; the removed one holds no ciphertext"
    );
    assert!(rotated.stderr.contains("rotated 2/2"), "{}", rotated.stderr);
    let new_only = format!("new:{KEY_B}");
    let listed = cli
        .run(
            &["keys", "list", "--user", &user],
            "",
            &[("TORN_QUOTA_ENCRYPTION_KEY", &new_only)],
        )
        .await;
    assert_eq!(listed.code, Some(0), "{}", listed.stderr);
    assert!(
        listed
            .json()
            .iter()
            .all(|k| k["key"].is_string() && k["encryption_key"] == "new")
    );
}

/// Arguments, extra environment, and what stderr must say.
type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], &'a str);

#[tokio::test]
async fn the_cli_refuses_bad_settings_naming_them_without_echoing_secrets() {
    let cli = Cli {
        database_url: "postgres://app:hunter2secret@127.0.0.1:9/nowhere".into(),
        torn: "http://127.0.0.1:9".into(),
        encryption_key: KEY_A.into(),
    };
    let user = uuid::Uuid::new_v4().to_string();
    let cases: [Case<'_>; 6] = [
        (
            &["migrate"],
            &[("DATABASE_URL", "mysql://app:hunter2secret@h/db")],
            "DATABASE_URL",
        ),
        (
            &["keys", "list", "--user", &user],
            &[("TORN_QUOTA_ENCRYPTION_KEY", "hunter2secret")],
            "TORN_QUOTA_ENCRYPTION_KEY",
        ),
        (
            &["keys", "list", "--user", &user],
            &[("TORN_QUOTA_ENCRYPTION_KEY", "")],
            "TORN_QUOTA_ENCRYPTION_KEY",
        ),
        (
            &["migrate"],
            &[("TORN_QUOTA_DATABASE_ACQUIRE_TIMEOUT_MS", "300")],
            "cannot connect to PostgreSQL at 127.0.0.1:9",
        ),
        // The driver would log an unknown parameter's value at WARN, and ignore it.
        (
            &["migrate"],
            &[
                (
                    "DATABASE_URL",
                    "postgres://app@127.0.0.1:9/nowhere?sslpassword=hunter2secret",
                ),
                ("RUST_LOG", "trace"),
            ],
            "sslpassword",
        ),
        (
            &["migrate"],
            &[
                (
                    "DATABASE_URL",
                    "postgres://app@127.0.0.1:9/nowhere?sslmode=disable&options=-c%20x%3Dhunter2secret",
                ),
                ("TORN_QUOTA_DATABASE_ACQUIRE_TIMEOUT_MS", "300"),
                ("RUST_LOG", "trace"),
            ],
            "127.0.0.1:9",
        ),
    ];
    for (args, env, needle) in cases {
        let ran = cli.run(args, "", env).await;
        assert_eq!(ran.code, Some(2), "{args:?}: {}", ran.stderr);
        assert!(ran.stderr.contains(needle), "{args:?}: {}", ran.stderr);
        assert!(!ran.stderr.contains("hunter2secret"), "{}", ran.stderr);
        assert!(!ran.stdout.contains("hunter2secret"));
    }
}

// ---------------------------------------------------------------------------------------
// Adding keys asks Torn now, whatever a memo says
// ---------------------------------------------------------------------------------------

/// Keys in the simulator: one per state, each owner its own, plus one Torn does not know.
struct StateKeys {
    ok: ApiKey,
    paused: ApiKey,
    inactive: ApiKey,
    jail: ApiKey,
    wrong: ApiKey,
}

impl StateKeys {
    fn new() -> Self {
        Self {
            ok: random_key(),
            paused: random_key(),
            inactive: random_key(),
            jail: random_key(),
            wrong: random_key(),
        }
    }

    fn sim_keys(&self) -> Vec<torn_quota::sim::SimKey> {
        use torn_quota::sim::{KeyState, SimKey};
        [
            (&self.ok, 41, KeyState::Ok),
            (&self.paused, 42, KeyState::Paused),
            (&self.inactive, 43, KeyState::Inactive),
            (&self.jail, 44, KeyState::Jail),
        ]
        .into_iter()
        .map(|(k, owner, state)| {
            SimKey::new(k.expose(), TornUserId::new(owner), AccessLevel::Full).with_state(state)
        })
        .collect()
    }

    /// The refused ones, with the code Torn answers.
    fn refused(&self) -> [(&ApiKey, u16); 4] {
        [
            (&self.paused, 18),
            (&self.inactive, 13),
            (&self.jail, 10),
            (&self.wrong, 2),
        ]
    }

    fn all(&self) -> [&ApiKey; 5] {
        [
            &self.ok,
            &self.paused,
            &self.inactive,
            &self.jail,
            &self.wrong,
        ]
    }
}

/// A Redis limiter under a fresh prefix, with every key's shared owner memo saying "owner 7,
/// full access": what another process may have left there up to an hour ago.
async fn limiter_with_stale_memos(name: &str, keys: &[&ApiKey]) -> (torn_quota::Limiter, String) {
    common::redis_conn().await;
    let config = common::config(name, 100, 60_000).build().unwrap();
    let prefix = config.key_prefix().to_owned();
    let limiter = torn_quota::Limiter::redis(config).unwrap();
    for key in keys {
        limiter
            .remember(
                &format!("owner:{}", key.hash()),
                "7:4",
                Duration::from_secs(3600),
            )
            .await
            .unwrap();
    }
    (limiter, prefix)
}

fn key_info_requests(sim: &torn_quota::sim::SimHandle, key: &ApiKey) -> u64 {
    sim.counters()
        .requests_by_key
        .get(&key.hash())
        .copied()
        .unwrap_or(0)
}

#[tokio::test]
async fn adding_a_key_asks_torn_now_even_when_the_shared_memo_says_it_is_fine() {
    use torn_quota::sim::{KeyState, SimConfig, Simulator};
    use torn_quota::torn::{TornClient, TornClientConfig};

    let db = TestDb::migrated("vault").await;
    let vault = Vault::new(db.pool.clone(), keyring(KEY_A));
    let keys = StateKeys::new();
    let sim = Simulator::start(keys.sim_keys(), SimConfig::default())
        .await
        .unwrap();
    let (limiter, _) = limiter_with_stale_memos("vault-memo", &keys.all()).await;
    // A client remembers the keys Torn refused and never sends them again; a client of its
    // own for the import stands for another process.
    let new_client = || {
        TornClient::new(
            limiter.clone(),
            TornClientConfig::builder()
                .base_url(sim.base_url())
                .build()
                .unwrap(),
        )
        .unwrap()
    };
    let client = new_client();
    let user = new_user(&db.pool).await;

    for (key, code) in keys.refused() {
        match vault.add_key(user, key, &client).await {
            Err(Error::Torn { code: got, .. }) => assert_eq!(got.get(), code),
            other => panic!("code {code}: expected torn's refusal, got {other:?}"),
        }
        assert_eq!(key_info_requests(&sim, key), 1, "code {code}");
        match vault.import_legacy(user, key, &new_client()).await {
            Err(Error::Torn { code: got, .. }) => assert_eq!(got.get(), code),
            other => panic!("code {code}: expected torn's refusal, got {other:?}"),
        }
        assert_eq!(key_info_requests(&sim, key), 2, "code {code}");
    }
    assert_eq!(
        count(&db.pool, "SELECT count(*) FROM sentinel_user_keys").await,
        0
    );

    // A good key is stored with Torn's answer (owner 41), not the memo's (owner 7).
    let added = vault.add_key(user, &keys.ok, &client).await.unwrap();
    assert!(added.created);
    assert_eq!(added.key.owner, TornUserId::new(41));
    assert_eq!(key_info_requests(&sim, &keys.ok), 1);

    // Disabled with code 2, then paused by its owner: a re-add is refused and the row stays
    // disabled; once Torn accepts the key again, the re-add enables it.
    assert!(
        vault
            .disable_key(added.key.id, TornErrorCode::INCORRECT_KEY)
            .await
            .unwrap()
    );
    assert!(sim.set_key_state(keys.ok.expose(), KeyState::Paused));
    match vault.add_key(user, &keys.ok, &client).await {
        Err(Error::Torn { code, .. }) => assert_eq!(code, TornErrorCode::KEY_PAUSED),
        other => panic!("expected torn's refusal, got {other:?}"),
    }
    assert_eq!(key_info_requests(&sim, &keys.ok), 2);
    let listed = vault.list_keys(user).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert!(listed[0].disabled.is_some(), "still disabled");
    assert!(sim.set_key_state(keys.ok.expose(), KeyState::Ok));
    let again = vault.add_key(user, &keys.ok, &new_client()).await.unwrap();
    assert!(!again.created);
    assert!(again.reenabled);
    assert_eq!(again.key.id, added.key.id);
    assert!(again.key.disabled.is_none());
    assert_eq!(key_info_requests(&sim, &keys.ok), 3);
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_asks_torn_now_refuses_paused_jailed_inactive_and_incorrect_keys() {
    use torn_quota::sim::{KeyState, SimConfig, Simulator};

    let db = TestDb::migrated("vault").await;
    let keys = StateKeys::new();
    let sim = Simulator::start(keys.sim_keys(), SimConfig::default())
        .await
        .unwrap();
    let (limiter, prefix) = limiter_with_stale_memos("vault-cli-memo", &keys.all()).await;
    let cli = Cli {
        database_url: db.url.clone(),
        torn: sim.base_url(),
        encryption_key: KEY_A.into(),
    };
    let redis = common::redis_url();
    let env = [
        ("REDIS_URL", redis.as_str()),
        ("TORN_QUOTA_KEY_PREFIX", prefix.as_str()),
    ];
    let user = new_user(&db.pool).await.to_string();
    let line = |key: &ApiKey| format!("{}\n", key.expose());

    for (key, code) in keys.refused() {
        let ran = cli
            .run(&["keys", "add", "--user", &user], &line(key), &env)
            .await;
        assert_eq!(ran.code, Some(1), "code {code}: {}", ran.stderr);
        assert_eq!(ran.json()[0]["stored"], false, "code {code}");
        assert_eq!(ran.json()[0]["torn_code"], code, "code {code}");
        assert!(ran.stderr.contains("refused"), "{}", ran.stderr);
        assert!(!ran.stderr.contains(key.expose()), "{}", ran.stderr);
        assert_eq!(key_info_requests(&sim, key), 1, "code {code}");

        let mut with_key = env.to_vec();
        with_key.push(("TORN_API_KEY", key.expose()));
        let ran = cli
            .run(&["import-legacy", "--user", &user], "", &with_key)
            .await;
        assert_eq!(ran.code, Some(1), "code {code}: {}", ran.stderr);
        assert_eq!(ran.json()[0]["torn_code"], code, "code {code}");
        assert_eq!(key_info_requests(&sim, key), 2, "code {code}");
    }
    assert_eq!(
        count(&db.pool, "SELECT count(*) FROM sentinel_user_keys").await,
        0
    );

    let added = cli
        .run(&["keys", "add", "--user", &user], &line(&keys.ok), &env)
        .await;
    assert_eq!(added.code, Some(0), "{}", added.stderr);
    assert_eq!(added.json()[0]["owner"], 41, "torn's owner, not the memo's");
    assert_eq!(key_info_requests(&sim, &keys.ok), 1);
    assert_eq!(
        limiter.status(TornUserId::new(41)).await.unwrap().used,
        1,
        "the key-info call is counted on its owner's shared bucket"
    );
    sqlx::query("UPDATE sentinel_user_keys SET disabled_at = now(), disabled_reason = 2")
        .execute(&db.pool)
        .await
        .unwrap();

    assert!(sim.set_key_state(keys.ok.expose(), KeyState::Paused));
    let refused = cli
        .run(&["keys", "add", "--user", &user], &line(&keys.ok), &env)
        .await;
    assert_eq!(refused.code, Some(1), "{}", refused.stderr);
    assert!(
        !refused.stderr.contains("nothing changed"),
        "{}",
        refused.stderr
    );
    assert_eq!(key_info_requests(&sim, &keys.ok), 2);
    assert_eq!(
        count(
            &db.pool,
            "SELECT count(*) FROM sentinel_user_keys WHERE disabled_at IS NOT NULL"
        )
        .await,
        1,
        "a disabled row stays disabled while Torn refuses the key"
    );

    assert!(sim.set_key_state(keys.ok.expose(), KeyState::Ok));
    let back = cli
        .run(&["keys", "add", "--user", &user], &line(&keys.ok), &env)
        .await;
    assert_eq!(back.code, Some(0), "{}", back.stderr);
    assert!(back.stderr.contains("re-enabled"), "{}", back.stderr);
    assert_eq!(back.json()[0]["disabled_at"], Value::Null);
    assert_eq!(key_info_requests(&sim, &keys.ok), 3);
    sim.shutdown().await;
}

// ---------------------------------------------------------------------------------------
// Secrets in memory
// ---------------------------------------------------------------------------------------

/// The cipher's key schedule (`aes`) and the GHASH key (`ghash`, `polyval`) are wiped on drop
/// only when those crates are built with their `zeroize` features; `aes-gcm`'s own feature
/// does not turn them on. Asked of cargo's resolved build (host platform), so the test
/// follows Cargo.toml and Cargo.lock.
#[test]
fn the_cipher_crates_are_built_to_wipe_their_keys() {
    for name in ["aes", "ghash", "polyval", "aes-gcm"] {
        let out = std::process::Command::new(env!("CARGO"))
            .args([
                "tree",
                "--offline",
                "--all-features",
                "--invert",
                name,
                "--depth",
                "0",
                "--prefix",
                "none",
                "--format",
                "{p}|{f}",
                "--manifest-path",
                concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml"),
            ])
            .output()
            .expect("run cargo tree");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout);
        let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
        assert!(!lines.is_empty(), "{name} is not in the build");
        for line in lines {
            let (package, features) = line.split_once('|').unwrap_or((line, ""));
            assert!(
                features.split(',').any(|f| f == "zeroize"),
                "{package} is built without zeroize: [{features}]"
            );
        }
    }
}
