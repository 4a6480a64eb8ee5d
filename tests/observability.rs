//! The observability the soak (`cargo xtask soak`, tested in xtask/tests/soak.rs) relies
//! on: the metrics. (The per-request span has its own binary, tests/request_span.rs.)
//!
//! The metrics test uses the shared Redis at `REDIS_URL` only to read its clock.

mod common;

use torn_quota::sim::{SimConfig, SimKey, Simulator};
use torn_quota::torn::{TornClient, TornClientConfig};
use torn_quota::{AccessLevel, ApiKey, Limiter, RateLimitConfig, TornUserId};

const KEY: &str = "SoakTestKey00001";

/// The exporter serves every metric this crate emits, by the team's names, and no key.
#[cfg(feature = "prometheus")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_prometheus_exporter_serves_the_metrics() {
    use std::num::{NonZeroU32, NonZeroUsize};
    use std::time::Duration;
    use torn_quota::OnRedisDown;
    use torn_quota::batch::{BatchConfig, BatchHandler, BatchRequest};

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    torn_quota::telemetry::install_prometheus(addr).unwrap();

    // A batch against the simulator: decisions, Torn answers (one of them code 17), batch
    // figures.
    let sim = Simulator::start(
        [SimKey::new(KEY, TornUserId::new(77), AccessLevel::Full)],
        SimConfig::default(),
    )
    .await
    .unwrap();
    sim.inject(torn_quota::sim::Fault::Code(17));
    let limiter = Limiter::in_memory(RateLimitConfig::builder().build().unwrap());
    let client = TornClient::new(
        limiter,
        TornClientConfig::builder()
            .base_url(sim.base_url())
            .retry_min_delay(Duration::from_millis(5))
            .build()
            .unwrap(),
    )
    .unwrap();
    let outcome = BatchHandler::new(
        client,
        BatchConfig::default().concurrency(NonZeroUsize::new(4).unwrap()),
    )
    .run(
        (1..=5).map(|id| BatchRequest::new(format!("user/{id}/basic"))),
        [ApiKey::new(KEY).unwrap()],
    )
    .await
    .unwrap();
    assert_eq!(outcome.stats.succeeded, 5);

    // The clock gap through the shared Redis.
    let redis = Limiter::redis(common::config("metrics", 10, 1000).build().unwrap()).unwrap();
    let gap = redis.clock_gap().await.unwrap();
    assert!(
        gap.abs() < 5.0,
        "redis and this machine disagree by {gap} s"
    );

    // A limiter whose Redis does not exist: degraded.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let down = Limiter::redis(
        RateLimitConfig::builder()
            .redis_url(format!("redis://127.0.0.1:{dead}"))
            .connect_timeout(Duration::from_millis(100))
            .command_timeout(Duration::from_millis(100))
            // A lone worker: it grants at once (with others it would first wait out the
            // window they may have spent).
            .on_redis_down(OnRedisDown::LocalFallback {
                workers: NonZeroU32::MIN,
            })
            .build()
            .unwrap(),
    )
    .unwrap();
    let d = down.try_acquire(TornUserId::new(1), 1).await.unwrap();
    assert!(d.is_degraded());
    assert!(torn_quota::telemetry::degraded_time().now);

    let body = reqwest::get(format!("http://{addr}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for expected in [
        r#"torn_quota_limiter_decisions_total{backend="memory",outcome="granted",degraded="false"}"#,
        r#"torn_quota_limiter_decisions_total{backend="redis",outcome="granted",degraded="true"}"#,
        r#"torn_quota_torn_answers_total{code="ok"}"#,
        r#"torn_quota_torn_answers_total{code="17"}"#,
        r#"torn_quota_batch_requests_total{outcome="ok"} 5"#,
        "torn_quota_batch_quota_used",
        "torn_quota_clock_gap_seconds",
        "torn_quota_degraded 1",
    ] {
        assert!(body.contains(expected), "{expected} missing:\n{body}");
    }
    assert!(!body.contains(KEY), "a key in the metrics:\n{body}");
}

/// Without the feature, the flag is refused with a clear message, not ignored.
#[cfg(not(feature = "prometheus"))]
#[test]
fn metrics_addr_without_the_feature_is_a_clear_error() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_torn-quota"))
        .args(["--metrics-addr", "127.0.0.1:0", "status", "--user", "4"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("prometheus"), "{stderr}");
}
