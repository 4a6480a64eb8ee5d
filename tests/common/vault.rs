//! What the key-vault tests share: encryption keys, random Torn keys, accounts, and an
//! in-process owner resolver.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use rand::Rng;
use sqlx::PgPool;
use torn_quota::torn::TornErrorCode;
use torn_quota::vault::{AppUserId, KeyInfo, Keyring, ResolveOwner};
use torn_quota::{AccessLevel, ApiKey};
use torn_quota::{Error, TornUserId};

/// A 32-byte encryption key, base64 (the keyring's `id:key` setting names it).
pub const KEY_A: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
/// Another 32-byte encryption key, for rotation.
pub const KEY_B: &str = "ICEiIyQlJicoKSorLC0uLzAxMjM0NTY3ODk6Ozw9Pj8=";

/// The keyring a setting describes; panics on a bad one (the tests write them).
pub fn keyring(setting: &str) -> Keyring {
    Keyring::parse(setting).expect("test keyring")
}

/// A Torn API key no other test uses.
pub fn random_key() -> ApiKey {
    let s: String = rand::rng()
        .sample_iter(rand::distr::Alphanumeric)
        .take(16)
        .map(char::from)
        .collect();
    ApiKey::new(&s).expect("16 alphanumerics")
}

/// A fresh account in `auth.users`.
pub async fn new_user(pool: &PgPool) -> AppUserId {
    let id = uuid::Uuid::new_v4();
    sqlx::query("INSERT INTO auth.users (id) VALUES ($1)")
        .bind(id)
        .execute(pool)
        .await
        .expect("insert account");
    AppUserId::new(id)
}

/// The one number a `SELECT count(*) ...` answers.
pub async fn count(pool: &PgPool, sql: &str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(pool).await.expect(sql)
}

/// Torn, as far as the vault can tell: a map from key to owner and access level. Any other
/// key is incorrect (code 2). Counts its calls, and can be slow on purpose. In process, so
/// the store tests can count and delay calls exactly; the CLI tests use the simulator.
#[derive(Default)]
pub struct MapResolver {
    /// Key to what Torn says of it.
    pub keys: std::sync::Mutex<HashMap<String, KeyInfo>>,
    /// Calls so far.
    pub calls: AtomicUsize,
    /// How long each call takes, if it is slow on purpose.
    pub delay: Option<Duration>,
}

impl MapResolver {
    /// Knows `keys`, each with its owner, at limited access.
    pub fn with(keys: &[(&ApiKey, u64)]) -> Self {
        let r = Self::default();
        for (k, owner) in keys {
            r.insert(k, *owner);
        }
        r
    }

    /// Knows `key` from now on, owned by `owner`.
    pub fn insert(&self, key: &ApiKey, owner: u64) {
        self.keys.lock().unwrap().insert(
            key.expose().to_owned(),
            KeyInfo {
                owner: TornUserId::new(owner),
                access: AccessLevel::Limited,
            },
        );
    }

    /// How many times it was asked.
    pub fn calls(&self) -> usize {
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
