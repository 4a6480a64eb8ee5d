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
//! - **per-user**: the per-user [`Limiter`] decides (the default); with a percentage below
//!   100, only the users [`in_rollout`] do, and the rest stay on legacy.
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

#[cfg(feature = "legacy")]
mod legacy;
mod percent;
mod shadow;

use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use tokio::time::Instant;
use tracing::Instrument;
use tracing::field::Empty;

use crate::error::{Error, Result};
use crate::identity::TornUserId;
use crate::limiter::{Decision, Grant, Limiter, Mode, Request};

#[cfg(feature = "legacy")]
pub use legacy::{LegacyDecision, LegacyLimiter};
pub use percent::{effective_percent, in_rollout, rollout_bucket};
pub use shadow::{Direction, DisagreementReport, Disagreements, UserDisagreements};

use shadow::ShadowGuard;

/// Which limiter enforced a decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EnforcedBy {
    /// The legacy per-key limiter.
    Legacy,
    /// The per-user limiter.
    PerUser,
}

impl EnforcedBy {
    /// `legacy` or `per-user`, as in `TORN_QUOTA_MODE` and the CLI's `enforced_by`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Legacy => "legacy",
            Self::PerUser => "per-user",
        }
    }
}

/// Where one user's decisions go, from the mode and the percentage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Route {
    /// Legacy decides alone.
    Legacy,
    /// Legacy decides; the per-user limiter decides beside it on its shadow keys.
    LegacyWithShadow,
    /// The per-user limiter decides.
    PerUser,
}

impl Route {
    /// The limiter that enforces on this route.
    pub fn enforced_by(self) -> EnforcedBy {
        match self {
            Self::Legacy | Self::LegacyWithShadow => EnforcedBy::Legacy,
            Self::PerUser => EnforcedBy::PerUser,
        }
    }

    /// `legacy`, `legacy+shadow` or `per-user`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Legacy => "legacy",
            Self::LegacyWithShadow => "legacy+shadow",
            Self::PerUser => "per-user",
        }
    }

    /// The route of `user` under `mode` and `TORN_QUOTA_ROLLOUT_PERCENT` = `percent`.
    pub fn of(user: TornUserId, mode: Mode, percent: Option<u8>) -> Self {
        if in_rollout(user, effective_percent(mode, percent)) {
            Self::PerUser
        } else if mode == Mode::Shadow {
            Self::LegacyWithShadow
        } else {
            Self::Legacy
        }
    }
}

/// What the shadow limiter said beside legacy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Shadow {
    /// The per-user limiter decided on its shadow keys.
    Decided {
        /// Whether it would have granted.
        granted: bool,
        /// Whether it said what legacy said.
        agree: bool,
    },
    /// It could not decide (Redis unreachable or slow, or it answered only from its local
    /// fallback, which compares with nothing), or it is skipped for a moment after such a
    /// failure. Legacy's decision stands; nothing was compared.
    Unavailable,
}

/// One decision of the [`RolloutLimiter`]: what the enforcing limiter said, which one that
/// was, and in shadow mode what the shadow said.
#[derive(Debug)]
pub struct RolloutDecision {
    granted: bool,
    remaining: u32,
    retry_after: Duration,
    enforced_by: EnforcedBy,
    degraded: bool,
    shadow: Option<Shadow>,
    grant: Option<Grant>,
}

impl RolloutDecision {
    /// True when the enforcing limiter granted.
    pub fn is_granted(&self) -> bool {
        self.granted
    }
    /// Units the enforcing limiter would grant right after this decision.
    pub fn remaining(&self) -> u32 {
        self.remaining
    }
    /// Zero when granted; else the wait after which the same call is granted if nothing else
    /// arrives.
    pub fn retry_after(&self) -> Duration {
        self.retry_after
    }
    /// The limiter that enforced.
    pub fn enforced_by(&self) -> EnforcedBy {
        self.enforced_by
    }
    /// True when the per-user limiter decided from its local fallback (Redis unreachable).
    pub fn is_degraded(&self) -> bool {
        self.degraded
    }
    /// The shadow's answer: `Some` exactly when the shadow ran beside legacy.
    pub fn shadow(&self) -> Option<Shadow> {
        self.shadow
    }
    /// The per-user grant, to [refund](Limiter::refund) it if the call is never sent
    /// (legacy grants have no refund: the old limiter had none).
    pub fn into_grant(self) -> Option<Grant> {
        self.grant
    }
}

