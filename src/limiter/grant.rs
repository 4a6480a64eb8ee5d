//! [`Grant`]: units admitted, to be settled when Torn answers or refunded when never sent.

use crate::identity::TornUserId;
#[cfg(doc)]
use crate::limiter::{Limiter, Request};

/// Units granted: proof of admission, and what [`Limiter::refund`] takes back. Not `Clone`:
/// a grant is refunded at most once, since a second refund would free units that Torn
/// still counts.
#[derive(Debug, PartialEq, Eq)]
pub struct Grant {
    pub(super) user: TornUserId,
    pub(super) cost: u32,
    pub(super) remaining: u32,
    pub(super) at_ms: u64,
    /// The stamp of its records: `at_ms` + the request's hold.
    pub(super) stamp_ms: u64,
    /// The window it was decided with, for settling.
    pub(super) window_ms: u64,
    pub(super) degraded: bool,
    /// A degraded grant's stamp in the Redis journal (Redis time, estimated), by which it
    /// is forgotten when given back and restamped when settled.
    pub(super) journal_ms: Option<u64>,
    pub(super) idempotency_id: Option<String>,
}

impl Grant {
    /// The user whose quota paid.
    pub fn user(&self) -> TornUserId {
        self.user
    }
    /// Units granted.
    pub fn cost(&self) -> u32 {
        self.cost
    }
    /// Units still available right after this grant.
    pub fn remaining(&self) -> u32 {
        self.remaining
    }
    /// When the grant was made, in the deciding clock's milliseconds (Redis `TIME` for the
    /// Redis backend, so grants from every process compare).
    pub fn granted_at_ms(&self) -> u64 {
        self.at_ms
    }
    /// True when Redis was unreachable and the local fallback decided.
    pub fn is_degraded(&self) -> bool {
        self.degraded
    }
    /// True when the grant is provisional ([`Request::in_flight`]): its records count
    /// until [`granted_at_ms`](Self::granted_at_ms) + hold + window unless settled.
    pub fn is_provisional(&self) -> bool {
        self.stamp_ms != self.at_ms
    }
}
