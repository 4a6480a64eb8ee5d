//! One behavioural suite, run against both backends: what holds for Redis holds in memory.

mod common;

use std::num::NonZeroU32;
use std::time::Duration;

use common::{config, keys_under};
use torn_quota::{
    Decision, Error, Limiter, Priority, RateLimitConfig, RateLimitConfigBuilder, Request,
    TornUserId,
};

#[derive(Clone, Copy, Debug)]
enum Kind {
    Redis,
    Memory,
}

/// A limiter of `kind`, plus a second handle on the same buckets: for Redis a separate
/// limiter with its own connections (as another process would have), in memory a clone.
fn pair(kind: Kind, builder: RateLimitConfigBuilder) -> (Limiter, Limiter) {
    let config: RateLimitConfig = builder.build().unwrap();
    match kind {
        Kind::Redis => (
            Limiter::redis(config.clone()).unwrap(),
            Limiter::redis(config).unwrap(),
        ),
        Kind::Memory => {
            let l = Limiter::in_memory(config);
            (l.clone(), l)
        }
    }
}

fn limiter(kind: Kind, builder: RateLimitConfigBuilder) -> Limiter {
    pair(kind, builder).0
}

const USER: TornUserId = TornUserId::new(1001);

fn limited(d: &Decision) -> (Duration, u32) {
    match d {
        Decision::Limited {
            retry_after,
            remaining,
            ..
        } => (*retry_after, *remaining),
        other => panic!("expected a denial, got {other:?}"),
    }
}

async fn exact_limit(kind: Kind) {
    let l = limiter(kind, config("exact", 5, 2_000));
    for expected_remaining in (0..5).rev() {
        let d = l.try_acquire(USER, 1).await.unwrap();
        assert!(d.is_granted(), "{d:?}");
        assert_eq!(d.remaining(), expected_remaining);
    }
    let (retry, remaining) = limited(&l.try_acquire(USER, 1).await.unwrap());
    assert_eq!(remaining, 0);
    assert!(
        retry > Duration::from_millis(1_500) && retry <= Duration::from_millis(2_001),
        "{retry:?}"
    );
    // Another user is untouched.
    assert!(
        l.try_acquire(TornUserId::new(1002), 5)
            .await
            .unwrap()
            .is_granted()
    );
    let s = l.status(USER).await.unwrap();
    assert_eq!((s.used, s.limit, s.remaining), (5, 5, 0));
}

async fn retry_after_is_honest(kind: Kind) {
    let l = limiter(kind, config("retry", 3, 400));
    for _ in 0..3 {
        assert!(l.try_acquire(USER, 1).await.unwrap().is_granted());
    }
    let (retry, _) = limited(&l.try_acquire(USER, 1).await.unwrap());
    // Waiting much less than retry_after does not admit...
    tokio::time::sleep(retry / 3).await;
    let (again, _) = limited(&l.try_acquire(USER, 1).await.unwrap());
    assert!(
        again < retry,
        "the wait shrinks as time passes: {again:?} vs {retry:?}"
    );
    // ...and waiting it out does.
    tokio::time::sleep(again + Duration::from_millis(5)).await;
    assert!(l.try_acquire(USER, 1).await.unwrap().is_granted());
}

async fn cost_above_one_is_atomic(kind: Kind) {
    let l = limiter(kind, config("atomic", 5, 5_000));
    assert!(l.try_acquire(USER, 3).await.unwrap().is_granted());
    let (_, remaining) = limited(&l.try_acquire(USER, 3).await.unwrap());
    assert_eq!(remaining, 2);
    assert_eq!(
        l.status(USER).await.unwrap().used,
        3,
        "a denial records nothing"
    );
    let d = l.try_acquire(USER, 2).await.unwrap();
    assert!(d.is_granted());
    assert_eq!(d.remaining(), 0);
}

async fn cost_above_limit_is_never_granted(kind: Kind) {
    let (a, b) = pair(kind, config("toobig", 5, 5_000));
    match a.try_acquire(USER, 6).await {
        Err(Error::CostExceedsLimit { cost: 6, limit: 5 }) => {}
        other => panic!("expected CostExceedsLimit, got {other:?}"),
    }
    // Also when an override lowers the limit under the cost at run time.
    b.set_user_limit(USER, NonZeroU32::new(2)).await.unwrap();
    match a.try_acquire(USER, 3).await {
        Err(Error::CostExceedsLimit { cost: 3, limit: 2 }) => {}
        other => panic!("expected CostExceedsLimit, got {other:?}"),
    }
    assert_eq!(a.status(USER).await.unwrap().used, 0);
}

