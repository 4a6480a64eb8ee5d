//! What the simulator remembers: its keys, a rolling window per owner and per IP, queued
//! faults, and the counters. One lock guards it all, so each request's checks and its
//! record are one atomic step, as they are at Torn.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt::Display;
use std::net::IpAddr;
use std::time::Duration;

use rand::Rng;
use serde::{Serialize, Serializer};
use tokio::time::Instant;

use super::config::SimConfig;
use super::fault::Fault;
use super::keys::SimKey;
use crate::identity::{KeyHash, TornUserId};
use crate::torn::TornErrorCode;

/// How many distinct unknown keys [`SimCounters::requests_by_key`] tracks at most.
pub const UNKNOWN_KEYS_TRACKED: usize = 4096;

/// How many admission times [`SimHandle::admissions`](crate::sim::SimHandle::admissions)
/// keeps per owner, newest: enough for any test, bounded for a long-running `torn-quota sim`.
pub const ADMISSIONS_KEPT: usize = 65_536;

/// What the simulator has served since it started or since
/// [`reset_counters`](crate::sim::SimHandle::reset_counters). A snapshot: it does not change
/// as more requests arrive.
///
/// Serialized, owner ids and key hashes become the JSON objects' keys.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct SimCounters {
    /// Every request received, answered or not.
    pub requests: u64,
    /// Requests that carried a key in the URL (`?key=`), which leaks it into logs; a client
    /// that sends the header should keep this at 0.
    pub key_in_url: u64,
    /// Requests per owner, for every request that presented one of their keys, whatever its
    /// answer.
    #[serde(serialize_with = "display_keys")]
    pub requests_by_owner: BTreeMap<TornUserId, u64>,
    /// Requests per key presented (by hash, never the key), known to the simulator or not,
    /// whatever their answer: how a test proves an invalid key was sent only once. Keys the
    /// simulator does not know are tracked up to [`UNKNOWN_KEYS_TRACKED`] distinct ones
    /// (a client sending random keys must not grow it without bound); requests with
    /// further unknown keys count in [`requests_untracked_keys`](Self::requests_untracked_keys).
    #[serde(serialize_with = "display_keys")]
    pub requests_by_key: BTreeMap<KeyHash, u64>,
    /// Requests with an unknown key beyond the [`UNKNOWN_KEYS_TRACKED`] that
    /// [`requests_by_key`](Self::requests_by_key) tracks.
    pub requests_untracked_keys: u64,
    /// Requests recorded in an owner's window: those that passed every check, so Torn
    /// counted them against the owner's quota.
    pub admitted: u64,
    /// [`admitted`](Self::admitted), per owner.
    #[serde(serialize_with = "display_keys")]
    pub admitted_by_owner: BTreeMap<TornUserId, u64>,
    /// Answers with data (HTTP 200, no error).
    pub ok: u64,
    /// Answers with a Torn error, per code: `errors_by_code[&5]` is how many code 5s were
    /// served.
    pub errors_by_code: BTreeMap<u16, u64>,
    /// The most requests any owner had recorded in one trailing window, checked at each
    /// admission. Never above the limit, by construction: a check that it holds.
    pub max_in_window: u32,
    /// [`max_in_window`](Self::max_in_window), per owner.
    #[serde(serialize_with = "display_keys")]
    pub max_in_window_by_owner: BTreeMap<TornUserId, u32>,
    /// Faults served, queued or random.
    pub faults_served: u64,
}

impl SimCounters {
    /// How many answers carried Torn error `code`.
    pub fn errors(&self, code: u16) -> u64 {
        self.errors_by_code.get(&code).copied().unwrap_or(0)
    }
}

fn display_keys<K: Display, V: Serialize, S: Serializer>(
    map: &BTreeMap<K, V>,
    s: S,
) -> Result<S::Ok, S::Error> {
    s.collect_map(map.iter().map(|(k, v)| (k.to_string(), v)))
}

/// The times of recent requests, oldest first. A request at `t` counts until `t + len`,
/// exclusive. Only the newest `cap` times are kept: whether `cap` or more fall in the
/// window depends on those alone, so a client hammering through a block costs no memory.
#[derive(Debug, Default)]
pub(crate) struct Window {
    times: VecDeque<Instant>,
}

impl Window {
    /// How many recorded requests still count at `now`.
    pub(crate) fn count(&mut self, now: Instant, len: Duration) -> usize {
        while let Some(&t) = self.times.front() {
            if t + len <= now {
                self.times.pop_front();
            } else {
                break;
            }
        }
        self.times.len()
    }

