//! The rollout's modes against a real PostgreSQL and a real Redis: the 3-keys-150-calls
//! scenario in each mode, shadow never changing what legacy enforces, a hanging shadow, and
//! the stable per-user share of `percent`.
//!
//! Every test has a database of its own (dropped at the end) and a Redis key prefix of its
//! own, so tests run in parallel. PostgreSQL: `TORN_QUOTA_TEST_DATABASE_URL`, default
//! `postgres://postgres@127.0.0.1:5432/test` (a role that may create databases).

// Everything here runs the legacy limiter.
#![cfg(feature = "legacy")]

mod common;

use std::num::NonZeroU32;
use std::time::{Duration, Instant};

use common::pg::TestDb;
use common::rollout::{granted, key_hash, legacy, per_user, round_robin, router, rows_of};
use torn_quota::rollout::{
    EnforcedBy, RolloutDecision, RolloutLimiter, Route, Shadow, in_rollout, rollout_bucket,
};
use torn_quota::{Error, Limiter, Mode, RateLimitConfig, Request, TornUserId};

// ---------------------------------------------------------------------------------------
// Modes
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn one_user_with_three_keys_and_150_calls_in_each_mode() {
    let db = TestDb::migrated("rollout").await;
    let user = TornUserId::new(3_000_001);
    let keys = |mode: &str| {
        (0..3)
            .map(|i| key_hash(&format!("{mode}-{i}")))
            .collect::<Vec<_>>()
    };

    let legacy_keys = keys("legacy");
    let r = router(&db, "three-legacy", Mode::Legacy);
    let decisions = round_robin(&r, user, &legacy_keys, 150).await;
    assert_eq!(granted(&decisions), 150, "legacy counts each key alone");
    assert!(
        decisions
            .iter()
            .all(|d| d.enforced_by() == EnforcedBy::Legacy)
    );
    assert!(decisions.iter().all(|d| d.shadow().is_none()));
    for k in &legacy_keys {
        assert_eq!(rows_of(&db.pool, k).await, 50);
    }

    let r = RolloutLimiter::builder(per_user("three-per-user", Mode::PerUser))
        .build()
        .expect("per-user at 100 % needs no database");
    let decisions = round_robin(&r, user, &keys("per-user"), 150).await;
    assert_eq!(
        granted(&decisions),
        100,
        "one bucket per player, across keys"
    );
    assert!(
        decisions
            .iter()
            .all(|d| d.enforced_by() == EnforcedBy::PerUser)
    );
    assert!(decisions[..100].iter().all(RolloutDecision::is_granted));

    let shadow_keys = keys("shadow");
    let r = router(&db, "three-shadow", Mode::Shadow);
    let decisions = round_robin(&r, user, &shadow_keys, 150).await;
    assert_eq!(granted(&decisions), 150, "legacy enforces");
    let shadows: Vec<Shadow> = decisions.iter().map(|d| d.shadow().unwrap()).collect();
    let shadow_granted = shadows
        .iter()
        .filter(|s| matches!(s, Shadow::Decided { granted: true, .. }))
        .count();
    let disagreements = shadows
        .iter()
        .filter(|s| matches!(s, Shadow::Decided { agree: false, .. }))
        .count();
    assert_eq!(shadow_granted, 100);
    assert_eq!(disagreements, 50);
    let report = r.disagreements().report(5).await.unwrap();
    assert_eq!(report.legacy_only, 50);
    assert_eq!(report.per_user_only, 0);
    assert_eq!(report.users.len(), 1);
    assert_eq!(report.users[0].user, user);
    assert_eq!(report.users[0].legacy_only, 50);
    assert!(report.since_ms.is_some());

    // The shadow decided on keys of its own: the real per-user bucket is untouched.
    let real = r.per_user().status(user).await.unwrap();
    assert_eq!(real.used, 0);
    assert_eq!(
        r.shadow_limiter().unwrap().status(user).await.unwrap().used,
        100
    );
    assert!(
        common::keys_under(&format!("{}:shadow", r.per_user().config().key_prefix()))
            .await
            .iter()
            .any(|k| k.contains(&format!("{{u{}}}", user.get()))),
    );
}

