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
pub mod metrics;
pub mod rollout;
pub mod serve;
mod settings;
pub mod sim;
pub mod torn;
pub mod vault;

pub use error::{Error, Result};
pub use limiter::{
    BucketKeys, Clock, Decision, Grant, KeyBuilder, Limiter, ManualClock, Mode, OnRedisDown,
    Priority, RateLimitConfig, RateLimitConfigBuilder, Request, Status, SystemClock, TornUserId,
    Wait,
};

/// The most grants in any window, by the limiter's own rule for millisecond stamps: a grant
/// stamped `t` was made somewhere in `[t, t + 1)` ms and counts until `t + window_ms`
/// inclusive, so grants stamped `window_ms` apart may be less than one real window apart
/// and count together. The check an oracle runs on recorded grant times, such as
/// [`Grant::granted_at_ms`]. `times` need not be sorted.
///
/// ```
/// // 0 and 1000 may be 999.x ms apart in real time: together in one window.
/// assert_eq!(torn_quota::busiest_window(&[0, 10, 999, 1000], 1000), 4);
/// // The first has surely left by 1001.
/// assert_eq!(torn_quota::busiest_window(&[0, 10, 999, 1001], 1000), 3);
/// ```
pub fn busiest_window(times: &[u64], window_ms: u64) -> usize {
    let mut sorted = times.to_vec();
    sorted.sort_unstable();
    let mut best = 0;
    let mut lo = 0;
    for hi in 0..sorted.len() {
        while sorted[hi] - sorted[lo] > window_ms {
            lo += 1;
        }
        best = best.max(hi - lo + 1);
    }
    best
}

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
