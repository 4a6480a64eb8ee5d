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
        let ticket = self
            .take_ticket(key, owner, wait)
            .await
            .map_err(Failure::fatal)?;
        self.exchange(key, owner, url, operation, Some(ticket))
            .await
    }

    /// Waits out any pause, then takes the call's ticket from the gate.
    pub(super) async fn take_ticket(
        &self,
        key: &ApiKey,
        owner: Option<TornUserId>,
        wait: &Wait,
    ) -> Result<Ticket> {
        let hash = key.hash();
        loop {
            self.wait_out_pause(owner, wait).await?;
            let ticket = self.inner.gate.take(owner, &hash, wait).await?;
            // A pause may have begun while this call waited for quota.
            if self.current_pause().is_none() {
                return Ok(ticket);
            }
            self.inner.gate.give_back(ticket).await;
        }
    }
}
