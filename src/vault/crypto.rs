//! AES-256-GCM for stored keys: a keyring of named encryption keys, a versioned text format,
//! and associated data that ties each ciphertext to the row it belongs to. The formats are
//! documented on [`Keyring`], where they are rendered.

use std::fmt;
use std::sync::Arc;

use aes_gcm::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use aes_gcm::{Aes256Gcm, Key, Nonce};
use base64::Engine as _;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::{DecodePaddingMode, general_purpose::STANDARD};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::error::{Error, Result};
use crate::identity::{ApiKey, AppUserId, KeyHash};

/// The environment name of the encryption keys.
pub const ENCRYPTION_KEY_SETTING: &str = "TORN_QUOTA_ENCRYPTION_KEY";

const VERSION: &str = "v1";
const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;
const MAX_ID_LEN: usize = 32;

/// Accepts base64 with or without its trailing `=`: both forms get pasted into environments.
const LENIENT_BASE64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// The name of one encryption key, written into every ciphertext it seals.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EncryptionKeyId(String);

impl EncryptionKeyId {
    /// Validates an id: 1 to 32 characters `[A-Za-z0-9_-]`.
    pub fn new(id: &str) -> Result<Self> {
        if valid_id(id) {
            Ok(Self(id.to_owned()))
        } else {
            Err(Error::InvalidArgument {
                name: "encryption key id",
                reason: format!("must be 1 to {MAX_ID_LEN} characters A-Z, a-z, 0-9, _ or -"),
            })
        }
    }

    /// The id as written in ciphertexts.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The id an entry without one gets: a domain-separated hash of the key, so it reveals
    /// nothing usable about the key and stays the same wherever the key is configured.
    fn derived(key: &[u8; 32]) -> Self {
        let digest = Sha256::new()
            .chain_update(b"torn-quota encryption key id\0")
            .chain_update(key)
            .finalize();
        let mut id = String::from("k");
        for b in &digest[..6] {
            use fmt::Write as _;
            let _ = write!(id, "{b:02x}");
        }
        Self(id)
    }
}

impl fmt::Display for EncryptionKeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn valid_id(id: &str) -> bool {
    (1..=MAX_ID_LEN).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

struct Entry {
    id: EncryptionKeyId,
    cipher: Aes256Gcm,
}

/// The configured encryption keys: the first encrypts, every one decrypts.
///
/// # Ciphertext format
///
/// `v1:<key-id>:<base64(nonce || ciphertext || tag)>`, standard base64 with padding, where the
/// nonce is 12 fresh random bytes per encryption and the tag is GCM's 16 bytes. The key id is
/// in the clear so that a row names the key that opens it, and rotation can tell which rows
/// still use an old one.
///
/// The associated data is `torn-quota:v1:<key-id>:<app user id>:<key hash>`: a ciphertext
/// copied onto another account's row, or onto a row of another key, fails to decrypt.
///
/// # `TORN_QUOTA_ENCRYPTION_KEY`
///
/// One or more entries separated by commas, the first of which encrypts while all of them
/// decrypt. An entry is either `<base64>` or `<id>:<base64>`, where the base64 (standard
/// alphabet, padding optional) decodes to exactly 32 bytes and an id is 1 to 32 characters
/// `[A-Za-z0-9_-]`. An entry without an id gets `k` and 12 hex characters derived from the key
/// itself, so the same key always has the same id. Ids are written into every row: never give
/// one id to two different keys. Make a key with `openssl rand -base64 32`.
///
/// ```text
/// TORN_QUOTA_ENCRYPTION_KEY=2025b:q4Zl...=,2024a:8Jr0...=
/// ```
///
/// To rotate: put the new key first, keep the old ones after it, run `torn-quota keys rotate`,
/// then drop the old entries.
///
/// Cloning is cheap (the keys are shared). `Debug` shows the ids only.
///
/// ```
/// use torn_quota::ApiKey;
/// use torn_quota::vault::Keyring;
/// use torn_quota::AppUserId;
///
/// let keyring = Keyring::parse("new:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=")?;
/// let user = AppUserId::new(uuid::Uuid::new_v4());
/// let key: ApiKey = "AbCdEfGh12345678".parse()?;
/// let sealed = keyring.seal(&key, user, &key.hash())?;
/// assert!(sealed.starts_with("v1:new:"));
/// assert_eq!(keyring.open(&sealed, user, &key.hash())?, key);
/// # Ok::<(), torn_quota::Error>(())
/// ```
#[derive(Clone)]
pub struct Keyring {
    entries: Arc<[Entry]>,
}

impl Keyring {
    /// Reads [`TORN_QUOTA_ENCRYPTION_KEY`](ENCRYPTION_KEY_SETTING). Missing or malformed is an
    /// [`Error::Config`] naming the setting; the value is never repeated.
    pub fn from_env() -> Result<Self> {
        let raw = std::env::var(ENCRYPTION_KEY_SETTING)
            .ok()
            .map(Zeroizing::new);
        Self::from_setting(raw.as_deref().map(String::as_str))
    }

