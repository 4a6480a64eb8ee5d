//! Keys the client no longer sends: disabled (codes 2, 10), held until the next UTC day
//! (14), or parked until one re-check asks Torn again (13, 18).

use std::time::{Duration, SystemTime};

use super::TornClient;
use super::shared_error::unshare;
use crate::error::{Error, Result};
use crate::identity::{ApiKey, KeyInfo, TornUserId};
use crate::limiter::Wait;
use crate::torn::{ErrorClass, TornErrorCode};

/// Whether this client still sends a key, from [`TornClient::key_status`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum KeyStatus {
    /// The client sends it.
    Usable,
    /// Torn said the key cannot be used (codes 2, 10): the client never sends it again
    /// until [`TornClient::reinstate`].
    Disabled {
        /// Torn's code.
        code: TornErrorCode,
    },
    /// Torn refused the key for now (code 13, owner inactive; 18, paused by its owner): it
    /// is parked until `recheck_at`, and its next use after that first asks
    /// `/v2/key/info` once; the key is used again when Torn accepts it.
    Parked {
        /// Torn's code.
        code: TornErrorCode,
        /// When the next use re-checks it.
        recheck_at: SystemTime,
    },
    /// The key hit its daily read limit (code 14): held back until the next UTC day.
    Held {
        /// Torn's code.
        code: TornErrorCode,
        /// When the client sends it again.
        until: SystemTime,
    },
}

/// A key this client no longer sends: disabled (`until` is `None`), held until a time, or
/// parked until a re-check (`recheck`).
#[derive(Debug, Clone, Copy)]
pub(super) struct Block {
    pub(super) code: TornErrorCode,
    pub(super) until: Option<SystemTime>,
    /// Once `until` passes, one `/v2/key/info` call decides whether the key comes back;
    /// until then it stays refused.
    pub(super) recheck: bool,
    /// The key's owner when Torn refused it, so the re-check takes that owner's unit.
    pub(super) owner: Option<TornUserId>,
}

/// How long a refused key is remembered at most: a day past the longest hold or re-check
/// time (both at most a day). A key evicted earlier (the map is bounded by the owner cache's
/// capacity) costs one more request, which Torn refuses again.
pub(super) const BLOCK_TTL: Duration = Duration::from_secs(2 * 86_400);

impl TornClient {
    /// Whether the client still sends `key`.
    pub fn key_status(&self, key: &ApiKey) -> KeyStatus {
        let now = self.inner.wall.now();
        match self.inner.blocks.get(&key.hash()) {
            None => KeyStatus::Usable,
            Some(Block {
                code,
                until: Some(recheck_at),
                recheck: true,
                ..
            }) => KeyStatus::Parked { code, recheck_at },
            Some(Block { until: Some(u), .. }) if u <= now => KeyStatus::Usable,
            Some(Block {
                code,
                until: Some(until),
                ..
            }) => KeyStatus::Held { code, until },
            Some(Block {
                code, until: None, ..
            }) => KeyStatus::Disabled { code },
        }
    }

    /// Sends `key` again after it was disabled or held (say, once a re-check found the
    /// owner out of jail). Returns whether it was blocked.
    pub fn reinstate(&self, key: &ApiKey) -> bool {
        let hash = key.hash();
        let was = self.inner.blocks.remove(&hash).is_some();
        if was {
            tracing::info!(key_hash = hash.short(), "torn key reinstated");
        }
        was
    }

