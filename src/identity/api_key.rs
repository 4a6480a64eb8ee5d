//! [`ApiKey`]: a Torn API key as a secret, validated on the way in, masked on the way out,
//! wiped on drop.

use std::fmt;
use std::str::FromStr;

use zeroize::{Zeroize, ZeroizeOnDrop};

use super::KeyHash;
use crate::error::Error;

/// A Torn API key: 16 characters `[A-Za-z0-9]`.
///
/// `Debug` and `Display` show only the last four characters, the bytes are wiped when the
/// value drops, and the whole key is reachable only through [`ApiKey::expose`], so that
/// reviewing where a key can leak means reviewing the callers of one method.
///
/// ```
/// use torn_quota::ApiKey;
///
/// let key: ApiKey = "AbCdEfGh12345678".parse()?;
/// assert_eq!(format!("{key}"), "****5678");
/// assert_eq!(format!("{key:?}"), "ApiKey(****5678)");
/// assert!("too-short".parse::<ApiKey>().is_err());
/// # Ok::<(), torn_quota::Error>(())
/// ```
#[derive(Clone, PartialEq, Eq, Hash, Zeroize, ZeroizeOnDrop)]
pub struct ApiKey([u8; ApiKey::LEN]);

impl ApiKey {
    /// Torn keys are this many characters long.
    pub const LEN: usize = 16;

    /// Validates a key. The error says what is wrong with it and never repeats it.
    pub fn new(key: &str) -> Result<Self, Error> {
        let bytes = key.as_bytes();
        if bytes.len() != Self::LEN {
            return Err(Error::InvalidArgument {
                name: "api key",
                reason: format!(
                    "a Torn API key is {} characters, this one has {}",
                    Self::LEN,
                    key.chars().count()
                ),
            });
        }
        if !bytes.iter().all(u8::is_ascii_alphanumeric) {
            return Err(Error::InvalidArgument {
                name: "api key",
                reason: "a Torn API key holds only the characters A-Z, a-z and 0-9".into(),
            });
        }
        let mut buf = [0; Self::LEN];
        buf.copy_from_slice(bytes);
        Ok(Self(buf))
    }

    /// The whole key, for the `Authorization` header and for encryption. Never log it.
    pub fn expose(&self) -> &str {
        // Only ASCII alphanumerics get in (see `new`).
        std::str::from_utf8(&self.0).unwrap_or_default()
    }

    /// The key's hash: lowercase hex SHA-256, the same function the legacy limiter uses.
    pub fn hash(&self) -> KeyHash {
        KeyHash::of(self.expose())
    }

    /// The masked form Debug and Display print: `****` and the last four characters.
    pub fn masked(&self) -> String {
        format!("****{}", &self.expose()[Self::LEN - 4..])
    }
}

impl FromStr for ApiKey {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        Self::new(s)
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ApiKey({})", self.masked())
    }
}

impl fmt::Display for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.masked())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_never_prints_whole() {
        let key = ApiKey::new("AAAAbbbbCCCC1234").unwrap();
        for shown in [format!("{key}"), format!("{key:?}"), format!("{key:#?}")] {
            assert!(!shown.contains("AAAAbbbbCCCC"), "{shown}");
            assert!(shown.contains("1234"), "{shown}");
        }
        assert_eq!(key.expose(), "AAAAbbbbCCCC1234");
    }

    #[test]
    fn malformed_keys_are_refused_without_being_echoed() {
        for bad in [
            "",
            "short",
            "AAAAbbbbCCCC12345",
            "AAAAbbbbCCCC123!",
            "AAAAbbbbCCCC123é",
        ] {
            let err = ApiKey::new(bad).unwrap_err().to_string();
            assert!(bad.is_empty() || !err.contains(bad), "{err}");
        }
    }
}
