//! [`Shares`]: the owners' shares of their quotas for pooled batch work.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use crate::error::Result;
use crate::identity::TornUserId;
use crate::limiter::{Decision, Grant, Limiter, Request};

/// Each pooled owner's share of their quota, as limits of the per-user limiter's sibling
/// `share`. The overrides expire on their own (a batch that dies leaves nothing behind for
/// long) and are refreshed while the batch takes units; [`close`](Self::close) clears them.
#[derive(Debug)]
pub struct Shares {
    limiter: Limiter,
    caps: HashMap<TornUserId, NonZeroU32>,
    ttl: Duration,
    refreshed: Mutex<Instant>,
}

impl Shares {
    pub(super) async fn open(base: &Limiter, caps: &[(TornUserId, NonZeroU32)]) -> Result<Self> {
        let config = base.config();
        let limiter = base.sibling("share", config.limit(), config.window())?;
        // Long enough that refreshing is rare, short enough that a dead batch's caps go.
        let ttl = config
            .window()
            .saturating_mul(4)
            .max(Duration::from_secs(60));
        let shares = Self {
            limiter,
            caps: caps.iter().copied().collect(),
            ttl,
            refreshed: Mutex::new(Instant::now()),
        };
        shares.set_all().await?;
        Ok(shares)
    }

    /// The limiter the shares are counted on.
    pub fn limiter(&self) -> &Limiter {
        &self.limiter
    }

    /// True when `user` has a share.
    pub fn has(&self, user: TornUserId) -> bool {
        self.caps.contains_key(&user)
    }

    /// How long an override lives without a refresh.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Clears every override now.
    pub async fn close(&self) {
        for &user in self.caps.keys() {
            if let Err(e) = self.limiter.set_user_limit(user, None).await {
                tracing::debug!(owner = user.get(), error = %e, "cannot clear a batch share");
            }
        }
    }

    async fn set_all(&self) -> Result<()> {
        let ttl_ms = self.ttl.as_millis() as u64;
        for (&user, &cap) in &self.caps {
            self.limiter.set_user_limit(user, Some(cap)).await?;
            let key = self.limiter.keys().bucket(user).limit;
            if let Some(r) = self
                .limiter
                .with_redis("expire_share", move |mut c| async move {
                    redis::cmd("PEXPIRE")
                        .arg(&key)
                        .arg(ttl_ms)
                        .exec_async(&mut c)
                        .await
                })
                .await
            {
                r?;
            }
        }
        Ok(())
    }

    /// `want` units of `user`'s share, or what is left and the wait when refused.
    pub(super) async fn try_take(
        &self,
        user: TornUserId,
        want: u32,
        hold: Duration,
    ) -> Result<std::result::Result<Grant, (u32, Duration)>> {
        let stale = {
            let mut at = self
                .refreshed
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let stale = at.elapsed() > self.ttl / 2;
            if stale {
                *at = Instant::now();
            }
            stale
        };
        if stale {
            self.set_all().await?;
        }
        let request = Request::new(want).in_flight(hold);
        Ok(match self.limiter.try_acquire_with(user, &request).await {
            Ok(Decision::Granted(g)) => Ok(g),
            Ok(d) => Err((d.remaining(), d.retry_after())),
            // A share below the chunk: ask for the share.
            Err(crate::Error::CostExceedsLimit { limit, .. }) if limit > 0 => {
                Err((limit, Duration::from_millis(1)))
            }
            Err(e) => return Err(e),
        })
    }
}
