//! The safe rollout from the legacy per-key limiter to the per-user limiter: both stay
//! available, a shadow mode runs them side by side and counts where they disagree, and a
//! stable share of users moves to the new limiter at a time, with one setting as the way back.
//!
//! [`RolloutLimiter`] routes each decision by `TORN_QUOTA_MODE` and
//! `TORN_QUOTA_ROLLOUT_PERCENT` (how the two combine: [`effective_percent`]):
//!
//! - **legacy**: the [`LegacyLimiter`] (50 per 60 s per key hash, rows in PostgreSQL) decides.
//! - **shadow**: legacy decides and enforces; the per-user limiter decides the same call
//!   beside it on shadow keys of its own (`<prefix>:shadow:`), which never touch the real
//!   buckets. Every disagreement is counted (metrics, and [`Disagreements`] in Redis for
//!   `torn-quota rollout report`) and logged with the Torn user id, never the key. The
//!   shadow's answer never changes what legacy enforces, and a shadow that fails (Redis
//!   down or slow) never fails the call.
//! - **per-user**: the per-user [`Limiter`](crate::Limiter) decides (the default); with a
//!   percentage below 100, only the users [`in_rollout`] do, and the rest stay on legacy.
//!
//! ```no_run
//! # async fn run() -> Result<(), torn_quota::Error> {
//! use torn_quota::rollout::{LegacyLimiter, RolloutLimiter};
//! use torn_quota::KeyHash;
//! use torn_quota::vault::DatabaseConfig;
//! use torn_quota::{Limiter, RateLimitConfig, Request, TornUserId};
//!
//! let config = RateLimitConfig::from_env()?;
//! let pool = DatabaseConfig::from_env()?.connect().await?;
//! let rollout = RolloutLimiter::builder(Limiter::redis(config.clone())?)
//!     .legacy(LegacyLimiter::from_config(pool, &config))
//!     .build()?;
//!
//! let hash = KeyHash::of("AbCdEfGh12345678");
//! let decision = rollout
//!     .try_acquire(TornUserId::new(4), Some(hash.as_str()), &Request::new(1))
//!     .await?;
//! if decision.is_granted() { /* call Torn */ }
//! println!("enforced by {}", decision.enforced_by().as_str());
//! # Ok(()) }
//! ```
//!
//! # Metrics (through the `metrics` facade)
//!
//! | name | labels | counts |
//! |---|---|---|
//! | `torn_quota_decisions_total` | `mode`, `enforced_by`, `outcome` (`granted`, `refused`, `error`) | every decision |
//! | `torn_quota_shadow_decisions_total` | `outcome` (`granted`, `refused`, `unavailable`) | shadow decisions |
//! | `torn_quota_shadow_disagreements_total` | `direction` (`legacy_only`, `per_user_only`) | disagreements |
//! | `torn_quota_shadow_errors_total` | `stage` (`decide`, `record`) | shadow failures (never the call's) |
//! | `torn_quota_legacy_decision_seconds` | | histogram of legacy decision time (the lock included) |
//! | `torn_quota_legacy_cleanup_rows_total` | | expired legacy rows deleted |
//!
//! Each decision runs in a `tracing` span `quota_decision` with the Torn user id, the mode,
//! and the outcome; no key or key hash is ever recorded.

mod builder;
mod decision;
#[cfg(feature = "legacy")]
mod legacy;
mod owner_quota;
mod percent;
mod router;
mod shadow;

pub use builder::{RolloutLimiterBuilder, needs_legacy};
pub use decision::{EnforcedBy, RolloutDecision, Route, Shadow};
#[cfg(feature = "legacy")]
pub use legacy::{LegacyDecision, LegacyLimiter};
pub use owner_quota::{OwnerQuota, QuotaFuture};
pub use percent::{effective_percent, in_rollout, rollout_bucket};
pub use router::RolloutLimiter;
pub use shadow::{Direction, DisagreementReport, Disagreements, UserDisagreements};

/// Describes every rollout metric to the installed `metrics` recorder (an exporter shows
/// the descriptions as help text). Call it once after installing the recorder.
pub fn describe_metrics() {
    metrics::describe_counter!(
        "torn_quota_decisions_total",
        "Quota decisions by mode, enforcing limiter and outcome."
    );
    metrics::describe_counter!(
        "torn_quota_shadow_decisions_total",
        "Shadow (per-user) decisions made beside legacy, by outcome."
    );
    metrics::describe_counter!(
        "torn_quota_shadow_disagreements_total",
        "Calls where legacy and the shadow disagreed, by the side that granted."
    );
    metrics::describe_counter!(
        "torn_quota_shadow_errors_total",
        "Shadow failures (never the call's), by stage."
    );
    metrics::describe_histogram!(
        "torn_quota_legacy_decision_seconds",
        metrics::Unit::Seconds,
        "Time of one legacy decision, advisory lock included."
    );
    metrics::describe_counter!(
        "torn_quota_legacy_cleanup_rows_total",
        "Expired legacy rate-limit rows deleted."
    );
}
