//! Keys Torn refused (codes 2, 10, 13, 18), remembered through Redis under the limiter's
//! prefix, so every gateway process answers them itself for the hold time and a bad key
//! reaches Torn once, not once per process. The key name is the limiter's shared memo
//! (`<prefix>:memo:refused:<key hash>`, built in `src/limiter/keys.rs`).

use std::time::Duration;

use tokio::time::Instant;

use crate::identity::KeyHash;
use crate::limiter::{KeyBuilder, Lease, Limiter};
use crate::torn::TornErrorCode;

/// How long a key Torn calls incorrect (2) or jailed (10) is refused: a day. Torn will
/// not change its mind sooner, and an IP that keeps sending bad keys may be banned.
const DISABLED_HOLD: Duration = Duration::from_secs(86_400);

/// True for the codes that say the key itself cannot be used now.
pub(crate) fn is_refusal(code: u16) -> bool {
    matches!(code, 2 | 10 | 13 | 18)
}

/// How long a refusal with `code` is remembered: a day for 2 and 10; for 13 (inactive)
/// and 18 (paused), the client's re-check time, after which Torn is asked again.
pub(crate) fn hold_for(code: u16, recheck: Duration) -> Duration {
    match code {
        2 | 10 => DISABLED_HOLD,
        _ => recheck,
    }
}

fn memo_name(hash: &KeyHash) -> String {
    format!("refused:{hash}")
}

/// The code a process recorded for `hash`, while its hold lasts. A Redis failure reads as
/// "not refused": the client's own memory of refused keys still stands behind it.
pub(crate) async fn recall(limiter: &Limiter, hash: &KeyHash) -> Option<TornErrorCode> {
    match limiter.recall(&memo_name(hash)).await {
        Ok(Some(v)) => v
            .parse::<u16>()
            .ok()
            .filter(|c| is_refusal(*c))
            .map(TornErrorCode::new),
        Ok(None) => None,
        Err(e) => {
            tracing::debug!(error = %e, "shared refused-key memo unreadable");
            None
        }
    }
}

/// Remembers that Torn refused `hash` with `code`, for every process, for `hold`.
pub(crate) async fn remember(limiter: &Limiter, hash: &KeyHash, code: u16, hold: Duration) {
    if let Err(e) = limiter
        .remember(&memo_name(hash), &code.to_string(), hold)
        .await
    {
        tracing::warn!(error = %e, "cannot share a refused key; other gateways may send it once");
    }
}

/// How long a claim on a key's first send lasts: past one Torn call with its retries, so it
/// outlives the send it guards, yet short enough that a gateway dying mid-call blocks the
/// key only briefly.
const CLAIM_HOLD: Duration = Duration::from_secs(10);
/// How often a process waiting on another's first send looks for its answer. Redis has no
/// cheap signal across processes for a key that may never be written; a short poll is it.
const CLAIM_POLL: Duration = Duration::from_millis(20);

/// What a call with a key nobody knows yet does.
#[derive(Debug)]
pub(crate) enum FirstSend {
    /// Send it: this process holds the claim (release it after the answer), or there is no
    /// Redis to claim in.
    Send(Option<Claim>),
    /// Another process sent it and Torn refused it with this code: answer it, send nothing.
    Refused(TornErrorCode),
}

/// This process's claim on a key's first send: a [`Lease`], so that a send outliving
/// [`CLAIM_HOLD`] cannot delete the claim another process took after it.
#[derive(Debug)]
pub(crate) struct Claim {
    lease: Lease,
}

/// Claims the first send of the key with `hash` for every gateway on this Redis (a
/// [`Lease`]), so that two processes seeing a bad key at the same moment send it once: the
/// loser waits, until `deadline`, for the winner's refusal mark or its claim to go (a good
/// key: then it sends too). Redis failing, or the wait running out, lets the call go.
pub(crate) async fn claim_first_send(
    limiter: &Limiter,
    hash: &KeyHash,
    deadline: Instant,
) -> FirstSend {
    let name = KeyBuilder::first_send_memo_name(hash.as_str());
    loop {
        match limiter.claim_lease(&name, CLAIM_HOLD).await {
            Ok(Some(lease)) => {
                let claim = Claim { lease };
                // The claim may be free because its last holder just marked the key refused
                // and let go: look once more, or this call would send it again.
                if let Some(code) = recall(limiter, hash).await {
                    claim.release(limiter).await;
                    return FirstSend::Refused(code);
                }
                return FirstSend::Send(Some(claim));
            }
            Ok(None) => {}
            Err(e) => {
                tracing::debug!(error = %e, "cannot claim a key's first send; sending it");
                return FirstSend::Send(None);
            }
        }
        if let Some(code) = recall(limiter, hash).await {
            return FirstSend::Refused(code);
        }
        if Instant::now() + CLAIM_POLL >= deadline {
            return FirstSend::Send(None);
        }
        tokio::time::sleep(CLAIM_POLL).await;
    }
}

impl Claim {
    /// Lets the waiting processes go: after the refusal, if any, is remembered. Only while
    /// the claim is still this process's: past its hold another process may own it.
    pub(crate) async fn release(self, limiter: &Limiter) {
        match limiter.release_lease(self.lease).await {
            Ok(true) => {}
            Ok(false) => tracing::debug!(
                "a key's first send outlived its claim; another process holds it now"
            ),
            Err(e) => tracing::debug!(error = %e, "cannot release a first-send claim; it expires"),
        }
    }
}
