//! [`Vault`]: the stored keys, their owners, and the owner cache.

use std::fmt;
use std::num::{NonZeroU32, NonZeroU64};
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::{PgPool, Postgres, Transaction};

use crate::error::{Error, Result};
use crate::identity::{AccessLevel, ApiKey, AppUserId, KeyHash, KeyInfo, TornUserId};
use crate::torn::{ErrorClass, TornErrorCode};
use crate::vault::config::VaultConfig;
use crate::vault::crypto::{EncryptionKeyId, Keyring};
use crate::vault::{ResolveOwner, StoredKeyId};

/// How many key owners the in-process cache remembers, by default.
const OWNER_CACHE_CAPACITY: u64 = 100_000;
/// How long a cached owner is trusted. A key's owner never changes, so this only bounds how
/// long a correction made in the table takes to reach every process.
const OWNER_CACHE_TTL: Duration = Duration::from_secs(3600);

const COLUMNS: &str = "id, user_id, api_key_encrypted, api_key_hash, key_version, \
     torn_user_id, access_level, max_requests_per_minute, is_primary, created_at, \
     last_used_at, disabled_at, disabled_reason";

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

/// Choices for [`Vault::add_key_with`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AddOptions {
    /// Make the key its account's primary. An account's first key is primary anyway.
    pub primary: bool,
    /// The owner's share for pooled use, per minute; `None` lends the whole limit.
    pub max_requests_per_minute: Option<NonZeroU32>,
}

/// The result of an add: the row, and whether this call created it.
#[derive(Debug, Clone)]
pub struct Added {
    /// The stored row.
    pub key: StoredKey,
    /// False when the account already held the key: the add was a no-op (or re-enabled a
    /// disabled key, see [`Vault::add_key`]).
    pub created: bool,
    /// True when the account held the key disabled and Torn accepted it again, so this add
    /// put it back in use.
    pub reenabled: bool,
}

/// The result of [`Vault::import_legacy`].
#[derive(Debug, Clone)]
pub struct Imported {
    /// The stored key.
    pub added: Added,
    /// Legacy rate-limit rows of the key's hash that got the account id now.
    pub rate_limit_rows: u64,
}

/// Why and since when a key is out of use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Disabled {
    /// When it was disabled.
    pub at: DateTime<Utc>,
    /// The Torn code that disabled it (2 incorrect, 10 jail, 13 inactive, 18 paused), if any.
    pub code: Option<TornErrorCode>,
}

/// A stored key as listings show it: masked, never whole.
#[derive(Debug, Clone)]
pub struct StoredKey {
    /// The row id.
    pub id: StoredKeyId,
    /// The account that stored it.
    pub user: AppUserId,
    /// `****` and the last four characters; `None` when the row cannot be decrypted with the
    /// configured encryption keys (a warning is logged).
    pub masked: Option<String>,
    /// Lowercase hex SHA-256 of the key.
    pub hash: String,
    /// The Torn player who owns the key.
    pub owner: TornUserId,
    /// The key's access level.
    pub access: AccessLevel,
    /// The owner's share for pooled use, per minute; `None` lends the whole limit.
    pub max_requests_per_minute: Option<NonZeroU32>,
    /// Whether it is its account's primary key.
    pub is_primary: bool,
    /// When it was stored.
    pub created_at: DateTime<Utc>,
    /// When it was last used, as recorded by [`Vault::record_use`].
    pub last_used_at: Option<DateTime<Utc>>,
    /// Set while the key is out of use.
    pub disabled: Option<Disabled>,
    /// The encryption key that sealed it.
    pub encryption_key: EncryptionKeyId,
}

/// A usable key, decrypted, for the batch handler.
#[derive(Debug, Clone)]
pub struct LiveKey {
    /// The row id, for [`Vault::record_use`] and [`Vault::disable_key`].
    pub id: StoredKeyId,
    /// The account that stored it.
    pub user: AppUserId,
    /// The Torn player who owns it: the bucket its requests count against.
    pub owner: TornUserId,
    /// Its access level.
    pub access: AccessLevel,
    /// The owner's share for pooled use, per minute; `None` lends the whole limit.
    pub max_requests_per_minute: Option<NonZeroU32>,
    /// Whether it is its account's primary key.
    pub is_primary: bool,
    /// The key itself. Never log it: its `Debug` is masked, [`ApiKey::expose`] is not.
    pub key: ApiKey,
}

