//! The metrics torn-quota emits through the [`metrics`] facade, their names, and (with the
//! `prometheus` feature) an exporter that serves them.
//!
//! Without an installed recorder every call here costs next to nothing, so the library emits
//! unconditionally; a program that wants the figures installs a recorder (its own, or
//! [`install_prometheus`]). No metric carries a key, a key hash or a user id as a label:
//! labels stay few and secrets stay out.
//!
//! | name | type | labels | what |
//! |---|---|---|---|
//! | [`LIMITER_DECISIONS`] | counter | `backend`, `outcome` (granted, limited, error), `degraded` | every limiter decision |
//! | [`DEGRADED`] | gauge | | 1 while a limiter of this process decides locally because Redis is unreachable |
//! | [`DEGRADED_SECONDS`] | counter | | time spent so |
//! | [`TORN_ANSWERS`] | counter | `code` (`ok`, a Torn error number, or `transport`) | every answer (or failure) of a request sent to Torn |
//! | [`BATCH_REQUESTS`] | counter | `outcome` (ok, failed) | requests a batch answered |
//! | [`BATCH_QUOTA_USED`] | gauge | | the last batch's quota use, 0 to 1 |
//! | [`CLOCK_GAP`] | gauge | | Redis `TIME` minus this machine's wall clock, in seconds |
//! | [`REDIS_REBUILDS`] | counter | | times this process found Redis had lost its state and wrote its journal back |
//! | [`RESTORED_UNITS`] | counter | | grant units written back so |
//! | [`OUTAGE_WAIT_MS`] | counter | | milliseconds the Torn client spent waiting out an unreachable Redis |
//!
//! Other parts of the crate emit `torn_quota_decisions_total{mode,outcome}`,
//! `torn_quota_shadow_disagreements_total{direction}`, `torn_quota_redis_seconds{operation}`
//! and `torn_quota_redis_noscript_reloads_total`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Counter: limiter decisions, by `backend` (redis, memory), `outcome` (granted, limited,
/// error) and `degraded` (true when the local fallback decided).
pub const LIMITER_DECISIONS: &str = "torn_quota_limiter_decisions_total";
/// Gauge: 1 while any limiter of this process decides locally because Redis is unreachable.
pub const DEGRADED: &str = "torn_quota_degraded";
/// Counter: seconds spent degraded (at least one limiter deciding locally).
pub const DEGRADED_SECONDS: &str = "torn_quota_degraded_seconds_total";
/// Counter: answers from Torn by `code`: `ok`, Torn's error number, or `transport` (no
/// usable answer: connection, HTTP status or body failure).
pub const TORN_ANSWERS: &str = "torn_quota_torn_answers_total";
/// Counter: requests a batch answered, by `outcome` (ok, failed).
pub const BATCH_REQUESTS: &str = "torn_quota_batch_requests_total";
/// Gauge: the quota use of the last batch that finished, from 0 to 1.
pub const BATCH_QUOTA_USED: &str = "torn_quota_batch_quota_used";
/// Gauge: Redis `TIME` minus the local wall clock, in seconds (positive when Redis is ahead).
pub const CLOCK_GAP: &str = "torn_quota_clock_gap_seconds";

/// Counter: rebuilds, each time this process found that Redis lost its state (a new epoch)
/// and wrote its journal of grants back (see `lua/restore.lua`).
pub const REDIS_REBUILDS: &str = "torn_quota_redis_rebuilds_total";
/// Counter: grant units written back into Redis by rebuilds.
pub const RESTORED_UNITS: &str = "torn_quota_redis_restored_units_total";
/// Counter: milliseconds the Torn client's quota gate spent backing off while Redis did not
/// answer, instead of failing its calls.
pub const OUTAGE_WAIT_MS: &str = "torn_quota_redis_outage_wait_ms_total";

/// Counts one rebuild and the units it wrote back.
pub(crate) fn redis_rebuild(units: u64) {
    metrics::counter!(REDIS_REBUILDS).increment(1);
    metrics::counter!(RESTORED_UNITS).increment(units);
}

