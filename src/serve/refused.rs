//! Keys Torn refused (codes 2, 10, 13, 18), remembered through Redis under the limiter's
//! prefix, so every gateway process answers them itself for the hold time and a bad key
//! reaches Torn once, not once per process. The key name is the limiter's shared memo
//! (`<prefix>:memo:refused:<key hash>`, built in `src/limiter/keys.rs`).

use std::time::Duration;

use crate::limiter::Limiter;
use crate::torn::{KeyHash, TornErrorCode};

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
