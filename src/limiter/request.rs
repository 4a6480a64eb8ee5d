//! [`Request`]: what one ask for quota is, and its [`Priority`].

use std::time::Duration;

#[cfg(doc)]
use super::{Limiter, RateLimitConfigBuilder};

/// How urgent a call is. Low-priority calls (batch work) leave the configured
/// [reserve](RateLimitConfigBuilder::low_priority_reserve) to high-priority ones
/// (interactive commands).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Priority {
    /// May use the whole limit. The default.
    #[default]
    High,
    /// Admitted only while the reserve stays free for others.
    Low,
}

/// One request for quota: a cost, a priority, and an optional idempotency id.
///
/// ```
/// use torn_quota::{Priority, Request};
///
/// let req = Request::new(3).priority(Priority::Low).idempotency_id("job-42/page-7");
/// assert_eq!(req.cost(), 3);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
pub struct Request {
    pub(super) cost: u32,
    pub(super) priority: Priority,
    pub(super) idempotency_id: Option<String>,
    pub(super) margin: Duration,
    pub(super) hold: Duration,
}

impl Request {
    /// Asks for `cost` units (a cost of 0 is refused when the request is made).
    pub fn new(cost: u32) -> Self {
        Self {
            cost,
            priority: Priority::High,
            idempotency_id: None,
            margin: Duration::ZERO,
            hold: Duration::ZERO,
        }
    }
    /// The grant counts as "in flight" for `hold` beyond its window until it is settled:
    /// a provisional record stamped granted_at + hold (counts until granted_at + hold +
    /// window). [`Limiter::settle`] it when Torn answers, so that it counts one window
    /// from the answer instead; a grant never settled keeps its provisional record.
    /// Whole milliseconds; at most one day (longer is refused when the request is made).
    pub fn in_flight(mut self, hold: Duration) -> Self {
        self.hold = hold;
        self
    }
    /// Decides as if the window were longer by `margin`: a safety margin for a limit that
    /// is counted somewhere else, later. Torn counts a request when it *arrives*; if the
    /// delay between our grant and Torn's arrival varies by up to `margin`, arrivals of
    /// grants spaced one window plus `margin` apart are still a full window apart, so
    /// Torn never sees more than the limit. Costs `margin / window` of the quota.
    /// Every caller of one bucket should use the same margin.
    pub fn margin(mut self, margin: Duration) -> Self {
        self.margin = margin;
        self
    }
    /// Sets the priority.
    pub fn priority(mut self, priority: Priority) -> Self {
        self.priority = priority;
        self
    }
    /// Makes the call idempotent: a replay with the same id (say, after a timeout) returns
    /// the first grant and counts nothing again. At most 128 visible ASCII characters.
    pub fn idempotency_id(mut self, id: impl Into<String>) -> Self {
        self.idempotency_id = Some(id.into());
        self
    }
    /// Units asked for.
    pub fn cost(&self) -> u32 {
        self.cost
    }
    /// How long a grant of this request stays provisional (zero: a plain grant).
    pub fn hold(&self) -> Duration {
        self.hold
    }
}