/// Where a [`Vault::rotate`] run stands, after each batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RotateProgress {
    /// Rows re-encrypted so far.
    pub done: u64,
    /// Rows that could not be decrypted so far (left as they were).
    pub failed: u64,
    /// Rows under an older key when the run started.
    pub total: u64,
}

/// What a [`Vault::rotate`] run did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RotateReport {
    /// The key every rotated row is now sealed with.
    pub encryption_key: EncryptionKeyId,
    /// Rows re-encrypted.
    pub rotated: u64,
    /// Rows that could not be decrypted with the configured keys: they still need an old
    /// key, so it must stay configured until they are dealt with.
    pub failed: Vec<StoredKeyId>,
}

#[derive(sqlx::FromRow)]
struct KeyRow {
    id: uuid::Uuid,
    user_id: uuid::Uuid,
    /// `None` on a removed row (a tombstone).
    api_key_encrypted: Option<String>,
    api_key_hash: String,
    key_version: String,
    torn_user_id: i64,
    access_level: i16,
    max_requests_per_minute: Option<i32>,
    is_primary: bool,
    created_at: DateTime<Utc>,
    last_used_at: Option<DateTime<Utc>>,
    disabled_at: Option<DateTime<Utc>>,
    disabled_reason: Option<i16>,
}

impl KeyRow {
    fn user(&self) -> AppUserId {
        AppUserId::new(self.user_id)
    }

    fn owner(&self) -> TornUserId {
        // The table's CHECK keeps it non-negative.
        TornUserId::new(u64::try_from(self.torn_user_id).unwrap_or_default())
    }

    fn access(&self) -> Result<AccessLevel> {
        u8::try_from(self.access_level)
            .ok()
            .and_then(AccessLevel::from_number)
            .ok_or_else(|| Error::Database {
                operation: "read key",
                source: sqlx::Error::Decode(
                    format!("access_level {} is not 0 to 4", self.access_level).into(),
                ),
            })
    }

    fn share(&self) -> Option<NonZeroU32> {
        self.max_requests_per_minute
            .and_then(|n| u32::try_from(n).ok())
            .and_then(NonZeroU32::new)
    }

    fn stored(&self, masked: Option<String>) -> Result<StoredKey> {
        Ok(StoredKey {
            id: StoredKeyId::new(self.id),
            user: self.user(),
            masked,
            hash: self.api_key_hash.clone(),
            owner: self.owner(),
            access: self.access()?,
            max_requests_per_minute: self.share(),
            is_primary: self.is_primary,
            created_at: self.created_at,
            last_used_at: self.last_used_at,
            disabled: self.disabled_at.map(|at| Disabled {
                at,
                code: self
                    .disabled_reason
                    .and_then(|c| u16::try_from(c).ok())
                    .map(TornErrorCode::new),
            }),
            encryption_key: EncryptionKeyId::new(&self.key_version).map_err(|_| Error::Crypto {
                reason: format!("row {}: invalid key_version", self.id),
            })?,
        })
    }
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

    /// Stores `key` for `user`: checks it with Torn now ([`ResolveOwner::verify`], one call
    /// every time, whatever a cache says), encrypts it, and writes the key row and the
    /// owner mapping in one transaction.
    ///
    /// - A key Torn refuses (incorrect, paused, jailed, inactive, ...) is an error and leaves
    ///   no new row. When the account already holds it, its row is disabled with Torn's
    ///   code (2, 10, 13 or 18), or stays disabled.
    /// - Adding a key the account already holds returns the existing row with
    ///   `created: false`, however many adds race; its owner and access level take Torn's
    ///   fresh answer.
    /// - Adding a key the account holds but that is disabled enables it when Torn accepts
    ///   it again (`created: false`, `reenabled: true`).
    /// - An account's first key becomes its primary.
    /// - An account unknown to `auth.users` is an [`Error::InvalidArgument`] naming `user`.
    pub async fn add_key<R: ResolveOwner>(
        &self,
        user: AppUserId,
        key: &ApiKey,
        resolver: &R,
    ) -> Result<Added> {
        self.add_key_with(user, key, resolver, AddOptions::default())
            .await
    }

