//! Shared test helpers: real Redis only, a fresh key prefix per test so tests run in
//! parallel, and a loud failure when Redis is missing (never a silent skip).
//!
//! One module per concern: `pg` (a database per test), `redis_server` (a private
//! `redis-server`), `metrics` (what the crate recorded), `oracle_worker` (the oracles'
//! worker process), and the harness of one family of test files each (`batch`, `rollout`,
//! `torn_client`, `vault`, `vault_cli`).

#![allow(dead_code, unreachable_pub)]

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use torn_quota::{RateLimitConfig, RateLimitConfigBuilder};

#[cfg(all(feature = "batch", feature = "sim"))]
pub mod batch;
pub mod metrics;
pub mod oracle_worker;
#[cfg(feature = "vault")]
pub mod pg;
pub mod redis_server;
#[cfg(feature = "legacy")]
pub mod rollout;
pub mod sentinel;
pub mod tls_redis;
#[cfg(all(feature = "torn", feature = "sim"))]
pub mod torn_client;
#[cfg(feature = "vault")]
pub mod vault;
#[cfg(feature = "cli")]
pub mod vault_cli;

/// The shared test Redis (`REDIS_URL`, default `redis://127.0.0.1:6379`).
pub fn redis_url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

/// A key prefix no other test (or test process) uses.
pub fn unique_prefix(name: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!(
        "tqtest-{name}-{}-{nanos}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// A builder with a short window, pointed at the test Redis under a fresh prefix.
pub fn config(name: &str, limit: u32, window_ms: u64) -> RateLimitConfigBuilder {
    RateLimitConfig::builder()
        .redis_url(redis_url())
        .key_prefix(unique_prefix(name))
        .limit(NonZeroU32::new(limit).expect("limit >= 1"))
        .window(Duration::from_millis(window_ms))
        .command_timeout(Duration::from_secs(2))
        .connect_timeout(Duration::from_secs(2))
}

/// Sends this test binary's tracing (`RUST_LOG`, else torn_quota's debug events) to the
/// test's captured output, which libtest prints only when the test fails: a failure that
/// happens once in a loaded CI run then says what the client and the simulator did.
pub fn trace_on_failure() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("torn_quota=debug"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false)
        .with_test_writer()
        .try_init();
}

/// A plain connection for inspecting Redis; panics loudly when Redis does not answer.
pub async fn redis_conn() -> redis::aio::MultiplexedConnection {
    let url = redis_url();
    let client = redis::Client::open(url.as_str()).expect("valid REDIS_URL");
    match client.get_multiplexed_async_connection().await {
        Ok(c) => c,
        Err(e) => panic!(
            "Redis at {url} does not answer ({e}). These tests need a real Redis: start it \
             (see README, or run .ci/run) and run them again."
        ),
    }
}

/// Every key under `prefix`.
pub async fn keys_under(prefix: &str) -> Vec<String> {
    let mut conn = redis_conn().await;
    let mut found = Vec::new();
    let mut cursor: u64 = 0;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{prefix}:*"))
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut conn)
            .await
            .unwrap();
        found.extend(keys);
        if next == 0 {
            return found;
        }
        cursor = next;
    }
}

/// Polls every future together on this task, so that they reach the limiter in one burst.
pub async fn join_all<F: Future>(futures: impl Iterator<Item = F>) -> Vec<F::Output> {
    let mut pending: Vec<_> = futures.map(|f| Some(Box::pin(f))).collect();
    let mut results: Vec<Option<F::Output>> = pending.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        for (slot, result) in pending.iter_mut().zip(results.iter_mut()) {
            if let Some(f) = slot
                && let std::task::Poll::Ready(v) = f.as_mut().poll(cx)
            {
                *result = Some(v);
                *slot = None;
            }
        }
        if pending.iter().all(Option::is_none) {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await;
    results.into_iter().flatten().collect()
}