/// Routes decisions between the legacy and the per-user limiter by mode and percentage.
/// Cheap to clone; clones share everything.
#[derive(Debug, Clone)]
pub struct RolloutLimiter {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    mode: Mode,
    percent: Option<u8>,
    per_user: Limiter,
    shadow: Option<Limiter>,
    #[cfg(feature = "legacy")]
    legacy: Option<LegacyLimiter>,
    disagreements: Disagreements,
    guard: ShadowGuard,
    shadow_timeout: Duration,
}

/// Builds a [`RolloutLimiter`]; [`build`](Self::build) checks that every limiter the mode
/// needs is there.
#[derive(Debug)]
#[must_use]
pub struct RolloutLimiterBuilder {
    per_user: Limiter,
    mode: Mode,
    percent: Option<u8>,
    shadow: Option<Limiter>,
    #[cfg(feature = "legacy")]
    legacy: Option<LegacyLimiter>,
    disagreements: Option<Disagreements>,
    shadow_timeout: Option<Duration>,
}

impl RolloutLimiterBuilder {
    /// The legacy limiter, needed unless every user is on the per-user limiter.
    #[cfg(feature = "legacy")]
    pub fn legacy(mut self, legacy: LegacyLimiter) -> Self {
        self.legacy = Some(legacy);
        self
    }

    /// The mode, instead of the per-user limiter's configured `TORN_QUOTA_MODE`.
    pub fn mode(mut self, mode: Mode) -> Self {
        self.mode = mode;
        self
    }

    /// The rollout percentage (0 to 100; above is read as 100), instead of the configured
    /// `TORN_QUOTA_ROLLOUT_PERCENT`. `None` means unset.
    pub fn percent(mut self, percent: Option<u8>) -> Self {
        self.percent = percent.map(|p| p.min(100));
        self
    }

    /// The limiter the shadow decides with. The default is the per-user limiter's
    /// [`sibling`](Limiter::sibling) `shadow`, at its configured limit and window: per-user
    /// overrides do not reach it, so pass a limiter of your own to shadow them too.
    pub fn shadow_limiter(mut self, shadow: Limiter) -> Self {
        self.shadow = Some(shadow);
        self
    }

    /// Where disagreements are counted. The default is [`Disagreements::for_limiter`] of the
    /// per-user limiter: Redis under its key prefix when it uses Redis.
    pub fn disagreements(mut self, store: Disagreements) -> Self {
        self.disagreements = Some(store);
        self
    }

    /// The most the shadow may add to a call (default: the per-user limiter's command
    /// timeout). Legacy and the shadow run at once, so a healthy shadow adds nothing.
    pub fn shadow_timeout(mut self, timeout: Duration) -> Self {
        self.shadow_timeout = Some(timeout);
        self
    }

    /// Checks the parts and builds.
    pub fn build(self) -> Result<RolloutLimiter> {
        let config = self.per_user.config();
        let needs_legacy = needs_legacy(self.mode, self.percent);
        #[cfg(feature = "legacy")]
        if needs_legacy && self.legacy.is_none() {
            return Err(Error::Config {
                setting: "DATABASE_URL",
                reason: format!(
                    "mode {} at {} % needs the legacy limiter's database",
                    self.mode.as_str(),
                    effective_percent(self.mode, self.percent)
                ),
            });
        }
        #[cfg(not(feature = "legacy"))]
        if needs_legacy {
            return Err(Error::Config {
                setting: "TORN_QUOTA_MODE",
                reason: format!(
                    "mode {} at {} % needs the legacy limiter, which this build leaves out \
                     (cargo feature `legacy`); use per-user at 100 %",
                    self.mode.as_str(),
                    effective_percent(self.mode, self.percent)
                ),
            });
        }
        let shadow = match (self.mode, self.shadow) {
            (Mode::Shadow, Some(s)) => Some(s),
            (Mode::Shadow, None) => Some(self.per_user.sibling(
                "shadow",
                config.limit(),
                config.window(),
            )?),
            _ => None,
        };
        let disagreements = match self.disagreements {
            Some(d) => d,
            None => Disagreements::for_limiter(&self.per_user)?,
        };
        let shadow_timeout = self
            .shadow_timeout
            .unwrap_or_else(|| config.command_timeout());
        let guard = ShadowGuard::new(
            config.reconnect_interval().max(Duration::from_millis(100)),
            Duration::from_secs(10),
        );
        Ok(RolloutLimiter {
            inner: Arc::new(Inner {
                mode: self.mode,
                percent: self.percent,
                per_user: self.per_user,
                shadow,
                #[cfg(feature = "legacy")]
                legacy: self.legacy,
                disagreements,
                guard,
                shadow_timeout,
            }),
        })
    }
}

