//! Listing, removing, flagging and using stored keys, and finding a key's owner.

use std::num::NonZeroU32;

use super::Vault;
use super::rows::{COLUMNS, KeyRow, LiveKey, StoredKey};
use super::sql::{clear_primary, db, lock_account, no_such_key, torn_code, torn_id};
use crate::error::{Error, Result};
use crate::identity::{AccessLevel, TornUserId};
use crate::identity::{ApiKey, KeyHash};
use crate::torn::TornErrorCode;
use crate::vault::{AppUserId, KeyInfo, ResolveOwner, StoredKeyId};

impl Vault {
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

    /// The owner and access level the vault holds for the key with `hash`, without asking
    /// anyone: from a stored key that is neither removed nor disabled (the access level is
    /// the stored key's). `None` when no such key is stored; a mapping row alone does not
    /// say the access level, so it is not enough. The gateway asks this before a call, so
    /// that a key an account stored never costs a `/v2/key/info`.
    pub async fn known_key(&self, hash: &KeyHash) -> Result<Option<KeyInfo>> {
        let row: Option<(i64, i16)> = sqlx::query_as(
            "SELECT torn_user_id, access_level FROM sentinel_user_keys \
             WHERE api_key_hash = $1 AND deleted_at IS NULL AND disabled_at IS NULL \
             ORDER BY access_level DESC LIMIT 1",
        )
        .bind(hash.as_str())
        .fetch_optional(&self.pool)
        .await
        .map_err(db("read a key's owner"))?;
        Ok(row.and_then(|(owner, access)| {
            Some(KeyInfo {
                owner: TornUserId::new(u64::try_from(owner).ok()?),
                access: AccessLevel::from_number(u8::try_from(access).ok()?)?,
            })
        }))
    }
}