    /// Records a request at `now`, which is never earlier than the last one recorded.
    pub(crate) fn record(&mut self, now: Instant, cap: usize) {
        self.times.push_back(now);
        while self.times.len() > cap {
            self.times.pop_front();
        }
    }
}

/// A known key with its hash, computed once.
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    pub(crate) key: SimKey,
    pub(crate) hash: KeyHash,
}

/// What the checks decided for one request.
#[derive(Debug)]
pub(crate) enum Verdict {
    /// Refused with this code; nothing recorded in the owner's window.
    Refused(TornErrorCode),
    /// Recorded in the owner's window; answer with this key's rights, after the fault if any.
    Admitted { key: SimKey, fault: Option<Fault> },
}

/// How an admitted request was finally answered, for the counters.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Answer {
    Ok,
    Error(u16),
    /// An HTTP error, malformed JSON or a dropped connection: counted as a fault only.
    Broken,
}

#[derive(Default)]
pub(crate) struct State {
    keys: HashMap<String, Entry>,
    owners: HashMap<TornUserId, Window>,
    ips: HashMap<IpAddr, Window>,
    faults: VecDeque<Fault>,
    counters: SimCounters,
    /// Distinct unknown keys in `counters.requests_by_key`.
    unknown_tracked: usize,
    /// Per owner, the wall-clock time (µs since the Unix epoch) of each admission, oldest
    /// first, at most [`ADMISSIONS_KEPT`]: what an outside oracle compares with Redis time.
    admissions: HashMap<TornUserId, VecDeque<u64>>,
}

// By hand: the keys map is keyed by the keys themselves, which must never be printed.
impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("State")
            .field("keys", &self.keys.len())
            .field("owners", &self.owners.len())
            .field("queued_faults", &self.faults.len())
            .finish_non_exhaustive()
    }
}

impl State {
    pub(crate) fn new(keys: impl IntoIterator<Item = SimKey>) -> Self {
        let mut state = Self::default();
        for key in keys {
            state.add_key(key);
        }
        state
    }

    pub(crate) fn add_key(&mut self, key: SimKey) {
        let hash = key.hash();
        self.keys.insert(key.key.clone(), Entry { key, hash });
    }

    /// Whether the simulator knows `key`.
    pub(crate) fn knows(&self, key: &str) -> bool {
        self.keys.contains_key(key)
    }

    /// Sets a key's state; false when the key is unknown.
    pub(crate) fn set_key_state(&mut self, key: &str, state: super::KeyState) -> bool {
        match self.keys.get_mut(key) {
            Some(entry) => {
                entry.key.state = state;
                true
            }
            None => false,
        }
    }

    pub(crate) fn inject(&mut self, fault: Fault) {
        self.faults.push_back(fault);
    }

    pub(crate) fn counters(&self) -> SimCounters {
        self.counters.clone()
    }

    /// The wall-clock admission times of `owner`'s requests, µs since the Unix epoch.
    pub(crate) fn admissions(&self, owner: TornUserId) -> Vec<u64> {
        self.admissions
            .get(&owner)
            .map(|times| times.iter().copied().collect())
            .unwrap_or_default()
    }

    pub(crate) fn reset_counters(&mut self) {
        self.counters = SimCounters::default();
        self.unknown_tracked = 0;
    }

