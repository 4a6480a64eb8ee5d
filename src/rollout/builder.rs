//! [`RolloutLimiterBuilder`]: the parts a [`RolloutLimiter`] needs, checked against the mode
//! once, when it is built, so a decision never finds a limiter missing.

use std::time::Duration;

#[cfg(feature = "legacy")]
use super::LegacyLimiter;
use super::percent::effective_percent;
use super::router::{Inner, RolloutLimiter};
use super::shadow::{Disagreements, ShadowGuard};
use crate::error::{Error, Result};
use crate::limiter::{Limiter, Mode};

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
    /// A builder around the per-user limiter, with the mode and percentage of its
    /// configuration.
    pub(super) fn new(per_user: Limiter) -> Self {
        let config = per_user.config();
        Self {
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
        Ok(RolloutLimiter::from_inner(Inner {
            mode: self.mode,
            percent: self.percent,
            per_user: self.per_user,
            shadow,
            #[cfg(feature = "legacy")]
            legacy: self.legacy,
            disagreements,
            guard,
            shadow_timeout,
        }))
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