    /// Parses an optional setting value, refusing a missing one.
    pub fn from_setting(value: Option<&str>) -> Result<Self> {
        match value {
            Some(v) if !v.trim().is_empty() => Self::parse(v),
            _ => Err(config_error(
                "is not set; expected the base64 of 32 random bytes (e.g. from \
                 `openssl rand -base64 32`), or several as `id:base64,...`"
                    .into(),
            )),
        }
    }

    /// Parses the setting's format (see [`Keyring`]).
    pub fn parse(value: &str) -> Result<Self> {
        let mut entries: Vec<Entry> = Vec::new();
        let mut fingerprints: Vec<[u8; 32]> = Vec::new();
        for (i, raw) in value.split(',').enumerate() {
            let n = i + 1;
            let raw = raw.trim();
            if raw.is_empty() {
                return Err(config_error(format!("entry {n} is empty")));
            }
            let (id, b64) = match raw.split_once(':') {
                Some((id, b64)) => {
                    if !valid_id(id) {
                        return Err(config_error(format!(
                            "entry {n}: the id before ':' must be 1 to {MAX_ID_LEN} characters \
                             A-Z, a-z, 0-9, _ or -"
                        )));
                    }
                    (Some(id), b64)
                }
                None => (None, raw),
            };
            let bytes = Zeroizing::new(LENIENT_BASE64.decode(b64.trim()).map_err(|_| {
                config_error(format!("entry {n} is not valid base64 (standard alphabet)"))
            })?);
            let key: Zeroizing<[u8; 32]> =
                Zeroizing::new(bytes.as_slice().try_into().map_err(|_| {
                    config_error(format!(
                        "entry {n} decodes to {} bytes; an AES-256 key is 32",
                        bytes.len()
                    ))
                })?);
            let id = match id {
                Some(id) => EncryptionKeyId(id.to_owned()),
                None => EncryptionKeyId::derived(&key),
            };
            if let Some(j) = entries.iter().position(|e| e.id == id) {
                return Err(config_error(format!(
                    "entries {} and {n} have the same id",
                    j + 1
                )));
            }
            // A key listed twice under two ids would make rotation decrypt and re-encrypt
            // under the same key while claiming progress.
            let fingerprint: [u8; 32] = Sha256::digest(key.as_slice()).into();
            if let Some(j) = fingerprints.iter().position(|f| *f == fingerprint) {
                return Err(config_error(format!(
                    "entries {} and {n} are the same key",
                    j + 1
                )));
            }
            fingerprints.push(fingerprint);
            let cipher = Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(key.as_slice()));
            entries.push(Entry { id, cipher });
        }
        Ok(Self {
            entries: entries.into(),
        })
    }

