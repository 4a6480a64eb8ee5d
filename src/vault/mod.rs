//! The key vault: players' Torn API keys in PostgreSQL, encrypted with AES-256-GCM, and a
//! mapping from a key's hash to its owner so that a key seen in a request resolves without
//! calling Torn again.
//!
//! ```no_run
//! # async fn run(resolver: impl torn_quota::vault::ResolveOwner) -> Result<(), torn_quota::Error> {
//! use torn_quota::ApiKey;
//! use torn_quota::vault::{Vault, VaultConfig};
//! use torn_quota::AppUserId;
//!
//! let vault = Vault::connect(&VaultConfig::from_env()?).await?;
//! torn_quota::vault::migrate(vault.pool()).await?;
//!
//! let user: AppUserId = "6f0262c8-2836-4666-8f3a-7c1b2d3e4f50".parse()?;
//! let key: ApiKey = "AbCdEfGh12345678".parse()?;
//! let added = vault.add_key(user, &key, &resolver).await?;
//! println!("stored {key} for Torn player {}", added.key.owner); // the key prints masked
//!
//! for live in vault.live_keys(&[user]).await? {
//!     // live.key is the decrypted ApiKey, ready for the Torn client.
//! }
//! # Ok(()) }
//! ```
//!
//! # Settings
//!
//! | name | meaning |
//! |---|---|
//! | `DATABASE_URL` | `postgres://user:password@host:5432/database`; required. Never printed with its password |
//! | `TORN_QUOTA_ENCRYPTION_KEY` | the encryption keys, format in [`Keyring`]; required by every command that reads or writes keys |
//! | `TORN_QUOTA_DATABASE_MAX_CONNECTIONS` | pool size, default 10 |
//! | `TORN_QUOTA_DATABASE_ACQUIRE_TIMEOUT_MS` | wait for a connection (connecting included), default 5000 |
//! | `TORN_QUOTA_DATABASE_STATEMENT_TIMEOUT_MS` | PostgreSQL's `statement_timeout`, default 30000, 0 for none |

//!
//! # Secrets in memory: best effort
//!
//! Keys are wiped when the values holding them drop: [`ApiKey`], the settings holding
//! `DATABASE_URL` and `TORN_QUOTA_ENCRYPTION_KEY`, the keyring, and the cipher state itself
//! (`aes`, `ghash` and `polyval` are built with their `zeroize` features). That is the most a
//! library can promise, not a guarantee: a plain key also passes through buffers it does not
//! own — the `Authorization` header inside reqwest and hyper, their connection buffers,
//! sqlx's buffers for `DATABASE_URL`, stdin's buffer in `keys add` — and the allocator may
//! keep copies from before a buffer grew. Those are freed, not wiped. A removed key's
//! ciphertext is destroyed in the table; PostgreSQL keeps the old row version until VACUUM,
//! and backups keep theirs.

mod config;
mod crypto;
mod migrate;
mod store;

use std::fmt;
use std::str::FromStr;

pub use config::{DatabaseConfig, DatabaseUrl, VaultConfig};
pub use crypto::{ENCRYPTION_KEY_SETTING, EncryptionKeyId, Keyring};
pub use migrate::{MIGRATOR, MigrationInfo, MigrationReport, migrate};
pub use store::{
    AddOptions, Added, Disabled, Imported, LiveKey, RotateProgress, RotateReport, StoredKey, Vault,
};

use crate::error::{Error, Result};
use crate::identity::ApiKey;

/// The account that stored a key (the identity types live together in
/// [`identity`](crate::identity)).
pub use crate::identity::AppUserId;

/// One stored key's row id (`sentinel_user_keys.id`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StoredKeyId(uuid::Uuid);

impl StoredKeyId {
    /// Wraps a row id.
    pub const fn new(id: uuid::Uuid) -> Self {
        Self(id)
    }
    /// The UUID.
    pub const fn get(self) -> uuid::Uuid {
        self.0
    }
}

impl fmt::Display for StoredKeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.hyphenated().fmt(f)
    }
}

impl FromStr for StoredKeyId {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        uuid::Uuid::parse_str(s.trim())
            .map(Self)
            .map_err(|_| Error::InvalidArgument {
                name: "id",
                reason: format!("'{s}' is not a key id (a UUID)"),
            })
    }
}

/// What Torn says about a key (the Torn client's type: one shape for both).
pub use crate::identity::KeyInfo;

#[cfg(feature = "torn")]
impl ResolveOwner for crate::torn::TornClient {
    /// [`TornClient::owner_of`](crate::torn::TornClient::owner_of): the cache, the mapping
    /// every process shares, else one call to Torn.
    async fn resolve(&self, key: &ApiKey) -> Result<KeyInfo> {
        self.owner_of(key).await
    }

    /// [`TornClient::key_info`](crate::torn::TornClient::key_info): one counted call to
    /// `/v2/key/info` now. The owner memo (up to an hour old) says who owns a key, not
    /// whether Torn still serves it.
    async fn verify(&self, key: &ApiKey) -> Result<KeyInfo> {
        self.key_info(key).await
    }
}

/// Finds a key's owner and access level, normally with one call to Torn's `/v2/key/info`.
///
/// An incorrect key must be an error ([`Error::Torn`] with code 2 from the Torn client): the
/// vault stores nothing for a key its resolver refuses.
///
/// ```
/// use torn_quota::{AccessLevel, ApiKey};
/// use torn_quota::vault::{KeyInfo, ResolveOwner};
/// use torn_quota::{Error, TornUserId};
///
/// /// Every key belongs to player 4, with full access.
/// struct Everyone4;
///
/// impl ResolveOwner for Everyone4 {
///     async fn resolve(&self, _key: &ApiKey) -> Result<KeyInfo, Error> {
///         Ok(KeyInfo { owner: TornUserId::new(4), access: AccessLevel::Full })
///     }
/// }
/// ```
pub trait ResolveOwner: Sync {
    /// The key's owner and access level, or why it cannot be used. May answer from a cache:
    /// a key's owner never changes.
    fn resolve(&self, key: &ApiKey) -> impl Future<Output = Result<KeyInfo>> + Send;

    /// Asks Torn now, never a cache: whether the key works today, its owner and its access
    /// level. The vault calls this before it stores or re-enables a key, because a key
    /// remembered as fine may since have been paused, jailed or deleted. The default is
    /// [`resolve`](Self::resolve), right for a resolver that keeps no cache.
    fn verify(&self, key: &ApiKey) -> impl Future<Output = Result<KeyInfo>> + Send {
        self.resolve(key)
    }
}

impl<R: ResolveOwner + ?Sized> ResolveOwner for &R {
    fn resolve(&self, key: &ApiKey) -> impl Future<Output = Result<KeyInfo>> + Send {
        (**self).resolve(key)
    }

    fn verify(&self, key: &ApiKey) -> impl Future<Output = Result<KeyInfo>> + Send {
        (**self).verify(key)
    }
}
