//! What the Torn client's tests share: the simulator's keys (one per state Torn answers),
//! the usual setup at 20 per second, a capture of every tracing event of the test binary,
//! the checks that no key leaks into an error, a log line or a URL, and an owner quota that
//! is slow once after its grant.

use std::fmt::Write as _;
use std::io::Write;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use torn_quota::rollout::{OwnerQuota, QuotaFuture};
use torn_quota::sim::{KeyState, SimConfig, SimHandle, SimKey, Simulator};
use torn_quota::torn::{TornClient, TornClientConfig, TornClientConfigBuilder};
use torn_quota::{AccessLevel, ApiKey};
use torn_quota::{Error, Limiter, Request, TornUserId};

/// Owner 4's keys, both full.
pub const FULL_A: &str = "FullKeyOfOwner04";
pub const FULL_B: &str = "SecondKeyOwner04";
/// Owner 5's key, minimal access.
pub const MINIMAL: &str = "MinimalKeyOwnr05";
/// Owner 8's keys, in states that Torn refuses.
pub const PAUSED: &str = "PausedKeyOwner08";
pub const INACTIVE: &str = "InactiveKeyOwnr8";
pub const JAILED: &str = "JailedKeyOwner08";
/// Owner 9's key.
pub const SPARE: &str = "SpareKeyOfOwnr09";
/// A well-formed key the simulator does not know: code 2.
pub const UNKNOWN: &str = "NobodyKnowsThis1";

pub const ALL_KEYS: &[&str] = &[
    FULL_A, FULL_B, MINIMAL, PAUSED, INACTIVE, JAILED, SPARE, UNKNOWN,
];

pub const OWNER_4: TornUserId = TornUserId::new(4);
pub const LIMIT: u32 = 20;
pub const WINDOW_MS: u64 = 1000;

pub fn key(k: &str) -> ApiKey {
    ApiKey::new(k).expect("the test keys are well formed")
}

pub fn sim_keys() -> Vec<SimKey> {
    vec![
        SimKey::new(FULL_A, OWNER_4, AccessLevel::Full),
        SimKey::new(FULL_B, OWNER_4, AccessLevel::Full),
        SimKey::new(MINIMAL, TornUserId::new(5), AccessLevel::Minimal),
        SimKey::new(PAUSED, TornUserId::new(8), AccessLevel::Full).with_state(KeyState::Paused),
        SimKey::new(INACTIVE, TornUserId::new(8), AccessLevel::Full).with_state(KeyState::Inactive),
        SimKey::new(JAILED, TornUserId::new(8), AccessLevel::Full).with_state(KeyState::Jail),
        SimKey::new(SPARE, TornUserId::new(9), AccessLevel::Public),
    ]
}

// ---------------------------------------------------------------------------------------
// Every tracing event of this test binary, at TRACE, reqwest's and hyper's included, goes
// into one buffer; `no_key_reaches_logs_errors_or_urls` searches it for the keys.

#[derive(Clone)]
pub struct Buffer(pub Arc<Mutex<Vec<u8>>>);

impl Write for Buffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

pub fn captured() -> &'static Buffer {
    static BUFFER: OnceLock<Buffer> = OnceLock::new();
    BUFFER.get_or_init(|| {
        let buffer = Buffer(Arc::new(Mutex::new(Vec::new())));
        let writer = buffer.clone();
        // Also turns `log` records (reqwest's) into events.
        tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .try_init()
            .expect("the only subscriber of this test binary");
        buffer
    })
}

pub fn captured_text() -> String {
    String::from_utf8_lossy(&captured().0.lock().unwrap()).into_owned()
}

/// No key, not even its first 12 characters, in `text`.
pub fn assert_no_key(text: &str, what: &str) {
    for k in ALL_KEYS {
        assert!(!text.contains(&k[..12]), "a key appears in {what}: {text}");
    }
}

/// An error, every way it prints and its whole source chain, carries no key.
pub fn assert_clean(error: &Error) {
    let mut shown = format!("{error}\n{error:?}\n{error:#?}");
    let mut source = std::error::Error::source(error);
    while let Some(s) = source {
        write!(shown, "\n{s}\n{s:?}").unwrap();
        source = s.source();
    }
    assert_no_key(&shown, "an error");
}

pub fn torn_code(result: &Result<serde_json::Value, Error>) -> u16 {
    match result {
        Err(e @ Error::Torn { code, .. }) => {
            assert_clean(e);
            code.get()
        }
        Err(other) => panic!("expected a Torn error, got {other:?}"),
        Ok(v) => panic!("expected a Torn error, got {v}"),
    }
}

// ---------------------------------------------------------------------------------------

