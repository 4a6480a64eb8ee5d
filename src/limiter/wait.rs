//! [`Wait`]: how long one call may wait, what ends the wait early, and how urgent the call
//! is. The one such type of the crate: the limiter's [`acquire_with`](Limiter::acquire_with),
//! the [quota gate](crate::gate::QuotaGate::take) and every
//! [`TornClient`](crate::torn::TornClient) call take it.

use std::time::Duration;

use rand::Rng;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{Decision, Grant, Limiter, Priority, Request};
use crate::error::{Error, Result};
use crate::identity::TornUserId;

/// How long a call may wait, what cancels it, and its [`Priority`].
///
/// A deadline bounds every wait of the call: for quota (the limiter's, or the owner's and
/// the IP's through the gate), and in the Torn client also for a pause after code 8 or 9
/// and for a back-off before a retry. A call that would have to wait past it ends at once:
/// [`Limiter::acquire_with`] returns its last [`Decision::Limited`]; the gate and the
/// client waiting for quota end with [`Error::Deadline`], the client paused with the
/// Torn error that caused the pause, and the client about to retry with the last failure.
/// The client's HTTP exchange itself is bounded by its configured request timeout.
///
/// ```
/// use std::time::Duration;
/// use torn_quota::{Priority, Wait};
///
/// let wait = Wait::forever()
///     .at_most(Duration::from_secs(5))
///     .priority(Priority::Low);
/// # let _ = wait;
/// ```
#[derive(Debug, Clone, Default)]
#[must_use]
pub struct Wait {
    deadline: Option<Instant>,
    cancel: Option<CancellationToken>,
    priority: Priority,
}

impl Wait {
    /// Waits as long as it takes, at high priority.
    pub fn forever() -> Self {
        Self::default()
    }
    /// Gives up rather than wait past `deadline`.
    pub fn until(mut self, deadline: Instant) -> Self {
        self.deadline = Some(deadline);
        self
    }
    /// Gives up rather than wait longer than `timeout` from now.
    pub fn at_most(self, timeout: Duration) -> Self {
        self.until(Instant::now() + timeout)
    }
    /// Stops waiting with [`Error::Cancelled`] when `token` is cancelled (shutdown).
    pub fn cancel_on(mut self, token: CancellationToken) -> Self {
        self.cancel = Some(token);
        self
    }
    /// The priority of the quota the call takes (see [`Priority`]). For
    /// [`Limiter::acquire_with`], whose [`Request`] has a priority of its own, a low
    /// priority on either makes the ask low priority.
    pub fn priority(mut self, priority: Priority) -> Self {
        self.priority = priority;
        self
    }

    /// The priority set with [`priority`](Self::priority). Read by the quota gate only.
    #[cfg(feature = "torn")]
    pub(crate) fn priority_of(&self) -> Priority {
        self.priority
    }

    /// True once the cancellation token, if any, is cancelled.
    pub(crate) fn is_cancelled(&self) -> bool {
        self.cancel
            .as_ref()
            .is_some_and(CancellationToken::is_cancelled)
    }

    /// Resolves when the cancellation token is cancelled; never without one. Only the Torn
    /// client races a call against it.
    #[cfg(feature = "torn")]
    pub(crate) async fn cancelled(&self) {
        match &self.cancel {
            Some(token) => token.cancelled().await,
            None => std::future::pending().await,
        }
    }

    /// True when something at `at` would fall after the deadline.
    pub(crate) fn too_late(&self, at: Instant) -> bool {
        self.deadline.is_some_and(|d| at > d)
    }
}

impl Limiter {
    /// Waits until `cost` units of `user`'s quota are granted.
    ///
    /// Cancel it by dropping the future (nothing is held while waiting), or use
    /// [`acquire_with`](Self::acquire_with) for a deadline or a cancellation token.
    ///
    /// # Panics
    ///
    /// Never: without a deadline the wait ends only in a grant or an error.
    pub async fn acquire(&self, user: TornUserId, cost: u32) -> Result<Grant> {
        match self
            .acquire_with(user, &Request::new(cost), &Wait::forever())
            .await?
        {
            Decision::Granted(g) => Ok(g),
            Decision::Limited { .. } => unreachable!("waiting forever ends only in a grant"),
        }
    }

    /// Waits for a grant, sleeping `retry_after` plus a little jitter between tries (so
    /// waiting processes do not stampede). Returns [`Decision::Limited`] at once when the
    /// next try would fall after the deadline, and [`Error::Cancelled`] when cancelled.
    pub async fn acquire_with(
        &self,
        user: TornUserId,
        request: &Request,
        wait: &Wait,
    ) -> Result<Decision> {
        let lowered;
        let request = if wait.priority == Priority::Low && request.priority == Priority::High {
            lowered = request.clone().priority(Priority::Low);
            &lowered
        } else {
            request
        };
        loop {
            if wait.is_cancelled() {
                return Err(Error::Cancelled);
            }
            let decision = self.try_acquire_with(user, request).await?;
            let retry_after = match &decision {
                Decision::Granted(_) => return Ok(decision),
                Decision::Limited { retry_after, .. } => *retry_after,
            };
            let pause = retry_after + jitter(retry_after);
            if wait.too_late(Instant::now() + retry_after) {
                return Ok(decision);
            }
            let sleep = match wait.deadline {
                Some(d) => tokio::time::sleep_until(d.min(Instant::now() + pause)),
                None => tokio::time::sleep(pause),
            };
            match &wait.cancel {
                Some(token) => tokio::select! {
                    () = sleep => {}
                    () = token.cancelled() => return Err(Error::Cancelled),
                },
                None => sleep.await,
            }
        }
    }
}

/// Up to 5 % of the wait, at most 20 ms: enough to spread waiters, small enough to keep the
/// quota in use.
fn jitter(wait: Duration) -> Duration {
    let cap = (wait.as_micros() as u64 / 20).clamp(1, 20_000);
    Duration::from_micros(rand::rng().random_range(0..=cap))
}

#[cfg(test)]
mod tests {
    use std::num::NonZeroU32;

    use super::*;
    use crate::RateLimitConfig;

    /// A low priority on the wait leaves the reserve to others, as one on the request does.
    #[tokio::test]
    async fn a_low_priority_wait_leaves_the_reserve() {
        let config = RateLimitConfig::builder()
            .limit(NonZeroU32::new(4).unwrap())
            .window(Duration::from_secs(60))
            .low_priority_reserve(2)
            .build()
            .unwrap();
        let limiter = Limiter::in_memory(config);
        let user = TornUserId::new(4);
        let low = Wait::forever()
            .until(Instant::now())
            .priority(Priority::Low);
        for _ in 0..2 {
            let d = limiter.acquire_with(user, &Request::new(1), &low).await;
            assert!(d.unwrap().is_granted());
        }
        let d = limiter.acquire_with(user, &Request::new(1), &low).await;
        assert!(
            !d.unwrap().is_granted(),
            "the reserve went to a low-priority wait"
        );
        let high = Wait::forever().until(Instant::now());
        let d = limiter.acquire_with(user, &Request::new(1), &high).await;
        assert!(
            d.unwrap().is_granted(),
            "a high-priority wait may use the reserve"
        );
    }
}
