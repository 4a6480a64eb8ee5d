//! Adding keys: checked with Torn first, then stored under the account's lock; and the
//! legacy import that rides on the same path.

use sqlx::{Postgres, Transaction};

use super::Vault;
use super::rows::{AddOptions, Added, COLUMNS, Imported, KeyRow};
use super::sql::{clear_primary, db, lock_account, torn_code, torn_id, unknown_account};
use crate::error::{Error, Result};
use crate::identity::TornUserId;
use crate::identity::{ApiKey, KeyHash};
use crate::torn::{ErrorClass, TornErrorCode};
use crate::vault::crypto::EncryptionKeyId;
use crate::vault::{AppUserId, KeyInfo, ResolveOwner};

impl Vault {
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
}

pub(super) struct NewRow<'a> {
    user: AppUserId,
    sealed: &'a str,
    hash: &'a KeyHash,
    key_version: &'a EncryptionKeyId,
    info: KeyInfo,
    options: AddOptions,
}

/// Inserts a key row; it is primary when asked, or when the account has no primary yet.
pub(super) async fn insert(tx: &mut Transaction<'_, Postgres>, new: &NewRow<'_>) -> Result<KeyRow> {
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
pub(super) async fn refresh(
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
pub(super) async fn upsert_mapping(
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
