//! What the gateway costs a caller: the same calls, at the same concurrency, once straight to
//! the Torn API simulator and once through a `torn-quota serve` process (the built binary,
//! on the real Redis) in front of it. Prints the latency of each, the gateway's overhead per
//! call as a ratio, and the calls per second one gateway carries.
//!
//! The simulator's and the limiter's quotas are set far above what the run asks (10,000 per
//! minute per owner, over 8 owners), so quota is never the bottleneck and no call waits: what
//! is measured is the gateway's own work (owner lookup, the quota gate's Redis round trips,
//! settling, proxying). Every call carries a fresh `timestamp=`, so none is answered from the
//! gateway's cache.
//!
//! `cargo bench --bench gateway` (needs Redis at `REDIS_URL`, default 127.0.0.1:6379).
//! `GATEWAY_BENCH_CALLS` and `GATEWAY_BENCH_CONCURRENCY` change the size (default 2,000 per
//! phase at 16 at once).

#[path = "../tests/common/gateway_process.rs"]
mod gateway_process;

use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use gateway_process::GatewayProcess;
use torn_quota::AccessLevel;
use torn_quota::TornUserId;
use torn_quota::sim::{SimConfig, SimKey, Simulator};

const OWNERS: u64 = 8;
const LIMIT: u32 = 10_000;
const WARM_UP_CALLS: usize = 200;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).map_or(default, |v| {
        v.parse()
            .unwrap_or_else(|_| panic!("{name} must be a whole number"))
    })
}

fn key_of(owner: u64) -> String {
    format!("GatewayBench{owner:04}")
}

/// Latencies of one phase and its wall time.
struct Phase {
    latencies: Vec<Duration>,
    elapsed: Duration,
}

impl Phase {
    fn mean(&self) -> Duration {
        self.latencies.iter().sum::<Duration>() / self.latencies.len() as u32
    }

    fn percentile(&self, p: f64) -> Duration {
        let mut sorted = self.latencies.clone();
        sorted.sort_unstable();
        sorted[((sorted.len() - 1) as f64 * p).round() as usize]
    }

    fn per_sec(&self) -> f64 {
        self.latencies.len() as f64 / self.elapsed.as_secs_f64()
    }

    fn print(&self, name: &str) {
        println!(
            "{name:>8}: {} calls in {:.2} s = {:.0} calls/s; latency mean {:.0} µs, p50 {:.0} µs, \
             p99 {:.0} µs",
            self.latencies.len(),
            self.elapsed.as_secs_f64(),
            self.per_sec(),
            self.mean().as_secs_f64() * 1e6,
            self.percentile(0.50).as_secs_f64() * 1e6,
            self.percentile(0.99).as_secs_f64() * 1e6,
        );
    }
}

/// `calls` GETs of `/v2/user/basic` against `base`, `concurrency` at a time, the keys of all
/// owners in turn; every answer must carry data.
async fn run(base: &str, calls: usize, concurrency: usize) -> Phase {
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(concurrency)
        .build()
        .unwrap();
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..concurrency {
        let (http, next, base) = (http.clone(), Arc::clone(&next), base.to_owned());
        tasks.spawn(async move {
            let mut latencies = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= calls {
                    return latencies;
                }
                let key = key_of(i as u64 % OWNERS + 1);
                let t = Instant::now();
                let body: serde_json::Value = http
                    .get(format!("{base}/v2/user/basic?timestamp={i}"))
                    .header("Authorization", format!("ApiKey {key}"))
                    .send()
                    .await
                    .expect("call answered")
                    .json()
                    .await
                    .expect("JSON answer");
                latencies.push(t.elapsed());
                assert!(body.get("error").is_none(), "call {i} failed: {body}");
            }
        });
    }
    let mut latencies = Vec::with_capacity(calls);
    while let Some(part) = tasks.join_next().await {
        latencies.extend(part.unwrap());
    }
    Phase {
        latencies,
        elapsed: started.elapsed(),
    }
}

fn main() {
    // `cargo test --benches` runs each bench once with no `--bench`: nothing to measure then.
    if !std::env::args().any(|a| a == "--bench") {
        println!("gateway bench: run it with `cargo bench --bench gateway`");
        return;
    }
    let calls = env_usize("GATEWAY_BENCH_CALLS", 2_000);
    let concurrency = env_usize("GATEWAY_BENCH_CONCURRENCY", 16);
    let redis_url =
        std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let limit = NonZeroU32::new(LIMIT).unwrap();
        let sim_config = SimConfig::builder()
            .limit(limit)
            .ip_limit(NonZeroU32::new(1_000_000).unwrap())
            .build()
            .unwrap();
        let keys =
            (1..=OWNERS).map(|o| SimKey::new(key_of(o), TornUserId::new(o), AccessLevel::Full));
        let sim = Simulator::start(keys, sim_config).await.unwrap();
        let prefix = format!("tqbench-gateway-{}", std::process::id());
        let gateway = GatewayProcess::start(
            env!("CARGO_BIN_EXE_torn-quota").as_ref(),
            &[
                ("REDIS_URL", redis_url),
                ("TORN_QUOTA_KEY_PREFIX", prefix),
                ("TORN_API_BASE_URL", sim.base_url()),
                ("TORN_QUOTA_MODE", "per-user".to_owned()),
                ("TORN_QUOTA_LIMIT", LIMIT.to_string()),
                ("TORN_QUOTA_IP_LIMIT", LIMIT.to_string()),
                ("RUST_LOG", "warn".to_owned()),
            ],
        )
        .await;
        println!(
            "gateway bench: {calls} calls per phase, {concurrency} at once, over {OWNERS} owners"
        );
        // Connections, owner lookups and script loads happen here, outside the figures.
        run(&sim.base_url(), WARM_UP_CALLS, concurrency).await;
        run(gateway.base_url(), WARM_UP_CALLS, concurrency).await;
        let direct = run(&sim.base_url(), calls, concurrency).await;
        let through = run(gateway.base_url(), calls, concurrency).await;
        direct.print("direct");
        through.print("gateway");
        let overhead = through.mean().saturating_sub(direct.mean());
        println!(
            "gateway overhead: {:.0} µs per call, latency ratio {:.2}x (gateway / direct), \
             throughput ratio {:.2}x",
            overhead.as_secs_f64() * 1e6,
            through.mean().as_secs_f64() / direct.mean().as_secs_f64(),
            through.per_sec() / direct.per_sec(),
        );
        println!(
            "{}",
            serde_json::json!({
                "calls": calls,
                "concurrency": concurrency,
                "direct_calls_per_sec": direct.per_sec().round(),
                "gateway_calls_per_sec": through.per_sec().round(),
                "direct_mean_us": (direct.mean().as_secs_f64() * 1e6).round(),
                "gateway_mean_us": (through.mean().as_secs_f64() * 1e6).round(),
                "latency_ratio": through.mean().as_secs_f64() / direct.mean().as_secs_f64(),
            })
        );
        assert_eq!(sim.counters().errors(5), 0, "quota was a bottleneck");
        drop(gateway);
        sim.shutdown().await;
    });
}
