//! Test oracles: checks that recorded outcomes obey the limiter's contract, computed
//! independently of the limiter's own code.
//!
//! Not part of the limiting API. They are public because the integration tests, the
//! benches and the soak (`cargo xtask soak`) run them on grant times they recorded, and
//! a user's own tests may do the same.

/// The most grants in any window, by the limiter's own rule for millisecond stamps: a grant
/// stamped `t` was made somewhere in `[t, t + 1)` ms and counts until `t + window_ms`
/// inclusive, so grants stamped `window_ms` apart may be less than one real window apart
/// and count together. The check an oracle runs on recorded grant times, such as
/// [`Grant::granted_at_ms`](crate::Grant::granted_at_ms). `times` need not be sorted.
///
/// ```
/// // 0 and 1000 may be 999.x ms apart in real time: together in one window.
/// assert_eq!(torn_quota::oracle::busiest_window(&[0, 10, 999, 1000], 1000), 4);
/// // The first has surely left by 1001.
/// assert_eq!(torn_quota::oracle::busiest_window(&[0, 10, 999, 1001], 1000), 3);
/// ```
pub fn busiest_window(times: &[u64], window_ms: u64) -> usize {
    let mut sorted = times.to_vec();
    sorted.sort_unstable();
    let mut best = 0;
    let mut lo = 0;
    for hi in 0..sorted.len() {
        while sorted[hi] - sorted[lo] > window_ms {
            lo += 1;
        }
        best = best.max(hi - lo + 1);
    }
    best
}