/// Decisions as legacy enforces them: granted and remaining, per call.
fn enforced(decisions: &[RolloutDecision]) -> Vec<(bool, u32)> {
    decisions
        .iter()
        .map(|d| (d.is_granted(), d.remaining()))
        .collect()
}

/// 60 calls on key A and 20 on key B, interleaved: legacy grants 50 + 20 and refuses 10.
async fn legacy_pattern(
    r: &RolloutLimiter,
    user: TornUserId,
    a: &str,
    b: &str,
) -> Vec<RolloutDecision> {
    let mut out = Vec::new();
    for i in 0..60 {
        out.push(
            r.try_acquire(user, Some(a), &Request::new(1))
                .await
                .unwrap(),
        );
        if i % 3 == 0 {
            out.push(
                r.try_acquire(user, Some(b), &Request::new(1))
                    .await
                    .unwrap(),
            );
        }
    }
    out
}

#[tokio::test]
async fn shadow_never_changes_what_legacy_enforces() {
    let db = TestDb::migrated("rollout").await;
    let user = TornUserId::new(3_000_002);
    let keys = || (key_hash("a"), key_hash("b"));

    let (a, b) = keys();
    let alone = router(&db, "alone", Mode::Legacy);
    let baseline = enforced(&legacy_pattern(&alone, user, &a, &b).await);
    assert_eq!(baseline.iter().filter(|d| d.0).count(), 70);

    // A shadow that grants more: the 10 calls legacy refuses on A, it grants.
    let (a, b) = keys();
    let generous = router(&db, "generous", Mode::Shadow);
    let decisions = legacy_pattern(&generous, user, &a, &b).await;
    assert_eq!(enforced(&decisions), baseline);
    let report = generous.disagreements().report(10).await.unwrap();
    assert_eq!((report.legacy_only, report.per_user_only), (0, 10));

    // A shadow that grants far less (5 per window): legacy still grants all it did.
    let (a, b) = keys();
    let per_user = per_user("stingy", Mode::Shadow);
    let stingy = RolloutLimiter::builder(per_user.clone())
        .shadow_limiter(
            per_user
                .sibling(
                    "shadow",
                    NonZeroU32::new(5).unwrap(),
                    Duration::from_secs(60),
                )
                .unwrap(),
        )
        .legacy(legacy(&db))
        .build()
        .unwrap();
    let decisions = legacy_pattern(&stingy, user, &a, &b).await;
    assert_eq!(enforced(&decisions), baseline);
    let report = stingy.disagreements().report(10).await.unwrap();
    assert_eq!((report.legacy_only, report.per_user_only), (65, 0));

    // A shadow whose Redis is gone: every call still answers, as legacy says.
    let (a, b) = keys();
    let down = RateLimitConfig::builder()
        .redis_url("redis://127.0.0.1:1")
        .key_prefix(common::unique_prefix("down"))
        .mode(Mode::Shadow)
        .connect_timeout(Duration::from_millis(200))
        .build()
        .unwrap();
    let broken = RolloutLimiter::builder(Limiter::redis(down).unwrap())
        .legacy(legacy(&db))
        .build()
        .unwrap();
    let started = Instant::now();
    let decisions = legacy_pattern(&broken, user, &a, &b).await;
    assert_eq!(enforced(&decisions), baseline);
    assert!(
        decisions
            .iter()
            .all(|d| d.shadow() == Some(Shadow::Unavailable))
    );
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "a dead shadow must not slow every call: {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_shadow_that_hangs_costs_one_timeout_then_steps_aside() {
    let db = TestDb::migrated("rollout").await;
    // A listener that accepts and never answers: Redis hung, not down.
    let hung = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = hung.local_addr().unwrap().port();
    let config = RateLimitConfig::builder()
        .redis_url(format!("redis://127.0.0.1:{port}"))
        .key_prefix(common::unique_prefix("hung"))
        .mode(Mode::Shadow)
        .connect_timeout(Duration::from_millis(300))
        .command_timeout(Duration::from_millis(300))
        .reconnect_interval(Duration::from_secs(30))
        .build()
        .unwrap();
    let r = RolloutLimiter::builder(Limiter::redis(config).unwrap())
        .legacy(legacy(&db))
        .shadow_timeout(Duration::from_millis(200))
        .build()
        .unwrap();
    let key = key_hash("hung");
    let started = Instant::now();
    for _ in 0..20 {
        let d = r
            .try_acquire(TornUserId::new(3_000_003), Some(&key), &Request::new(1))
            .await
            .unwrap();
        assert!(d.is_granted());
        assert_eq!(d.shadow(), Some(Shadow::Unavailable));
    }
    // One 200 ms timeout, then the shadow is skipped: 20 timeouts would be 4 s.
    assert!(
        started.elapsed() < Duration::from_millis(2500),
        "{:?}",
        started.elapsed()
    );
    drop(hung);
}

