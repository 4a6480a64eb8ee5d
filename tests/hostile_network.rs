//! The guarantee under a hostile network, with the simulator as ground truth: however
//! late a request reaches Torn, and however slow its answer, Torn never answers code 5 and
//! never sees more than the limit in any window of its own arrival times. Real Redis, the
//! project's simulator, two clients on one prefix standing for two processes.

mod common;

use std::num::NonZeroU32;
use std::time::Duration;

use torn_quota::sim::{Fault, SimConfig, SimHandle, SimKey, Simulator};
use torn_quota::torn::{TornClient, TornClientConfig};
use torn_quota::{AccessLevel, ApiKey, Limiter, TornUserId};

const KEY: &str = "HostileNetOwner4";
const OWNER: TornUserId = TornUserId::new(4);

async fn sim(limit: u32, window: Duration) -> SimHandle {
    let config = SimConfig::builder()
        .limit(NonZeroU32::new(limit).unwrap())
        .window(window)
        .build()
        .unwrap();
    Simulator::start([SimKey::new(KEY, OWNER, AccessLevel::Full)], config)
        .await
        .unwrap()
}

/// One "process": its own limiter and client, on the shared prefix.
fn process(sim: &SimHandle, prefix: &str, limit: u32, window_ms: u64) -> TornClient {
    let config = common::config("hostile", limit, window_ms)
        .key_prefix(prefix)
        .build()
        .unwrap();
    let torn = TornClientConfig::builder()
        .base_url(sim.base_url())
        .build()
        .unwrap();
    TornClient::new(Limiter::redis(config).unwrap(), torn).unwrap()
}

/// The most arrivals (µs) in any half-open interval of `window` length.
fn max_in_window(arrivals: &[u64], window: Duration) -> usize {
    let w = window.as_micros() as u64;
    (0..arrivals.len())
        .map(|i| {
            arrivals[i..]
                .iter()
                .take_while(|&&t| t < arrivals[i] + w)
                .count()
        })
        .max()
        .unwrap_or(0)
}

/// Waits until the simulator has received `n` requests (its counters are the signal).
async fn until_received(sim: &SimHandle, n: u64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while sim.counters().requests < n {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the simulator never received request {n}"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Process A's owner lookup reaches Torn and is then stalled (a slow answer, as on a loaded
/// machine). Process B, missing the shared owner memo meanwhile, must not send a lookup of
/// its own and go on spending the owner's window while A's lookup is counted by Torn and by
/// no bucket: before the lookup lease, B's second call met Torn's code 5.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stalled_owner_lookup_in_one_process_never_becomes_a_code_5_in_another() {
    common::trace_on_failure();
    let (limit, window) = (3, Duration::from_millis(1500));
    let sim = sim(limit, window).await;
    let prefix = common::unique_prefix("hostile-lookup");
    let a = process(&sim, &prefix, limit, window.as_millis() as u64);
    let b = process(&sim, &prefix, limit, window.as_millis() as u64);
    let key = ApiKey::new(KEY).unwrap();

    // A's lookup is counted on arrival, answered 600 ms later.
    sim.inject(Fault::Slow(Duration::from_millis(600)));
    let first = {
        let (a, key) = (a.clone(), key.clone());
        tokio::spawn(async move { a.get(&key, "user/basic").await })
    };
    until_received(&sim, 1).await;
    let mut answers = Vec::new();
    for _ in 0..2 {
        answers.push(b.get(&key, "user/basic").await);
    }
    answers.push(first.await.unwrap());

    let c = sim.counters();
    assert_eq!(c.errors(5), 0, "the simulator served code 5: {c:?}");
    for (i, r) in answers.iter().enumerate() {
        let body = r.as_ref().unwrap_or_else(|e| panic!("call {i}: {e}"));
        assert_eq!(body["profile"]["id"], 4, "call {i}: {body}");
    }
    assert_eq!(c.admitted, 4, "one lookup and three calls: {c:?}");
    let arrivals = sim.admissions(OWNER);
    assert!(
        max_in_window(&arrivals, window) <= limit as usize,
        "more than {limit} arrivals in one window: {arrivals:?}"
    );
    sim.shutdown().await;
}

/// Many callers in two processes on one owner, over a network that delays every answer by a
/// varying amount and stalls a fifth of the requests on their way in (they reach Torn's
/// count 250 ms late, within the request timeout): each grant stays counted until its
/// answer, then one window from there, so the simulator's own arrival times never hold more
/// than the limit in a window.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn late_arrivals_and_slow_answers_never_overfill_torns_window() {
    common::trace_on_failure();
    let (limit, window) = (8, Duration::from_millis(400));
    let config = SimConfig::builder()
        .limit(NonZeroU32::new(limit).unwrap())
        .window(window)
        .latency(Duration::from_millis(5))
        .latency_jitter(Duration::from_millis(40))
        .stalls(0.2, Duration::from_millis(250))
        .build()
        .unwrap();
    let sim = Simulator::start([SimKey::new(KEY, OWNER, AccessLevel::Full)], config)
        .await
        .unwrap();
    let prefix = common::unique_prefix("hostile-late");
    let procs = [
        process(&sim, &prefix, limit, window.as_millis() as u64),
        process(&sim, &prefix, limit, window.as_millis() as u64),
    ];
    let key = ApiKey::new(KEY).unwrap();
    let calls = (0..40).map(|i| {
        let (client, key) = (procs[i % 2].clone(), key.clone());
        async move { client.get(&key, &format!("user/basic?n={i}")).await }
    });
    let answers = common::join_all(calls).await;

    let c = sim.counters();
    assert_eq!(c.errors(5), 0, "the simulator served code 5: {c:?}");
    for (i, r) in answers.iter().enumerate() {
        let body = r.as_ref().unwrap_or_else(|e| panic!("call {i}: {e}"));
        assert_eq!(body["profile"]["id"], 4, "call {i}: {body}");
    }
    assert_eq!(c.admitted, 41, "one lookup and 40 calls: {c:?}");
    let arrivals = sim.admissions(OWNER);
    assert!(
        max_in_window(&arrivals, window) <= limit as usize,
        "more than {limit} arrivals in one window: {arrivals:?}"
    );
    sim.shutdown().await;
}