    /// [`add_key`](Self::add_key) with options. The options apply to a new row only; a
    /// no-op add leaves the existing row as it is.
    pub async fn add_key_with<R: ResolveOwner>(
        &self,
        user: AppUserId,
        key: &ApiKey,
        resolver: &R,
        options: AddOptions,
    ) -> Result<Added> {
        Ok(self.add(user, key, resolver, options, false).await?.0)
    }

    /// The migration path of a single-key user of the legacy tool: stores `key` for `user`
    /// as [`add_key`](Self::add_key) does (idempotently), and in the same transaction gives
    /// the account id to the legacy rate-limit rows of the key's hash that have none.
    pub async fn import_legacy<R: ResolveOwner>(
        &self,
        user: AppUserId,
        key: &ApiKey,
        resolver: &R,
    ) -> Result<Imported> {
        let (added, rate_limit_rows) = self
            .add(user, key, resolver, AddOptions::default(), true)
            .await?;
        Ok(Imported {
            added,
            rate_limit_rows,
        })
    }

    async fn add<R: ResolveOwner>(
        &self,
        user: AppUserId,
        key: &ApiKey,
        resolver: &R,
        options: AddOptions,
        import: bool,
    ) -> Result<(Added, u64)> {
        const OP: &str = "add key";
        let hash = key.hash();
        // Torn is asked every time, before anything is written: a row or a memo saying the
        // key was fine an hour ago says nothing about whether Torn serves it now.
        let info = match Box::pin(resolver.verify(key)).await {
            Ok(info) => info,
            Err(e) => {
                if let Error::Torn { code, .. } = &e
                    && matches!(code.class(), ErrorClass::DisableKey { .. })
                {
                    self.disable_held(user, &hash, *code).await?;
                }
                return Err(e);
            }
        };
        let sealed = self.keyring.seal(key, user, &hash)?;

        let mut tx = self.pool.begin().await.map_err(db(OP))?;
        lock_account(&mut tx, user, OP).await?;
        let current: Option<KeyRow> = sqlx::query_as(&format!(
            "SELECT {COLUMNS} FROM sentinel_user_keys \
             WHERE user_id = $1 AND api_key_hash = $2 AND deleted_at IS NULL FOR UPDATE"
        ))
        .bind(user.get())
        .bind(hash.as_str())
        .fetch_optional(&mut *tx)
        .await
        .map_err(db(OP))?;

        let (row, created, reenabled) = if let Some(row) = current {
            let reenabled = row.disabled_at.is_some();
            (refresh(&mut tx, &row, info).await?, false, reenabled)
        } else {
            let new = NewRow {
                user,
                sealed: &sealed,
                hash: &hash,
                key_version: self.keyring.current_id(),
                info,
                options,
            };
            (insert(&mut tx, &new).await?, true, false)
        };
        upsert_mapping(&mut tx, user, &hash, info.owner).await?;

        let legacy_rows = if import {
            sqlx::query(
                "UPDATE sentinel_rate_limit_requests SET user_id = $1 \
                 WHERE api_key_hash = $2 AND user_id IS NULL",
            )
            .bind(user.get())
            .bind(hash.as_str())
            .execute(&mut *tx)
            .await
            .map_err(db("import legacy rate-limit rows"))?
            .rows_affected()
        } else {
            0
        };
        tx.commit().await.map_err(db(OP))?;
        self.owners.insert(hash.clone(), info.owner).await;
        let key = row.stored(Some(key.masked()))?;
        Ok((
            Added {
                key,
                created,
                reenabled,
            },
            legacy_rows,
        ))
    }

