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

/// The Lua scripts, as shipped in `lua/`, for callers in other languages or tools that load
/// them themselves.
pub mod lua {
    /// `lua/acquire.lua`: take units from a bucket.
    pub const ACQUIRE: &str = include_str!("../lua/acquire.lua");
    /// `lua/acquire_many.lua`: many acquire decisions in one call. Not standalone: run
    /// [`acquire_many_source`], which puts [`ACQUIRE`]'s shared part before it.
    pub const ACQUIRE_MANY: &str = include_str!("../lua/acquire_many.lua");

    /// The runnable text of `acquire_many.lua`: `acquire.lua` up to its `@shared-end` line
    /// (the one `decide` function both scripts run), then `acquire_many.lua`.
    pub fn acquire_many_source() -> String {
        let shared = ACQUIRE
            .find("-- @shared-end")
            .map_or(ACQUIRE, |end| &ACQUIRE[..end]);
        format!("{shared}\n{ACQUIRE_MANY}")
    }
    /// `lua/status.lua`: read a bucket.
    pub const STATUS: &str = include_str!("../lua/status.lua");
    /// `lua/penalize.lua`: mark a bucket full for a while.
    pub const PENALIZE: &str = include_str!("../lua/penalize.lua");
    /// `lua/refund.lua`: give back a grant never sent.
    pub const REFUND: &str = include_str!("../lua/refund.lua");
    /// `lua/settle.lua`: restamp provisional grants with the time their calls were answered.
    pub const SETTLE: &str = include_str!("../lua/settle.lua");
    /// `lua/record.lua`: record units Torn counted although nobody asked first.
    pub const RECORD: &str = include_str!("../lua/record.lua");
}

/// The README's examples compile as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
