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
//!
//! # Layout
//!
//! One folder or file per part; the cargo feature that brings it in (the limiter is always in, so a
//! library user who turns default features off compiles Redis, tokio and a few small crates;
//! no HTTP client or server, no PostgreSQL driver, no AES):
//!
//! | path | owns | feature |
//! |---|---|---|
//! | `limiter/` | [`Limiter`]: its config (`config/`), every Redis key name (`keys.rs`), the Redis store (`store/`: scripts, connections, failover), the in-memory twin, waiting | always |
//! | `rollout/` | routing by mode and percent (`router.rs`, `builder.rs`), the decision types, [`OwnerQuota`](rollout::OwnerQuota), the shadow comparison; the legacy limiter | always; legacy limiter: `legacy` |
//! | `identity/` | Torn user id, app user id, API key, key hash, key info, access level | always; app user id: `vault` |
//! | `torn/` | the Torn client (`client/`): one call from path check to typed answer; Torn's error codes and the client's config | client: `torn`; codes, config: always |
//! | `gate/` | the quota gate: the one place a call takes its units (owner, egress, share) | `torn` |
//! | `vault/` | keys encrypted in PostgreSQL (`store/`), owners, migrations | `vault` |
//! | `batch/` | many requests over many owners' keys at their full quota | `batch` |
//! | `sim/` | the Torn API simulator | `sim` |
//! | `serve/` | the HTTP gateway (`torn-quota serve`): the proxied call, batches, status JSON and page | `serve` |
//! | `settings/` | the one reader of settings: a TOML file under the environment, into one typed [`Settings`](settings::Settings) | `settings` |
//! | `telemetry.rs` | metric names, the Prometheus exporter | always; exporter: `prometheus` |
//! | `error.rs` | the one [`Error`] type (a denial is a value, not an error) | always |
//! | `lua.rs` | the scripts as Redis runs them, `lua/prelude.lua` put before each | always |
//! | `oracle.rs` | test oracles: the limiter's contract checked on recorded grant times | always |
//! | `cli/`, `main.rs` | the `torn-quota` binary | `cli` (default) |
//! | `../lua/` | the scripts, with their KEYS/ARGV/reply contract | always |
//! | `../xtask/` | developer harnesses the product does not ship (`cargo xtask soak`) | (workspace member) |
//!
//! One Torn call, through the parts: the caller gives the client a path and a key
//! (`torn/`). The client checks the path, takes the key's hash and finds its owner (a cache,
//! the mapping every process shares in Redis, else one counted call to Torn). The gate
//! (`gate/`) takes one unit of the owner's quota, one of the egress's and, in a pooled batch,
//! one of the owner's share, as one ticket: the rollout (`rollout/`) picks the limiter for
//! the owner, and the limiter (`limiter/`) runs `lua/acquire.lua` in Redis, or waits for
//! room. Only then is the request sent. Torn's answer settles the ticket
//! (`lua/settle.lua`); a call never sent gives its units back (`lua/refund.lua`); a code 5
//! penalizes the owner in every process (`lua/penalize.lua`). The batch handler
//! (`batch/`) drives the same client over keys read from the vault (`vault/`).
//!
//! # Words
//!
//! Each has one meaning in this crate's docs, names and messages.
//!
//! - **key**: a Torn API key, 16 characters, a secret: never logged, printed or put in a
//!   URL ([`ApiKey`]).
//! - **key hash**: lowercase hex SHA-256 of a key, what is stored, logged and bucketed by
//!   where a key must be named ([`KeyHash`]; the legacy limiter's function too).
//! - **owner**: the Torn player a key belongs to ([`TornUserId`]); Torn limits owners, not
//!   keys, so an owner's keys share one bucket.
//! - **window**: the rolling span a limit counts over (Torn's: 100 per 60 s).
//! - **grant**: units the limiter admitted ([`Grant`]), recorded in the bucket until they
//!   leave the window.
//! - **hold**: how long a grant counts beyond its window while its call may still be in
//!   flight (request timeout plus safety margin), so Torn counting a late arrival never
//!   meets an emptied bucket.
//! - **settle**: restamping a grant with the time Torn answered, which ends its hold: it
//!   then counts for one window from the answer.
//! - **share**: the part of an owner's quota the owner lends to pooled batch work (a stored
//!   key's `max_requests_per_minute`), taken beside the owner's own bucket.
//! - **egress**: the address a process sends from; Torn also limits per address, so
//!   processes with one egress id share that bucket.
//! - **penalty**: a bucket marked full for a while after Torn said code 5 (what
//!   `TORN_QUOTA_OWNER_HOLD_MS` sets: that name is a fixed setting, the word here is penalty).

#[cfg(feature = "batch")]
pub mod batch;
pub mod error;
#[cfg(feature = "torn")]
pub mod gate;
pub mod identity;
pub mod limiter;
pub mod lua;
pub mod oracle;
pub mod rollout;
#[cfg(feature = "serve")]
pub mod serve;
#[cfg(feature = "settings")]
pub mod settings;
#[cfg(feature = "sim")]
pub mod sim;
pub mod telemetry;
pub mod torn;
#[cfg(feature = "vault")]
pub mod vault;

pub use error::{Error, Result};
#[cfg(feature = "vault")]
pub use identity::AppUserId;
pub use identity::{AccessLevel, ApiKey, KeyHash, KeyInfo, TornUserId};
pub use limiter::{
    BucketKeys, Clock, Decision, Grant, KeyBuilder, Limiter, ManualClock, Mode, OnRedisDown,
    Priority, RateLimitConfig, RateLimitConfigBuilder, Request, Status, SystemClock, Wait,
};

/// The README's examples compile as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
