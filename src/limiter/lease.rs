//! [`Lease`]: one holder at a time for a name every process of a Redis sees (the Torn
//! client's owner lookup of a key, the gateway's first send of one), released by
//! compare-and-delete (`lua/release.lua`).

use std::time::Duration;

use super::{Backend, Limiter};
use crate::error::Result;

/// A lease taken with [`Limiter::claim_lease`]: the name and this holder's random token,
/// which the lease's value is while it is this holder's.
///
/// The token is why a holder can release safely: its lease may expire while it still
/// works and another take it, and a plain `DEL` would then delete the other's lease and
/// let a third process in beside it. [`Limiter::release_lease`] deletes only while the
/// value is still this token.
#[derive(Debug)]
#[must_use = "release it when done, or it holds until its ttl"]
pub struct Lease {
    name: String,
    token: String,
}

impl Lease {
    /// The name it was claimed under (a memo name, see [`KeyBuilder::memo`]).
    ///
    /// [`KeyBuilder::memo`]: crate::KeyBuilder::memo
    pub fn name(&self) -> &str {
        &self.name
    }
}

/// A token no other holder has: 128 random bits, in hex.
fn fresh_token() -> String {
    format!("{:032x}", rand::random::<u128>())
}

impl Limiter {
    /// Takes the lease `name` (stored as the memo `<prefix>:memo:<name>`) for `ttl`, with a
    /// token of its own: `Some` when taken, `None` while another holder has it. In memory
    /// there is nobody to share with, and the lease is always taken.
    pub async fn claim_lease(&self, name: &str, ttl: Duration) -> Result<Option<Lease>> {
        let lease = Lease {
            name: name.to_owned(),
            token: fresh_token(),
        };
        let taken = match &self.inner.backend {
            Backend::Memory(_) => true,
            Backend::Redis(r) => {
                let ttl_ms = (ttl.as_millis() as u64).max(1);
                r.claim_lease(name, &lease.token, ttl_ms).await?
            }
        };
        Ok(taken.then_some(lease))
    }

    /// Lets `lease` go if it is still this holder's: true when it was (always, in
    /// memory). After its ttl another holder may have taken it, and then it stays theirs.
    pub async fn release_lease(&self, lease: Lease) -> Result<bool> {
        match &self.inner.backend {
            Backend::Memory(_) => Ok(true),
            Backend::Redis(r) => r.release_lease(&lease.name, &lease.token).await,
        }
    }
}
