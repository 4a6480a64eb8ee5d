//! Torn's error codes in one table: each code's text as Torn sends it, and what a client
//! does about it.

use std::fmt;

/// What a caller does when Torn answers with an error code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorClass {
    /// A transient failure on Torn's side: retry the same call with back-off.
    Retry,
    /// The request itself is wrong (or the data private): retrying cannot help.
    FailRequest,
    /// The key cannot be used: stop using it at once (Torn may ban an IP that keeps sending
    /// invalid keys). `permanent` keys (code 2) never come back; the others (jail, inactive,
    /// paused) may, after a re-check.
    DisableKey {
        /// The key is wrong, not just unusable for now.
        permanent: bool,
    },
    /// The key hit its daily read limit: hold that key back until the next day.
    HoldKey,
    /// The owner's rolling window is full (possibly through another app): hold every call of
    /// that owner back, and re-queue.
    HoldOwner,
    /// The IP or the whole API is blocked: pause every call from this process for a while.
    PauseAll,
    /// The key's access level is too low for the selection: route it to a key with more.
    Reroute,
}

/// One of Torn's API error codes (`{"error":{"code":N,"error":"text"}}`, sent with HTTP 200).
///
/// ```
/// use torn_quota::torn::{ErrorClass, TornErrorCode};
///
/// let code = TornErrorCode::new(5);
/// assert_eq!(code.class(), ErrorClass::HoldOwner);
/// assert_eq!(code.text(), "Too many requests");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TornErrorCode(u16);

/// The table: code, Torn's text, class. Codes 19 to 32 are request-specific failures.
const TABLE: &[(u16, &str, ErrorClass)] = &[
    (0, "Unknown error", ErrorClass::Retry),
    (1, "Key is empty", ErrorClass::FailRequest),
    (
        2,
        "Incorrect Key",
        ErrorClass::DisableKey { permanent: true },
    ),
    (3, "Wrong type", ErrorClass::FailRequest),
    (4, "Wrong fields", ErrorClass::FailRequest),
    (5, "Too many requests", ErrorClass::HoldOwner),
    (6, "Incorrect ID", ErrorClass::FailRequest),
    (7, "Incorrect ID-entity relation", ErrorClass::FailRequest),
    (8, "IP block", ErrorClass::PauseAll),
    (9, "API disabled", ErrorClass::PauseAll),
    (
        10,
        "Key owner is in federal jail",
        ErrorClass::DisableKey { permanent: false },
    ),
    (11, "Key change error", ErrorClass::Retry),
    (12, "Key read error", ErrorClass::Retry),
    (
        13,
        "The key is temporarily disabled due to owner inactivity",
        ErrorClass::DisableKey { permanent: false },
    ),
    (14, "Daily read limit reached", ErrorClass::HoldKey),
    (15, "Temporary error", ErrorClass::FailRequest),
    (
        16,
        "Access level of this key is not high enough",
        ErrorClass::Reroute,
    ),
    (
        17,
        "Backend error occurred, please try again",
        ErrorClass::Retry,
    ),
    (
        18,
        "API key has been paused by the owner",
        ErrorClass::DisableKey { permanent: false },
    ),
    (
        19,
        "Must be migrated to crimes 2.0",
        ErrorClass::FailRequest,
    ),
    (20, "Race not yet finished", ErrorClass::FailRequest),
    (21, "Incorrect category", ErrorClass::FailRequest),
    (
        22,
        "This selection is only available in API v1",
        ErrorClass::FailRequest,
    ),
    (
        23,
        "This selection is only available in API v2",
        ErrorClass::FailRequest,
    ),
    (24, "Closed temporarily", ErrorClass::FailRequest),
    (25, "Invalid stat requested", ErrorClass::FailRequest),
    (
        26,
        "Only category or stats are allowed",
        ErrorClass::FailRequest,
    ),
    (
        27,
        "Must be migrated to organized crimes 2.0",
        ErrorClass::FailRequest,
    ),
    (28, "Incorrect log ID", ErrorClass::FailRequest),
    (
        29,
        "Category selection unavailable for interaction logs",
        ErrorClass::FailRequest,
    ),
];

