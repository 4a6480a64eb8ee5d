//! [`AccessLevel`]: how much a key may read, as Torn numbers and names the levels.

use std::fmt;

/// A key's access level. Torn numbers them 0 to 4; a selection that needs more than the key
/// has answers code 16.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum AccessLevel {
    /// 0: a custom key; what it may read is chosen selection by selection.
    Custom = 0,
    /// 1: public data only.
    Public = 1,
    /// 2: minimal access.
    Minimal = 2,
    /// 3: limited access (battle stats, money, ...).
    Limited = 3,
    /// 4: full access.
    Full = 4,
}

impl AccessLevel {
    /// The level for Torn's number, if it is one.
    pub const fn from_number(level: u8) -> Option<Self> {
        Some(match level {
            0 => Self::Custom,
            1 => Self::Public,
            2 => Self::Minimal,
            3 => Self::Limited,
            4 => Self::Full,
            _ => return None,
        })
    }

    /// Torn's number for the level.
    pub const fn number(self) -> u8 {
        self as u8
    }

    /// Torn's name for the level, as `/v2/key/info` gives it in `access.type`.
    pub const fn torn_name(self) -> &'static str {
        match self {
            Self::Custom => "Custom",
            Self::Public => "Public Only",
            Self::Minimal => "Minimal Access",
            Self::Limited => "Limited Access",
            Self::Full => "Full Access",
        }
    }
}

impl fmt::Display for AccessLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.number(), self.torn_name())
    }
}
