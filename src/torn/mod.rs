//! The Torn API client: keys as secrets, every error code typed, the limiter consulted before
//! every call.

mod access;
#[cfg(feature = "torn")]
mod client;
mod code;
mod config;
mod key;

pub use access::AccessLevel;
#[cfg(feature = "torn")]
pub use client::{
    CallOptions, KeyStatus, SystemWallClock, TornClient, TornClientBuilder, WallClock, check_path,
};
pub use code::{ErrorClass, TornErrorCode};
pub use config::{CLIENT_SETTINGS, TornClientConfig, TornClientConfigBuilder};
pub use key::{ApiKey, KeyHash};

/// What Torn says about a key: whose it is and how much it may read, as
/// [`TornClient::key_info`] and [`TornClient::owner_of`] return it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyInfo {
    /// The Torn player who owns the key.
    pub owner: crate::TornUserId,
    /// The key's access level.
    pub access: AccessLevel,
}