async fn override_is_seen_by_another_process(kind: Kind) {
    let (a, b) = pair(kind, config("override", 10, 5_000));
    a.set_user_limit(USER, NonZeroU32::new(2)).await.unwrap();
    assert!(b.try_acquire(USER, 1).await.unwrap().is_granted());
    assert!(b.try_acquire(USER, 1).await.unwrap().is_granted());
    assert!(!b.try_acquire(USER, 1).await.unwrap().is_granted());
    assert_eq!(b.status(USER).await.unwrap().limit, 2);
    // Raising it frees room at once; clearing it restores the configured limit.
    a.set_user_limit(USER, NonZeroU32::new(3)).await.unwrap();
    assert!(b.try_acquire(USER, 1).await.unwrap().is_granted());
    a.set_user_limit(USER, None).await.unwrap();
    let s = b.status(USER).await.unwrap();
    assert_eq!((s.limit, s.used, s.remaining), (10, 3, 7));
    // The override is per user.
    assert_eq!(b.status(TornUserId::new(7)).await.unwrap().limit, 10);
}

async fn penalize_holds_the_bucket_full(kind: Kind) {
    let (a, b) = pair(kind, config("penalize", 10, 5_000));
    assert!(a.try_acquire(USER, 1).await.unwrap().is_granted());
    let hold = a.penalize(USER, Duration::from_millis(300)).await.unwrap();
    assert_eq!(hold, Duration::from_millis(300));
    // A shorter penalty never shortens the one in force.
    let kept = a.penalize(USER, Duration::from_millis(10)).await.unwrap();
    assert!(kept > Duration::from_millis(200), "{kept:?}");
    let (retry, remaining) = limited(&b.try_acquire(USER, 1).await.unwrap());
    assert_eq!(remaining, 0);
    assert!(
        retry > Duration::from_millis(200) && retry <= Duration::from_millis(300),
        "{retry:?}"
    );
    let s = b.status(USER).await.unwrap();
    assert!(s.penalty > Duration::ZERO && s.remaining == 0, "{s:?}");
    tokio::time::sleep(retry + Duration::from_millis(5)).await;
    assert!(b.try_acquire(USER, 1).await.unwrap().is_granted());
}

async fn refund_gives_back_only_that_grant(kind: Kind) {
    let l = limiter(kind, config("refund", 4, 5_000));
    let first = l.acquire(USER, 1).await.unwrap();
    let unsent = l.acquire(USER, 3).await.unwrap();
    assert!(!l.try_acquire(USER, 1).await.unwrap().is_granted());
    assert_eq!(l.refund(unsent).await.unwrap(), 3);
    let s = l.status(USER).await.unwrap();
    assert_eq!((s.used, s.remaining), (1, 3));
    assert_eq!(l.refund(first).await.unwrap(), 1);
    assert_eq!(l.status(USER).await.unwrap().used, 0);
}

async fn idempotent_replay_counts_once(kind: Kind) {
    let (a, b) = pair(kind, config("idem", 5, 5_000));
    let req = Request::new(2).idempotency_id("job-7/page-1");
    let first = a.try_acquire_with(USER, &req).await.unwrap();
    let replay = b.try_acquire_with(USER, &req).await.unwrap();
    assert_eq!(first, replay, "a replay returns the first decision");
    assert_eq!(a.status(USER).await.unwrap().used, 2);
    // Another id counts.
    let other = Request::new(2).idempotency_id("job-7/page-2");
    assert!(a.try_acquire_with(USER, &other).await.unwrap().is_granted());
    assert_eq!(a.status(USER).await.unwrap().used, 4);
    // A refunded grant's replay is decided afresh.
    a.refund(first.into_grant().unwrap()).await.unwrap();
    assert!(b.try_acquire_with(USER, &req).await.unwrap().is_granted());
    assert_eq!(a.status(USER).await.unwrap().used, 4);
}

