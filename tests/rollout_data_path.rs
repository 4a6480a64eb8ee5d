//! The mode on the data path: real Torn calls (the simulator), through the client's gate
//! and through `torn-quota batch`.
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
#[cfg(feature = "cli")]
use common::rollout::cli;
use common::rollout::rows_of;
use torn_quota::KeyHash;
use torn_quota::rollout::{Disagreements, LegacyLimiter, RolloutLimiter, rollout_bucket};
use torn_quota::{Limiter, Mode, TornUserId};

// ---------------------------------------------------------------------------------------
// The mode on the data path: real Torn calls (the simulator), through the client's gate
// and through `torn-quota batch`
// ---------------------------------------------------------------------------------------

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
fn client(db: &TestDb, sim: &SimHandle, mode: Mode, percent: Option<u8>, limit: u32) -> TornClient {
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

async fn batch(client: &TornClient, keys: &[SimKey], n: u64) -> torn_quota::batch::BatchOutcome {
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
#[cfg(feature = "cli")]
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
