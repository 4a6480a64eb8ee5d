//! The simulator's keys: who owns each, at what access level, in what state, and the keys
//! file `torn-quota sim --keys` reads.

use crate::identity::TornUserId;

use crate::identity::{AccessLevel, ApiKey, KeyHash};
use crate::torn::TornErrorCode;
use std::collections::HashMap;
use std::fmt;

/// Whether Torn would serve a key, and if not, the code it answers instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum KeyState {
    /// The key works. The default.
    #[default]
    Ok,
    /// Paused by its owner: code 18.
    Paused,
    /// The owner has been inactive for over 7 days: code 13.
    Inactive,
    /// The owner is in federal jail: code 10.
    Jail,
}

impl KeyState {
    /// The Torn error code a request with a key in this state gets, or `None` when it works.
    pub const fn error_code(self) -> Option<TornErrorCode> {
        match self {
            Self::Ok => None,
            Self::Paused => Some(TornErrorCode::KEY_PAUSED),
            Self::Inactive => Some(TornErrorCode::OWNER_INACTIVE),
            Self::Jail => Some(TornErrorCode::OWNER_JAILED),
        }
    }

    /// The name the keys file uses: `ok`, `paused`, `inactive` or `jail`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Paused => "paused",
            Self::Inactive => "inactive",
            Self::Jail => "jail",
        }
    }
}

impl std::str::FromStr for KeyState {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "ok" => Ok(Self::Ok),
            "paused" => Ok(Self::Paused),
            "inactive" => Ok(Self::Inactive),
            "jail" => Ok(Self::Jail),
            _ => Err(format!(
                "expected ok, paused, inactive or jail, got {}",
                shown(s)
            )),
        }
    }
}

impl fmt::Display for KeyState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A key the simulator knows. Any other key answers code 2.
///
/// `Debug` masks the key: only its last four characters show.
#[derive(Clone, PartialEq, Eq)]
pub struct SimKey {
    /// The key as clients send it.
    pub key: String,
    /// The player who owns it: whose rolling window its requests count in.
    pub owner: TornUserId,
    /// What it may read.
    pub access: AccessLevel,
    /// Whether it works.
    pub state: KeyState,
}

impl SimKey {
    /// A working key.
    pub fn new(key: impl Into<String>, owner: TornUserId, access: AccessLevel) -> Self {
        Self {
            key: key.into(),
            owner,
            access,
            state: KeyState::Ok,
        }
    }

    /// The same key in another state.
    #[must_use]
    pub fn with_state(mut self, state: KeyState) -> Self {
        self.state = state;
        self
    }

    /// The key's hash, as counters and logs name it.
    pub fn hash(&self) -> KeyHash {
        KeyHash::of(&self.key)
    }
}

impl fmt::Debug for SimKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimKey")
            .field("key", &mask(&self.key))
            .field("owner", &self.owner)
            .field("access", &self.access)
            .field("state", &self.state)
            .finish()
    }
}

/// `****` and the last four characters (fewer for a key too short to hide anything).
fn mask(key: &str) -> String {
    let chars: Vec<char> = key.chars().collect();
    let shown = if chars.len() >= 8 { 4 } else { 0 };
    let tail: String = chars[chars.len() - shown..].iter().collect();
    format!("****{tail}")
}

/// A line of a keys file that cannot be used. The message names the line and the field and
/// never repeats the key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("keys file line {line}: {field}: {reason}")]
#[non_exhaustive]
pub struct KeysFileError {
    /// The line's number, from 1.
    pub line: usize,
    /// The field at fault: `KEY`, `OWNER_ID`, `ACCESS_LEVEL`, `STATE`, or `line` for the line
    /// as a whole.
    pub field: &'static str,
    /// What is wrong with it.
    pub reason: String,
}