    /// Torn refused a key the account may already hold: its row goes (or stays) out of
    /// use with Torn's code, so a re-add can never leave a refused key live.
    async fn disable_held(
        &self,
        user: AppUserId,
        hash: &KeyHash,
        code: TornErrorCode,
    ) -> Result<()> {
        sqlx::query(
            "UPDATE sentinel_user_keys SET disabled_at = COALESCE(disabled_at, now()), \
             disabled_reason = $3 \
             WHERE user_id = $1 AND api_key_hash = $2 AND deleted_at IS NULL",
        )
        .bind(user.get())
        .bind(hash.as_str())
        .bind(torn_code(code))
        .execute(&self.pool)
        .await
        .map_err(db("disable key"))?;
        Ok(())
    }

    /// The account's keys that are not removed (disabled ones included), primary first,
    /// then oldest first. Keys are masked; a row the keyring cannot open is listed with
    /// `masked: None`.
    pub async fn list_keys(&self, user: AppUserId) -> Result<Vec<StoredKey>> {
        let rows: Vec<KeyRow> = sqlx::query_as(&format!(
            "SELECT {COLUMNS} FROM sentinel_user_keys \
             WHERE user_id = $1 AND deleted_at IS NULL \
             ORDER BY is_primary DESC, created_at, id"
        ))
        .bind(user.get())
        .fetch_all(&self.pool)
        .await
        .map_err(db("list keys"))?;
        rows.iter()
            .map(|row| {
                let masked = match self.open_row(row) {
                    Ok(key) => Some(key.masked()),
                    Err(e) => {
                        tracing::warn!(key_id = %row.id, error = %e, "stored key unreadable");
                        None
                    }
                };
                row.stored(masked)
            })
            .collect()
    }

    /// Removes a key (soft delete: the row stays as a tombstone, marked `deleted_at`, with
    /// its hash and owner for history and its ciphertext destroyed). Returns false when
    /// the account holds no such live key. Removing the primary makes the account's oldest
    /// remaining key primary; removing the last holder of a key marks its mapping deleted.
    pub async fn remove_key(&self, user: AppUserId, id: StoredKeyId) -> Result<bool> {
        const OP: &str = "remove key";
        let mut tx = self.pool.begin().await.map_err(db(OP))?;
        lock_account(&mut tx, user, OP).await?;
        let removed: Option<(bool, String)> = sqlx::query_as(
            "WITH old AS (\
               SELECT id, is_primary, api_key_hash FROM sentinel_user_keys \
               WHERE id = $1 AND user_id = $2 AND deleted_at IS NULL FOR UPDATE) \
             UPDATE sentinel_user_keys k SET deleted_at = now(), is_primary = false, \
               api_key_encrypted = NULL \
             FROM old WHERE k.id = old.id \
             RETURNING old.is_primary, old.api_key_hash",
        )
        .bind(id.get())
        .bind(user.get())
        .fetch_optional(&mut *tx)
        .await
        .map_err(db(OP))?;
        let Some((was_primary, hash)) = removed else {
            return Ok(false);
        };
        if was_primary {
            sqlx::query(
                "UPDATE sentinel_user_keys SET is_primary = true WHERE id = (\
                   SELECT id FROM sentinel_user_keys WHERE user_id = $1 AND deleted_at IS NULL \
                   ORDER BY disabled_at IS NOT NULL, created_at, id LIMIT 1)",
            )
            .bind(user.get())
            .execute(&mut *tx)
            .await
            .map_err(db(OP))?;
        }
        sqlx::query(
            "UPDATE sentinel_api_key_user_mapping m SET \
               user_id = COALESCE(holder.user_id, m.user_id), \
               deleted_at = CASE WHEN holder.user_id IS NULL \
                 THEN COALESCE(m.deleted_at, now()) ELSE NULL END \
             FROM (SELECT (SELECT k.user_id FROM sentinel_user_keys k \
                     WHERE k.api_key_hash = $1 AND k.deleted_at IS NULL \
                     ORDER BY k.created_at, k.id LIMIT 1) AS user_id) holder \
             WHERE m.api_key_hash = $1",
        )
        .bind(&hash)
        .execute(&mut *tx)
        .await
        .map_err(db(OP))?;
        tx.commit().await.map_err(db(OP))?;
        Ok(true)
    }

