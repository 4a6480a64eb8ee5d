//! The rollout from the legacy per-key limiter against a real PostgreSQL and a real Redis:
//! each mode, shadow never changing what legacy enforces, the 3-keys-150-calls scenario,
//! processes racing the legacy limiter, the stable rollout share, metrics, the CLI.
//!
//! Every test has a database of its own (dropped at the end) and a Redis key prefix of its
//! own, so tests run in parallel. PostgreSQL: `TORN_QUOTA_TEST_DATABASE_URL`, default
//! `postgres://postgres@127.0.0.1:5432/test` (a role that may create databases).

// Everything here runs the legacy limiter.
#![cfg(feature = "legacy")]

mod common;

use std::collections::{BTreeMap, HashMap};
use std::num::NonZeroU32;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::pg::TestDb;
use rand::Rng;
use serde_json::Value;
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;
use tokio_util::sync::CancellationToken;
use torn_quota::rollout::{
    Direction, Disagreements, EnforcedBy, LegacyLimiter, RolloutDecision, RolloutLimiter, Route,
    Shadow, in_rollout, rollout_bucket,
};
use torn_quota::{Error, KeyHash, Limiter, Mode, RateLimitConfig, Request, TornUserId};

// ---------------------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------------------

/// A key hash no other test uses (a real SHA-256, as the legacy limiter receives them).
fn key_hash(label: &str) -> String {
    let salt: u64 = rand::rng().random();
    KeyHash::of(&format!("{label}-{salt}")).as_str().to_owned()
}

fn legacy(db: &TestDb) -> LegacyLimiter {
    LegacyLimiter::new(
        db.pool.clone(),
        NonZeroU32::new(50).unwrap(),
        Duration::from_secs(60),
    )
}

/// The per-user limiter in the test Redis: Torn's 100 per minute, under a fresh prefix.
fn per_user(name: &str, mode: Mode) -> Limiter {
    common::redis_url();
    Limiter::redis(
        common::config(name, 100, 60_000)
            .mode(mode)
            .build()
            .unwrap(),
    )
    .unwrap()
}

fn router(db: &TestDb, name: &str, mode: Mode) -> RolloutLimiter {
    RolloutLimiter::builder(per_user(name, mode))
        .legacy(legacy(db))
        .build()
        .unwrap()
}

async fn rows_of(pool: &PgPool, hash: &str) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM sentinel_rate_limit_requests WHERE api_key_hash = $1")
        .bind(hash)
        .fetch_one(pool)
        .await
        .unwrap()
}

/// Calls `user` with `keys` in turn, `calls` times, one unit each.
async fn round_robin(
    r: &RolloutLimiter,
    user: TornUserId,
    keys: &[String],
    calls: usize,
) -> Vec<RolloutDecision> {
    let mut out = Vec::with_capacity(calls);
    for i in 0..calls {
        let key = &keys[i % keys.len()];
        out.push(
            r.try_acquire(user, Some(key), &Request::new(1))
                .await
                .unwrap(),
        );
    }
    out
}

fn granted(decisions: &[RolloutDecision]) -> usize {
    decisions.iter().filter(|d| d.is_granted()).count()
}