impl TornErrorCode {
    /// Incorrect key: the key must never be used again.
    pub const INCORRECT_KEY: Self = Self(2);
    /// The owner is over their rolling limit.
    pub const TOO_MANY_REQUESTS: Self = Self(5);
    /// The IP is blocked.
    pub const IP_BLOCK: Self = Self(8);
    /// The key's owner is in federal jail.
    pub const OWNER_JAILED: Self = Self(10);
    /// The key's owner has been inactive for over 7 days.
    pub const OWNER_INACTIVE: Self = Self(13);
    /// The key's access level is too low for the selection.
    pub const ACCESS_TOO_LOW: Self = Self(16);
    /// Torn's backend failed; retry.
    pub const BACKEND_ERROR: Self = Self(17);
    /// The key is paused by its owner.
    pub const KEY_PAUSED: Self = Self(18);

    /// The code as Torn sends it. Unknown codes are kept: they fail the request.
    pub const fn new(code: u16) -> Self {
        Self(code)
    }

    /// The number.
    pub const fn get(self) -> u16 {
        self.0
    }

    /// Torn's text for the code (as in its documentation).
    pub fn text(self) -> &'static str {
        Self::row(self.0).map_or("Request-specific error", |r| r.1)
    }

    /// What to do about it. Codes Torn adds later fail the request: retrying or disabling a
    /// key on a code we do not know would be a guess.
    pub fn class(self) -> ErrorClass {
        Self::row(self.0).map_or(ErrorClass::FailRequest, |r| r.2)
    }

    /// Every code in the table, for tests and documentation.
    pub fn known() -> impl Iterator<Item = Self> {
        TABLE.iter().map(|r| Self(r.0))
    }

    fn row(code: u16) -> Option<&'static (u16, &'static str, ErrorClass)> {
        TABLE.iter().find(|r| r.0 == code)
    }
}

impl fmt::Display for TornErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "torn error {} ({})", self.0, self.text())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_is_sorted_and_has_each_code_once() {
        let codes: Vec<u16> = TABLE.iter().map(|r| r.0).collect();
        let mut sorted = codes.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(codes, sorted);
    }

    #[test]
    fn classes_follow_the_design_table() {
        let class = |c| TornErrorCode::new(c).class();
        for c in [0, 12, 17] {
            assert_eq!(class(c), ErrorClass::Retry, "code {c}");
        }
        for c in [1, 3, 4, 6, 7, 19, 25, 32, 99] {
            assert_eq!(class(c), ErrorClass::FailRequest, "code {c}");
        }
        assert_eq!(class(2), ErrorClass::DisableKey { permanent: true });
        for c in [10, 13, 18] {
            assert_eq!(
                class(c),
                ErrorClass::DisableKey { permanent: false },
                "code {c}"
            );
        }
        assert_eq!(class(5), ErrorClass::HoldOwner);
        assert_eq!(class(8), ErrorClass::PauseAll);
        assert_eq!(class(9), ErrorClass::PauseAll);
        assert_eq!(class(14), ErrorClass::HoldKey);
        assert_eq!(class(16), ErrorClass::Reroute);
    }

    #[test]
    fn codes_25_to_29_carry_their_own_text() {
        for (c, words) in [
            (25, "stat"),
            (26, "category or stats"),
            (27, "organized crimes 2.0"),
            (28, "log"),
            (29, "interaction logs"),
        ] {
            let code = TornErrorCode::new(c);
            assert!(TornErrorCode::known().any(|k| k == code), "code {c}");
            assert!(code.text().contains(words), "code {c}: {}", code.text());
            assert_eq!(code.class(), ErrorClass::FailRequest, "code {c}");
        }
    }
}