    /// Makes a key its account's primary (the previous primary stops being one).
    pub async fn set_primary(&self, user: AppUserId, id: StoredKeyId) -> Result<()> {
        const OP: &str = "set primary key";
        let mut tx = self.pool.begin().await.map_err(db(OP))?;
        lock_account(&mut tx, user, OP).await?;
        let exists: Option<(uuid::Uuid,)> = sqlx::query_as(
            "SELECT id FROM sentinel_user_keys \
             WHERE id = $1 AND user_id = $2 AND deleted_at IS NULL",
        )
        .bind(id.get())
        .bind(user.get())
        .fetch_optional(&mut *tx)
        .await
        .map_err(db(OP))?;
        if exists.is_none() {
            return Err(no_such_key(user));
        }
        // Two statements: one UPDATE flipping both rows could trip the unique index midway.
        clear_primary(&mut tx, user).await?;
        sqlx::query("UPDATE sentinel_user_keys SET is_primary = true WHERE id = $1")
            .bind(id.get())
            .execute(&mut *tx)
            .await
            .map_err(db(OP))?;
        tx.commit().await.map_err(db(OP))?;
        Ok(())
    }

    /// Sets the owner's share of a key for pooled use (`None`: the whole limit). Returns
    /// false when the account holds no such live key.
    pub async fn set_max_requests_per_minute(
        &self,
        user: AppUserId,
        id: StoredKeyId,
        share: Option<NonZeroU32>,
    ) -> Result<bool> {
        let share = share.map(|n| i32::try_from(n.get()).unwrap_or(i32::MAX));
        let done = sqlx::query(
            "UPDATE sentinel_user_keys SET max_requests_per_minute = $3 \
             WHERE id = $1 AND user_id = $2 AND deleted_at IS NULL",
        )
        .bind(id.get())
        .bind(user.get())
        .bind(share)
        .execute(&self.pool)
        .await
        .map_err(db("set key share"))?;
        Ok(done.rows_affected() > 0)
    }

