//! [`Vault`]: the stored keys, their owners, and the owner cache. One file per concept:
//! the row types (`rows`), adding and importing keys (`add`), listing, removing and
//! flagging them (`manage`), re-encryption (`rotate`) and the SQL helpers (`sql`).

mod add;
mod manage;
mod rotate;
mod rows;
mod sql;

use std::fmt;
use std::time::Duration;

use sqlx::PgPool;

use crate::error::{Error, Result};
use crate::identity::TornUserId;
use crate::identity::{ApiKey, KeyHash};
use crate::vault::config::VaultConfig;
use crate::vault::crypto::Keyring;

use rows::KeyRow;
pub use rows::{
    AddOptions, Added, Disabled, Imported, LiveKey, RotateProgress, RotateReport, StoredKey,
};

/// How many key owners the in-process cache remembers, by default.
const OWNER_CACHE_CAPACITY: u64 = 100_000;
/// How long a cached owner is trusted. A key's owner never changes, so this only bounds how
/// long a correction made in the table takes to reach every process.
const OWNER_CACHE_TTL: Duration = Duration::from_secs(3600);

/// The key vault over a PostgreSQL pool. Cloning is cheap and shares the pool, the keyring
/// and the owner cache.
///
/// Every write that touches several rows of one account (add, remove, set primary) runs in
/// one transaction under a per-account advisory lock, so concurrent callers in any number
/// of processes see one order of events.
#[derive(Clone)]
pub struct Vault {
    pool: PgPool,
    keyring: Keyring,
    owners: moka::future::Cache<KeyHash, TornUserId>,
}

impl Vault {
    /// A vault over an existing pool. The pool's timeouts are the caller's; see
    /// [`DatabaseConfig`](crate::vault::DatabaseConfig) for a pool with explicit ones.
    pub fn new(pool: PgPool, keyring: Keyring) -> Self {
        Self {
            pool,
            keyring,
            owners: owner_cache(OWNER_CACHE_CAPACITY, OWNER_CACHE_TTL),
        }
    }

    /// Connects with the configured timeouts (the server must answer now).
    pub async fn connect(config: &VaultConfig) -> Result<Self> {
        let pool = config.database.connect().await?;
        Ok(Self::new(pool, config.keyring.clone()))
    }

    /// Replaces the owner cache: at most `capacity` owners, each trusted for `ttl`
    /// (defaults: 100,000 and one hour).
    #[must_use]
    pub fn with_owner_cache(mut self, capacity: u64, ttl: Duration) -> Self {
        self.owners = owner_cache(capacity, ttl);
        self
    }

    /// The pool, for [`migrate`](crate::vault::migrate) and the caller's own queries.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// The encryption keys.
    pub fn keyring(&self) -> &Keyring {
        &self.keyring
    }

    fn open_row(&self, row: &KeyRow) -> Result<ApiKey> {
        let sealed = row
            .api_key_encrypted
            .as_deref()
            .ok_or_else(|| Error::Crypto {
                reason: "the key was removed and its ciphertext destroyed".into(),
            })?;
        self.keyring.open_hex(sealed, row.user(), &row.api_key_hash)
    }
}

impl fmt::Debug for Vault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Vault")
            .field("keyring", &self.keyring)
            .field("pool_size", &self.pool.size())
            .field("cached_owners", &self.owners.entry_count())
            .finish()
    }
}

fn owner_cache(capacity: u64, ttl: Duration) -> moka::future::Cache<KeyHash, TornUserId> {
    moka::future::Cache::builder()
        .max_capacity(capacity)
        .time_to_live(ttl)
        .build()
}