    /// [`check_key`](Self::check_key), after re-checking a parked key whose time has come:
    /// one `/v2/key/info` call (shared by concurrent callers) that brings the key back when
    /// Torn accepts it. Returns what the re-check learnt, when one ran.
    pub(super) async fn admit_key(&self, key: &ApiKey, wait: &Wait) -> Result<Option<KeyInfo>> {
        let hash = key.hash();
        let now = self.inner.wall.now();
        let due = self
            .inner
            .blocks
            .get(&hash)
            .filter(|b| b.recheck && b.until.is_some_and(|u| u <= now));
        let Some(block) = due else {
            self.check_key(key)?;
            return Ok(None);
        };
        let recheck = self
            .inner
            .rechecks
            .try_get_with(hash.clone(), Box::pin(self.recheck(key, block, wait)))
            .await;
        // Only concurrent callers share a re-check: the next one, after another refusal,
        // must call again.
        self.inner.rechecks.invalidate(&hash).await;
        let info = recheck.map_err(unshare)?;
        self.check_key(key)?;
        Ok(Some(info))
    }

    /// The one call that decides whether a parked key comes back.
    pub(super) async fn recheck(&self, key: &ApiKey, block: Block, wait: &Wait) -> Result<KeyInfo> {
        let hash = key.hash();
        // The call itself must pass `check_key`. Should Torn refuse the key again, its
        // answer parks (or disables) the key anew.
        self.inner.blocks.invalidate(&hash);
        match self.fetch_key_info(key, block.owner, wait).await {
            Ok(info) => {
                tracing::info!(
                    owner = info.owner.get(),
                    key_hash = hash.short(),
                    code = block.code.get(),
                    "torn accepts the parked key again: it is used again"
                );
                self.inner.owners.insert(hash, info).await;
                Ok(info)
            }
            Err(e) => {
                let refused = matches!(&e, Error::Torn { code, .. }
                    if matches!(code.class(), ErrorClass::DisableKey { .. } | ErrorClass::HoldKey));
                // Not an answer about the key (the network, a pause): it stays parked and
                // due, so its next use re-checks again.
                if !refused && !self.inner.blocks.contains_key(&hash) {
                    self.inner.blocks.insert(hash, block);
                }
                Err(e)
            }
        }
    }

    /// Fails at once when the key is disabled, held or parked; forgets holds that have
    /// ended.
    pub(super) fn check_key(&self, key: &ApiKey) -> Result<()> {
        let hash = key.hash();
        let now = self.inner.wall.now();
        let Some(block) = self.inner.blocks.get(&hash) else {
            return Ok(());
        };
        match block.until {
            Some(_) if block.recheck => Err(Error::Torn {
                code: block.code,
                message: format!(
                    "{} (the key is parked until a re-check finds torn accepts it; not sent)",
                    block.code.text()
                ),
            }),
            Some(until) if until <= now => {
                self.inner.blocks.invalidate(&hash);
                Ok(())
            }
            Some(_) => Err(Error::Torn {
                code: block.code,
                message: format!(
                    "{} (the key is held until the next UTC day; not sent)",
                    block.code.text()
                ),
            }),
            None => Err(Error::Torn {
                code: block.code,
                message: format!(
                    "{} (the key was disabled by an earlier answer; not sent)",
                    block.code.text()
                ),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limiter::Limiter;
    use crate::torn::TornClientConfig;

    #[tokio::test]
    async fn the_map_of_refused_keys_is_bounded() {
        use crate::sim::{SimConfig, Simulator};
        let sim = Simulator::start([], SimConfig::default()).await.unwrap();
        let limiter = Limiter::in_memory(crate::RateLimitConfig::builder().build().unwrap());
        let cap = 8;
        let config = TornClientConfig::builder()
            .base_url(sim.base_url())
            .owner_cache_capacity(std::num::NonZeroU64::new(cap).unwrap())
            .build()
            .unwrap();
        let client = TornClient::new(limiter, config).unwrap();
        // An attacker's random keys: each answered code 2, each refused for good.
        for i in 0..100 {
            let k = ApiKey::new(&format!("RandomKey{i:07}")).unwrap();
            assert!(client.owner_of(&k).await.is_err());
        }
        assert_eq!(sim.counters().requests, 100);
        client.inner.blocks.run_pending_tasks();
        assert!(
            client.inner.blocks.entry_count() <= cap,
            "{} refused keys kept",
            client.inner.blocks.entry_count()
        );
    }
}