/// Adds time spent waiting out an unreachable Redis.
#[cfg(feature = "torn")]
pub(crate) fn outage_wait(spent: Duration) {
    metrics::counter!(OUTAGE_WAIT_MS).increment(spent.as_millis() as u64);
}

/// Counts one limiter decision.
pub(crate) fn limiter_decision(backend: &'static str, outcome: &'static str, degraded: bool) {
    metrics::counter!(
        LIMITER_DECISIONS,
        "backend" => backend,
        "outcome" => outcome,
        "degraded" => if degraded { "true" } else { "false" },
    )
    .increment(1);
}

/// Counts one answer from Torn: `None` for a transport failure.
#[cfg(feature = "torn")]
pub(crate) fn torn_answer(code: Option<Result<(), u16>>) {
    let label: metrics::SharedString = match code {
        Some(Ok(())) => "ok".into(),
        Some(Err(n)) => n.to_string().into(),
        None => "transport".into(),
    };
    metrics::counter!(TORN_ANSWERS, "code" => label).increment(1);
}

/// Counts `n` requests a batch answered.
#[cfg(feature = "batch")]
pub(crate) fn batch_answered(ok: bool, n: usize) {
    metrics::counter!(BATCH_REQUESTS, "outcome" => if ok { "ok" } else { "failed" })
        .increment(n as u64);
}

/// Sets the last batch's quota use.
#[cfg(feature = "batch")]
pub(crate) fn batch_quota_used(fraction: f64) {
    metrics::gauge!(BATCH_QUOTA_USED).set(fraction);
}

/// Sets the clock gap gauge.
pub(crate) fn clock_gap(seconds: f64) {
    metrics::gauge!(CLOCK_GAP).set(seconds);
}

/// The process-wide degraded clock: several limiters (the owners', the IP's, a batch's
/// share) lose one Redis together, and the process is degraded while any of them is. Time
/// is counted once, not once per limiter.
struct DegradedClock {
    limiters: usize,
    accounted: Option<Instant>,
    /// The fraction of a second the counter has not taken yet: it is an integer counter.
    carry: Duration,
    spells: u64,
    recoveries: u64,
}

static DEGRADED_CLOCK: Mutex<DegradedClock> = Mutex::new(DegradedClock {
    limiters: 0,
    accounted: None,
    carry: Duration::ZERO,
    spells: 0,
    recoveries: 0,
});

/// Microseconds spent degraded, for [`degraded_time`] (the counter itself cannot be read).
static DEGRADED_MICROS: AtomicU64 = AtomicU64::new(0);

fn with_clock<T>(f: impl FnOnce(&mut DegradedClock) -> T) -> T {
    let mut clock = DEGRADED_CLOCK
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    f(&mut clock)
}

/// Adds the time since the last account to the degraded total, when degraded.
fn account(clock: &mut DegradedClock, now: Instant) {
    if let Some(since) = clock.accounted {
        let spent = now.saturating_duration_since(since);
        metrics::counter!(DEGRADED_SECONDS).increment(spent.as_secs());
        // The counter is an integer: whole seconds go there, and the remainder is carried
        // in `accounted` so no fraction is lost.
        let carried = Duration::from_nanos(u64::from(spent.subsec_nanos()));
        clock.accounted = Some(now.checked_sub(carried).unwrap_or(now));
        DEGRADED_MICROS.fetch_add(spent.as_secs() * 1_000_000, Ordering::Relaxed);
    }
}

/// A limiter began deciding locally.
pub(crate) fn degraded_enter() {
    with_clock(|c| {
        c.limiters += 1;
        if c.limiters == 1 {
            c.accounted = Some(
                Instant::now()
                    .checked_sub(c.carry)
                    .unwrap_or_else(Instant::now),
            );
            c.carry = Duration::ZERO;
            c.spells += 1;
            metrics::gauge!(DEGRADED).set(1.0);
        }
    });
}

