//! [`AppUserId`]: the tool's own account, the one that stores keys.

use std::fmt;
use std::str::FromStr;

use crate::error::{Error, Result};

/// An account of the tool (`auth.users(id)`, a Supabase user on Supabase): whoever stored a
/// key. Not the Torn player who owns it, which is a [`TornUserId`](super::TornUserId).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AppUserId(uuid::Uuid);

impl AppUserId {
    /// Wraps an account id.
    pub const fn new(id: uuid::Uuid) -> Self {
        Self(id)
    }
    /// The UUID.
    pub const fn get(self) -> uuid::Uuid {
        self.0
    }
}

impl fmt::Display for AppUserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.hyphenated().fmt(f)
    }
}

impl FromStr for AppUserId {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        uuid::Uuid::parse_str(s.trim())
            .map(Self)
            .map_err(|_| Error::InvalidArgument {
                name: "user",
                reason: format!("'{s}' is not an account id (a UUID)"),
            })
    }
}

impl From<uuid::Uuid> for AppUserId {
    fn from(id: uuid::Uuid) -> Self {
        Self(id)
    }
}
