//! The vault's row types: what callers get back, and the table row they come from.

use std::num::NonZeroU32;

use chrono::{DateTime, Utc};

use crate::error::{Error, Result, Source};
use crate::identity::TornUserId;
use crate::identity::{AccessLevel, ApiKey};
use crate::torn::TornErrorCode;
use crate::vault::crypto::EncryptionKeyId;
use crate::vault::{AppUserId, StoredKeyId};

pub(super) const COLUMNS: &str = "id, user_id, api_key_encrypted, api_key_hash, key_version, \
     torn_user_id, access_level, max_requests_per_minute, is_primary, created_at, \
     last_used_at, disabled_at, disabled_reason";

/// Choices for [`Vault::add_key_with`](crate::vault::Vault::add_key_with).
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
    /// disabled key, see [`Vault::add_key`](crate::vault::Vault::add_key)).
    pub created: bool,
    /// True when the account held the key disabled and Torn accepted it again, so this add
    /// put it back in use.
    pub reenabled: bool,
}

/// The result of [`Vault::import_legacy`](crate::vault::Vault::import_legacy).
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
    /// When it was last used, as recorded by [`Vault::record_use`](crate::vault::Vault::record_use).
    pub last_used_at: Option<DateTime<Utc>>,
    /// Set while the key is out of use.
    pub disabled: Option<Disabled>,
    /// The encryption key that sealed it.
    pub encryption_key: EncryptionKeyId,
}

/// A usable key, decrypted, for the batch handler.
#[derive(Debug, Clone)]
pub struct LiveKey {
    /// The row id, for [`Vault::record_use`](crate::vault::Vault::record_use) and [`Vault::disable_key`](crate::vault::Vault::disable_key).
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

/// Where a [`Vault::rotate`](crate::vault::Vault::rotate) run stands, after each batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RotateProgress {
    /// Rows re-encrypted so far.
    pub done: u64,
    /// Rows that could not be decrypted so far (left as they were).
    pub failed: u64,
    /// Rows under an older key when the run started.
    pub total: u64,
}

/// What a [`Vault::rotate`](crate::vault::Vault::rotate) run did.
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
pub(super) struct KeyRow {
    pub(super) id: uuid::Uuid,
    pub(super) user_id: uuid::Uuid,
    /// `None` on a removed row (a tombstone).
    pub(super) api_key_encrypted: Option<String>,
    pub(super) api_key_hash: String,
    pub(super) key_version: String,
    pub(super) torn_user_id: i64,
    pub(super) access_level: i16,
    pub(super) max_requests_per_minute: Option<i32>,
    pub(super) is_primary: bool,
    pub(super) created_at: DateTime<Utc>,
    pub(super) last_used_at: Option<DateTime<Utc>>,
    pub(super) disabled_at: Option<DateTime<Utc>>,
    pub(super) disabled_reason: Option<i16>,
}

impl KeyRow {
    pub(super) fn user(&self) -> AppUserId {
        AppUserId::new(self.user_id)
    }

    pub(super) fn owner(&self) -> TornUserId {
        // The table's CHECK keeps it non-negative.
        TornUserId::new(u64::try_from(self.torn_user_id).unwrap_or_default())
    }

    pub(super) fn access(&self) -> Result<AccessLevel> {
        u8::try_from(self.access_level)
            .ok()
            .and_then(AccessLevel::from_number)
            .ok_or_else(|| Error::Database {
                operation: "read key",
                source: Source::new(sqlx::Error::Decode(
                    format!("access_level {} is not 0 to 4", self.access_level).into(),
                )),
            })
    }

    pub(super) fn share(&self) -> Option<NonZeroU32> {
        self.max_requests_per_minute
            .and_then(|n| u32::try_from(n).ok())
            .and_then(NonZeroU32::new)
    }

    pub(super) fn stored(&self, masked: Option<String>) -> Result<StoredKey> {
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