/// A limiter that decided locally reaches Redis again (or is dropped).
pub(crate) fn degraded_leave(recovered: bool) {
    with_clock(|c| {
        if c.limiters == 0 {
            return;
        }
        c.limiters -= 1;
        if recovered {
            c.recoveries += 1;
        }
        if c.limiters == 0 {
            let now = Instant::now();
            account(c, now);
            // The fraction of a second not yet counted waits for the next spell.
            if let Some(since) = c.accounted.take() {
                c.carry = now.saturating_duration_since(since);
            }
            metrics::gauge!(DEGRADED).set(0.0);
        }
    });
}

/// Brings the degraded counter up to date during a spell (called on degraded decisions, so
/// a long spell shows in the counter before it ends).
pub(crate) fn degraded_tick() {
    with_clock(|c| account(c, Instant::now()));
}

/// What this process has spent degraded, and how often its limiters lost and regained
/// Redis, for reports that cannot scrape the exporter (the soak's workers).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct DegradedTime {
    /// Time spent with at least one limiter deciding locally (a spell still running counts
    /// up to now).
    pub total: Duration,
    /// Degraded spells begun.
    pub spells: u64,
    /// Limiters that reached Redis again after deciding locally.
    pub recoveries: u64,
    /// True while a limiter of this process decides locally.
    pub now: bool,
}

/// This process's [`DegradedTime`] so far.
pub fn degraded_time() -> DegradedTime {
    with_clock(|c| {
        account(c, Instant::now());
        let pending = c.accounted.map_or(c.carry, |a| a.elapsed());
        DegradedTime {
            total: Duration::from_micros(DEGRADED_MICROS.load(Ordering::Relaxed)) + pending,
            spells: c.spells,
            recoveries: c.recoveries,
            now: c.limiters > 0,
        }
    })
}

/// Installs a Prometheus recorder serving `/metrics` on `addr`, and describes every metric
/// torn-quota emits. Call it once, inside a Tokio runtime (the listener runs on it).
#[cfg(feature = "prometheus")]
pub fn install_prometheus(addr: std::net::SocketAddr) -> crate::Result<()> {
    metrics_exporter_prometheus::PrometheusBuilder::new()
        .with_http_listener(addr)
        .install()
        .map_err(|e| crate::Error::Config {
            setting: "--metrics-addr",
            reason: format!("cannot start the prometheus exporter on {addr}: {e}"),
        })?;
    describe();
    Ok(())
}

#[cfg(feature = "prometheus")]
fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge};
    describe_counter!(
        LIMITER_DECISIONS,
        "limiter decisions by backend, outcome and degraded"
    );
    describe_gauge!(
        DEGRADED,
        "1 while a limiter decides locally because redis is unreachable"
    );
    describe_counter!(
        DEGRADED_SECONDS,
        Unit::Seconds,
        "time spent deciding locally because redis is unreachable"
    );
    describe_counter!(
        TORN_ANSWERS,
        "answers from torn by code (ok, number, transport)"
    );
    describe_counter!(BATCH_REQUESTS, "requests a batch answered, by outcome");
    describe_gauge!(BATCH_QUOTA_USED, "quota use of the last batch, 0 to 1");
    describe_gauge!(
        CLOCK_GAP,
        Unit::Seconds,
        "redis TIME minus the local wall clock"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn degraded_time_counts_one_spell_once() {
        let before = degraded_time();
        degraded_enter();
        degraded_enter(); // a sibling limiter loses the same redis
        std::thread::sleep(Duration::from_millis(30));
        degraded_tick();
        assert!(degraded_time().now);
        degraded_leave(true);
        degraded_leave(true);
        let after = degraded_time();
        assert!(!after.now);
        assert!(after.spells > before.spells);
        assert!(after.recoveries >= before.recoveries + 2);
        let spent = after.total.saturating_sub(before.total);
        assert!(spent >= Duration::from_millis(25), "{spent:?}");
        assert!(spent < Duration::from_secs(5), "{spent:?}");
    }
}
