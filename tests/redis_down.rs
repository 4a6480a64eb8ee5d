//! Redis stopped or frozen mid-test: the configured failure policy answers, within the
//! timeout. Each test runs its own `redis-server` on a free loopback port, so stopping it
//! disturbs no other test.

mod common;

use common::redis_server::PrivateRedis;

use std::num::{NonZeroU32, NonZeroUsize};
use std::time::{Duration, Instant};

use torn_quota::{Error, Limiter, OnRedisDown, RateLimitConfig, TornUserId};

fn config(url: &str, policy: OnRedisDown) -> RateLimitConfig {
    RateLimitConfig::builder()
        .redis_url(url)
        .key_prefix(common::unique_prefix("down"))
        .limit(NonZeroU32::new(20).unwrap())
        .window(Duration::from_secs(5))
        .connect_timeout(Duration::from_millis(200))
        .command_timeout(Duration::from_millis(200))
        .reconnect_interval(Duration::from_millis(100))
        .connections(NonZeroUsize::MIN)
        .on_redis_down(policy)
        .build()
        .unwrap()
}

const USER: TornUserId = TornUserId::new(5);
/// connect + command timeout, plus generous slack for a loaded machine.
const BOUND: Duration = Duration::from_millis(1_500);

#[tokio::test]
async fn fail_fast_when_redis_is_killed() {
    let mut redis = PrivateRedis::start();
    let limiter = Limiter::redis(config(&redis.url(), OnRedisDown::FailFast)).unwrap();
    assert!(limiter.try_acquire(USER, 1).await.unwrap().is_granted());
    redis.kill();
    for _ in 0..3 {
        let started = Instant::now();
        let err = limiter.try_acquire(USER, 1).await.unwrap_err();
        assert!(err.is_unavailable(), "{err:?}");
        assert!(started.elapsed() < BOUND, "took {:?}", started.elapsed());
    }
}

#[tokio::test]
async fn no_call_hangs_on_a_frozen_redis() {
    let redis = PrivateRedis::start();
    let limiter = Limiter::redis(config(&redis.url(), OnRedisDown::FailFast)).unwrap();
    assert!(limiter.try_acquire(USER, 1).await.unwrap().is_granted());
    redis.signal("-STOP"); // accepts nothing, answers nothing: a black hole
    let started = Instant::now();
    let err = limiter.try_acquire(USER, 1).await.unwrap_err();
    assert!(
        matches!(err, Error::Timeout { .. } | Error::Unavailable { .. }),
        "{err:?}"
    );
    assert!(started.elapsed() < BOUND, "took {:?}", started.elapsed());
    redis.signal("-CONT");
}

/// 20 per 800 ms shared by 4 workers: a short window, since the hand-over waits one out.
fn four_workers(url: &str) -> Limiter {
    Limiter::redis(
        RateLimitConfig::builder()
            .redis_url(url)
            .key_prefix(common::unique_prefix("down"))
            .limit(NonZeroU32::new(20).unwrap())
            .window(HANDOVER_WINDOW)
            .connect_timeout(Duration::from_millis(200))
            .command_timeout(Duration::from_millis(200))
            .reconnect_interval(Duration::from_millis(100))
            .connections(NonZeroUsize::MIN)
            .on_redis_down(OnRedisDown::LocalFallback {
                workers: NonZeroU32::new(4).unwrap(),
            })
            .build()
            .unwrap(),
    )
    .unwrap()
}

const HANDOVER_WINDOW: Duration = Duration::from_millis(800);

#[tokio::test]
async fn local_fallback_is_conservative_and_recovers() {
    let mut redis = PrivateRedis::start();
    let port = redis.port;
    let limiter = four_workers(&redis.url());
    // The owner's window is full on Redis when it is lost.
    for _ in 0..20 {
        let d = limiter.try_acquire(USER, 1).await.unwrap();
        assert!(d.is_granted() && !d.is_degraded());
    }
    assert_eq!(limiter.degraded_for(), None);

    redis.kill();
    // Torn still counts those 20 for a window, whichever workers took them: nothing until
    // the window has passed, and each wait is short enough that Redis is tried again
    // meanwhile.
    let lost = Instant::now();
    let d = limiter.try_acquire(USER, 1).await.unwrap();
    assert!(!d.is_granted() && d.is_degraded(), "{d:?}");
    assert!(d.retry_after() <= Duration::from_millis(100), "{d:?}");
    assert!(lost.elapsed() < BOUND, "took {:?}", lost.elapsed());
    assert!(limiter.degraded_for().is_some());
    assert!(limiter.status(USER).await.unwrap().degraded);
    let first_grant = loop {
        let d = limiter.try_acquire(USER, 1).await.unwrap();
        assert!(d.is_degraded(), "{d:?}");
        if d.is_granted() {
            break lost.elapsed();
        }
        assert!(
            lost.elapsed() < HANDOVER_WINDOW * 4,
            "never granted locally"
        );
        tokio::time::sleep(d.retry_after()).await;
    };
    assert!(
        first_grant >= HANDOVER_WINDOW,
        "granted {first_grant:?} after the loss"
    );
    // Then 20 per window shared by 4 workers: each may grant 5 alone.
    for i in 1..5 {
        let d = limiter.try_acquire(USER, 1).await.unwrap();
        assert!(d.is_granted() && d.is_degraded(), "call {i}: {d:?}");
    }
    let d = limiter.try_acquire(USER, 1).await.unwrap();
    assert!(!d.is_granted() && d.is_degraded(), "{d:?}");

    // Redis comes back (empty, as after a restart): shared decisions resume.
    let _redis = PrivateRedis::start_on(port);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let d = limiter.try_acquire(USER, 1).await.unwrap();
        if !d.is_degraded() {
            break;
        }
        assert!(Instant::now() < deadline, "never left the degraded state");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(limiter.degraded_for(), None);
}