    /// Runs the checks in Torn's order and records what they decided, at `now`.
    ///
    /// `key` is the key presented (`None` or empty when there was none); `key_in_url` says
    /// whether a key was in the query string.
    pub(crate) fn decide(
        &mut self,
        config: &SimConfig,
        ip: IpAddr,
        key: Option<&str>,
        key_in_url: bool,
        now: Instant,
    ) -> Verdict {
        let c = &mut self.counters;
        c.requests += 1;
        if key_in_url {
            c.key_in_url += 1;
        }
        let entry = key.and_then(|k| self.keys.get(k));
        if let Some(entry) = entry {
            *c.requests_by_owner.entry(entry.key.owner).or_default() += 1;
            *c.requests_by_key.entry(entry.hash.clone()).or_default() += 1;
        } else if let Some(k) = key.filter(|k| !k.is_empty()) {
            let hash = KeyHash::of(k);
            if let Some(n) = c.requests_by_key.get_mut(&hash) {
                *n += 1;
            } else if self.unknown_tracked < UNKNOWN_KEYS_TRACKED {
                self.unknown_tracked += 1;
                c.requests_by_key.insert(hash, 1);
            } else {
                c.requests_untracked_keys += 1;
            }
        }

        // Every request counts toward its IP, refused or not: an IP that keeps hammering
        // through a block stays blocked.
        let ip_limit = config.ip_limit().get() as usize;
        let ip_window = self.ips.entry(ip).or_default();
        let ip_full = ip_window.count(now, config.ip_window()) >= ip_limit;
        ip_window.record(now, ip_limit);
        let refuse = |c: &mut SimCounters, code: TornErrorCode| {
            *c.errors_by_code.entry(code.get()).or_default() += 1;
            Verdict::Refused(code)
        };
        if ip_full {
            return refuse(c, TornErrorCode::IP_BLOCK);
        }
        if key.is_none_or(str::is_empty) {
            return refuse(c, TornErrorCode::new(1));
        }
        let Some(entry) = entry else {
            return refuse(c, TornErrorCode::INCORRECT_KEY);
        };
        if let Some(code) = entry.key.state.error_code() {
            tracing::debug!(owner = %entry.key.owner, key_hash = entry.hash.short(), code = code.get(), "sim: key refused");
            return refuse(c, code);
        }
        let owner = entry.key.owner;
        let limit = config.limit().get();
        let window = self.owners.entry(owner).or_default();
        let in_window = window.count(now, config.window());
        if in_window >= limit as usize {
            tracing::debug!(%owner, key_hash = entry.hash.short(), "sim: owner's window full");
            return refuse(c, TornErrorCode::TOO_MANY_REQUESTS);
        }
        window.record(now, limit as usize);
        let log = self.admissions.entry(owner).or_default();
        log.push_back(epoch_us());
        if log.len() > ADMISSIONS_KEPT {
            log.pop_front();
        }
        let recorded = in_window as u32 + 1;
        c.admitted += 1;
        *c.admitted_by_owner.entry(owner).or_default() += 1;
        c.max_in_window = c.max_in_window.max(recorded);
        let max = c.max_in_window_by_owner.entry(owner).or_default();
        *max = (*max).max(recorded);
        tracing::debug!(%owner, key_hash = entry.hash.short(), in_window = recorded, "sim: admitted");

        let fault = self.faults.pop_front().or_else(|| random_fault(config));
        if fault.is_some() {
            c.faults_served += 1;
        }
        Verdict::Admitted {
            key: entry.key.clone(),
            fault,
        }
    }

    pub(crate) fn record_answer(&mut self, answer: Answer) {
        match answer {
            Answer::Ok => self.counters.ok += 1,
            Answer::Error(code) => *self.counters.errors_by_code.entry(code).or_default() += 1,
            Answer::Broken => {}
        }
    }
}

/// The wall clock (the one Redis `TIME` reads on this machine), µs since the Unix epoch.
fn epoch_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