/// True when some user may be routed to legacy under `mode` and `percent`, so a legacy
/// limiter (and its database) is needed.
///
/// ```
/// use torn_quota::Mode;
/// use torn_quota::rollout::needs_legacy;
///
/// assert!(!needs_legacy(Mode::PerUser, None));
/// assert!(needs_legacy(Mode::PerUser, Some(10)));
/// assert!(!needs_legacy(Mode::Shadow, Some(100)));
/// assert!(needs_legacy(Mode::Legacy, Some(100)));
/// ```
pub fn needs_legacy(mode: Mode, percent: Option<u8>) -> bool {
    effective_percent(mode, percent) < 100
}

impl RolloutLimiter {
    /// A builder around the per-user limiter, with the mode and percentage of its
    /// configuration.
    pub fn builder(per_user: Limiter) -> RolloutLimiterBuilder {
        let config = per_user.config();
        RolloutLimiterBuilder {
            mode: config.mode(),
            percent: config.rollout_percent(),
            per_user,
            shadow: None,
            #[cfg(feature = "legacy")]
            legacy: None,
            disagreements: None,
            shadow_timeout: None,
        }
    }

    /// The mode in force.
    pub fn mode(&self) -> Mode {
        self.inner.mode
    }

    /// The share of users the per-user limiter governs, 0 to 100.
    pub fn percent(&self) -> u8 {
        effective_percent(self.inner.mode, self.inner.percent)
    }

    /// Where `user`'s decisions go.
    pub fn route(&self, user: TornUserId) -> Route {
        Route::of(user, self.inner.mode, self.inner.percent)
    }

    /// The per-user limiter.
    pub fn per_user(&self) -> &Limiter {
        &self.inner.per_user
    }

    /// The legacy limiter, when there is one.
    #[cfg(feature = "legacy")]
    pub fn legacy(&self) -> Option<&LegacyLimiter> {
        self.inner.legacy.as_ref()
    }

    /// The shadow limiter, in shadow mode.
    pub fn shadow_limiter(&self) -> Option<&Limiter> {
        self.inner.shadow.as_ref()
    }

    /// Where disagreements are counted.
    pub fn disagreements(&self) -> &Disagreements {
        &self.inner.disagreements
    }

    /// One decision for `user` (the Torn user id whose quota pays) calling with the key whose
    /// hash is `key_hash` (needed whenever legacy decides: it buckets by key), now, without
    /// waiting. Legacy uses only the request's cost.
    pub async fn try_acquire(
        &self,
        user: TornUserId,
        key_hash: Option<&str>,
        request: &Request,
    ) -> Result<RolloutDecision> {
        let route = self.route(user);
        let span = tracing::info_span!(
            "quota_decision",
            user = user.get(),
            mode = self.inner.mode.as_str(),
            route = route.as_str(),
            cost = request.cost(),
            granted = Empty,
            shadow_granted = Empty,
            agree = Empty,
        );
        // Boxed: the decision's future nests sqlx, Redis and the shadow's join deeply
        // enough that a caller's async fn around it overflows rustc's layout depth in
        // release builds. One allocation per decision caps it here.
        let result = Box::pin(
            self.decide(route, user, key_hash, request)
                .instrument(span.clone()),
        )
        .await;
        let outcome = match &result {
            Ok(d) => {
                span.record("granted", d.granted);
                if let Some(Shadow::Decided { granted, agree }) = d.shadow {
                    span.record("shadow_granted", granted);
                    span.record("agree", agree);
                }
                if d.granted { "granted" } else { "refused" }
            }
            Err(e) => {
                span.in_scope(|| tracing::debug!(error = %e, "quota decision failed"));
                "error"
            }
        };
        metrics::counter!(
            "torn_quota_decisions_total",
            "mode" => self.inner.mode.as_str(),
            "enforced_by" => route.enforced_by().as_str(),
            "outcome" => outcome,
        )
        .increment(1);
        result
    }

    /// Like [`try_acquire`](Self::try_acquire), but while refused, sleeps the advised wait
    /// (plus a little jitter, so waiters do not stampede) and asks again; returns the
    /// refusal when the next try would come after `deadline`. In shadow mode every try is a
    /// decision of both limiters, and is compared.
    pub async fn acquire_until(
        &self,
        user: TornUserId,
        key_hash: Option<&str>,
        request: &Request,
        deadline: Option<Instant>,
    ) -> Result<RolloutDecision> {
        loop {
            let decision = self.try_acquire(user, key_hash, request).await?;
            if decision.granted {
                return Ok(decision);
            }
            let wait = decision.retry_after;
            if deadline.is_some_and(|d| Instant::now() + wait > d) {
                return Ok(decision);
            }
            let jitter_cap = (wait.as_micros() as u64 / 20).clamp(1, 20_000);
            let jitter = Duration::from_micros(rand::rng().random_range(0..=jitter_cap));
            let until = Instant::now() + wait + jitter;
            tokio::time::sleep_until(deadline.map_or(until, |d| d.min(until))).await;
        }
    }