/// Reads a keys file: one key a line, `KEY OWNER_ID ACCESS_LEVEL [STATE]`, separated by
/// whitespace. `ACCESS_LEVEL` is Torn's number (0 to 4) or its name (`custom`, `public`,
/// `minimal`, `limited`, `full`); `STATE` is `ok` (the default), `paused`, `inactive` or
/// `jail`. A `#` starts a comment that runs to the end of its line; blank lines are skipped.
///
/// ```
/// use torn_quota::sim::{KeyState, parse_keys_file};
///
/// let keys = parse_keys_file(
///     "# owner 4 has two keys\n\
///      AAAAAAAAAAAAAAA1 4 4\n\
///      AAAAAAAAAAAAAAA2 4 1 paused\n",
/// )?;
/// assert_eq!(keys.len(), 2);
/// assert_eq!(keys[1].state, KeyState::Paused);
///
/// let err = parse_keys_file("AAAAAAAAAAAAAAA1 four 4").unwrap_err();
/// assert_eq!(err.to_string(), "keys file line 1: OWNER_ID: expected a positive integer, got 'four'");
/// # Ok::<(), torn_quota::sim::KeysFileError>(())
/// ```
pub fn parse_keys_file(text: &str) -> Result<Vec<SimKey>, KeysFileError> {
    let mut keys = Vec::new();
    let mut first_seen: HashMap<String, usize> = HashMap::new();
    for (index, raw) in text.lines().enumerate() {
        let line = index + 1;
        let content = match raw.find('#') {
            Some(at) => &raw[..at],
            None => raw,
        };
        let mut fields = content.split_whitespace();
        let Some(key) = fields.next() else { continue };
        let err = |field, reason: String| KeysFileError {
            line,
            field,
            reason,
        };
        if let Err(e) = ApiKey::new(key) {
            let reason = match e {
                crate::Error::InvalidArgument { reason, .. } => reason,
                other => other.to_string(),
            };
            return Err(err("KEY", reason));
        }
        let owner = fields.next().ok_or_else(|| {
            err(
                "OWNER_ID",
                "missing (expected KEY OWNER_ID ACCESS_LEVEL [STATE])".into(),
            )
        })?;
        let owner = match owner.parse::<u64>() {
            Ok(id) if id > 0 => TornUserId::new(id),
            _ => {
                return Err(err(
                    "OWNER_ID",
                    format!("expected a positive integer, got {}", shown(owner)),
                ));
            }
        };
        let access = fields.next().ok_or_else(|| {
            err(
                "ACCESS_LEVEL",
                "missing (expected KEY OWNER_ID ACCESS_LEVEL [STATE])".into(),
            )
        })?;
        let access = parse_access(access).ok_or_else(|| {
            err(
                "ACCESS_LEVEL",
                format!(
                    "expected 0 to 4 or custom, public, minimal, limited, full; got {}",
                    shown(access)
                ),
            )
        })?;
        let state = match fields.next() {
            Some(s) => s.parse().map_err(|reason| err("STATE", reason))?,
            None => KeyState::Ok,
        };
        if fields.next().is_some() {
            return Err(err(
                "line",
                "too many fields (expected KEY OWNER_ID ACCESS_LEVEL [STATE])".into(),
            ));
        }
        if let Some(first) = first_seen.get(key) {
            return Err(err(
                "KEY",
                format!("the same key is already on line {first}"),
            ));
        }
        first_seen.insert(key.to_owned(), line);
        keys.push(SimKey {
            key: key.to_owned(),
            owner,
            access,
            state,
        });
    }
    Ok(keys)
}

/// A bad field's value for an error message, quoted when short. A long one may be a key
/// written in the wrong column, so only its length is told.
fn shown(value: &str) -> String {
    if value.chars().count() <= 10 {
        format!("'{value}'")
    } else {
        format!("a value of {} characters", value.chars().count())
    }
}

fn parse_access(raw: &str) -> Option<AccessLevel> {
    if let Ok(n) = raw.parse::<u8>() {
        return AccessLevel::from_number(n);
    }
    Some(match raw.to_ascii_lowercase().as_str() {
        "custom" => AccessLevel::Custom,
        "public" => AccessLevel::Public,
        "minimal" => AccessLevel::Minimal,
        "limited" => AccessLevel::Limited,
        "full" => AccessLevel::Full,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const K1: &str = "AbCdEfGh12345678";
    const K2: &str = "ZyXwVuTs87654321";

    #[test]
    fn every_field_and_comment_form_parses() {
        let text = format!("\n# a comment\n{K1} 4 full   # trailing comment\n  {K2}\t7 2 JAIL\n");
        let keys = parse_keys_file(&text).unwrap();
        assert_eq!(
            keys,
            vec![
                SimKey::new(K1, TornUserId::new(4), AccessLevel::Full),
                SimKey::new(K2, TornUserId::new(7), AccessLevel::Minimal)
                    .with_state(KeyState::Jail),
            ]
        );
    }

    #[test]
    fn errors_name_the_line_and_field_and_never_the_key() {
        let cases = [
            (format!("{K1} 4"), 1, "ACCESS_LEVEL"),
            (format!("\n{K1} 0 4"), 2, "OWNER_ID"),
            (format!("{K1} 4 5"), 1, "ACCESS_LEVEL"),
            (format!("{K1} 4 4 asleep"), 1, "STATE"),
            (format!("{K1} 4 4 ok extra"), 1, "line"),
            (format!("{K1} 4 4\n{K1} 5 4"), 2, "KEY"),
            ("AbCdEfGh1234567! 4 4".to_owned(), 1, "KEY"),
            ("AbCdEfGh123 4 4".to_owned(), 1, "KEY"),
            (format!("{K1} {K2} 4"), 1, "OWNER_ID"),
            (format!("{K1} 4 {K2}"), 1, "ACCESS_LEVEL"),
            (format!("{K1} 4 4 {K2}"), 1, "STATE"),
        ];
        for (text, line, field) in cases {
            let e = parse_keys_file(&text).unwrap_err();
            assert_eq!((e.line, e.field), (line, field), "{text:?}: {e}");
            let shown = e.to_string();
            assert!(!shown.contains("AbCdEfGh"), "{shown}");
            assert!(!shown.contains("ZyXwVuTs"), "{shown}");
        }
    }

    #[test]
    fn debug_masks_the_key() {
        let shown = format!(
            "{:?}",
            SimKey::new(K1, TornUserId::new(4), AccessLevel::Full)
        );
        assert!(!shown.contains("AbCdEfGh"), "{shown}");
        assert!(shown.contains("****5678"), "{shown}");
    }
}