    /// A keyring from raw keys, the first of which encrypts. `None` derives the id as the
    /// setting does.
    pub fn from_keys(keys: &[(Option<EncryptionKeyId>, [u8; 32])]) -> Result<Self> {
        if keys.is_empty() {
            return Err(Error::InvalidArgument {
                name: "keys",
                reason: "a keyring needs at least one key".into(),
            });
        }
        let entries: Vec<Entry> = keys
            .iter()
            .map(|(id, key)| Entry {
                id: id.clone().unwrap_or_else(|| EncryptionKeyId::derived(key)),
                cipher: Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(key)),
            })
            .collect();
        for (i, e) in entries.iter().enumerate() {
            if entries[..i].iter().any(|p| p.id == e.id) {
                return Err(Error::InvalidArgument {
                    name: "keys",
                    reason: format!("the id {} appears twice", e.id),
                });
            }
        }
        Ok(Self {
            entries: entries.into(),
        })
    }

    /// The id of the key that encrypts: the newest.
    pub fn current_id(&self) -> &EncryptionKeyId {
        &self.entries[0].id
    }

    /// Every configured id, the encrypting one first.
    pub fn ids(&self) -> impl Iterator<Item = &EncryptionKeyId> {
        self.entries.iter().map(|e| &e.id)
    }

    /// Encrypts `key` under the newest key with a fresh random nonce, bound to the account
    /// and the key's hash.
    pub fn seal(&self, key: &ApiKey, user: AppUserId, hash: &KeyHash) -> Result<String> {
        let entry = &self.entries[0];
        let nonce = Aes256Gcm::generate_nonce(&mut OsRng);
        let aad = associated_data(&entry.id, user, hash.as_str());
        let sealed = entry
            .cipher
            .encrypt(
                &nonce,
                Payload {
                    msg: key.expose().as_bytes(),
                    aad: aad.as_bytes(),
                },
            )
            .map_err(|_| crypto_error("encryption failed"))?;
        let mut blob = Vec::with_capacity(NONCE_LEN + sealed.len());
        blob.extend_from_slice(&nonce);
        blob.extend_from_slice(&sealed);
        Ok(format!("{VERSION}:{}:{}", entry.id, STANDARD.encode(blob)))
    }

    /// Decrypts a stored ciphertext for the account and key hash of its row. Every failure
    /// is an [`Error::Crypto`] saying which check failed, without key material.
    pub fn open(&self, sealed: &str, user: AppUserId, hash: &KeyHash) -> Result<ApiKey> {
        self.open_hex(sealed, user, hash.as_str())
    }

    /// [`open`](Self::open) for a hash as stored in a row (lowercase hex).
    pub(crate) fn open_hex(&self, sealed: &str, user: AppUserId, hash: &str) -> Result<ApiKey> {
        let (id, blob) = Self::split(sealed)?;
        let entry = self
            .entries
            .iter()
            .find(|e| e.id.as_str() == id)
            .ok_or_else(|| {
                crypto_error(&format!(
                    "the ciphertext was sealed with encryption key '{id}', which is not \
                     configured in {ENCRYPTION_KEY_SETTING}"
                ))
            })?;
        let (nonce, body) = blob.split_at(NONCE_LEN);
        let aad = associated_data(&entry.id, user, hash);
        let plain = Zeroizing::new(
            entry
                .cipher
                .decrypt(
                    Nonce::from_slice(nonce),
                    Payload {
                        msg: body,
                        aad: aad.as_bytes(),
                    },
                )
                .map_err(|_| {
                    crypto_error(&format!(
                        "authentication failed with encryption key '{id}': the key is wrong, \
                         the ciphertext was altered, or it belongs to another row"
                    ))
                })?,
        );
        let text = std::str::from_utf8(&plain)
            .map_err(|_| crypto_error("the decrypted value is not a Torn API key"))?;
        let key = ApiKey::new(text)
            .map_err(|_| crypto_error("the decrypted value is not a Torn API key"))?;
        // GCM already authenticated the hash through the associated data; this guards
        // against a row whose hash column and sealed key were written inconsistently.
        if key.hash().as_str() != hash {
            return Err(crypto_error(
                "the decrypted key does not match the row's key hash",
            ));
        }
        Ok(key)
    }

    /// The id a stored ciphertext names, without decrypting it.
    pub fn key_id_of(sealed: &str) -> Result<EncryptionKeyId> {
        let mut parts = sealed.splitn(3, ':');
        match (parts.next(), parts.next(), parts.next()) {
            (Some(VERSION), Some(id), Some(_)) if valid_id(id) => {
                Ok(EncryptionKeyId(id.to_owned()))
            }
            _ => Err(crypto_error(
                "malformed ciphertext: expected v1:<key-id>:<base64>",
            )),
        }
    }

    fn split(sealed: &str) -> Result<(&str, Vec<u8>)> {
        let mut parts = sealed.splitn(3, ':');
        let (Some(version), Some(id), Some(body)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(crypto_error(
                "malformed ciphertext: expected v1:<key-id>:<base64>",
            ));
        };
        if version != VERSION {
            return Err(crypto_error("unsupported ciphertext version"));
        }
        if !valid_id(id) {
            return Err(crypto_error("malformed ciphertext: invalid key id"));
        }
        let blob = STANDARD
            .decode(body)
            .map_err(|_| crypto_error("malformed ciphertext: the body is not base64"))?;
        if blob.len() < NONCE_LEN + TAG_LEN {
            return Err(crypto_error("malformed ciphertext: too short"));
        }
        Ok((id, blob))
    }
}

impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keyring")
            .field(
                "ids",
                &self.ids().map(EncryptionKeyId::as_str).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

fn associated_data(id: &EncryptionKeyId, user: AppUserId, hash: &str) -> String {
    format!("torn-quota:{VERSION}:{id}:{user}:{hash}")
}

fn config_error(reason: String) -> Error {
    Error::Config {
        setting: ENCRYPTION_KEY_SETTING,
        reason,
    }
}

fn crypto_error(reason: &str) -> Error {
    Error::Crypto {
        reason: reason.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
    const B: &str = "ICEiIyQlJicoKSorLC0uLzAxMjM0NTY3ODk6Ozw9Pj8=";

    fn user() -> AppUserId {
        AppUserId::new(uuid::Uuid::from_u128(7))
    }

    fn setting_reason(err: Error) -> String {
        match err {
            Error::Config { setting, reason } => {
                assert_eq!(setting, ENCRYPTION_KEY_SETTING);
                reason
            }
            other => panic!("expected a config error, got {other:?}"),
        }
    }

    #[test]
    fn malformed_settings_are_refused_without_echoing_them() {
        for bad in [
            "",
            "   ",
            "bm90IDMyIGJ5dGVz",
            "not*base64*at*all",
            &format!("{A},"),
            &format!("a:{A},a:{B}"),
            &format!("x:{A},y:{A}"),
            &format!("bad id:{A}"),
        ] {
            let reason = setting_reason(Keyring::from_setting(Some(bad)).unwrap_err());
            assert!(
                !reason.contains(A) && !reason.contains(B),
                "{reason} echoes the key"
            );
        }
        setting_reason(Keyring::from_setting(None).unwrap_err());
    }

    #[test]
    fn ids_are_derived_when_absent_and_padding_is_optional() {
        let with_pad = Keyring::parse(A).unwrap();
        let without = Keyring::parse(A.trim_end_matches('=')).unwrap();
        assert_eq!(with_pad.current_id(), without.current_id());
        assert!(with_pad.current_id().as_str().starts_with('k'));
        let two = Keyring::parse(&format!(" new:{B} , {A} ")).unwrap();
        let ids: Vec<_> = two.ids().map(EncryptionKeyId::as_str).collect();
        assert_eq!(ids, ["new", with_pad.current_id().as_str()]);
        assert!(!format!("{two:?}").contains(B));
    }

    #[test]
    fn every_seal_uses_a_fresh_nonce() {
        let ring = Keyring::parse(A).unwrap();
        let key = ApiKey::new("AbCdEfGh12345678").unwrap();
        let one = ring.seal(&key, user(), &key.hash()).unwrap();
        let two = ring.seal(&key, user(), &key.hash()).unwrap();
        assert_ne!(one, two);
        assert!(!one.contains(key.expose()));
        assert_eq!(ring.open(&two, user(), &key.hash()).unwrap(), key);
    }

    #[test]
    fn malformed_ciphertexts_are_crypto_errors() {
        let ring = Keyring::parse(&format!("a:{A}")).unwrap();
        let key = ApiKey::new("AbCdEfGh12345678").unwrap();
        for bad in [
            "",
            "v1",
            "v1:a",
            "v2:a:AAAA",
            "v1:a:!!!",
            "v1:a:AAAA",
            "v1:b:AAAA",
        ] {
            assert!(
                matches!(
                    ring.open(bad, user(), &key.hash()),
                    Err(Error::Crypto { .. })
                ),
                "{bad}"
            );
        }
    }
}
