//! What the batch handler's scenario tests share: the simulator and the limiter on one short
//! window, a handler over them, requests, and the simulator's verdict.

use std::num::{NonZeroU32, NonZeroUsize};
use std::time::Duration;

use torn_quota::ApiKey;
use torn_quota::batch::{BatchConfig, BatchHandler, BatchOutcome, BatchRequest};
use torn_quota::sim::{SimConfig, SimHandle, SimKey, Simulator};
use torn_quota::torn::{TornClient, TornClientConfig};
use torn_quota::{Limiter, RateLimitConfig};

/// Torn's limit in these scenarios, per owner per window (the simulator's and the limiter's).
pub const LIMIT: u32 = 10;
/// The short window the scenarios run on.
pub const WINDOW: Duration = Duration::from_millis(500);
/// The client's safety margin.
pub const MARGIN: Duration = Duration::from_millis(40);

/// A key for owner `owner`, numbered `n`: 16 alphanumerics.
pub fn key(owner: u64, n: u32) -> String {
    format!("Owner{owner:05}Key{n:03}")
}

/// The simulator at LIMIT per WINDOW, knowing `keys`.
pub async fn sim(keys: Vec<SimKey>) -> SimHandle {
    let config = SimConfig::builder()
        .limit(NonZeroU32::new(LIMIT).unwrap())
        .window(WINDOW)
        .build()
        .unwrap();
    Simulator::start(keys, config).await.unwrap()
}

/// The limiter at LIMIT per WINDOW on the test Redis, under a fresh prefix.
pub fn limiter_config(name: &str) -> RateLimitConfig {
    super::config(name, LIMIT, WINDOW.as_millis() as u64)
        .build()
        .unwrap()
}

/// A batch handler on `sim`, 16 requests in flight.
pub fn handler(sim: &SimHandle, config: RateLimitConfig) -> BatchHandler {
    let limiter = Limiter::redis(config).unwrap();
    let client = TornClient::new(
        limiter,
        TornClientConfig::builder()
            .base_url(sim.base_url())
            .safety_margin(MARGIN)
            .retry_min_delay(Duration::from_millis(5))
            .owner_hold(Duration::from_millis(100))
            .build()
            .unwrap(),
    )
    .unwrap();
    BatchHandler::new(
        client,
        BatchConfig::default().concurrency(NonZeroUsize::new(16).unwrap()),
    )
}

/// `user/{id}/basic` for each id.
pub fn basic(ids: std::ops::Range<u64>) -> Vec<BatchRequest> {
    ids.map(|id| BatchRequest::new(format!("user/{id}/basic")))
        .collect()
}

/// The keys of `keys`.
pub fn api_keys(keys: &[&SimKey]) -> Vec<ApiKey> {
    keys.iter().map(|k| ApiKey::new(&k.key).unwrap()).collect()
}

/// Every result answers its own request: `user/{id}/basic` comes back with that id.
pub fn assert_in_order(outcome: &BatchOutcome, first_id: u64) {
    for (i, r) in outcome.results.iter().enumerate() {
        let data = r
            .as_ref()
            .unwrap_or_else(|e| panic!("request {i} failed: {e}"));
        assert_eq!(
            data["profile"]["id"],
            first_id + i as u64,
            "result {i} out of order"
        );
    }
}

/// What the simulator saw: never above the limit, never a code 5.
pub fn assert_torn_satisfied(sim: &SimHandle) {
    let c = sim.counters();
    assert_eq!(c.errors(5), 0, "code-5 answers: {c:?}");
    assert!(
        c.max_in_window <= LIMIT,
        "Torn counted {} in a window",
        c.max_in_window
    );
}
