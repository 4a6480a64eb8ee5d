//! What one rollout decision says: the route a user's calls take, the limiter that
//! enforced, the shadow's answer beside legacy, and the [`RolloutDecision`] that carries
//! them to the caller.

use std::time::Duration;

#[cfg(feature = "legacy")]
use super::LegacyDecision;
use super::percent::{effective_percent, in_rollout};
use crate::identity::TornUserId;
use crate::limiter::{Decision, Grant, Mode};

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

/// One decision of the [`RolloutLimiter`](super::RolloutLimiter): what the enforcing
/// limiter said, which one that was, and in shadow mode what the shadow said.
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
    /// What the per-user limiter decided, as the one decision type.
    pub(super) fn from_per_user(decision: Decision) -> Self {
        let granted = decision.is_granted();
        let remaining = decision.remaining();
        let retry_after = decision.retry_after();
        let degraded = decision.is_degraded();
        Self {
            granted,
            remaining,
            retry_after,
            enforced_by: EnforcedBy::PerUser,
            degraded,
            shadow: None,
            grant: decision.into_grant(),
        }
    }

    /// What the legacy limiter decided, as the one decision type (no grant: the old limiter
    /// had no refund).
    #[cfg(feature = "legacy")]
    pub(super) fn from_legacy(d: LegacyDecision) -> Self {
        Self {
            granted: d.granted,
            remaining: d.remaining,
            retry_after: d.retry_after,
            enforced_by: EnforcedBy::Legacy,
            degraded: false,
            shadow: None,
            grant: None,
        }
    }

    /// Adds the shadow's answer to legacy's decision.
    pub(super) fn set_shadow(&mut self, shadow: Shadow) {
        self.shadow = Some(shadow);
    }

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
    /// The per-user grant, to [refund](crate::Limiter::refund) it if the call is never sent
    /// (legacy grants have no refund: the old limiter had none).
    pub fn into_grant(self) -> Option<Grant> {
        self.grant
    }
}