    /// Takes a key out of use because Torn refused it with `code` (2 incorrect, 10 jail,
    /// 13 inactive, 18 paused). Returns false when there is no such live key. A key already
    /// disabled keeps its first date and takes the newer code.
    pub async fn disable_key(&self, id: StoredKeyId, code: TornErrorCode) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE sentinel_user_keys SET disabled_at = COALESCE(disabled_at, now()), \
             disabled_reason = $2 WHERE id = $1 AND deleted_at IS NULL",
        )
        .bind(id.get())
        .bind(torn_code(code))
        .execute(&self.pool)
        .await
        .map_err(db("disable key"))?;
        Ok(done.rows_affected() > 0)
    }

    /// Disables every live row of a key, whichever accounts stored it: Torn's verdict is
    /// about the key. Returns how many rows it disabled.
    pub async fn disable_key_hash(&self, hash: &KeyHash, code: TornErrorCode) -> Result<u64> {
        let done = sqlx::query(
            "UPDATE sentinel_user_keys SET disabled_at = COALESCE(disabled_at, now()), \
             disabled_reason = $2 WHERE api_key_hash = $1 AND deleted_at IS NULL",
        )
        .bind(hash.as_str())
        .bind(torn_code(code))
        .execute(&self.pool)
        .await
        .map_err(db("disable key"))?;
        Ok(done.rows_affected())
    }

    /// Puts a disabled key back in use (after a re-check found it usable again). Returns
    /// false when there is no such live key.
    pub async fn enable_key(&self, id: StoredKeyId) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE sentinel_user_keys SET disabled_at = NULL, disabled_reason = NULL \
             WHERE id = $1 AND deleted_at IS NULL",
        )
        .bind(id.get())
        .execute(&self.pool)
        .await
        .map_err(db("enable key"))?;
        Ok(done.rows_affected() > 0)
    }

    /// Records that a key was used now.
    pub async fn record_use(&self, id: StoredKeyId) -> Result<()> {
        self.record_uses(&[id]).await
    }

    /// Records that several keys were used now, in one statement.
    pub async fn record_uses(&self, ids: &[StoredKeyId]) -> Result<()> {
        let ids: Vec<uuid::Uuid> = ids.iter().map(|id| id.get()).collect();
        sqlx::query("UPDATE sentinel_user_keys SET last_used_at = now() WHERE id = ANY($1)")
            .bind(ids)
            .execute(&self.pool)
            .await
            .map_err(db("record key use"))?;
        Ok(())
    }

    /// The usable keys (neither removed nor disabled) of these accounts, decrypted, for the
    /// batch handler: by account, primary first. A row that cannot be decrypted fails the
    /// call with an [`Error::Crypto`] naming the row: a misconfigured keyring must be loud,
    /// not an empty pool.
    pub async fn live_keys(&self, users: &[AppUserId]) -> Result<Vec<LiveKey>> {
        let ids: Vec<uuid::Uuid> = users.iter().map(|u| u.get()).collect();
        let rows: Vec<KeyRow> = sqlx::query_as(&format!(
            "SELECT {COLUMNS} FROM sentinel_user_keys \
             WHERE user_id = ANY($1) AND deleted_at IS NULL AND disabled_at IS NULL \
             ORDER BY user_id, is_primary DESC, created_at, id"
        ))
        .bind(ids)
        .fetch_all(&self.pool)
        .await
        .map_err(db("read live keys"))?;
        rows.iter()
            .map(|row| {
                let key = self.open_row(row).map_err(|e| match e {
                    Error::Crypto { reason } => Error::Crypto {
                        reason: format!("key {}: {reason}", row.id),
                    },
                    other => other,
                })?;
                Ok(LiveKey {
                    id: StoredKeyId::new(row.id),
                    user: row.user(),
                    owner: row.owner(),
                    access: row.access()?,
                    max_requests_per_minute: row.share(),
                    is_primary: row.is_primary,
                    key,
                })
            })
            .collect()
    }

    /// The Torn player who owns `key`: from the in-process cache, else the mapping table,
    /// else the resolver (one call to Torn), whose answer is then stored in the mapping.
    ///
    /// The cache comes first because this runs before every Torn call and a key's owner
    /// never changes. While PostgreSQL is unreachable, cached keys keep resolving, and a
    /// key not cached is asked of the resolver (the failed read and write are logged);
    /// only the resolver's own failure is an error.
    pub async fn user_id_for_key<R: ResolveOwner>(
        &self,
        key: &ApiKey,
        resolver: &R,
    ) -> Result<TornUserId> {
        let hash = key.hash();
        if let Some(owner) = self.owners.get(&hash).await {
            return Ok(owner);
        }
        let stored: std::result::Result<Option<(i64,)>, sqlx::Error> = sqlx::query_as(
            "SELECT torn_user_id FROM sentinel_api_key_user_mapping WHERE api_key_hash = $1",
        )
        .bind(hash.as_str())
        .fetch_optional(&self.pool)
        .await;
        match stored {
            Ok(Some((id,))) => {
                let owner = TornUserId::new(u64::try_from(id).unwrap_or_default());
                self.owners.insert(hash, owner).await;
                return Ok(owner);
            }
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(error = %e, key = %key, "key mapping unreadable; asking torn");
            }
        }
        let KeyInfo { owner, .. } = resolver.resolve(key).await?;
        self.owners.insert(hash.clone(), owner).await;
        let written = sqlx::query(
            "INSERT INTO sentinel_api_key_user_mapping (api_key_hash, torn_user_id) \
             VALUES ($1, $2) \
             ON CONFLICT (api_key_hash) DO UPDATE SET torn_user_id = EXCLUDED.torn_user_id",
        )
        .bind(hash.as_str())
        .bind(torn_id(owner)?)
        .execute(&self.pool)
        .await;
        if let Err(e) = written {
            tracing::warn!(error = %e, key = %key, "key mapping not stored");
        }
        Ok(owner)
    }

    /// Re-encrypts every live row (removed ones hold no ciphertext) not yet sealed with the
    /// newest encryption key, `batch_size` rows per transaction, calling `progress` after each batch. Rows the
    /// keyring cannot open are skipped and listed in the report; everything else is done.
    /// Safe to interrupt and run again: it resumes where rows still name an old key.
    pub async fn rotate(
        &self,
        batch_size: NonZeroU64,
        mut progress: impl FnMut(&RotateProgress),
    ) -> Result<RotateReport> {
        const OP: &str = "rotate keys";
        let current = self.keyring.current_id().clone();
        let (total,): (i64,) = sqlx::query_as(
            "SELECT count(*) FROM sentinel_user_keys \
                 WHERE key_version <> $1 AND deleted_at IS NULL",
        )
        .bind(current.as_str())
        .fetch_one(&self.pool)
        .await
        .map_err(db(OP))?;
        let mut state = RotateProgress {
            done: 0,
            failed: 0,
            total: u64::try_from(total).unwrap_or_default(),
        };
        let mut failed = Vec::new();
        let mut after = uuid::Uuid::nil();
        loop {
            let mut tx = self.pool.begin().await.map_err(db(OP))?;
            let rows: Vec<KeyRow> = sqlx::query_as(&format!(
                "SELECT {COLUMNS} FROM sentinel_user_keys \
                 WHERE key_version <> $1 AND id > $2 AND deleted_at IS NULL \
                 ORDER BY id LIMIT $3 FOR UPDATE"
            ))
            .bind(current.as_str())
            .bind(after)
            .bind(i64::try_from(batch_size.get()).unwrap_or(i64::MAX))
            .fetch_all(&mut *tx)
            .await
            .map_err(db(OP))?;
            let Some(last) = rows.last() else {
                break;
            };
            after = last.id;
            let mut ids = Vec::with_capacity(rows.len());
            let mut sealed = Vec::with_capacity(rows.len());
            for row in &rows {
                match self.open_row(row) {
                    Ok(key) => {
                        sealed.push(self.keyring.seal(&key, row.user(), &key.hash())?);
                        ids.push(row.id);
                    }
                    Err(e) => {
                        tracing::warn!(key_id = %row.id, error = %e, "cannot rotate key");
                        failed.push(StoredKeyId::new(row.id));
                        state.failed += 1;
                    }
                }
            }
            let done = sqlx::query(
                "UPDATE sentinel_user_keys k SET api_key_encrypted = u.sealed, key_version = $3 \
                 FROM UNNEST($1::uuid[], $2::text[]) AS u(id, sealed) \
                 WHERE k.id = u.id AND k.deleted_at IS NULL",
            )
            .bind(&ids)
            .bind(&sealed)
            .bind(current.as_str())
            .execute(&mut *tx)
            .await
            .map_err(db(OP))?;
            tx.commit().await.map_err(db(OP))?;
            state.done += done.rows_affected();
            progress(&state);
        }
        Ok(RotateReport {
            encryption_key: current,
            rotated: state.done,
            failed,
        })
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

/// Serializes writes to one account's keys across every process, for the length of the
/// transaction.
async fn lock_account(
    tx: &mut Transaction<'_, Postgres>,
    user: AppUserId,
    operation: &'static str,
) -> Result<()> {
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
        .bind(format!("torn-quota:user-keys:{user}"))
        .execute(&mut **tx)
        .await
        .map_err(db(operation))?;
    Ok(())
}

async fn clear_primary(tx: &mut Transaction<'_, Postgres>, user: AppUserId) -> Result<()> {
    sqlx::query(
        "UPDATE sentinel_user_keys SET is_primary = false \
         WHERE user_id = $1 AND is_primary AND deleted_at IS NULL",
    )
    .bind(user.get())
    .execute(&mut **tx)
    .await
    .map_err(db("set primary key"))?;
    Ok(())
}

struct NewRow<'a> {
    user: AppUserId,
    sealed: &'a str,
    hash: &'a KeyHash,
    key_version: &'a EncryptionKeyId,
    info: KeyInfo,
    options: AddOptions,
}

