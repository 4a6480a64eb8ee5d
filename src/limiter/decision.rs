//! [`Decision`]: the answer to one ask, a grant or a denial with its wait.

use std::time::Duration;

use super::Grant;
#[cfg(doc)]
use crate::limiter::Limiter;

/// The answer to a request: granted, or limited with the time to wait. A denial is a value,
/// not an error.
#[derive(Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Decision {
    /// All units were granted.
    Granted(Grant),
    /// None were; nothing was recorded.
    Limited {
        /// The shortest wait after which the same request is granted if nothing else arrives.
        retry_after: Duration,
        /// Units that would be granted right now.
        remaining: u32,
        /// True when Redis was unreachable and the local fallback decided.
        degraded: bool,
    },
}

impl Decision {
    /// True when granted.
    pub fn is_granted(&self) -> bool {
        matches!(self, Self::Granted(_))
    }
    /// The grant, if any.
    pub fn grant(&self) -> Option<&Grant> {
        match self {
            Self::Granted(g) => Some(g),
            Self::Limited { .. } => None,
        }
    }
    /// The grant, if any, by value (to [refund](Limiter::refund) it).
    pub fn into_grant(self) -> Option<Grant> {
        match self {
            Self::Granted(g) => Some(g),
            Self::Limited { .. } => None,
        }
    }
    /// Units available right after the decision.
    pub fn remaining(&self) -> u32 {
        match self {
            Self::Granted(g) => g.remaining,
            Self::Limited { remaining, .. } => *remaining,
        }
    }
    /// The wait before retrying: zero when granted.
    pub fn retry_after(&self) -> Duration {
        match self {
            Self::Granted(_) => Duration::ZERO,
            Self::Limited { retry_after, .. } => *retry_after,
        }
    }
    /// True when the local fallback decided because Redis was unreachable.
    pub fn is_degraded(&self) -> bool {
        match self {
            Self::Granted(g) => g.degraded,
            Self::Limited { degraded, .. } => *degraded,
        }
    }
}
