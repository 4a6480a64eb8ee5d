//! The key vault's store: adding keys (once, concurrently, refused), one account's keys
//! from first to last, importing the legacy key, no plaintext at rest, owner resolution and
//! its cache, connection timeouts. Torn is an in-process map of keys (`MapResolver`).
//!
//! Every test creates its own PostgreSQL database (dropped at the end), so tests run in
//! parallel and never see each other's rows; no mock of PostgreSQL anywhere. PostgreSQL:
//! `TORN_QUOTA_TEST_DATABASE_URL`, default `postgres://postgres@127.0.0.1:5432/test` (a role
//! that may create databases).

mod common;

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::pg::TestDb;
use common::vault::{KEY_A, MapResolver, count, keyring, new_user, random_key};
use sqlx::{Connection, PgConnection};
use torn_quota::torn::TornErrorCode;
use torn_quota::vault::{AddOptions, AppUserId, DatabaseConfig, StoredKeyId, Vault};
use torn_quota::{AccessLevel, ApiKey};
use torn_quota::{Error, TornUserId};

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
