//! What the client does when Torn answers with an error code, by its [`ErrorClass`]: hold
//! the owner back (5), pause every call (8, 9), disable, park or hold the key.

use super::TornClient;
use super::blocks::Block;
use super::retry::Failure;
use super::wall_clock::next_utc_day;
use crate::error::Error;
use crate::identity::{ApiKey, TornUserId};
use crate::torn::{ErrorClass, TornErrorCode};

impl TornClient {
    /// Penalizes the owner's bucket, so every process holds the owner back.
    pub(super) async fn hold_owner(&self, user: TornUserId) {
        let hold = self.inner.config.owner_hold();
        match self.inner.gate.limiter().penalize(user, hold).await {
            Ok(held) => tracing::warn!(
                owner = user.get(),
                hold_ms = held.as_millis() as u64,
                "torn code 5: the owner's window is full, holding the owner back in every process"
            ),
            Err(e) => tracing::warn!(
                owner = user.get(),
                error = %e,
                "torn code 5, and the owner's bucket cannot be penalized"
            ),
        }
    }

    /// Does what Torn's code asks of the client, and returns the error for the caller.
    pub(super) async fn on_torn_error(
        &self,
        key: &ApiKey,
        owner: Option<TornUserId>,
        code: TornErrorCode,
        message: String,
    ) -> Failure {
        let owner_id = owner.map(TornUserId::get);
        let error = Error::Torn { code, message };
        match code.class() {
            ErrorClass::Retry => return Failure::transient(error),
            ErrorClass::HoldOwner => {
                if let Some(user) = owner {
                    self.hold_owner(user).await;
                } else {
                    tracing::warn!(
                        key_hash = key.hash().short(),
                        "torn code 5 while resolving a key's owner"
                    );
                }
            }
            ErrorClass::PauseAll => self.pause_all(code, owner),
            ErrorClass::DisableKey { permanent } => {
                let hash = key.hash();
                // Torn gives no time at which an inactive owner's or a paused key comes
                // back; jail (10) and an incorrect key (2) wait for a re-check from outside.
                let parked = matches!(
                    code,
                    TornErrorCode::OWNER_INACTIVE | TornErrorCode::KEY_PAUSED
                );
                let recheck = self.inner.config.key_recheck();
                let block = Block {
                    code,
                    until: parked
                        .then(|| self.inner.wall.now().checked_add(recheck))
                        .flatten(),
                    recheck: parked,
                    owner,
                };
                tracing::warn!(
                    owner = owner_id,
                    key_hash = hash.short(),
                    code = code.get(),
                    permanent,
                    recheck_after_ms = parked.then_some(recheck.as_millis() as u64),
                    "torn refused the key: it is not sent again until torn accepts it"
                );
                self.inner.blocks.insert(hash.clone(), block);
                self.inner.owners.invalidate(&hash).await;
                self.forget_shared_owner(&hash).await;
            }
            ErrorClass::HoldKey => {
                let hash = key.hash();
                let until = next_utc_day(self.inner.wall.now());
                tracing::warn!(
                    owner = owner_id,
                    key_hash = hash.short(),
                    code = code.get(),
                    "torn daily read limit: the key is held until the next UTC day"
                );
                self.inner.blocks.insert(
                    hash,
                    Block {
                        code,
                        until: Some(until),
                        recheck: false,
                        owner,
                    },
                );
            }
            _ => tracing::debug!(
                owner = owner_id,
                code = code.get(),
                "torn refused the request"
            ),
        }
        Failure::fatal(error)
    }
}