fn random_fault(config: &SimConfig) -> Option<Fault> {
    let f = config.random_faults();
    if f.backend_error + f.slow + f.drop_connection <= 0.0 {
        return None;
    }
    let u: f64 = rand::rng().random();
    if u < f.backend_error {
        Some(Fault::Code(TornErrorCode::BACKEND_ERROR.get()))
    } else if u < f.backend_error + f.slow {
        Some(Fault::Slow(f.slow_for))
    } else if u < f.backend_error + f.slow + f.drop_connection {
        Some(Fault::DropConnection)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;
    use std::num::NonZeroU32;

    use super::*;
    use crate::identity::AccessLevel;
    use crate::sim::KeyState;

    const LOCAL: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

    fn code(v: &Verdict) -> Option<u16> {
        match v {
            Verdict::Refused(c) => Some(c.get()),
            Verdict::Admitted { .. } => None,
        }
    }

    fn config(limit: u32, window_ms: u64) -> SimConfig {
        SimConfig::builder()
            .limit(NonZeroU32::new(limit).unwrap())
            .window(Duration::from_millis(window_ms))
            .build()
            .unwrap()
    }

    #[test]
    fn a_request_counts_until_t_plus_window_exclusive() {
        let config = config(2, 1000);
        let mut state = State::new([SimKey::new("K1", TornUserId::new(1), AccessLevel::Full)]);
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        let mut ask = |ms| code(&state.decide(&config, LOCAL, Some("K1"), false, at(ms)));
        assert_eq!(ask(0), None);
        assert_eq!(ask(400), None);
        assert_eq!(ask(999), Some(5), "both still count at t0 + 999 ms");
        assert_eq!(ask(1000), None, "the first stops counting at t0 + 1000 ms");
        assert_eq!(ask(1399), Some(5));
        assert_eq!(ask(1400), None);
        let c = state.counters();
        assert_eq!((c.admitted, c.errors(5), c.max_in_window), (4, 2, 2));
    }

    #[test]
    fn admissions_are_stamped_on_the_wall_clock_per_owner_and_refusals_are_not() {
        let config = config(2, 60_000);
        let (a, b) = (TornUserId::new(1), TornUserId::new(2));
        let mut state = State::new([
            SimKey::new("K1", a, AccessLevel::Full),
            SimKey::new("K2", b, AccessLevel::Full),
        ]);
        let before = epoch_us();
        for key in ["K1", "K1", "K1", "K2"] {
            state.decide(&config, LOCAL, Some(key), false, Instant::now());
        }
        let after = epoch_us();
        let of_a = state.admissions(a);
        assert_eq!(of_a.len(), 2, "the third call of owner 1 was a code 5");
        assert!(of_a.windows(2).all(|w| w[0] <= w[1]), "oldest first");
        assert!(of_a.iter().all(|&t| (before..=after).contains(&t)));
        assert_eq!(state.admissions(b).len(), 1);
        assert!(state.admissions(TornUserId::new(3)).is_empty());
    }

    #[test]
    fn one_window_per_owner_across_keys() {
        let config = config(3, 60_000);
        let owner = TornUserId::new(9);
        let mut state = State::new([
            SimKey::new("A", owner, AccessLevel::Full),
            SimKey::new("B", owner, AccessLevel::Public),
            SimKey::new("C", TornUserId::new(10), AccessLevel::Public),
        ]);
        let now = Instant::now();
        let got: Vec<_> = ["A", "B", "A", "B", "C"]
            .into_iter()
            .map(|k| code(&state.decide(&config, LOCAL, Some(k), false, now)))
            .collect();
        assert_eq!(got, [None, None, None, Some(5), None]);
        let c = state.counters();
        assert_eq!(c.admitted_by_owner[&owner], 3);
        assert_eq!(c.requests_by_owner[&owner], 4);
        assert_eq!(c.requests_by_key[&KeyHash::of("B")], 2);
    }

    #[test]
    fn unknown_keys_are_tracked_up_to_a_bound() {
        let config = config(1, 1000);
        let mut state = State::new([SimKey::new("K1", TornUserId::new(1), AccessLevel::Full)]);
        let now = Instant::now();
        let extra = 10;
        for i in 0..UNKNOWN_KEYS_TRACKED + extra {
            state.decide(&config, LOCAL, Some(&format!("random{i}")), false, now);
        }
        // A known key, and an unknown one already tracked, are still counted.
        state.decide(&config, LOCAL, Some("K1"), false, now);
        state.decide(&config, LOCAL, Some("random0"), false, now);
        let c = state.counters();
        assert_eq!(c.requests_by_key.len(), UNKNOWN_KEYS_TRACKED + 1);
        assert_eq!(c.requests_untracked_keys, extra as u64);
        assert_eq!(c.requests_by_key[&KeyHash::of("K1")], 1);
        assert_eq!(c.requests_by_key[&KeyHash::of("random0")], 2);
        assert_eq!(c.requests, (UNKNOWN_KEYS_TRACKED + extra + 2) as u64);
    }

    #[test]
    fn checks_run_in_torns_order() {
        let config = SimConfig::builder()
            .limit(NonZeroU32::MIN)
            .ip_limit(NonZeroU32::new(6).unwrap())
            .build()
            .unwrap();
        let owner = TornUserId::new(1);
        let mut state = State::new([
            SimKey::new("OK", owner, AccessLevel::Full),
            SimKey::new("JAIL", owner, AccessLevel::Full).with_state(KeyState::Jail),
        ]);
        let now = Instant::now();
        let mut ask = |k: Option<&str>| code(&state.decide(&config, LOCAL, k, false, now));
        assert_eq!(ask(None), Some(1));
        assert_eq!(ask(Some("")), Some(1));
        assert_eq!(ask(Some("NOPE")), Some(2));
        assert_eq!(ask(Some("JAIL")), Some(10));
        assert_eq!(ask(Some("OK")), None);
        assert_eq!(ask(Some("OK")), Some(5));
        assert_eq!(
            ask(Some("OK")),
            Some(8),
            "the IP's 7th request in its window"
        );
        assert_eq!(ask(None), Some(8), "IP block comes before any key check");
    }
}