// ---------------------------------------------------------------------------------------
// The legacy limiter
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn legacy_grants_50_per_key_records_the_account_and_advises_the_wait() {
    let db = TestDb::migrated("rollout").await;
    let legacy = legacy(&db);
    let (mapped, unmapped) = (key_hash("mapped"), key_hash("unmapped"));
    let account = uuid::Uuid::new_v4();
    sqlx::query("INSERT INTO auth.users (id) VALUES ($1)")
        .bind(account)
        .execute(&db.pool)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO sentinel_api_key_user_mapping (api_key_hash, user_id, torn_user_id) \
         VALUES ($1, $2, 4)",
    )
    .bind(&mapped)
    .bind(account)
    .execute(&db.pool)
    .await
    .unwrap();

    for (i, key) in [&mapped, &unmapped].into_iter().enumerate() {
        for n in 0..50u32 {
            let d = legacy.try_acquire(key, 1).await.unwrap();
            assert!(d.granted, "key {i} call {n}");
            assert_eq!(d.remaining, 49 - n);
            assert_eq!(d.retry_after, Duration::ZERO);
        }
        let refused = legacy.try_acquire(key, 1).await.unwrap();
        assert!(!refused.granted);
        assert_eq!(refused.remaining, 0);
        assert!(
            refused.retry_after > Duration::from_secs(50)
                && refused.retry_after <= Duration::from_secs(60),
            "{refused:?}"
        );
        assert_eq!(legacy.used(key).await.unwrap(), 50);
        assert_eq!(rows_of(&db.pool, key).await, 50, "a refusal writes nothing");
    }
    let owners: Vec<(String, Option<uuid::Uuid>)> = sqlx::query_as(
        "SELECT DISTINCT api_key_hash, user_id FROM sentinel_rate_limit_requests ORDER BY 1",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    let owners: HashMap<_, _> = owners.into_iter().collect();
    assert_eq!(owners.len(), 2, "{owners:?}");
    assert_eq!(owners[&mapped], Some(account));
    assert_eq!(owners[&unmapped], None);

    // The old name is a view on the same rows: the old writers and this port see one count.
    let through_view: i64 =
        sqlx::query_scalar("SELECT count(*) FROM sentinel_rate_limit_requests_per_user")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(through_view, 100);

    assert!(matches!(
        legacy.try_acquire(&mapped, 51).await,
        Err(Error::CostExceedsLimit {
            cost: 51,
            limit: 50
        })
    ));
    for bad in ["", "AbCdEfGh12345678", &mapped.to_uppercase()] {
        let err = legacy.try_acquire(bad, 1).await.unwrap_err();
        assert!(matches!(
            err,
            Error::InvalidArgument {
                name: "key_hash",
                ..
            }
        ));
        assert!(bad.is_empty() || !err.to_string().contains(bad), "{err}");
    }
}

#[tokio::test]
async fn legacy_window_rolls_and_costs_count_as_rows() {
    let db = TestDb::migrated("rollout").await;
    let legacy = LegacyLimiter::new(
        db.pool.clone(),
        NonZeroU32::new(3).unwrap(),
        Duration::from_millis(600),
    );
    let key = key_hash("window");
    let two = legacy.try_acquire(&key, 2).await.unwrap();
    assert!(two.granted);
    assert_eq!(two.remaining, 1);
    assert_eq!(rows_of(&db.pool, &key).await, 2);
    let started = Instant::now();
    let refused = legacy.try_acquire(&key, 2).await.unwrap();
    assert!(!refused.granted, "2 + 2 > 3");
    assert_eq!(refused.remaining, 1);
    assert!(
        refused.retry_after > Duration::ZERO && refused.retry_after <= Duration::from_millis(600),
        "{refused:?}"
    );
    let one = legacy.try_acquire(&key, 1).await.unwrap();
    assert!(one.granted, "one unit still fits");
    assert_eq!(one.remaining, 0);

    // The advised wait is enough: after it the first two rows have left the window.
    tokio::time::sleep(
        refused.retry_after.saturating_sub(started.elapsed()) + Duration::from_millis(30),
    )
    .await;
    let again = legacy.try_acquire(&key, 2).await.unwrap();
    assert!(again.granted, "{again:?}");
}