/// Inserts a key row; it is primary when asked, or when the account has no primary yet.
async fn insert(tx: &mut Transaction<'_, Postgres>, new: &NewRow<'_>) -> Result<KeyRow> {
    const OP: &str = "add key";
    if new.options.primary {
        clear_primary(tx, new.user).await?;
    }
    let share = new
        .options
        .max_requests_per_minute
        .map(|n| i32::try_from(n.get()).unwrap_or(i32::MAX));
    sqlx::query_as(&format!(
        "INSERT INTO sentinel_user_keys (user_id, api_key_encrypted, api_key_hash, \
         key_version, torn_user_id, access_level, max_requests_per_minute, is_primary) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8 OR NOT EXISTS (\
           SELECT 1 FROM sentinel_user_keys WHERE user_id = $1 \
           AND is_primary AND deleted_at IS NULL)) \
         RETURNING {COLUMNS}"
    ))
    .bind(new.user.get())
    .bind(new.sealed)
    .bind(new.hash.as_str())
    .bind(new.key_version.as_str())
    .bind(torn_id(new.info.owner)?)
    .bind(i16::from(new.info.access.number()))
    .bind(share)
    .bind(new.options.primary)
    .fetch_one(&mut **tx)
    .await
    .map_err(|e| unknown_account(e, new.user, OP))
}