async fn reserve_keeps_headroom_for_high_priority(kind: Kind) {
    let l = limiter(kind, config("reserve", 5, 5_000).low_priority_reserve(3));
    let low = Request::new(1).priority(Priority::Low);
    assert!(l.try_acquire_with(USER, &low).await.unwrap().is_granted());
    let d = l.try_acquire_with(USER, &low).await.unwrap();
    assert!(d.is_granted());
    assert_eq!(d.remaining(), 0, "low priority sees limit - reserve");
    let (_, remaining) = limited(&l.try_acquire_with(USER, &low).await.unwrap());
    assert_eq!(remaining, 0);
    for _ in 0..3 {
        assert!(
            l.try_acquire(USER, 1).await.unwrap().is_granted(),
            "high priority uses the reserve"
        );
    }
    assert!(!l.try_acquire(USER, 1).await.unwrap().is_granted());
    match l
        .try_acquire_with(USER, &Request::new(3).priority(Priority::Low))
        .await
    {
        Err(Error::CostExceedsLimit { cost: 3, limit: 2 }) => {}
        other => panic!("a low-priority cost above limit - reserve never fits: {other:?}"),
    }
}

async fn bad_arguments_are_rejected(kind: Kind) {
    let l = limiter(kind, config("badargs", 5, 5_000));
    for (req, name) in [
        (Request::new(0), "cost"),
        (Request::new(1).idempotency_id(""), "idempotency_id"),
        (
            Request::new(1).idempotency_id("has space"),
            "idempotency_id",
        ),
        (
            Request::new(1).idempotency_id("x".repeat(129)),
            "idempotency_id",
        ),
    ] {
        match l.try_acquire_with(USER, &req).await {
            Err(Error::InvalidArgument { name: got, .. }) => assert_eq!(got, name),
            other => panic!("expected InvalidArgument {name}, got {other:?}"),
        }
    }
    assert_eq!(l.status(USER).await.unwrap().used, 0);
}

async fn acquire_waits_for_room(kind: Kind) {
    let l = limiter(kind, config("wait", 2, 300));
    let started = tokio::time::Instant::now();
    for _ in 0..6 {
        l.acquire(USER, 1).await.unwrap();
    }
    // 6 units at 2 per 300 ms: two full windows must pass, and not much more.
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(600), "{took:?}");
    assert!(took < Duration::from_millis(1_500), "{took:?}");
}

async fn acquire_respects_deadline_and_cancel(kind: Kind) {
    use torn_quota::Wait;
    let l = limiter(kind, config("deadline", 1, 2_000));
    assert!(l.try_acquire(USER, 1).await.unwrap().is_granted());
    let started = tokio::time::Instant::now();
    let d = l
        .acquire_with(
            USER,
            &Request::new(1),
            &Wait::forever().at_most(Duration::from_millis(100)),
        )
        .await
        .unwrap();
    assert!(!d.is_granted());
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "gives up without sleeping past the deadline"
    );

    let token = tokio_util::sync::CancellationToken::new();
    let waiter = {
        let (l, token) = (l.clone(), token.clone());
        tokio::spawn(async move {
            l.acquire_with(USER, &Request::new(1), &Wait::forever().cancel_on(token))
                .await
        })
    };
    token.cancel();
    match waiter.await.unwrap() {
        Err(Error::Cancelled) => {}
        other => panic!("expected Cancelled, got {other:?}"),
    }
}

async fn concurrent_callers_never_exceed_the_limit(kind: Kind) {
    let l = limiter(kind, config("concurrent", 10, 300));
    let end = tokio::time::Instant::now() + Duration::from_millis(1_200);
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let l = l.clone();
        tasks.spawn(async move {
            let mut times = Vec::new();
            let wait = torn_quota::Wait::forever().until(end);
            while let Decision::Granted(g) =
                l.acquire_with(USER, &Request::new(1), &wait).await.unwrap()
            {
                times.push(g.granted_at_ms());
            }
            times
        });
    }
    let mut times = Vec::new();
    while let Some(t) = tasks.join_next().await {
        times.extend(t.unwrap());
    }
    assert_eq!(torn_quota::oracle::busiest_window(&times, 300), 10);
    // 4 windows in 1.2 s: the limit is used, not wasted.
    assert!(times.len() >= 38, "granted {}", times.len());
}