#[tokio::test]
async fn cleanup_deletes_only_rows_older_than_the_window_and_stops_on_shutdown() {
    let db = TestDb::migrated("rollout").await;
    let legacy = legacy(&db);
    let key = key_hash("cleanup");
    let insert_old = |n: i32| {
        sqlx::query(
            "INSERT INTO sentinel_rate_limit_requests (api_key_hash, requested_at) \
             SELECT $1, now() - interval '2 minutes' FROM generate_series(1, $2)",
        )
        .bind(key.clone())
        .bind(n)
        .execute(&db.pool)
    };
    insert_old(10).await.unwrap();
    for _ in 0..3 {
        assert!(legacy.try_acquire(&key, 1).await.unwrap().granted);
    }
    assert_eq!(legacy.used(&key).await.unwrap(), 3, "old rows do not count");
    assert_eq!(legacy.cleanup_once().await.unwrap(), 10);
    assert_eq!(rows_of(&db.pool, &key).await, 3);
    assert_eq!(legacy.cleanup_once().await.unwrap(), 0);

    insert_old(5).await.unwrap();
    let shutdown = CancellationToken::new();
    let task = legacy.spawn_cleanup(Duration::from_millis(50), shutdown.clone());
    let deadline = Instant::now() + Duration::from_secs(10);
    while rows_of(&db.pool, &key).await != 3 {
        assert!(Instant::now() < deadline, "the periodic cleanup never ran");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("the cleanup task stops on shutdown")
        .unwrap();
}

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

// ---------------------------------------------------------------------------------------
// Racing processes, and what the lock costs
// ---------------------------------------------------------------------------------------

/// Not a test on its own: the body of the worker processes that
/// `two_processes_racing_the_legacy_limiter_never_grant_more_than_50_per_key` starts (this
/// test binary again, filtered to this name). Without the worker's environment it does
/// nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn race_worker() {
    let Ok(url) = std::env::var("TQ_RACE_DATABASE_URL") else {
        return;
    };
    let keys: Vec<String> = std::env::var("TQ_RACE_KEYS")
        .unwrap()
        .split(',')
        .map(str::to_owned)
        .collect();
    let start_ms: u64 = std::env::var("TQ_RACE_START_MS").unwrap().parse().unwrap();
    let pool = PgPoolOptions::new()
        .max_connections(8)
        .connect(&url)
        .await
        .unwrap();
    let legacy = LegacyLimiter::new(pool, NonZeroU32::new(50).unwrap(), Duration::from_secs(60));
    // Warm the pool, then start together with the other process.
    legacy.used(&keys[0]).await.unwrap();
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    tokio::time::sleep(Duration::from_millis(start_ms.saturating_sub(now_ms))).await;
    let granted: Arc<Mutex<BTreeMap<String, u32>>> = Arc::default();
    let tasks: Vec<_> = (0..8)
        .map(|t| {
            let (legacy, keys, granted) = (legacy.clone(), keys.clone(), granted.clone());
            tokio::spawn(async move {
                for round in 0..8 {
                    let key = &keys[(t + round) % keys.len()];
                    if legacy.try_acquire(key, 1).await.unwrap().granted {
                        *granted.lock().unwrap().entry(key.clone()).or_default() += 1;
                    }
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let granted = granted.lock().unwrap().clone();
    println!("RACE_RESULT {}", serde_json::to_string(&granted).unwrap());
}

#[tokio::test]
async fn two_processes_racing_the_legacy_limiter_never_grant_more_than_50_per_key() {
    let db = TestDb::migrated("rollout").await;
    // 2 processes x 8 tasks x 8 calls = 128 calls over 2 keys: 64 asks for 50 slots each.
    let keys = [key_hash("race-0"), key_hash("race-1")];
    let start_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
        + 1500;
    let workers: Vec<_> = (0..2)
        .map(|_| {
            Command::new(std::env::current_exe().unwrap())
                .args([
                    "race_worker",
                    "--exact",
                    "--nocapture",
                    "--test-threads",
                    "1",
                ])
                .env("TQ_RACE_DATABASE_URL", &db.url)
                .env("TQ_RACE_KEYS", keys.join(","))
                .env("TQ_RACE_START_MS", start_ms.to_string())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("start a worker process")
        })
        .collect();
    let mut total: BTreeMap<String, u32> = BTreeMap::new();
    for w in workers {
        let out = w.wait_with_output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let line = stdout
            .lines()
            .find_map(|l| l.split_once("RACE_RESULT ").map(|(_, json)| json))
            .unwrap_or_else(|| panic!("no result from a worker: {stdout}"));
        let granted: BTreeMap<String, u32> = serde_json::from_str(line).unwrap();
        assert!(!granted.is_empty(), "each worker was granted something");
        for (k, n) in granted {
            *total.entry(k).or_default() += n;
        }
    }
    for key in &keys {
        // Never more than 50 (the race), and not fewer either: 64 asked within the window.
        assert_eq!(total.get(key).copied(), Some(50), "{total:?}");
        assert_eq!(rows_of(&db.pool, key).await, 50);
    }
}

#[test]
fn cli_processes_racing_the_legacy_limiter_never_grant_more_than_50() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let db = rt.block_on(TestDb::migrated("rollout"));
    let key = key_hash("cli-race");
    let prefix = common::unique_prefix("cli-race");
    let granted = Arc::new(AtomicU32::new(0));
    let refused = Arc::new(AtomicU32::new(0));
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                for _ in 0..17 {
                    let out = cli(&prefix, &db.url, &[("TORN_QUOTA_MODE", "legacy")])
                        .args(["acquire", "--user", "77", "--key-hash", &key])
                        .output()
                        .unwrap();
                    match out.status.code() {
                        Some(0) => granted.fetch_add(1, Ordering::SeqCst),
                        Some(1) => refused.fetch_add(1, Ordering::SeqCst),
                        _ => panic!("{}", String::from_utf8_lossy(&out.stderr)),
                    };
                }
            });
        }
    });
    assert_eq!(granted.load(Ordering::SeqCst), 50);
    assert_eq!(refused.load(Ordering::SeqCst), 68 - 50);
    assert_eq!(rt.block_on(rows_of(&db.pool, &key)), 50);
    drop(db);
}