    async fn decide(
        &self,
        route: Route,
        user: TornUserId,
        key_hash: Option<&str>,
        request: &Request,
    ) -> Result<RolloutDecision> {
        match route {
            Route::PerUser => {
                let decision = self.inner.per_user.try_acquire_with(user, request).await?;
                Ok(from_per_user(decision))
            }
            Route::Legacy => self.legacy_decide(key_hash, request.cost()).await,
            Route::LegacyWithShadow => {
                // The key is checked first, so a call legacy refuses outright costs the
                // shadow nothing either.
                let key_hash = require_key(self.inner.mode, key_hash)?;
                let (legacy, shadow) = tokio::join!(
                    self.legacy_decide(Some(key_hash), request.cost()),
                    self.shadow_decide(user, request.cost()),
                );
                let mut decision = legacy?;
                decision.shadow = Some(self.compare(user, decision.granted, shadow).await);
                Ok(decision)
            }
        }
    }

    #[cfg(feature = "legacy")]
    async fn legacy_decide(&self, key_hash: Option<&str>, cost: u32) -> Result<RolloutDecision> {
        let key_hash = require_key(self.inner.mode, key_hash)?;
        let Some(legacy) = self.inner.legacy.as_ref() else {
            // `build` refuses a mode that routes here without a legacy limiter.
            return Err(no_legacy(self.inner.mode));
        };
        let d = legacy.try_acquire(key_hash, cost).await?;
        Ok(RolloutDecision {
            granted: d.granted,
            remaining: d.remaining,
            retry_after: d.retry_after,
            enforced_by: EnforcedBy::Legacy,
            degraded: false,
            shadow: None,
            grant: None,
        })
    }

    /// Without the `legacy` feature `build` refuses every mode that routes here; `async`
    /// only to match the real one.
    #[cfg(not(feature = "legacy"))]
    #[allow(clippy::unused_async)]
    async fn legacy_decide(&self, key_hash: Option<&str>, _cost: u32) -> Result<RolloutDecision> {
        require_key(self.inner.mode, key_hash)?;
        Err(no_legacy(self.inner.mode))
    }

    /// The shadow's decision, or `None` when it could not decide. Never an error: a failure
    /// is counted, logged (rate-limited) and makes the shadow step aside for a while.
    async fn shadow_decide(&self, user: TornUserId, cost: u32) -> Option<bool> {
        let shadow = self.inner.shadow.as_ref()?;
        let inner = &self.inner;
        let outcome = if inner.guard.skipping() {
            None
        } else {
            let request = Request::new(cost);
            let call = shadow.try_acquire_with(user, &request);
            match tokio::time::timeout(inner.shadow_timeout, call).await {
                Ok(Ok(d)) if !d.is_degraded() => {
                    inner.guard.succeeded();
                    Some(d.is_granted())
                }
                Ok(Ok(_)) => {
                    inner
                        .guard
                        .failed("decide", &"redis unreachable: local fallback answered");
                    None
                }
                Ok(Err(e)) => {
                    inner.guard.failed("decide", &e);
                    None
                }
                Err(_) => {
                    inner.guard.failed(
                        "decide",
                        &format_args!("no answer within {:?}", inner.shadow_timeout),
                    );
                    None
                }
            }
        };
        let label = match outcome {
            Some(true) => "granted",
            Some(false) => "refused",
            None => "unavailable",
        };
        metrics::counter!("torn_quota_shadow_decisions_total", "outcome" => label).increment(1);
        outcome
    }

