//! [`OwnerQuota`]: the one interface the quota gate decides an owner's unit through, so a
//! single setting (`TORN_QUOTA_MODE`, `TORN_QUOTA_ROLLOUT_PERCENT`) governs every call.

#[cfg(feature = "legacy")]
use super::LegacyLimiter;
use super::RolloutLimiter;
use super::decision::{EnforcedBy, RolloutDecision};
#[cfg(feature = "legacy")]
use super::router::require_key;
use crate::error::Result;
use crate::identity::TornUserId;
#[cfg(feature = "legacy")]
use crate::limiter::Mode;
use crate::limiter::{Limiter, Request};

/// A boxed future, its type erased: the decision futures nest sqlx and Redis deeply, and
/// a trait object needs one type.
pub type QuotaFuture<'a> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<RolloutDecision>> + Send + 'a>>;

/// Whatever decides an owner's unit for a Torn call: the per-user [`Limiter`], the
/// [`LegacyLimiter`](super::LegacyLimiter), or the [`RolloutLimiter`] that routes between
/// them by `TORN_QUOTA_MODE` and `TORN_QUOTA_ROLLOUT_PERCENT`. The
/// [quota gate](crate::gate::QuotaGate) holds one and takes every owner unit through it,
/// so one setting governs every call; every implementation answers with the one decision
/// type, [`RolloutDecision`].
pub trait OwnerQuota: Send + Sync + std::fmt::Debug {
    /// One decision for `user` calling with the key whose hash is `key_hash` (legacy
    /// counts per key and needs it), now, without waiting.
    fn decide<'a>(
        &'a self,
        user: TornUserId,
        key_hash: Option<&'a str>,
        request: &'a Request,
    ) -> QuotaFuture<'a>;

    /// True when `user`'s calls are counted per key (legacy enforces): a caller then asks
    /// for each key separately instead of one chunk for the owner.
    fn per_key(&self, user: TornUserId) -> bool;
}

impl OwnerQuota for Limiter {
    fn decide<'a>(
        &'a self,
        user: TornUserId,
        _key_hash: Option<&'a str>,
        request: &'a Request,
    ) -> QuotaFuture<'a> {
        Box::pin(async move {
            let decision = self.try_acquire_with(user, request).await?;
            Ok(RolloutDecision::from_per_user(decision))
        })
    }
    fn per_key(&self, _user: TornUserId) -> bool {
        false
    }
}

#[cfg(feature = "legacy")]
impl OwnerQuota for LegacyLimiter {
    fn decide<'a>(
        &'a self,
        _user: TornUserId,
        key_hash: Option<&'a str>,
        request: &'a Request,
    ) -> QuotaFuture<'a> {
        Box::pin(async move {
            let key_hash = require_key(Mode::Legacy, key_hash)?;
            let d = self.try_acquire(key_hash, request.cost()).await?;
            Ok(RolloutDecision::from_legacy(d))
        })
    }
    fn per_key(&self, _user: TornUserId) -> bool {
        true
    }
}

impl OwnerQuota for RolloutLimiter {
    fn decide<'a>(
        &'a self,
        user: TornUserId,
        key_hash: Option<&'a str>,
        request: &'a Request,
    ) -> QuotaFuture<'a> {
        Box::pin(self.try_acquire(user, key_hash, request))
    }
    fn per_key(&self, user: TornUserId) -> bool {
        self.route(user).enforced_by() == EnforcedBy::Legacy
    }
}