/// The median of some durations, in µs.
fn median_us(mut samples: Vec<Duration>) -> f64 {
    samples.sort_unstable();
    samples[samples.len() / 2].as_micros() as f64
}

/// What the advisory lock costs: the median µs of one decision with and without it (grants,
/// which commit a row, and refusals, which write nothing), and the mean with 16 callers on
/// one key. Locked and unlocked calls alternate, so a busy machine slows both alike.
/// Prints its figures; fails only if the locked path ever over-admits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legacy_lock_cost() {
    const GRANTS: usize = 200;
    let db = TestDb::migrated("rollout").await;
    let limiters = [legacy(&db), legacy(&db).without_lock()];
    let names = ["with lock", "without lock"];
    // Warm the pool and the plan caches.
    for l in &limiters {
        for _ in 0..20 {
            l.try_acquire(&key_hash("warm"), 1).await.unwrap();
        }
    }
    let keys: Vec<[String; 2]> = (0..GRANTS / 50)
        .map(|i| {
            [
                key_hash(&format!("locked{i}")),
                key_hash(&format!("unlocked{i}")),
            ]
        })
        .collect();
    let mut grants = [Vec::new(), Vec::new()];
    let mut refusals = [Vec::new(), Vec::new()];
    for i in 0..GRANTS {
        for side in 0..2 {
            let started = Instant::now();
            let d = limiters[side]
                .try_acquire(&keys[i / 50][side], 1)
                .await
                .unwrap();
            grants[side].push(started.elapsed());
            assert!(d.granted);
        }
    }
    for i in 0..GRANTS {
        for side in 0..2 {
            let started = Instant::now();
            let d = limiters[side]
                .try_acquire(&keys[i % keys.len()][side], 1)
                .await
                .unwrap();
            refusals[side].push(started.elapsed());
            assert!(!d.granted);
        }
    }
    for side in 0..2 {
        eprintln!(
            "legacy decision {}: median {:.0} µs per grant, {:.0} µs per refusal",
            names[side],
            median_us(grants[side].clone()),
            median_us(refusals[side].clone()),
        );
    }
    for (name, l) in names.iter().zip(&limiters) {
        let key = key_hash(&format!("contended {name}"));
        let started = Instant::now();
        let tasks: Vec<_> = (0..16)
            .map(|_| {
                let (l, key) = (l.clone(), key.clone());
                tokio::spawn(async move {
                    let mut n = 0;
                    for _ in 0..10 {
                        n += u32::from(l.try_acquire(&key, 1).await.unwrap().granted);
                    }
                    n
                })
            })
            .collect();
        let mut granted = 0;
        for t in tasks {
            granted += t.await.unwrap();
        }
        let us = started.elapsed().as_micros() as f64 / 160.0;
        eprintln!(
            "legacy decision {name}: {us:.0} µs per decision with 16 callers on one key, \
             {granted} of 160 granted (limit 50)"
        );
        if *name == "with lock" {
            assert_eq!(granted, 50);
        }
    }
}

// ---------------------------------------------------------------------------------------
// Metrics
// ---------------------------------------------------------------------------------------

/// Counts every counter by name and labels (`name{k=v,...}`, labels sorted).
#[derive(Default)]
struct Counting {
    counters: Mutex<BTreeMap<String, Arc<AtomicU64>>>,
}

impl Counting {
    fn get(&self, key: &str) -> u64 {
        self.counters
            .lock()
            .unwrap()
            .get(key)
            .map_or(0, |c| c.load(Ordering::SeqCst))
    }
}