    /// Compares the two answers; a disagreement is counted, logged and recorded for the
    /// report (a failure to record is the shadow's, never the call's).
    async fn compare(&self, user: TornUserId, legacy: bool, shadow: Option<bool>) -> Shadow {
        let Some(per_user) = shadow else {
            return Shadow::Unavailable;
        };
        if let Some(direction) = Direction::of(legacy, per_user) {
            metrics::counter!(
                "torn_quota_shadow_disagreements_total",
                "direction" => direction.as_str(),
            )
            .increment(1);
            tracing::info!(
                user = user.get(),
                direction = direction.as_str(),
                legacy_granted = legacy,
                per_user_granted = per_user,
                "shadow disagreement"
            );
            let inner = &self.inner;
            let record = inner.disagreements.record(user, direction);
            match tokio::time::timeout(inner.shadow_timeout, record).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => inner.guard.failed("record", &e),
                Err(_) => inner.guard.failed(
                    "record",
                    &format_args!("no answer within {:?}", inner.shadow_timeout),
                ),
            }
        }
        Shadow::Decided {
            granted: per_user,
            agree: legacy == per_user,
        }
    }
}

/// A boxed future, its type erased: the decision futures nest sqlx and Redis deeply, and
/// a trait object needs one type.
pub type QuotaFuture<'a> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<RolloutDecision>> + Send + 'a>>;

/// Whatever decides an owner's unit for a Torn call: the per-user [`Limiter`], the
/// [`LegacyLimiter`], or the [`RolloutLimiter`] that routes between them by
/// `TORN_QUOTA_MODE` and `TORN_QUOTA_ROLLOUT_PERCENT`. The
/// [quota gate](crate::gate::QuotaGate) holds one and takes every owner unit through it,
/// so one setting governs every call; every implementation answers with the one decision
/// type, [`RolloutDecision`].
pub trait OwnerQuota: Send + Sync + std::fmt::Debug {
    /// One decision for `user` calling with the key whose hash is `key_hash` (legacy
    /// counts per key and needs it), now, without waiting.
    fn decide<'a>(
        &'a self,
        user: TornUserId,
        key_hash: Option<&'a str>,
        request: &'a Request,
    ) -> QuotaFuture<'a>;

    /// True when `user`'s calls are counted per key (legacy enforces): a caller then asks
    /// for each key separately instead of one chunk for the owner.
    fn per_key(&self, user: TornUserId) -> bool;
}

impl OwnerQuota for Limiter {
    fn decide<'a>(
        &'a self,
        user: TornUserId,
        _key_hash: Option<&'a str>,
        request: &'a Request,
    ) -> QuotaFuture<'a> {
        Box::pin(async move { Ok(from_per_user(self.try_acquire_with(user, request).await?)) })
    }
    fn per_key(&self, _user: TornUserId) -> bool {
        false
    }
}

#[cfg(feature = "legacy")]
impl OwnerQuota for LegacyLimiter {
    fn decide<'a>(
        &'a self,
        _user: TornUserId,
        key_hash: Option<&'a str>,
        request: &'a Request,
    ) -> QuotaFuture<'a> {
        Box::pin(async move {
            let key_hash = require_key(Mode::Legacy, key_hash)?;
            let d = self.try_acquire(key_hash, request.cost()).await?;
            Ok(RolloutDecision {
                granted: d.granted,
                remaining: d.remaining,
                retry_after: d.retry_after,
                enforced_by: EnforcedBy::Legacy,
                degraded: false,
                shadow: None,
                grant: None,
            })
        })
    }
    fn per_key(&self, _user: TornUserId) -> bool {
        true
    }
}

impl OwnerQuota for RolloutLimiter {
    fn decide<'a>(
        &'a self,
        user: TornUserId,
        key_hash: Option<&'a str>,
        request: &'a Request,
    ) -> QuotaFuture<'a> {
        Box::pin(self.try_acquire(user, key_hash, request))
    }
    fn per_key(&self, user: TornUserId) -> bool {
        self.route(user).enforced_by() == EnforcedBy::Legacy
    }
}

fn from_per_user(decision: Decision) -> RolloutDecision {
    let granted = decision.is_granted();
    let remaining = decision.remaining();
    let retry_after = decision.retry_after();
    let degraded = decision.is_degraded();
    RolloutDecision {
        granted,
        remaining,
        retry_after,
        enforced_by: EnforcedBy::PerUser,
        degraded,
        shadow: None,
        grant: decision.into_grant(),
    }
}

fn require_key(mode: Mode, key_hash: Option<&str>) -> Result<&str> {
    key_hash.ok_or_else(|| Error::InvalidArgument {
        name: "key_hash",
        reason: format!(
            "TORN_QUOTA_MODE={} routes this user to the legacy limiter, which counts per key: \
             pass the key's hash",
            mode.as_str()
        ),
    })
}

fn no_legacy(mode: Mode) -> Error {
    Error::Config {
        setting: "TORN_QUOTA_MODE",
        reason: format!(
            "mode {} routes this user to the legacy limiter, and there is none",
            mode.as_str()
        ),
    }
}

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
