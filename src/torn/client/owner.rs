//! A key's owner and access level: the in-process cache, the memo every process shares
//! through Redis, else `/v2/key/info`, whose unit is recorded on the owner once known.

use super::TornClient;
use super::shared_error::unshare;
use super::wire::{parse_key_info, parse_profile_id};
use std::time::Duration;

use tokio::time::Instant;

use crate::error::{Error, Result};
use crate::identity::{AccessLevel, ApiKey, KeyHash, KeyInfo, TornUserId};
use crate::limiter::{KeyBuilder, Lease, Wait};

/// How often a process waiting on another's owner lookup looks for its memo.
const LEASE_POLL: Duration = Duration::from_millis(10);

/// What [`TornClient::claim_lookup`] allows.
enum LookupClaim {
    /// Ask Torn, and release the lease after (`None`: there was none to take).
    Ask(Option<Lease>),
    /// Another process is asking: wait for its memo.
    Wait,
}

/// The name of a key's owner memo, as [`TornClient::lookup`] shares it.
pub(super) fn owner_memo_name(hash: &KeyHash) -> String {
    KeyBuilder::owner_memo_name(hash.as_str())
}

/// Reads `owner:access` as [`TornClient::lookup`] shares it.
pub(super) fn parse_owner_memo(v: &str) -> Option<KeyInfo> {
    let (owner, access) = v.split_once(':')?;
    Some(KeyInfo {
        owner: TornUserId::new(owner.parse().ok()?),
        access: AccessLevel::from_number(access.parse().ok()?)?,
    })
}

impl TornClient {
    /// Asks Torn (`/v2/key/info`) for the key's owner and access level, now, and remembers
    /// the answer as [`owner_of`](Self::owner_of) does. When the owner is already known,
    /// the call takes a unit of the owner's quota like any other.
    pub async fn key_info(&self, key: &ApiKey) -> Result<KeyInfo> {
        let wait = Wait::forever();
        self.guarded(&wait, async {
            if let Some(info) = self.admit_key(key, &wait).await? {
                // The re-check was the call this asks for.
                return Ok(info);
            }
            let hash = key.hash();
            let known = self.inner.owners.get(&hash).await.map(|i| i.owner);
            let info = self.fetch_key_info(key, known, &wait).await?;
            self.inner.owners.insert(hash, info).await;
            Ok(info)
        })
        .await
    }

    /// The key's owner and access level: from the in-process cache (kept for the configured
    /// TTL), else from one call to `/v2/key/info`. Concurrent misses for one key share that
    /// one call.
    ///
    /// That call reaches Torn before the owner is known, so it cannot wait for the owner's
    /// quota: it takes a unit of the IP bucket first and, once the answer names the owner,
    /// records one unit on the owner's bucket for certain, even when it is full (Torn
    /// counted the call), so later grants see it. Callers that know the owner already (the vault's key-hash mapping) avoid the
    /// call with [`remember_owner`](Self::remember_owner).
    pub async fn owner_of(&self, key: &ApiKey) -> Result<KeyInfo> {
        let wait = Wait::forever();
        self.guarded(&wait, self.resolve(key, &wait)).await
    }

    /// Remembers a key's owner and access level learnt elsewhere (say, the vault's mapping),
    /// for the cache's TTL.
    pub async fn remember_owner(&self, key: &ApiKey, info: KeyInfo) {
        self.inner.owners.insert(key.hash(), info).await;
    }

    /// The key's owner and access level when this process already knows them, without
    /// asking anyone (the gateway reports whose quota a call spent, even after a failure,
    /// and must not spend another unit to find out).
    pub async fn known_owner(&self, key: &ApiKey) -> Option<KeyInfo> {
        self.inner.owners.get(&key.hash()).await
    }

    /// The cached owner, or one shared call to Torn.
    pub(super) async fn resolve(&self, key: &ApiKey, wait: &Wait) -> Result<KeyInfo> {
        self.admit_key(key, wait).await?;
        self.inner
            .owners
            .try_get_with(key.hash(), Box::pin(self.lookup(key, wait)))
            .await
            .map_err(unshare)
    }

