//! The batch handler's two figures, against the simulator and real Redis:
//!
//! 1. **Quota use in steady state**: owners × limit per window is what Torn allows; the
//!    batch's rate between its first and last send, over that, should be ≥ 99 % with 0
//!    code-5 answers. The safety margin is the only loss it may take (window / (window +
//!    margin)), so the figure is printed beside that bound.
//! 2. **Scheduler overhead per request**: a batch with quota to spare (nothing waits for a
//!    window) against the same requests sent straight through the client at the same
//!    concurrency, in the same run.
//!
//! `cargo bench --bench batch` (needs Redis at `REDIS_URL`, default 127.0.0.1:6379).
//! Environment: `BATCH_OWNERS` (5), `BATCH_LIMIT` (50), `BATCH_WINDOW_MS` (2000),
//! `BATCH_MARGIN_MS` (10), `BATCH_WINDOWS` (6).

use std::num::{NonZeroU32, NonZeroUsize};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::sync::Semaphore;
use torn_quota::batch::{BatchConfig, BatchHandler, BatchRequest};
use torn_quota::sim::{SimConfig, SimHandle, SimKey, Simulator};
use torn_quota::torn::{TornClient, TornClientConfig};
use torn_quota::{AccessLevel, ApiKey, Limiter, RateLimitConfig, TornUserId};

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn key(owner: u64, n: u64) -> String {
    format!("Bench{owner:06}K{n:04}")
}

struct Setup {
    sim: SimHandle,
    client: TornClient,
    keys: Vec<ApiKey>,
}

async fn setup(owners: u64, limit: u32, window: Duration, margin: Duration) -> Setup {
    let sim_keys: Vec<SimKey> = (1..=owners)
        .flat_map(|o| {
            (1..=2).map(move |n| SimKey::new(key(o, n), TornUserId::new(o), AccessLevel::Full))
        })
        .collect();
    let keys = sim_keys
        .iter()
        .map(|k| ApiKey::new(&k.key).unwrap())
        .collect();
    let limit = NonZeroU32::new(limit).unwrap();
    let sim = Simulator::start(
        sim_keys,
        SimConfig::builder()
            .limit(limit)
            .window(window)
            .ip_limit(NonZeroU32::new(1_000_000).unwrap())
            .build()
            .unwrap(),
    )
    .await
    .unwrap();
    let prefix = format!("tq-bench-batch-{}-{}", std::process::id(), rand_suffix());
    let config = RateLimitConfig::builder()
        .redis_url(std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into()))
        .limit(limit)
        .window(window)
        .key_prefix(prefix)
        .build()
        .unwrap();
    let limiter = Limiter::redis(config).unwrap();
    limiter
        .ping()
        .await
        .expect("the batch bench needs Redis at REDIS_URL");
    let client = TornClient::new(
        limiter,
        TornClientConfig::builder()
            .base_url(sim.base_url())
            .safety_margin(margin)
            .ip_limit(NonZeroU32::new(1_000_000).unwrap())
            .build()
            .unwrap(),
    )
    .unwrap();
    Setup { sim, client, keys }
}

fn rand_suffix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64 % 1_000_000)
}

fn requests(n: u64, offset: u64) -> Vec<BatchRequest> {
    (0..n)
        .map(|i| BatchRequest::new(format!("user/{}/basic", offset + i)))
        .collect()
}

