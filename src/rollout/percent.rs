//! Which users the percentage rollout moves to the per-user limiter.
//!
//! A user's place is a fixed function of the Torn user id alone, the same in every process,
//! every build and every restart: SHA-256, never std's randomly seeded hasher. Raising the
//! percentage only ever adds users (bucket `< percent`), so going from 10 % to 50 % keeps the
//! first 10 % where they are, and lowering it moves back exactly the users last moved.

use sha2::{Digest, Sha256};

use crate::identity::TornUserId;

use crate::limiter::Mode;

/// Salts the hash so that this choice of users is independent of any other split made from
/// the same ids (an experiment elsewhere that also hashes user ids).
const SALT: &str = "torn-quota/rollout/v1/";

/// The user's rollout bucket, 0 to 99: the per-user limiter governs the user once the
/// rollout percentage is above it.
///
/// ```
/// use torn_quota::TornUserId;
/// use torn_quota::rollout::rollout_bucket;
///
/// let user = TornUserId::new(4);
/// assert!(rollout_bucket(user) < 100);
/// assert_eq!(rollout_bucket(user), rollout_bucket(TornUserId::new(4)));
/// ```
pub fn rollout_bucket(user: TornUserId) -> u8 {
    let digest = Sha256::digest(format!("{SALT}{}", user.get()));
    let mut first = [0; 8];
    first.copy_from_slice(&digest[..8]);
    // 2^64 mod 100 = 16: the bias toward low buckets is 16 in 1.8e19, far below any
    // sample an operator will ever look at.
    (u64::from_be_bytes(first) % 100) as u8
}

/// True when a rollout at `percent` puts `user` on the per-user limiter.
pub fn in_rollout(user: TornUserId, percent: u8) -> bool {
    rollout_bucket(user) < percent
}

/// The share of users, 0 to 100, that the per-user limiter governs in `mode` when
/// `TORN_QUOTA_ROLLOUT_PERCENT` is `percent` (`None`: unset).
///
/// | mode | percent unset | percent = P |
/// |---|---|---|
/// | `legacy` | 0: everyone on legacy | 0: the way back is this one setting, whatever P says |
/// | `shadow` | 0: legacy enforces for everyone, the shadow runs beside it for everyone | P % on per-user (no shadow); the rest on legacy with the shadow beside it |
/// | `per-user` | 100: everyone on per-user | P % on per-user; the rest on legacy, without a shadow |
///
/// ```
/// use torn_quota::Mode;
/// use torn_quota::rollout::effective_percent;
///
/// assert_eq!(effective_percent(Mode::PerUser, None), 100);
/// assert_eq!(effective_percent(Mode::PerUser, Some(10)), 10);
/// assert_eq!(effective_percent(Mode::Shadow, None), 0);
/// assert_eq!(effective_percent(Mode::Legacy, Some(50)), 0);
/// ```
pub fn effective_percent(mode: Mode, percent: Option<u8>) -> u8 {
    match mode {
        Mode::Legacy => 0,
        Mode::Shadow => percent.unwrap_or(0).min(100),
        Mode::PerUser => percent.unwrap_or(100).min(100),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_spread_and_monotone_in_the_percentage() {
        let mut counts = [0u32; 100];
        for id in 0..10_000 {
            counts[usize::from(rollout_bucket(TornUserId::new(id)))] += 1;
        }
        // 100 per bucket on average; a broken hash piles users up.
        assert!(counts.iter().all(|c| (50..=160).contains(c)), "{counts:?}");
        for id in 0..1000 {
            let user = TornUserId::new(id);
            for p in 0..100 {
                assert!(!in_rollout(user, p) || in_rollout(user, p + 1));
            }
            assert!(!in_rollout(user, 0));
            assert!(in_rollout(user, 100));
        }
    }
}