    /// An owner this process does not know: from the mapping every process shares through
    /// the limiter's Redis, else from Torn (then shared). Sharing matters because a lookup
    /// spends a unit of a quota nobody can check beforehand: a second process looking the
    /// same key up while the owner's window is full would meet a code 5.
    ///
    /// The lookup is also a lease: one process at a time asks Torn for a key's owner, the
    /// others wait for its memo. Without it two processes missing the memo together both
    /// sent a lookup; the first to be answered recorded its own and went on granting while
    /// the other's was still in flight, counted by Torn and by no bucket, so a loaded
    /// machine (a slow answer) turned it into Torn's code 5 (issue 14's two-gateway proof).
    pub(super) async fn lookup(&self, key: &ApiKey, wait: &Wait) -> Result<KeyInfo> {
        let hash = key.hash();
        let memo = owner_memo_name(&hash);
        let limiter = self.inner.gate.limiter();
        let lease_name = KeyBuilder::owner_lookup_name(hash.as_str());
        let lease = loop {
            match limiter.recall(&memo).await {
                Ok(Some(v)) => {
                    if let Some(info) = parse_owner_memo(&v) {
                        return Ok(info);
                    }
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::debug!(error = %e, "shared owner mapping unreadable; asking torn");
                    break None;
                }
            }
            if let LookupClaim::Ask(lease) = self.claim_lookup(&lease_name).await {
                // The lease may be free because its last holder just shared the memo and
                // let go, after the read above: look once more, or this process would send
                // a second lookup (seen under a loaded CI run: 5 admissions for 4).
                if lease.is_some()
                    && let Ok(Some(info)) = limiter
                        .recall(&memo)
                        .await
                        .map(|v| v.as_deref().and_then(parse_owner_memo))
                {
                    if let Some(lease) = lease
                        && let Err(e) = limiter.release_lease(lease).await
                    {
                        tracing::debug!(
                            error = %e,
                            "cannot release the owner lookup; it expires on its own"
                        );
                    }
                    return Ok(info);
                }
                break lease;
            }
            // Another process is asking Torn: its memo (or its lease's end) comes within
            // the lookup's own timeouts.
            if wait.is_cancelled() || wait.too_late(Instant::now() + LEASE_POLL) {
                return Err(Error::Cancelled);
            }
            tokio::time::sleep(LEASE_POLL).await;
        };
        let fetched = self.fetch_key_info(key, None, wait).await;
        if let Ok(info) = &fetched {
            let value = format!("{}:{}", info.owner.get(), info.access.number());
            if let Err(e) = limiter
                .remember(&memo, &value, self.inner.config.owner_cache_ttl())
                .await
            {
                tracing::debug!(error = %e, "cannot share the owner mapping");
            }
        }
        // After the memo: a waiter finds the answer, or (after a failure) asks itself. Only
        // while the lease is still ours: past its ttl another process may hold it.
        if let Some(lease) = lease {
            match limiter.release_lease(lease).await {
                Ok(true) => {}
                Ok(false) => tracing::debug!(
                    key_hash = hash.short(),
                    "the owner lookup outlived its lease; another process holds it now"
                ),
                Err(e) => tracing::debug!(
                    error = %e,
                    "cannot release the owner lookup; it expires on its own"
                ),
            }
        }
        fetched
    }

    /// Takes the lease on a key's owner lookup, for as long as the lookup may take: every
    /// attempt's hold. [`LookupClaim::Ask`] when this process may ask Torn: the lease is its
    /// own, or there is no Redis to share it through (in memory, or Redis failing).
    async fn claim_lookup(&self, lease_name: &str) -> LookupClaim {
        let attempts = self.inner.config.max_attempts().get();
        let ttl = self
            .inner
            .gate
            .hold()
            .saturating_add(self.inner.config.retry_max_delay())
            .saturating_mul(attempts);
        match self.inner.gate.limiter().claim_lease(lease_name, ttl).await {
            Ok(Some(lease)) => LookupClaim::Ask(Some(lease)),
            Ok(None) => LookupClaim::Wait,
            Err(e) => {
                tracing::debug!(error = %e, "cannot share the owner lookup; asking torn");
                LookupClaim::Ask(None)
            }
        }
    }

    pub(super) async fn fetch_key_info(
        &self,
        key: &ApiKey,
        owner: Option<TornUserId>,
        wait: &Wait,
    ) -> Result<KeyInfo> {
        let url = self.url("v2/key/info")?;
        let body = self.call(key, owner, &url, "torn key info", wait).await?;
        let (named, access) = parse_key_info(&body)?;
        let (resolved, calls) = if let Some(id) = named {
            (id, 1)
        } else {
            // Torn's key info does not always name the owner; the key's own profile does,
            // for one more counted call.
            let url = self.url("v2/user/basic")?;
            let body = self.call(key, owner, &url, "torn user basic", wait).await?;
            (parse_profile_id(&body)?, 2)
        };
        let info = KeyInfo {
            owner: resolved,
            access,
        };
        if owner.is_none() {
            for _ in 0..calls {
                self.inner.gate.record_lookup(info.owner).await;
            }
        }
        tracing::debug!(
            owner = info.owner.get(),
            access = info.access.number(),
            key_hash = key.hash().short(),
            "torn key resolved"
        );
        Ok(info)
    }

    /// Deletes the key's owner memo that every process shares through Redis, so that no
    /// process resolves a key Torn refused from it (the memo lives up to the owner cache's
    /// TTL). A failure is logged only: the memo expires on its own.
    pub(super) async fn forget_shared_owner(&self, hash: &KeyHash) {
        let memo = self
            .inner
            .gate
            .limiter()
            .keys()
            .memo(&owner_memo_name(hash));
        let deleted = self
            .inner
            .gate
            .limiter()
            .with_redis("forget owner memo", |mut c| async move {
                ::redis::cmd("DEL").arg(&memo).exec_async(&mut c).await
            })
            .await;
        if let Some(Err(e)) = deleted {
            tracing::debug!(
                key_hash = hash.short(),
                error = %e,
                "cannot delete the shared owner mapping of a refused key"
            );
        }
    }
}