/// Brings a held row up to Torn's fresh answer: in use (Torn accepted the key), with the
/// owner and access level Torn reports now.
async fn refresh(
    tx: &mut Transaction<'_, Postgres>,
    row: &KeyRow,
    info: KeyInfo,
) -> Result<KeyRow> {
    sqlx::query_as(&format!(
        "UPDATE sentinel_user_keys SET disabled_at = NULL, disabled_reason = NULL, \
         torn_user_id = $2, access_level = $3 WHERE id = $1 RETURNING {COLUMNS}"
    ))
    .bind(row.id)
    .bind(torn_id(info.owner)?)
    .bind(i16::from(info.access.number()))
    .fetch_one(&mut **tx)
    .await
    .map_err(db("add key"))
}

/// Records a key's owner. The account stays the first live holder's; a mapping marked
/// deleted comes back to life with this account.
async fn upsert_mapping(
    tx: &mut Transaction<'_, Postgres>,
    user: AppUserId,
    hash: &KeyHash,
    owner: TornUserId,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO sentinel_api_key_user_mapping AS m (api_key_hash, user_id, torn_user_id) \
         VALUES ($1, $2, $3) \
         ON CONFLICT (api_key_hash) DO UPDATE SET \
           torn_user_id = EXCLUDED.torn_user_id, \
           user_id = CASE WHEN m.deleted_at IS NULL AND m.user_id IS NOT NULL \
             THEN m.user_id ELSE EXCLUDED.user_id END, \
           deleted_at = NULL",
    )
    .bind(hash.as_str())
    .bind(user.get())
    .bind(torn_id(owner)?)
    .execute(&mut **tx)
    .await
    .map_err(db("map key to owner"))?;
    Ok(())
}

fn torn_id(owner: TornUserId) -> Result<i64> {
    i64::try_from(owner.get()).map_err(|_| Error::InvalidArgument {
        name: "owner",
        reason: format!("Torn user id {owner} does not fit in a PostgreSQL bigint"),
    })
}

fn torn_code(code: TornErrorCode) -> i16 {
    i16::try_from(code.get()).unwrap_or(i16::MAX)
}

fn no_such_key(user: AppUserId) -> Error {
    Error::InvalidArgument {
        name: "id",
        reason: format!("account {user} holds no live key with this id"),
    }
}

fn db(operation: &'static str) -> impl FnOnce(sqlx::Error) -> Error {
    move |source| Error::Database { operation, source }
}

/// A foreign-key violation on insert means the account is not in `auth.users`: say so
/// instead of a bare constraint name.
fn unknown_account(e: sqlx::Error, user: AppUserId, operation: &'static str) -> Error {
    if let sqlx::Error::Database(d) = &e
        && d.code().as_deref() == Some("23503")
    {
        return Error::InvalidArgument {
            name: "user",
            reason: format!("no account {user} in auth.users"),
        };
    }
    Error::Database {
        operation,
        source: e,
    }
}
