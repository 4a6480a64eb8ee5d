//! [`KeyHash`]: how a key is named wherever the key itself must not appear.

use std::fmt;

use sha2::{Digest, Sha256};

/// The lowercase hex SHA-256 of a key: what identifies a key in storage, logs and the
/// legacy limiter's rows without revealing it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyHash(String);

impl KeyHash {
    /// Hashes any string, valid key or not (the legacy limiter hashes what it was given).
    pub fn of(key: &str) -> Self {
        let digest = Sha256::digest(key.as_bytes());
        let mut hex = String::with_capacity(64);
        for b in digest {
            use fmt::Write as _;
            let _ = write!(hex, "{b:02x}");
        }
        Self(hex)
    }

    /// The 64 hex characters.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The first [`SHOWN`](Self::SHOWN) hex characters: the only part of a hash that log
    /// lines, progress output and status pages show. Enough to tell a pool's keys apart,
    /// too few to look a key up by its hash.
    ///
    /// ```
    /// use torn_quota::KeyHash;
    ///
    /// let hash = KeyHash::of("AbCdEfGh12345678");
    /// assert_eq!(hash.short().len(), KeyHash::SHOWN);
    /// assert!(hash.as_str().starts_with(hash.short()));
    /// ```
    pub fn short(&self) -> &str {
        &self.0[..Self::SHOWN]
    }

    /// How many hex characters [`short`](Self::short) shows.
    pub const SHOWN: usize = 12;
}

impl fmt::Display for KeyHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hash_is_lowercase_hex_sha256() {
        // sha256("abc"), from FIPS 180-2.
        assert_eq!(
            KeyHash::of("abc").as_str(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
