//! The rollout's metrics: decisions, disagreements and shadow errors, counted through
//! metrics-util's debugging recorder.
//!
//! Every test has a database of its own (dropped at the end) and a Redis key prefix of its
//! own, so tests run in parallel. PostgreSQL: `TORN_QUOTA_TEST_DATABASE_URL`, default
//! `postgres://postgres@127.0.0.1:5432/test` (a role that may create databases).

// Everything here runs the legacy limiter.
#![cfg(feature = "legacy")]

mod common;

use std::time::Duration;

use common::pg::TestDb;
use common::rollout::{key_hash, legacy, per_user, router};
use torn_quota::rollout::RolloutLimiter;
use torn_quota::{Limiter, Mode, RateLimitConfig, Request, TornUserId};

// ---------------------------------------------------------------------------------------
// Metrics
// ---------------------------------------------------------------------------------------

#[test]
fn metrics_count_decisions_disagreements_and_shadow_errors() {
    let (local, recorder) = common::metrics::Recorded::new();
    // A recorder local to this thread, and a runtime on this thread: other tests' metrics
    // never land here.
    metrics::with_local_recorder(&local, || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let db = TestDb::migrated("rollout").await;
            let user = TornUserId::new(3_000_004);
            let key = key_hash("metrics");
            let shadow = router(&db, "metrics", Mode::Shadow);
            for _ in 0..60 {
                shadow
                    .try_acquire(user, Some(&key), &Request::new(1))
                    .await
                    .unwrap();
            }
            assert!(
                shadow
                    .try_acquire(user, None, &Request::new(1))
                    .await
                    .is_err()
            );

            let per_user = RolloutLimiter::builder(per_user("metrics-pu", Mode::PerUser))
                .build()
                .unwrap();
            for _ in 0..3 {
                per_user
                    .try_acquire(user, None, &Request::new(1))
                    .await
                    .unwrap();
            }

            let down = RateLimitConfig::builder()
                .redis_url("redis://127.0.0.1:1")
                .key_prefix(common::unique_prefix("metrics-down"))
                .mode(Mode::Shadow)
                .reconnect_interval(Duration::from_secs(60))
                .build()
                .unwrap();
            let broken = RolloutLimiter::builder(Limiter::redis(down).unwrap())
                .legacy(legacy(&db))
                .build()
                .unwrap();
            let other = key_hash("metrics-down");
            for _ in 0..3 {
                let d = broken
                    .try_acquire(user, Some(&other), &Request::new(1))
                    .await
                    .unwrap();
                assert!(d.is_granted());
            }
        });
    });
    let decisions = "torn_quota_decisions_total";
    for (labels, n) in [
        ("enforced_by=legacy,mode=shadow,outcome=granted", 50 + 3),
        ("enforced_by=legacy,mode=shadow,outcome=refused", 10),
        ("enforced_by=legacy,mode=shadow,outcome=error", 1),
        ("enforced_by=per-user,mode=per-user,outcome=granted", 3),
    ] {
        assert_eq!(
            recorder.counter(&format!("{decisions}{{{labels}}}")),
            n,
            "{labels}"
        );
    }
    assert_eq!(
        recorder.counter("torn_quota_shadow_disagreements_total{direction=per_user_only}"),
        10
    );
    assert_eq!(
        recorder.counter("torn_quota_shadow_disagreements_total{direction=legacy_only}"),
        0
    );
    assert_eq!(
        recorder.counter("torn_quota_shadow_decisions_total{outcome=granted}"),
        60
    );
    assert_eq!(
        recorder.counter("torn_quota_shadow_decisions_total{outcome=unavailable}"),
        3
    );
    // The first failure opens the guard; the next calls skip the shadow without an error.
    assert_eq!(
        recorder.counter("torn_quota_shadow_errors_total{stage=decide}"),
        1
    );
}