/// Figure 1: steady-state quota use.
async fn quota_use() -> serde_json::Value {
    let owners = env_u64("BATCH_OWNERS", 5);
    let limit = env_u64("BATCH_LIMIT", 50) as u32;
    let window = Duration::from_millis(env_u64("BATCH_WINDOW_MS", 2_000));
    let margin = Duration::from_millis(env_u64("BATCH_MARGIN_MS", 10));
    let windows = env_u64("BATCH_WINDOWS", 6);
    let s = setup(owners, limit, window, margin).await;
    // Resolve owners first, so the run measures the batch alone.
    for k in &s.keys {
        s.client.owner_of(k).await.unwrap();
    }
    tokio::time::sleep(window + margin).await;
    s.sim.reset_counters();
    let n = owners * u64::from(limit) * windows;
    eprintln!(
        "quota use: {n} requests, {owners} owners x {limit} per {} ms, margin {} ms",
        window.as_millis(),
        margin.as_millis()
    );
    let handler = BatchHandler::new(
        s.client.clone(),
        BatchConfig::default().concurrency(NonZeroUsize::new(256).unwrap()),
    );
    let outcome = handler
        .run(requests(n, 1_000_000), s.keys.clone())
        .await
        .unwrap();
    let st = &outcome.stats;
    assert_eq!(st.failed, 0, "every request is servable");
    // The first window's units go out at once; every later window's within the span.
    let first_burst = owners * u64::from(limit);
    let allowed_in_span =
        (owners * u64::from(limit)) as f64 * st.send_span.as_secs_f64() / window.as_secs_f64();
    let steady = (st.sent - first_burst) as f64 / allowed_in_span;
    let bound = window.as_secs_f64() / (window + margin).as_secs_f64();
    let c = s.sim.counters();
    eprintln!(
        "  steady-state quota use {:.2} % (the margin allows at most {:.2} %); {} code-5 \
         answers; busiest window {} of {limit}",
        steady * 100.0,
        bound * 100.0,
        c.errors(5),
        c.max_in_window
    );
    s.sim.shutdown().await;
    json!({
        "steady_quota_use": steady,
        "steady_over_margin_bound": steady / bound,
        "margin_bound_quota_use": bound,
        "code5_answers": c.errors(5),
        "max_in_window": c.max_in_window,
        "limit": limit,
        "sent": st.sent,
        "send_span_ms": st.send_span.as_millis() as u64,
    })
}

/// Figure 2: what the scheduler costs per request over sending straight through the client.
async fn overhead() -> serde_json::Value {
    let n = env_u64("BATCH_OVERHEAD_REQUESTS", 4_000);
    let concurrency = 32;
    // Quota to spare: nothing waits for a window in either run.
    let s = setup(4, 1_000_000, Duration::from_secs(60), Duration::ZERO).await;
    for k in &s.keys {
        s.client.owner_of(k).await.unwrap();
    }
    // Warm both paths.
    let handler = BatchHandler::new(
        s.client.clone(),
        BatchConfig::default().concurrency(NonZeroUsize::new(concurrency).unwrap()),
    );
    handler.run(requests(500, 0), s.keys.clone()).await.unwrap();
    direct(&s, 500, concurrency).await;

    let mut direct_best = Duration::MAX;
    let mut batch_best = Duration::MAX;
    for round in 0..3 {
        let t = Instant::now();
        direct(&s, n, concurrency).await;
        direct_best = direct_best.min(t.elapsed());
        let t = Instant::now();
        let o = handler
            .run(requests(n, 10_000_000 * (round + 1)), s.keys.clone())
            .await
            .unwrap();
        assert_eq!(o.stats.failed, 0);
        batch_best = batch_best.min(t.elapsed());
    }
    let per = |d: Duration| d.as_secs_f64() * 1e6 / n as f64;
    let overhead_us = per(batch_best) - per(direct_best);
    eprintln!(
        "overhead: {n} requests at {concurrency} in flight: direct {:.1} us/request, batch {:.1} \
         us/request: scheduler {overhead_us:.1} us/request (ratio {:.2})",
        per(direct_best),
        per(batch_best),
        batch_best.as_secs_f64() / direct_best.as_secs_f64()
    );
    s.sim.shutdown().await;
    json!({
        "direct_us_per_request": per(direct_best),
        "batch_us_per_request": per(batch_best),
        "scheduler_overhead_us_per_request": overhead_us,
        "batch_to_direct_ratio": batch_best.as_secs_f64() / direct_best.as_secs_f64(),
    })
}

/// The same requests through `TornClient::get`, `concurrency` at a time, keys in turn.
async fn direct(s: &Setup, n: u64, concurrency: usize) {
    let gate = Arc::new(Semaphore::new(concurrency));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..n {
        let permit = Arc::clone(&gate).acquire_owned().await.unwrap();
        let client = s.client.clone();
        let key = s.keys[i as usize % s.keys.len()].clone();
        tasks.spawn(async move {
            client
                .get(&key, &format!("user/{}/basic", 20_000_000 + i))
                .await
                .unwrap();
            drop(permit);
        });
    }
    while let Some(t) = tasks.join_next().await {
        t.unwrap();
    }
}

fn main() {
    // `cargo bench` passes --bench; a plain run of the binary works too.
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let q = quota_use().await;
        let o = overhead().await;
        println!("{}", json!({ "quota": q, "overhead": o }));
    });
}