/// A burst of simultaneous calls over a few users, the way the Redis backend coalesces
/// them into shared script calls (with one user many times in a call): each user gets
/// exactly its limit, and every call gets an answer.
async fn simultaneous_burst_is_decided_exactly(kind: Kind) {
    let l = limiter(kind, config("burst", 10, 60_000));
    let users = [1_u64, 2, 3];
    let calls = (0..150).map(|i| {
        let l = l.clone();
        let user = TornUserId::new(users[i % users.len()]);
        async move { (user, l.try_acquire(user, 1).await.unwrap()) }
    });
    let decisions = common::join_all(calls).await;
    assert_eq!(decisions.len(), 150);
    for user in users {
        let granted = decisions
            .iter()
            .filter(|(u, d)| *u == TornUserId::new(user) && matches!(d, Decision::Granted(_)))
            .count();
        assert_eq!(granted, 10, "user {user}");
    }
}

async fn idle_bucket_leaves_nothing(kind: Kind) {
    let builder = config("idle", 5, 150).cleanup_interval(Duration::from_millis(1));
    let prefix = builder.clone().build().unwrap().key_prefix().to_owned();
    let l = limiter(kind, builder);
    for user in 0..5 {
        assert!(
            l.try_acquire(TornUserId::new(user), 2)
                .await
                .unwrap()
                .is_granted()
        );
    }
    l.try_acquire_with(USER, &Request::new(1).idempotency_id("once"))
        .await
        .unwrap();
    match kind {
        Kind::Redis => assert!(!keys_under(&prefix).await.is_empty()),
        Kind::Memory => assert_eq!(l.tracked_buckets(), Some(7)),
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    match kind {
        // The one key that stays is the key space's epoch (how a process notices that
        // Redis lost its state): one per prefix, never per user, so an idle user still
        // costs nothing.
        Kind::Redis => assert_eq!(
            keys_under(&prefix).await,
            vec![format!("{prefix}:epoch")],
            "only the key space's epoch outlives an idle window"
        ),
        Kind::Memory => assert_eq!(l.tracked_buckets(), Some(0)),
    }
}

/// A provisional grant counts for its hold beyond its window; settled, it counts one window
/// from the settle. A never-settled one keeps its provisional record.
async fn provisional_grant_counts_until_settled(kind: Kind) {
    let (a, b) = pair(kind, config("settle", 2, 300));
    let req = Request::new(1).in_flight(Duration::from_secs(5));
    let first = a
        .try_acquire_with(USER, &req)
        .await
        .unwrap()
        .into_grant()
        .unwrap();
    let second = a
        .try_acquire_with(USER, &req)
        .await
        .unwrap()
        .into_grant()
        .unwrap();
    assert!(first.is_provisional());
    tokio::time::sleep(Duration::from_millis(450)).await;
    // One window has passed since both grants: a plain grant would have left, these count.
    let (retry, _) = limited(&b.try_acquire(USER, 1).await.unwrap());
    assert!(
        retry > Duration::from_secs(4),
        "provisional until hold + window: {retry:?}"
    );
    assert_eq!(a.settle(first).await.unwrap(), 1);
    let (retry, _) = limited(&b.try_acquire(USER, 1).await.unwrap());
    assert!(
        retry <= Duration::from_millis(302),
        "settled: one window from now, {retry:?}"
    );
    tokio::time::sleep(retry + Duration::from_millis(20)).await;
    assert!(b.try_acquire(USER, 1).await.unwrap().is_granted());
    // The unsettled one still holds its unit.
    assert!(!b.try_acquire(USER, 1).await.unwrap().is_granted());
    assert_eq!(b.status(USER).await.unwrap().used, 2);
    drop(second);
}

/// A settle that arrives once the grant has left the window changes nothing.
async fn late_settle_is_harmless(kind: Kind) {
    let l = limiter(kind, config("late-settle", 1, 150));
    let g = l
        .try_acquire_with(USER, &Request::new(1).in_flight(Duration::from_millis(50)))
        .await
        .unwrap()
        .into_grant()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(260)).await;
    assert_eq!(l.settle(g).await.unwrap(), 0);
    assert_eq!(l.status(USER).await.unwrap().used, 0);
    assert!(l.try_acquire(USER, 1).await.unwrap().is_granted());
}

