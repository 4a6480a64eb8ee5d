//! Bounded retries: each attempt waits out pauses, takes its own ticket from the gate and
//! sends once; only failures that another attempt may cure are retried.

use std::fmt;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use serde_json::Value;
use tokio::time::Instant;

use super::{Boxed, TornClient};
use crate::error::{Error, Result};
use crate::gate::Ticket;
use crate::identity::{ApiKey, TornUserId};
use crate::limiter::Wait;

/// A failed attempt, and whether another may help.
#[derive(Debug)]
pub(super) struct Failure {
    pub(super) error: Error,
    pub(super) retry: bool,
}

impl Failure {
    pub(super) fn fatal(error: Error) -> Self {
        Self {
            error,
            retry: false,
        }
    }
    pub(super) fn transient(error: Error) -> Self {
        Self { error, retry: true }
    }
}

/// An error and its causes on one line, for logs. Every error here is free of keys and
/// URLs (reqwest's are stripped of theirs).
pub(super) struct Chain<'a>(&'a Error);

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = std::error::Error::source(self.0);
        while let Some(cause) = source {
            write!(f, ": {cause}")?;
            source = cause.source();
        }
        Ok(())
    }
}

impl TornClient {
    /// A call with bounded retries: each attempt waits out pauses, takes its own grants and
    /// sends once.
    pub(super) async fn call(
        &self,
        key: &ApiKey,
        owner: Option<TornUserId>,
        url: &url::Url,
        operation: &'static str,
        wait: &Wait,
    ) -> Result<Value> {
        let config = &self.inner.config;
        let max = config.max_attempts().get();
        let backoff = ExponentialBuilder::default()
            .with_jitter()
            .with_min_delay(config.retry_min_delay())
            .with_max_delay(config.retry_max_delay())
            .with_max_times((max - 1) as usize);
        let attempts = AtomicU32::new(0);
        let result = (|| async {
            attempts.fetch_add(1, Ordering::Relaxed);
            // Boxed: the limiter's and reqwest's futures inside make it large, and one
            // allocation per request is nothing beside the request.
            let attempt: Boxed<'_, Result<Value, Failure>> =
                Box::pin(self.attempt(key, owner, url, operation, wait));
            attempt.await
        })
        .retry(backoff)
        .sleep(tokio::time::sleep)
        .when(|f: &Failure| f.retry)
        .adjust(|_, delay| match delay {
            Some(d) if wait.too_late(Instant::now() + d) => None,
            other => other,
        })
        .notify(|f: &Failure, delay: Duration| {
            tracing::debug!(
                owner = owner.map(TornUserId::get),
                attempt = attempts.load(Ordering::Relaxed),
                max_attempts = max,
                delay_ms = delay.as_millis() as u64,
                error = %Chain(&f.error),
                "torn call failed, retrying after back-off"
            );
        })
        .await;
        result.map_err(|f| {
            if f.retry {
                tracing::warn!(
                    owner = owner.map(TornUserId::get),
                    attempts = attempts.load(Ordering::Relaxed),
                    error = %Chain(&f.error),
                    "torn call failed, no more retries"
                );
            }
            f.error
        })
    }

    pub(super) async fn attempt(
        &self,
        key: &ApiKey,
        owner: Option<TornUserId>,
        url: &url::Url,
        operation: &'static str,
        wait: &Wait,
    ) -> Result<Value, Failure> {
        // Another call may have disabled the key, or paused everything, while this one
        // waited for its back-off.
        self.check_key(key).map_err(Failure::fatal)?;
        let ticket = self.take_ticket(key, owner, wait).await?;
        let deadline = ticket.deadline();
        self.exchange(key, owner, url, operation, Some(ticket), deadline)
            .await
    }

    /// Waits out any pause, then takes the call's ticket from the gate: one with enough
    /// of its time left to send on (see [`least_time_left`]).
    pub(super) async fn take_ticket(
        &self,
        key: &ApiKey,
        owner: Option<TornUserId>,
        wait: &Wait,
    ) -> Result<Ticket, Failure> {
        let hash = key.hash();
        let least = least_time_left(self.inner.config.request_timeout());
        let mut stale = 0;
        loop {
            self.wait_out_pause(owner, wait)
                .await
                .map_err(Failure::fatal)?;
            let ticket = self
                .inner
                .gate
                .take(owner, &hash, wait)
                .await
                .map_err(Failure::fatal)?;
            // A pause may have begun while this call waited for quota.
            if self.current_pause().is_some() {
                self.inner.gate.give_back(ticket).await;
                continue;
            }
            let left = ticket.time_left();
            if left >= least {
                return Ok(ticket);
            }
            // Its units hold only until the grant plus the timeout: sent now, the request
            // could reach Torn after our records let it go. Nothing was sent, so they all
            // go back, and a fresh ticket has the whole timeout.
            self.inner.gate.give_back(ticket).await;
            stale += 1;
            tracing::debug!(
                owner = owner.map(TornUserId::get),
                left_ms = left.as_millis() as u64,
                stale,
                "too little of the ticket's time is left to send on: taking another"
            );
            if stale >= MAX_STALE_TICKETS {
                // Each ticket went stale before it could be used: the quota store answers
                // too slowly for any request to go out in time. Another attempt, after
                // back-off, may find it faster.
                return Err(Failure::transient(Error::Timeout {
                    operation: "take quota",
                    timeout: self.inner.config.request_timeout().saturating_sub(least),
                }));
            }
        }
    }
}

/// Tickets in a row that may go stale before one attempt gives up: more than one, since a
/// slow task or a slow decision is usually a moment, not a state.
const MAX_STALE_TICKETS: u32 = 3;

/// The least time a request is sent with, below which its ticket goes back and another is
/// taken: a tenth of the timeout, at least 50 ms, at most half of it.
///
/// A request sent with less would most likely time out (50 ms is below most round trips
/// to Torn; a tenth of the timeout is far below what the caller allowed for an answer),
/// and a timed-out request is the worst end of a unit: Torn may count it, so it stays held
/// for the whole hold and a window, and the attempt is spent. Giving the ticket back costs
/// one refund round trip, and the fresh ticket likely finds the units just freed. The half
/// cap keeps the floor below what a fresh ticket has left, so taking again ends even for a
/// tiny timeout.
pub(super) fn least_time_left(timeout: Duration) -> Duration {
    (timeout / 10)
        .max(Duration::from_millis(50))
        .min(timeout / 2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_floor_is_a_tenth_at_least_50_ms_and_below_a_fresh_ticket() {
        let ms = Duration::from_millis;
        assert_eq!(least_time_left(ms(10_000)), ms(1_000));
        assert_eq!(least_time_left(ms(300)), ms(50));
        // A tiny timeout: half of it, so a fresh ticket is never stale on arrival.
        assert_eq!(least_time_left(ms(60)), ms(30));
        assert_eq!(least_time_left(ms(1)), Duration::from_micros(500));
    }
}
