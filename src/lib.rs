//! # torn-quota
//!
//! Torn City limits each player to 100 API requests per rolling minute across all of their
//! keys. torn-quota lets every process of a tool share that quota exactly: an atomic Lua
//! script in Redis keeps a rolling log per Torn user id, so in every interval of one window
//! at most the limit is granted, however many workers ask at once, and a bucket asked often
//! enough gets the whole limit.
//!
//! ```no_run
//! # async fn run() -> Result<(), torn_quota::Error> {
//! use torn_quota::{Limiter, RateLimitConfig, TornUserId};
//!
//! let limiter = Limiter::redis(RateLimitConfig::from_env()?)?;
//! let grant = limiter.acquire(TornUserId::new(4), 1).await?; // waits when the window is full
//! // ... call Torn; if the call was never sent:
//! limiter.refund(grant).await?;
//! # Ok(()) }
//! ```
//!
//! The scripts live in `lua/` with their KEYS/ARGV/reply contract in each header, so other
//! languages can call them too. The [`Limiter`] also runs [in memory](Limiter::in_memory)
//! with identical semantics, for one process and for tests.

pub mod batch;
pub mod error;
pub mod gate;
pub mod limiter;
pub mod lua;
pub mod oracle;
pub mod rollout;
mod settings;
pub mod sim;
pub mod telemetry;
pub mod torn;
pub mod vault;

pub use error::{Error, Result};
pub use limiter::{
    BucketKeys, Clock, Decision, Grant, KeyBuilder, Limiter, ManualClock, Mode, OnRedisDown,
    Priority, RateLimitConfig, RateLimitConfigBuilder, Request, Status, SystemClock, TornUserId,
    Wait,
};

/// The README's examples compile as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
