//! The pause of every call of the client after Torn blocks the address or the API (codes
//! 8, 9, HTTP 429).

use std::time::Duration;

use tokio::time::Instant;

use super::{TornClient, lock};
use crate::error::{Error, Result};
use crate::identity::TornUserId;
use crate::limiter::Wait;
use crate::torn::TornErrorCode;

/// Every call of the client waits until `until` (codes 8, 9).
#[derive(Debug, Clone, Copy)]
pub(super) struct Pause {
    pub(super) code: TornErrorCode,
    pub(super) until: Instant,
}

impl TornClient {
    /// How long every call is still paused after a code 8 or 9, if it is.
    pub fn paused_for(&self) -> Option<Duration> {
        self.current_pause()
            .map(|p| p.until.saturating_duration_since(Instant::now()))
    }

    pub(super) fn current_pause(&self) -> Option<Pause> {
        let mut pause = lock(&self.inner.pause);
        match *pause {
            Some(p) if p.until > Instant::now() => Some(p),
            Some(_) => {
                *pause = None;
                None
            }
            None => None,
        }
    }

    /// Waits until no pause is in force, or fails at once when the pause outlasts the
    /// call's deadline.
    pub(super) async fn wait_out_pause(
        &self,
        owner: Option<TornUserId>,
        wait: &Wait,
    ) -> Result<()> {
        while let Some(p) = self.current_pause() {
            let left = p.until.saturating_duration_since(Instant::now());
            if wait.too_late(p.until) {
                return Err(Error::Torn {
                    code: p.code,
                    message: format!(
                        "{} (calls are paused for another {} ms; not sent)",
                        p.code.text(),
                        left.as_millis()
                    ),
                });
            }
            tracing::debug!(
                owner = owner.map(TornUserId::get),
                code = p.code.get(),
                wait_ms = left.as_millis() as u64,
                "torn calls paused: waiting"
            );
            tokio::time::sleep_until(p.until).await;
        }
        Ok(())
    }

    /// Pauses every call of this client (codes 8, 9, and HTTP 429, which is code 8 from
    /// Torn's front) for the configured time.
    pub(super) fn pause_all(&self, code: TornErrorCode, owner: Option<TornUserId>) {
        let pause = self.inner.config.pause();
        let until = Instant::now() + pause;
        {
            let mut current = lock(&self.inner.pause);
            if current.is_none_or(|p| p.until < until) {
                *current = Some(Pause { code, until });
            }
        }
        tracing::warn!(
            owner = owner.map(TornUserId::get),
            code = code.get(),
            pause_ms = pause.as_millis() as u64,
            "torn blocked this ip or the api: pausing every call"
        );
    }
}
