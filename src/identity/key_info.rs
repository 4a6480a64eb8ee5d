//! [`KeyInfo`]: what Torn says about a key.

use super::{AccessLevel, TornUserId};

/// What Torn says about a key: whose it is and how much it may read, as
/// [`TornClient::key_info`](crate::torn::TornClient::key_info) and
/// [`TornClient::owner_of`](crate::torn::TornClient::owner_of) return it, and as the vault
/// stores it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyInfo {
    /// The Torn player who owns the key.
    pub owner: TornUserId,
    /// The key's access level.
    pub access: AccessLevel,
}