#[tokio::test]
async fn percent_routes_a_stable_share_to_per_user_and_the_rest_to_legacy() {
    let db = TestDb::migrated("rollout").await;
    let config = common::config("percent", 100, 60_000)
        .mode(Mode::PerUser)
        .rollout_percent(30)
        .build()
        .unwrap();
    let bare = RolloutLimiter::builder(Limiter::redis(config.clone()).unwrap()).build();
    assert!(
        matches!(
            bare,
            Err(Error::Config {
                setting: "DATABASE_URL",
                ..
            })
        ),
        "{bare:?}"
    );
    let r = RolloutLimiter::builder(Limiter::redis(config).unwrap())
        .legacy(legacy(&db))
        .build()
        .unwrap();
    assert_eq!(r.percent(), 30);
    let (mut on_new, mut on_old) = (0, 0);
    for id in 4_000_000..4_000_200 {
        let user = TornUserId::new(id);
        let key = key_hash("p");
        let d = r
            .try_acquire(user, Some(&key), &Request::new(1))
            .await
            .unwrap();
        let expected = if rollout_bucket(user) < 30 {
            on_new += 1;
            EnforcedBy::PerUser
        } else {
            on_old += 1;
            EnforcedBy::Legacy
        };
        assert_eq!(d.enforced_by(), expected, "user {id}");
        assert_eq!(r.route(user).enforced_by(), expected);
        assert!(d.shadow().is_none(), "per-user mode runs no shadow");
        assert_eq!(
            rows_of(&db.pool, &key).await,
            i64::from(expected == EnforcedBy::Legacy)
        );
        // A user on the new path needs no key hash; one on legacy does.
        let without_key = r.try_acquire(user, None, &Request::new(1)).await;
        match expected {
            EnforcedBy::PerUser => assert!(without_key.is_ok()),
            EnforcedBy::Legacy => assert!(matches!(
                without_key,
                Err(Error::InvalidArgument {
                    name: "key_hash",
                    ..
                })
            )),
        }
    }
    assert!(on_new > 30 && on_old > 100, "{on_new} / {on_old}");
}

#[test]
fn the_rollout_share_is_stable_per_user_and_close_to_the_percentage() {
    // Pinned: a change of the hash would move users between limiters mid-rollout.
    for (id, bucket) in [
        (1, 16),
        (4, 85),
        (1234, 92),
        (2_000_000, 93),
        (3_999_999, 16),
    ] {
        assert_eq!(rollout_bucket(TornUserId::new(id)), bucket, "user {id}");
    }
    let users: Vec<TornUserId> = (1..=10_000).map(|i| TornUserId::new(i * 7919)).collect();
    for percent in [1u8, 10, 25, 50, 90] {
        let share = users.iter().filter(|u| in_rollout(**u, percent)).count() as f64 / 100.0;
        assert!(
            (share - f64::from(percent)).abs() <= 1.5,
            "{percent} % asked, {share} % moved"
        );
        for u in &users {
            // Raising the percentage only ever adds users.
            assert!(!in_rollout(*u, percent) || in_rollout(*u, percent + 1));
        }
    }
    for u in &users[..100] {
        assert_eq!(Route::of(*u, Mode::Legacy, Some(100)), Route::Legacy);
        assert_eq!(Route::of(*u, Mode::PerUser, None), Route::PerUser);
        assert_eq!(Route::of(*u, Mode::Shadow, None), Route::LegacyWithShadow);
        assert_eq!(
            Route::of(*u, Mode::Shadow, Some(40)),
            if rollout_bucket(*u) < 40 {
                Route::PerUser
            } else {
                Route::LegacyWithShadow
            }
        );
    }
}