/// A bucket Redis said had room just before it was lost: during the hand-over each worker
/// grants its share of that room, no more, even when its own share of the limit would
/// allow more.
#[tokio::test]
async fn the_hand_over_grants_a_share_of_the_room_last_seen() {
    let mut redis = PrivateRedis::start();
    let limiter = four_workers(&redis.url());
    // Another worker of the same owner (same Redis, same key space) took 12 of the 20.
    let other = Limiter::redis(limiter.config().clone()).unwrap();
    for _ in 0..12 {
        assert!(other.try_acquire(USER, 1).await.unwrap().is_granted());
    }
    let d = limiter.try_acquire(USER, 1).await.unwrap();
    assert_eq!(d.remaining(), 7, "{d:?}");
    redis.kill();
    let lost = Instant::now();
    // 7 left when Redis last answered: this worker's share of them is 1 (of 4 workers),
    // though its share of the limit (5) holds only its own 1 so far.
    let d = limiter.try_acquire(USER, 1).await.unwrap();
    assert!(d.is_granted() && d.is_degraded(), "{d:?}");
    let d = limiter.try_acquire(USER, 1).await.unwrap();
    assert!(!d.is_granted() && d.is_degraded(), "{d:?}");
    assert!(d.retry_after() <= Duration::from_millis(100), "{d:?}");
    assert!(
        lost.elapsed() < HANDOVER_WINDOW,
        "the machine was too slow to see the hand-over: {:?}",
        lost.elapsed()
    );
}

/// A lone worker knows every grant of the last window (its journal): when Redis is lost
/// it goes on from there, not from an empty window and not after a wait.
#[tokio::test]
async fn a_lone_worker_goes_on_from_its_journal() {
    let mut redis = PrivateRedis::start();
    let policy = OnRedisDown::LocalFallback {
        workers: NonZeroU32::MIN,
    };
    let limiter = Limiter::redis(config(&redis.url(), policy)).unwrap();
    for _ in 0..15 {
        let d = limiter.try_acquire(USER, 1).await.unwrap();
        assert!(d.is_granted() && !d.is_degraded(), "{d:?}");
    }
    redis.kill();
    // 15 of 20 were granted on Redis in this (5 s) window: 5 are left, locally.
    for i in 0..5 {
        let d = limiter.try_acquire(USER, 1).await.unwrap();
        assert!(d.is_granted() && d.is_degraded(), "call {i}: {d:?}");
    }
    let d = limiter.try_acquire(USER, 1).await.unwrap();
    assert!(!d.is_granted() && d.is_degraded(), "{d:?}");
    // The wait is until the first Redis grants leave the window, not a guess.
    assert!(
        d.retry_after() > Duration::from_secs(3) && d.retry_after() <= Duration::from_secs(5),
        "{d:?}"
    );
}

/// The hand-back: Redis restarts empty and one worker reaches it first. It writes its own
/// grants back, but the bucket still lacks the other worker's, which Torn still counts:
/// until that worker wrote them back too (an idle one notices within its epoch heartbeat,
/// a second), the first grants only what its local decision allows (here nothing: Redis
/// last said the bucket was full), so the two never grant more than the limit in a window.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_back_on_redis_first_grants_nothing_the_others_still_hold() {
    let mut redis = PrivateRedis::start();
    let port = redis.port;
    let policy = OnRedisDown::LocalFallback {
        workers: NonZeroU32::new(2).unwrap(),
    };
    let config = config(&redis.url(), policy);
    let (a, b) = (
        Limiter::redis(config.clone()).unwrap(),
        Limiter::redis(config).unwrap(),
    );
    // B takes half the window's 20, then A the other half: A last saw the bucket full.
    for who in [&b, &a] {
        for _ in 0..10 {
            let d = who.try_acquire(USER, 1).await.unwrap();
            assert!(d.is_granted() && !d.is_degraded(), "{d:?}");
        }
    }
    redis.kill();
    // A notices the loss; B, idle, does not.
    let d = a.try_acquire(USER, 1).await.unwrap();
    assert!(!d.is_granted() && d.is_degraded(), "{d:?}");
    let _redis = PrivateRedis::start_on(port);

    // A reaches the empty Redis within its reconnect interval and writes its 10 back; B's
    // 10 are not there until B notices.
    let mut granted = 0;
    let until = Instant::now() + Duration::from_millis(400);
    while Instant::now() < until {
        if a.try_acquire(USER, 1).await.unwrap().is_granted() {
            granted += 1;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        granted, 0,
        "A granted units B's grants still held in Torn's window"
    );
    // B's heartbeat finds the new Redis and writes its grants back: all 20 are there.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let used = b.status(USER).await.map_or(0, |s| s.used);
        if used >= 20 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "B never wrote its grants back: {used} of 20 in Redis"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let d = a.try_acquire(USER, 1).await.unwrap();
    assert!(!d.is_granted(), "the window is full: {d:?}");
}
