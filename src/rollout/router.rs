//! [`RolloutLimiter`]: routes each decision to the legacy or the per-user limiter by mode and
//! percentage, and in shadow mode runs the per-user limiter beside legacy and compares.

use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use tokio::time::Instant;
use tracing::Instrument;
use tracing::field::Empty;

#[cfg(feature = "legacy")]
use super::LegacyLimiter;
use super::builder::RolloutLimiterBuilder;
use super::decision::{RolloutDecision, Route, Shadow};
use super::percent::effective_percent;
use super::shadow::{Direction, Disagreements, ShadowGuard};
use crate::error::{Error, Result};
use crate::identity::TornUserId;
use crate::limiter::{Limiter, Mode, Request};

/// Routes decisions between the legacy and the per-user limiter by mode and percentage.
/// Cheap to clone; clones share everything.
#[derive(Debug, Clone)]
pub struct RolloutLimiter {
    inner: Arc<Inner>,
}

/// What every clone shares; the [builder](RolloutLimiterBuilder) fills it once.
#[derive(Debug)]
pub(super) struct Inner {
    pub(super) mode: Mode,
    pub(super) percent: Option<u8>,
    pub(super) per_user: Limiter,
    pub(super) shadow: Option<Limiter>,
    #[cfg(feature = "legacy")]
    pub(super) legacy: Option<LegacyLimiter>,
    pub(super) disagreements: Disagreements,
    pub(super) guard: ShadowGuard,
    pub(super) shadow_timeout: Duration,
}

impl RolloutLimiter {
    /// A builder around the per-user limiter, with the mode and percentage of its
    /// configuration.
    pub fn builder(per_user: Limiter) -> RolloutLimiterBuilder {
        RolloutLimiterBuilder::new(per_user)
    }

    /// The limiter over parts the builder checked.
    pub(super) fn from_inner(inner: Inner) -> Self {
        Self {
            inner: Arc::new(inner),
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
                span.record("granted", d.is_granted());
                if let Some(Shadow::Decided { granted, agree }) = d.shadow() {
                    span.record("shadow_granted", granted);
                    span.record("agree", agree);
                }
                if d.is_granted() { "granted" } else { "refused" }
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
            if decision.is_granted() {
                return Ok(decision);
            }
            let wait = decision.retry_after();
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
                Ok(RolloutDecision::from_per_user(decision))
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
                let shadow = self.compare(user, decision.is_granted(), shadow).await;
                decision.set_shadow(shadow);
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
        Ok(RolloutDecision::from_legacy(d))
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
                    self.no_answer("decide");
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
                Err(_) => self.no_answer("record"),
            }
        }
        Shadow::Decided {
            granted: per_user,
            agree: legacy == per_user,
        }
    }

    /// The shadow's `stage` outlived its timeout: a failure like any other, so the shadow
    /// steps aside for a while.
    fn no_answer(&self, stage: &'static str) {
        let timeout = self.inner.shadow_timeout;
        self.inner
            .guard
            .failed(stage, &format_args!("no answer within {timeout:?}"));
    }
}

/// The key's hash, which legacy needs (it counts per key), or the error saying so.
pub(super) fn require_key(mode: Mode, key_hash: Option<&str>) -> Result<&str> {
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
