//! Adding a key to the vault asks Torn now (the simulator), whatever a shared owner memo
//! says: through the library and through the CLI, for paused, inactive, jailed and
//! incorrect keys, and for a key that comes back.
//!
//! Every test creates its own PostgreSQL database (dropped at the end), so tests run in
//! parallel and never see each other's rows; no mock of PostgreSQL anywhere. PostgreSQL:
//! `TORN_QUOTA_TEST_DATABASE_URL`, default `postgres://postgres@127.0.0.1:5432/test` (a role
//! that may create databases).

#![cfg(feature = "cli")]

mod common;

use std::time::Duration;

use common::pg::TestDb;
use common::vault::{KEY_A, count, keyring, new_user, random_key};
use common::vault_cli::Cli;
use serde_json::Value;
use torn_quota::torn::TornErrorCode;
use torn_quota::vault::Vault;
use torn_quota::{AccessLevel, ApiKey};
use torn_quota::{Error, TornUserId};

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