/// Provisional stamps with different holds stay in time order; refund and settle each find
/// their own grant's records.
async fn refund_and_settle_find_their_own_records(kind: Kind) {
    let l = limiter(kind, config("mixed-holds", 10, 5_000));
    let long = Request::new(2).in_flight(Duration::from_millis(3_000));
    let short = Request::new(3).in_flight(Duration::from_millis(500));
    let long_a = l
        .try_acquire_with(USER, &long)
        .await
        .unwrap()
        .into_grant()
        .unwrap();
    let plain = l.try_acquire(USER, 1).await.unwrap().into_grant().unwrap();
    let short_c = l
        .try_acquire_with(USER, &short)
        .await
        .unwrap()
        .into_grant()
        .unwrap();
    let long_d = l
        .try_acquire_with(USER, &long)
        .await
        .unwrap()
        .into_grant()
        .unwrap();
    assert_eq!(l.status(USER).await.unwrap().used, 8);
    assert_eq!(
        l.refund(short_c).await.unwrap(),
        3,
        "a provisional grant is refunded by its stamp"
    );
    assert_eq!(l.settle(long_a).await.unwrap(), 2);
    assert_eq!(l.refund(plain).await.unwrap(), 1);
    assert_eq!(l.settle(long_d).await.unwrap(), 2);
    let s = l.status(USER).await.unwrap();
    assert_eq!((s.used, s.remaining), (4, 6));
    assert!(s.reset_after <= Duration::from_millis(5_001), "{s:?}");
}

/// `record` counts units Torn already counted, even over the limit; later grants see them.
async fn record_counts_even_when_full(kind: Kind) {
    let (a, b) = pair(kind, config("record", 2, 400));
    assert!(a.try_acquire(USER, 2).await.unwrap().is_granted());
    a.record(USER, 1).await.unwrap();
    let s = b.status(USER).await.unwrap();
    assert_eq!((s.used, s.remaining), (3, 0));
    tokio::time::sleep(Duration::from_millis(450)).await;
    b.record(USER, 2).await.unwrap();
    assert!(!b.try_acquire(USER, 1).await.unwrap().is_granted());
    assert!(matches!(
        a.record(USER, 0).await,
        Err(Error::InvalidArgument { name: "cost", .. })
    ));
}

/// A caller with a shorter window must not cut records a longer-window caller still counts:
/// the bucket keeps the longest window it has been asked with.
async fn mixed_windows_keep_the_longest(kind: Kind) {
    let (a, b) = pair(kind, config("mixed-windows", 2, 200));
    let long = Request::new(1).margin(Duration::from_millis(1_800)); // a 2 000 ms window
    assert!(a.try_acquire_with(USER, &long).await.unwrap().is_granted());
    assert!(a.try_acquire_with(USER, &long).await.unwrap().is_granted());
    tokio::time::sleep(Duration::from_millis(300)).await;
    // A 200 ms caller alone would see an empty window by now.
    let (retry, remaining) = limited(&b.try_acquire(USER, 1).await.unwrap());
    assert_eq!(remaining, 0);
    assert!(retry > Duration::from_millis(1_500), "{retry:?}");
    // And the long caller still sees both of its grants.
    assert!(!a.try_acquire_with(USER, &long).await.unwrap().is_granted());
    assert_eq!(b.status(USER).await.unwrap().used, 2);
}