impl metrics::Recorder for Counting {
    fn describe_counter(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }
    fn describe_gauge(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }
    fn describe_histogram(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }
    fn register_counter(&self, key: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Counter {
        let mut labels: Vec<String> = key
            .labels()
            .map(|l| format!("{}={}", l.key(), l.value()))
            .collect();
        labels.sort();
        let name = format!("{}{{{}}}", key.name(), labels.join(","));
        let c = self
            .counters
            .lock()
            .unwrap()
            .entry(name)
            .or_default()
            .clone();
        metrics::Counter::from_arc(c)
    }
    fn register_gauge(&self, _: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Gauge {
        metrics::Gauge::noop()
    }
    fn register_histogram(
        &self,
        _: &metrics::Key,
        _: &metrics::Metadata<'_>,
    ) -> metrics::Histogram {
        metrics::Histogram::noop()
    }
}

#[test]
fn metrics_count_decisions_disagreements_and_shadow_errors() {
    let recorder = Counting::default();
    // A recorder local to this thread, and a runtime on this thread: other tests' metrics
    // never land here.
    metrics::with_local_recorder(&recorder, || {
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
            recorder.get(&format!("{decisions}{{{labels}}}")),
            n,
            "{labels}"
        );
    }
    assert_eq!(
        recorder.get("torn_quota_shadow_disagreements_total{direction=per_user_only}"),
        10
    );
    assert_eq!(
        recorder.get("torn_quota_shadow_disagreements_total{direction=legacy_only}"),
        0
    );
    assert_eq!(
        recorder.get("torn_quota_shadow_decisions_total{outcome=granted}"),
        60
    );
    assert_eq!(
        recorder.get("torn_quota_shadow_decisions_total{outcome=unavailable}"),
        3
    );
    // The first failure opens the guard; the next calls skip the shadow without an error.
    assert_eq!(
        recorder.get("torn_quota_shadow_errors_total{stage=decide}"),
        1
    );
}

// ---------------------------------------------------------------------------------------
// Disagreements across processes
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn disagreements_add_up_across_stores_and_rank_the_users_most_affected() {
    let config = common::config("report", 100, 60_000).build().unwrap();
    let (one, two) = (
        Disagreements::redis(&config).unwrap(),
        Disagreements::redis(&config).unwrap(),
    );
    for (store, user, direction, n) in [
        (&one, 10, Direction::LegacyOnly, 3),
        (&two, 10, Direction::PerUserOnly, 2),
        (&two, 11, Direction::LegacyOnly, 7),
        (&one, 12, Direction::PerUserOnly, 1),
    ] {
        for _ in 0..n {
            store
                .record(TornUserId::new(user), direction)
                .await
                .unwrap();
        }
    }
    let report = one.report(2).await.unwrap();
    assert_eq!(
        (report.legacy_only, report.per_user_only, report.total()),
        (10, 3, 13)
    );
    let users: Vec<(u64, u64, u64)> = report
        .users
        .iter()
        .map(|u| (u.user.get(), u.legacy_only, u.per_user_only))
        .collect();
    assert_eq!(users, [(11, 7, 0), (10, 3, 2)]);
    two.reset().await.unwrap();
    let empty = one.report(10).await.unwrap();
    assert_eq!(empty.total(), 0);
    assert!(empty.users.is_empty() && empty.since_ms.is_none());
}

// ---------------------------------------------------------------------------------------
// The CLI
// ---------------------------------------------------------------------------------------

/// The binary with a clean environment: the test Redis under `prefix`, the test database.
fn cli(prefix: &str, database_url: &str, env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_torn-quota"));
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("REDIS_URL", common::redis_url())
        .env("TORN_QUOTA_KEY_PREFIX", prefix)
        .env("DATABASE_URL", database_url)
        // Plain log lines, so that the tests can read them.
        .env("NO_COLOR", "1");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

fn last_json(out: &Output) -> Value {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().last().unwrap_or_else(|| {
        panic!(
            "no JSON on stdout; stderr: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    serde_json::from_str(line).unwrap()
}

#[tokio::test]
async fn cli_acquire_in_each_mode() {
    let db = TestDb::migrated("rollout").await;
    let prefix = common::unique_prefix("cli-rollout");
    let key = key_hash("cli");
    let legacy2 = [("TORN_QUOTA_LEGACY_LIMIT", "2")];
    let run = |env: &[(&str, &str)], args: &[&str]| {
        let mut all = legacy2.to_vec();
        all.extend_from_slice(env);
        cli(&prefix, &db.url, &all).args(args).output().unwrap()
    };
    let acquire = ["acquire", "--user", "5", "--key-hash", key.as_str()];

    let out = run(&[("TORN_QUOTA_MODE", "legacy")], &acquire);
    assert_eq!(out.status.code(), Some(0));
    let v = last_json(&out);
    assert_eq!(v["enforced_by"], "legacy");
    assert_eq!(v["granted"], true);
    assert_eq!(v["remaining"], 1);
    assert!(v.get("shadow").is_none(), "{v}");

    // Shadow: legacy's second slot, then a refusal the shadow disagrees with.
    let shadow = [("TORN_QUOTA_MODE", "shadow"), ("RUST_LOG", "info")];
    let out = run(&shadow, &acquire);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        last_json(&out)["shadow"],
        serde_json::json!({"granted": true, "agree": true})
    );
    let out = run(&shadow, &acquire);
    assert_eq!(out.status.code(), Some(1), "legacy refuses: 2 per key");
    let v = last_json(&out);
    assert_eq!(v["enforced_by"], "legacy");
    assert_eq!(v["granted"], false);
    assert!(v["retry_after_ms"].as_u64().unwrap() > 0);
    assert_eq!(
        v["shadow"],
        serde_json::json!({"granted": true, "agree": false})
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("shadow disagreement"), "{stderr}");
    assert!(stderr.contains("user=5"), "{stderr}");
    assert!(
        !stderr.contains(key.as_str()),
        "the key hash never shows: {stderr}"
    );

    // Per-user: no database needed at all.
    let out = cli(&prefix, "", &[])
        .env_remove("DATABASE_URL")
        .args(["acquire", "--user", "5"])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v = last_json(&out);
    assert_eq!(v["enforced_by"], "per-user");
    assert!(v.get("shadow").is_none());

    // Per-user at 0 %: everyone stays on legacy (which refuses: the key's 2 are taken).
    let out = run(&[("TORN_QUOTA_ROLLOUT_PERCENT", "0")], &acquire);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(last_json(&out)["enforced_by"], "legacy");

    // Legacy without a key hash, or without a database: exit 2, naming what is missing.
    let out = run(
        &[("TORN_QUOTA_MODE", "legacy")],
        &["acquire", "--user", "5"],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("key_hash"));
    let out = cli(&prefix, "", &[("TORN_QUOTA_MODE", "legacy")])
        .env_remove("DATABASE_URL")
        .args(acquire)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("DATABASE_URL") && stderr.contains("TORN_QUOTA_MODE"),
        "{stderr}"
    );
}

#[tokio::test]
async fn cli_rollout_report_route_reset_and_cleanup() {
    let db = TestDb::migrated("rollout").await;
    let prefix = common::unique_prefix("cli-report");
    let key = key_hash("cli-report");
    let run = |env: &[(&str, &str)], args: &[&str]| {
        let mut all = vec![("TORN_QUOTA_LEGACY_LIMIT", "1")];
        all.extend_from_slice(env);
        cli(&prefix, &db.url, &all).args(args).output().unwrap()
    };
    // Legacy takes its one slot, then refuses twice; the shadow grants all three.
    for code in [0, 1, 1] {
        let out = run(
            &[("TORN_QUOTA_MODE", "shadow")],
            &["acquire", "--user", "5", "--key-hash", key.as_str()],
        );
        assert_eq!(out.status.code(), Some(code));
    }

    let out = run(&[], &["rollout", "report"]);
    assert_eq!(out.status.code(), Some(0));
    let v = last_json(&out);
    assert_eq!(
        (v["legacy_only"].as_u64(), v["per_user_only"].as_u64()),
        (Some(0), Some(2))
    );
    assert_eq!(
        v["users"],
        serde_json::json!([{"user": 5, "legacy_only": 0, "per_user_only": 2, "total": 2}])
    );

    let out = run(
        &[
            ("TORN_QUOTA_MODE", "shadow"),
            ("TORN_QUOTA_ROLLOUT_PERCENT", "40"),
        ],
        &["rollout", "route", "--user", "1234"],
    );
    let v = last_json(&out);
    assert_eq!(
        v["bucket"],
        u64::from(rollout_bucket(TornUserId::new(1234)))
    );
    assert_eq!(v["route"], "legacy+shadow", "bucket 92 is above 40");

    assert_eq!(run(&[], &["rollout", "reset"]).status.code(), Some(0));
    assert_eq!(last_json(&run(&[], &["rollout", "report"]))["total"], 0);

    let out = run(&[], &["rollout", "cleanup"]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        last_json(&out)["deleted"],
        0,
        "every row is within the window"
    );
}

// ---------------------------------------------------------------------------------------
// The mode on the data path: real Torn calls (the simulator), through the client's gate
// and through `torn-quota batch`
// ---------------------------------------------------------------------------------------

mod data_path {
    use super::*;
    use torn_quota::batch::{BatchConfig, BatchHandler, BatchRequest, PoolKey};
    use torn_quota::gate::QuotaGate;
    use torn_quota::sim::{SimConfig, SimHandle, SimKey, Simulator};
    use torn_quota::torn::{TornClient, TornClientConfig};
    use torn_quota::{AccessLevel, ApiKey, KeyInfo};

    const WINDOW_MS: u64 = 1000;

    fn sim_key(n: u64, owner: u64) -> SimKey {
        SimKey::new(
            format!("DataPath{owner:04}K{n:03}"),
            TornUserId::new(owner),
            AccessLevel::Full,
        )
    }

    async fn sim(keys: &[SimKey]) -> SimHandle {
        Simulator::start(keys.to_vec(), SimConfig::default())
            .await
            .unwrap()
    }

    /// A client whose gate follows `mode` and `percent`: legacy at 3 per key per second,
    /// per-user at `limit` per owner per second.
    fn client(
        db: &TestDb,
        sim: &SimHandle,
        mode: Mode,
        percent: Option<u8>,
        limit: u32,
    ) -> TornClient {
        let config = common::config("data-path", limit, WINDOW_MS)
            .mode(mode)
            .legacy_limit(NonZeroU32::new(3).unwrap())
            .legacy_window(Duration::from_millis(WINDOW_MS))
            .build()
            .unwrap();
        let limiter = Limiter::redis(config.clone()).unwrap();
        let rollout = RolloutLimiter::builder(limiter.clone())
            .percent(percent)
            .legacy(LegacyLimiter::from_config(db.pool.clone(), &config))
            .build()
            .unwrap();
        let torn = TornClientConfig::builder()
            .base_url(sim.base_url())
            .build()
            .unwrap();
        let gate = QuotaGate::builder(limiter.clone(), &torn)
            .rollout(rollout)
            .build()
            .unwrap();
        TornClient::builder(limiter, torn)
            .gate(gate)
            .build()
            .unwrap()
    }

    async fn batch(
        client: &TornClient,
        keys: &[SimKey],
        n: u64,
    ) -> torn_quota::batch::BatchOutcome {
        let pool: Vec<PoolKey> = keys
            .iter()
            .map(|k| {
                PoolKey::new(ApiKey::new(&k.key).unwrap()).known(KeyInfo {
                    owner: k.owner,
                    access: k.access,
                })
            })
            .collect();
        BatchHandler::new(client.clone(), BatchConfig::default())
            .run(
                (0..n).map(|i| BatchRequest::new(format!("user/{}/basic", 100 + i))),
                pool,
            )
            .await
            .unwrap()
    }

    async fn rows(db: &TestDb, keys: &[SimKey]) -> i64 {
        let mut total = 0;
        for k in keys {
            total += rows_of(&db.pool, KeyHash::of(&k.key).as_str()).await;
        }
        total
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn legacy_decides_real_calls_per_key_and_writes_a_row_for_each() {
        let db = TestDb::migrated("rollout").await;
        let keys = [sim_key(1, 61), sim_key(2, 61)];
        let sim = sim(&keys).await;
        // Per-user would allow 100; legacy allows 3 per key per second.
        let c = client(&db, &sim, Mode::Legacy, None, 100);
        let k0 = ApiKey::new(&keys[0].key).unwrap();
        c.remember_owner(
            &k0,
            KeyInfo {
                owner: keys[0].owner,
                access: AccessLevel::Full,
            },
        )
        .await;
        for _ in 0..3 {
            c.get(&k0, "user/basic").await.unwrap();
        }
        assert_eq!(rows(&db, &keys[..1]).await, 3, "one row per call");
        let started = Instant::now();
        c.get(&k0, "user/basic").await.unwrap();
        assert!(
            started.elapsed() >= Duration::from_millis(500),
            "the key's 4th call waited"
        );

        let outcome = batch(&c, &keys, 8).await;
        assert!(outcome.results.iter().all(Result::is_ok));
        assert_eq!(
            rows(&db, &keys).await,
            4 + 8,
            "one row per call, batch included"
        );
        // 8 calls on 2 keys at 3 per key per second: at least a second.
        assert!(
            outcome.stats.duration >= Duration::from_millis(900),
            "{:?}",
            outcome.stats.duration
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn per_user_enforces_the_owner_and_writes_no_legacy_row() {
        let db = TestDb::migrated("rollout").await;
        let keys = [sim_key(1, 62), sim_key(2, 62)];
        let sim = sim(&keys).await;
        let c = client(&db, &sim, Mode::PerUser, None, 4);
        let outcome = batch(&c, &keys, 8).await;
        assert!(outcome.results.iter().all(Result::is_ok));
        assert_eq!(rows(&db, &keys).await, 0);
        // 8 calls at 4 per owner per second, whatever the keys: at least a window.
        assert!(
            outcome.stats.duration >= Duration::from_millis(900),
            "{:?}",
            outcome.stats.duration
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn shadow_enforces_legacy_and_counts_the_per_user_refusals() {
        let db = TestDb::migrated("rollout").await;
        let keys = [sim_key(1, 63), sim_key(2, 63)];
        let sim = sim(&keys).await;
        // Legacy grants 6 at once (3 per key); per-user, beside it, only 2.
        let c = client(&db, &sim, Mode::Shadow, None, 2);
        let outcome = batch(&c, &keys, 6).await;
        assert!(outcome.results.iter().all(Result::is_ok));
        assert_eq!(rows(&db, &keys).await, 6, "legacy enforced");
        assert!(
            outcome.stats.duration < Duration::from_millis(900),
            "per-user did not enforce"
        );
        let report = Disagreements::for_limiter(c.limiter())
            .unwrap()
            .report(5)
            .await
            .unwrap();
        assert!(report.legacy_only >= 4, "{report:?}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_rollout_percentage_routes_real_calls_by_the_stable_bucket() {
        let db = TestDb::migrated("rollout").await;
        // Two owners on either side of 50 %.
        let owners: Vec<u64> = (1000..)
            .filter(|&u| rollout_bucket(TornUserId::new(u)) < 50)
            .take(1)
            .chain(
                (1000..)
                    .filter(|&u| rollout_bucket(TornUserId::new(u)) >= 50)
                    .take(1),
            )
            .collect();
        let inside = [sim_key(1, owners[0])];
        let outside = [sim_key(1, owners[1])];
        let sim = sim(&[inside[0].clone(), outside[0].clone()]).await;
        let c = client(&db, &sim, Mode::PerUser, Some(50), 100);
        assert!(
            batch(&c, &inside, 3)
                .await
                .results
                .iter()
                .all(Result::is_ok)
        );
        assert!(
            batch(&c, &outside, 3)
                .await
                .results
                .iter()
                .all(Result::is_ok)
        );
        assert_eq!(
            rows(&db, &inside).await,
            0,
            "in the rollout: per-user decides"
        );
        assert_eq!(rows(&db, &outside).await, 3, "outside it: legacy decides");
    }

    /// `torn-quota batch` as an operator runs it: the mode in the environment governs the
    /// calls the batch makes.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn cli_batch_obeys_the_mode() {
        let db = TestDb::migrated("rollout").await;
        let keys = [sim_key(1, 64), sim_key(2, 64)];
        let sim = sim(&keys).await;
        let dir = std::env::temp_dir().join(common::unique_prefix("cli-batch-mode"));
        std::fs::create_dir_all(&dir).unwrap();
        let keys_file = dir.join("keys");
        let input = dir.join("input");
        std::fs::write(&keys_file, format!("{}\n{}\n", keys[0].key, keys[1].key)).unwrap();
        std::fs::write(
            &input,
            (0..6).fold(String::new(), |mut text, i| {
                text.push_str("user/");
                text.push_str(&(300 + i).to_string());
                text.push_str("/basic\n");
                text
            }),
        )
        .unwrap();
        let prefix = common::unique_prefix("cli-batch-mode");
        let run = |mode: &str, n: u32| {
            let output = dir.join(format!("out-{mode}-{n}"));
            let out = cli(
                &prefix,
                &db.url,
                &[
                    ("TORN_QUOTA_MODE", mode),
                    ("TORN_API_BASE_URL", &sim.base_url()),
                    ("TORN_QUOTA_LIMIT", "2"),
                    ("TORN_QUOTA_WINDOW_MS", "1000"),
                    ("TORN_QUOTA_LEGACY_LIMIT", "3"),
                    ("TORN_QUOTA_LEGACY_WINDOW_MS", "1000"),
                ],
            )
            .args(["batch", "--keys"])
            .arg(&keys_file)
            .arg("--input")
            .arg(&input)
            .arg("--output")
            .arg(&output)
            .output()
            .unwrap();
            assert_eq!(
                out.status.code(),
                Some(0),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        run("legacy", 1);
        assert_eq!(rows(&db, &keys).await, 6, "legacy: one row per call");
        run("shadow", 2);
        assert_eq!(rows(&db, &keys).await, 12, "shadow: legacy enforces");
        let config = common::config("unused", 2, 1000)
            .key_prefix(prefix.clone())
            .build()
            .unwrap();
        let report = Disagreements::redis(&config)
            .unwrap()
            .report(5)
            .await
            .unwrap();
        assert!(
            report.total() > 0,
            "shadow counted no disagreement from batch traffic"
        );
        run("per-user", 3);
        assert_eq!(rows(&db, &keys).await, 12, "per-user: no legacy row");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
