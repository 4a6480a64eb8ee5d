//! The Torn API client: keys as secrets, every error code typed, the limiter consulted before
//! every call.

#[cfg(feature = "torn")]
mod client;
mod code;
mod config;

#[cfg(feature = "torn")]
pub use client::{
    KeyStatus, SystemWallClock, TornClient, TornClientBuilder, WallClock, check_path,
};
pub use code::{ErrorClass, TornErrorCode};
pub use config::{TornClientConfig, TornClientConfigBuilder};