/// Bounds checked before anything reaches a backend: a cost above 10 000, a limit override
/// above it, a window plus margin or a penalty over one day.
async fn bounds_are_refused_before_the_backend(kind: Kind) {
    let l = limiter(kind, config("bounds", 100, 86_400_000));
    assert!(matches!(
        l.try_acquire(USER, 30_000_000).await,
        Err(Error::CostExceedsLimit {
            cost: 30_000_000,
            ..
        })
    ));
    assert!(matches!(
        l.try_acquire_with(USER, &Request::new(1).margin(Duration::from_millis(1)))
            .await,
        Err(Error::InvalidArgument { name: "margin", .. })
    ));
    assert!(matches!(
        l.try_acquire_with(USER, &Request::new(1).margin(Duration::MAX))
            .await,
        Err(Error::InvalidArgument { name: "margin", .. })
    ));
    assert!(matches!(
        l.try_acquire_with(
            USER,
            &Request::new(1).in_flight(Duration::from_secs(86_401))
        )
        .await,
        Err(Error::InvalidArgument { name: "hold", .. })
    ));
    assert!(matches!(
        l.set_user_limit(USER, NonZeroU32::new(10_001)).await,
        Err(Error::InvalidArgument { name: "limit", .. })
    ));
    assert!(matches!(
        l.penalize(USER, Duration::from_secs(86_401)).await,
        Err(Error::InvalidArgument { name: "hold", .. })
    ));
    assert!(matches!(
        l.record(USER, 10_001).await,
        Err(Error::InvalidArgument { name: "cost", .. })
    ));
    assert!(matches!(
        l.sibling(
            "ip",
            NonZeroU32::new(1_000_000).unwrap(),
            Duration::from_secs(60)
        ),
        Err(Error::InvalidArgument { name: "limit", .. })
    ));
    assert_eq!(l.status(USER).await.unwrap().used, 0, "nothing recorded");
    l.set_user_limit(USER, NonZeroU32::new(10_000))
        .await
        .unwrap();
    assert!(l.try_acquire(USER, 10_000).await.unwrap().is_granted());
}

macro_rules! suite {
    ($($name:ident),* $(,)?) => {
        mod redis_backend {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    common::redis_conn().await; // fails loudly without Redis
                    super::$name(super::Kind::Redis).await;
                }
            )*
            use super::common;
        }
        mod memory_backend {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Kind::Memory).await;
                }
            )*
        }
    };
}

suite!(
    exact_limit,
    retry_after_is_honest,
    cost_above_one_is_atomic,
    cost_above_limit_is_never_granted,
    override_is_seen_by_another_process,
    penalize_holds_the_bucket_full,
    refund_gives_back_only_that_grant,
    idempotent_replay_counts_once,
    reserve_keeps_headroom_for_high_priority,
    bad_arguments_are_rejected,
    acquire_waits_for_room,
    acquire_respects_deadline_and_cancel,
    concurrent_callers_never_exceed_the_limit,
    simultaneous_burst_is_decided_exactly,
    idle_bucket_leaves_nothing,
    provisional_grant_counts_until_settled,
    late_settle_is_harmless,
    refund_and_settle_find_their_own_records,
    record_counts_even_when_full,
    mixed_windows_keep_the_longest,
    bounds_are_refused_before_the_backend,
);

/// One Redis store per process: siblings (IP bucket, shares, shadow keys) and every call
/// through them use the configured connections, not a pool each. Counted by the clients
/// Redis lists on a database no other test selects.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn siblings_share_one_set_of_connections() {
    const DB: u32 = 9;
    let connections = 3;
    let owner = Limiter::redis(
        config("one-store", 50, 2_000)
            .redis_url(format!("{}/{DB}", common::redis_url()))
            .connections(std::num::NonZeroUsize::new(connections).unwrap())
            .build()
            .unwrap(),
    )
    .unwrap();
    let limit = NonZeroU32::new(50).unwrap();
    let siblings: Vec<Limiter> = (0..6)
        .map(|i| {
            owner
                .sibling(&format!("s{i}"), limit, Duration::from_secs(2))
                .unwrap()
        })
        .collect();
    // Many calls at once through every limiter, so every lane is used.
    for _ in 0..3 {
        let calls = siblings.iter().chain([&owner]).flat_map(|l| {
            (0..20).map(move |u| async move {
                let g = l
                    .try_acquire_with(
                        TornUserId::new(u),
                        &Request::new(1).in_flight(Duration::from_secs(1)),
                    )
                    .await
                    .unwrap()
                    .into_grant()
                    .unwrap();
                l.settle(g).await.unwrap();
                l.status(TornUserId::new(u)).await.unwrap();
            })
        });
        common::join_all(calls).await;
    }
    let mut observer = common::redis_conn().await;
    let list: String = redis::cmd("CLIENT")
        .arg("LIST")
        .query_async(&mut observer)
        .await
        .unwrap();
    let on_db = list
        .lines()
        .filter(|l| l.split(' ').any(|f| f == format!("db={DB}")))
        .count();
    assert_eq!(on_db, connections, "clients on db {DB}:\n{list}");
}
