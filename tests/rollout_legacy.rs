//! The legacy per-key limiter (rows in PostgreSQL): its window, costs and cleanup, and
//! processes and CLI runs racing it without over-admitting. Its timing lives in
//! `benches/legacy_lock.rs`.
//!
//! Every test has a database of its own (dropped at the end) and a Redis key prefix of its
//! own, so tests run in parallel. PostgreSQL: `TORN_QUOTA_TEST_DATABASE_URL`, default
//! `postgres://postgres@127.0.0.1:5432/test` (a role that may create databases).

// Everything here runs the legacy limiter.
#![cfg(feature = "legacy")]

mod common;

use std::collections::{BTreeMap, HashMap};
use std::num::NonZeroU32;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::pg::TestDb;
#[cfg(feature = "cli")]
use common::rollout::cli;
use common::rollout::{key_hash, legacy, rows_of};
use sqlx::postgres::PgPoolOptions;
use tokio_util::sync::CancellationToken;
use torn_quota::Error;
use torn_quota::rollout::LegacyLimiter;

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

#[cfg(feature = "cli")]
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

/// The advisory lock's guarantee, with the lock and without it (what the benchmark
/// `benches/legacy_lock.rs` times): one caller's grants and refusals are decided the same
/// either way, and 16 callers on one key are never granted more than the limit with the lock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legacy_decisions_with_and_without_the_lock_and_16_callers_never_over_admit() {
    const GRANTS: usize = 200;
    let db = TestDb::migrated("rollout").await;
    let limiters = [legacy(&db), legacy(&db).without_lock()];
    let names = ["with lock", "without lock"];
    let keys: Vec<[String; 2]> = (0..GRANTS / 50)
        .map(|i| {
            [
                key_hash(&format!("locked{i}")),
                key_hash(&format!("unlocked{i}")),
            ]
        })
        .collect();
    for i in 0..GRANTS {
        for side in 0..2 {
            let d = limiters[side]
                .try_acquire(&keys[i / 50][side], 1)
                .await
                .unwrap();
            assert!(d.granted, "{}: call {i}", names[side]);
        }
    }
    for i in 0..GRANTS {
        for side in 0..2 {
            let d = limiters[side]
                .try_acquire(&keys[i % keys.len()][side], 1)
                .await
                .unwrap();
            assert!(!d.granted, "{}: call {i} over the limit", names[side]);
        }
    }
    for (name, l) in names.iter().zip(&limiters) {
        let key = key_hash(&format!("contended {name}"));
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
        if *name == "with lock" {
            assert_eq!(granted, 50, "16 callers x 10 calls on one key, limit 50");
        }
    }
}