/// The per-user limiter as the gate's owner quota, with the first decision returned
/// `delay` after its grant (a slow task, a slow store): the time between a grant and its
/// send. Notes when each decision was asked for, in wall-clock µs, the simulator's clock.
#[derive(Debug)]
pub struct SlowFirstGrant {
    limiter: Limiter,
    delay: Duration,
    asked_us: Mutex<Vec<u64>>,
}

impl SlowFirstGrant {
    pub fn new(limiter: Limiter, delay: Duration) -> Self {
        Self {
            limiter,
            delay,
            asked_us: Mutex::new(Vec::new()),
        }
    }

    /// When each decision was asked for, oldest first.
    pub fn asked_us(&self) -> Vec<u64> {
        self.asked_us.lock().unwrap().clone()
    }

    /// Whether every request `sim` counted for `owner` reached it within `timeout` of the
    /// latest decision asked before it: the longest its units are held before their
    /// window. The first one that did not, as µs after that decision.
    pub fn late_arrival(
        &self,
        sim: &SimHandle,
        owner: TornUserId,
        timeout: Duration,
    ) -> Option<u64> {
        let asked = self.asked_us();
        sim.admissions(owner).into_iter().find_map(|at| {
            let since = at - asked.iter().rev().find(|&&a| a <= at).copied()?;
            (since > timeout.as_micros() as u64).then_some(since)
        })
    }
}

impl OwnerQuota for SlowFirstGrant {
    fn decide<'a>(
        &'a self,
        user: TornUserId,
        key_hash: Option<&'a str>,
        request: &'a Request,
    ) -> QuotaFuture<'a> {
        Box::pin(async move {
            let first = {
                let mut asked = self.asked_us.lock().unwrap();
                asked.push(super::oracle_worker::epoch_us());
                asked.len() == 1
            };
            let decision = OwnerQuota::decide(&self.limiter, user, key_hash, request).await?;
            if first {
                tokio::time::sleep(self.delay).await;
            }
            Ok(decision)
        })
    }
    fn per_key(&self, _user: TornUserId) -> bool {
        false
    }
}

// ---------------------------------------------------------------------------------------

pub fn sim_config(limit: u32, window_ms: u64) -> torn_quota::sim::SimConfigBuilder {
    SimConfig::builder()
        .limit(NonZeroU32::new(limit).unwrap())
        .window(Duration::from_millis(window_ms))
}

pub async fn start_sim(config: torn_quota::sim::SimConfigBuilder) -> SimHandle {
    Simulator::start(sim_keys(), config.build().unwrap())
        .await
        .expect("start the simulator")
}

/// A client config for `sim`: a small margin, fast back-off, short pauses and holds.
pub fn client_config(sim: &SimHandle) -> TornClientConfigBuilder {
    TornClientConfig::builder()
        .base_url(sim.base_url())
        .safety_margin(Duration::from_millis(20))
        .retry_min_delay(Duration::from_millis(5))
        .retry_max_delay(Duration::from_millis(40))
        .request_timeout(Duration::from_secs(5))
        .pause(Duration::from_millis(300))
        .owner_hold(Duration::from_secs(3))
}

/// A Redis limiter of `limit` per `window_ms` under a fresh prefix.
pub async fn limiter(name: &str, limit: u32, window_ms: u64) -> Limiter {
    super::redis_conn().await;
    Limiter::redis(super::config(name, limit, window_ms).build().unwrap()).unwrap()
}

/// A simulator, a client on it, and the client's limiter.
pub struct Setup {
    pub sim: SimHandle,
    pub client: TornClient,
    pub limiter: Limiter,
}

/// The usual setup: the simulator and the limiter both at 20 per 1000 ms.
pub async fn setup(
    name: &str,
    tweak: impl FnOnce(TornClientConfigBuilder) -> TornClientConfigBuilder,
) -> Setup {
    captured();
    let sim = start_sim(sim_config(LIMIT, WINDOW_MS)).await;
    let limiter = limiter(name, LIMIT, WINDOW_MS).await;
    let config = tweak(client_config(&sim)).build().unwrap();
    let client = TornClient::new(limiter.clone(), config).unwrap();
    Setup {
        sim,
        client,
        limiter,
    }
}

/// Requests the simulator received with `k` (known keys only).
pub fn sent_with(sim: &SimHandle, k: &str) -> u64 {
    let hash = torn_quota::KeyHash::of(k);
    sim.counters()
        .requests_by_key
        .get(&hash)
        .copied()
        .unwrap_or(0)
}

pub fn assert_no_key_in_urls(sim: &SimHandle) {
    assert_eq!(sim.counters().key_in_url, 0, "a key travelled in a URL");
}
