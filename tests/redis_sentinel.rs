//! Redis behind Sentinel: a primary, a replica and one sentinel of the test's own. A
//! `SENTINEL FAILOVER` in the middle of a batch at full quota is followed by the store on its
//! own: the batch finishes with every request answered and in order, Torn (the simulator)
//! never answers code 5, and the batch's state is on the new primary.
//!
//! The sentinel demotes the old primary some ten seconds after promoting the replica (until
//! then both accept writes, and the store keeps the one it has): the batch, 300 requests at
//! 20 a second, outlasts that, so its end runs on the new primary.

mod common;

use common::batch::{
    LIMIT, WINDOW, api_keys, assert_in_order, assert_torn_satisfied, basic, key, sim,
};
use common::sentinel::{MASTER, SentinelSet, query};

use std::sync::{Arc, Mutex};
use std::time::Duration;

use torn_quota::batch::{BatchConfig, BatchHandler, Progress};
use torn_quota::sim::SimKey;
use torn_quota::torn::{TornClient, TornClientConfig};
use torn_quota::{AccessLevel, Error, Limiter, RateLimitConfig, TornUserId};

/// The store follows the failover: the batch finishes, every answer in order, its end ran
/// on the new primary, and Torn never answered code 5. Writes the old primary took after
/// the promotion, before its demotion, are not on the new primary: the grant journal
/// writes them back when the store follows the sentinels. One failover serves both checks
/// (it takes about 20 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failover_mid_batch_is_followed_and_costs_no_code_5() {
    failover_mid_batch().await;
}

async fn failover_mid_batch() {
    let set = SentinelSet::start();
    let prefix = common::unique_prefix("sentinel");
    let k = SimKey::new(key(46, 1), TornUserId::new(46), AccessLevel::Full);
    let sim = sim(vec![k.clone()]).await;
    let config = common::config("sentinel", LIMIT, WINDOW.as_millis() as u64)
        .key_prefix(&prefix)
        .redis_sentinel([set.sentinel_url()], MASTER)
        .command_timeout(Duration::from_millis(500))
        .build()
        .unwrap();
    let client = TornClient::new(
        Limiter::redis(config).unwrap(),
        TornClientConfig::builder()
            .base_url(sim.base_url())
            .request_timeout(Duration::from_secs(1))
            .retry_min_delay(Duration::from_millis(50))
            .retry_max_delay(Duration::from_millis(400))
            .build()
            .unwrap(),
    )
    .unwrap();
    let done = Arc::new(Mutex::new(0usize));
    let seen = done.clone();
    let handler = BatchHandler::new(client, BatchConfig::default())
        .on_progress(move |p: Progress| *seen.lock().unwrap() = p.done);
    let set = Arc::new(set);
    let failover = {
        let set = Arc::clone(&set);
        let done = done.clone();
        tokio::spawn(async move {
            while *done.lock().unwrap() < 15 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            let started = std::time::Instant::now();
            tokio::task::spawn_blocking(move || {
                set.failover();
                set.wait_for_old_primary_demoted();
            })
            .await
            .unwrap();
            eprintln!("failover and demotion took {:?}", started.elapsed());
            *done.lock().unwrap()
        })
    };
    let outcome = handler
        .run(basic(1000..1300), api_keys(&[&k]))
        .await
        .expect("a failover must not abort the batch");
    let done_at_failover = failover.await.unwrap();
    assert!(
        done_at_failover < 300,
        "the failover came after the batch ({done_at_failover} done)"
    );
    assert_in_order(&outcome, 1000);
    assert_torn_satisfied(&sim);
    // The store followed the sentinel: the replica is the primary, and the bucket the batch
    // wrote after the failover is there.
    assert_eq!(set.primary_port(), set.replica.port);
    let keys: Vec<String> = query(
        set.replica.port,
        redis::cmd("KEYS").arg(format!("{prefix}*")),
    );
    assert!(!keys.is_empty(), "no state on the new primary");
    // Scripts replicate as their effects, so script calls counted on the new primary were
    // sent to it by the store after it followed the failover.
    let stats: String = query(set.replica.port, redis::cmd("INFO").arg("commandstats"));
    assert!(
        stats.contains("cmdstat_evalsha:") || stats.contains("cmdstat_eval:"),
        "the store never sent a script to the new primary: {stats}"
    );
}

#[test]
fn sentinel_settings_are_checked_at_build() {
    let no_master = RateLimitConfig::builder()
        .redis_sentinel_urls(["redis://127.0.0.1:26379"])
        .build()
        .unwrap_err();
    assert!(
        matches!(
            no_master,
            Error::Config {
                setting: "REDIS_SENTINEL_MASTER",
                ..
            }
        ),
        "{no_master:?}"
    );
    let bad = RateLimitConfig::builder()
        .redis_sentinel(["http://127.0.0.1:26379"], "m")
        .build()
        .unwrap_err();
    assert!(
        matches!(
            bad,
            Error::Config {
                setting: "REDIS_SENTINEL_URLS",
                ..
            }
        ),
        "{bad:?}"
    );
    let with_cluster = RateLimitConfig::builder()
        .redis_sentinel(["redis://127.0.0.1:26379"], "m")
        .redis_cluster_urls(["redis://127.0.0.1:7000"])
        .build()
        .unwrap_err();
    assert!(
        matches!(
            with_cluster,
            Error::Config {
                setting: "REDIS_SENTINEL_URLS",
                ..
            }
        ),
        "{with_cluster:?}"
    );
}

/// The settings reach the configuration: the sentinels, the master, and a password that
/// never shows in its Debug.
#[cfg(feature = "settings")]
#[test]
fn sentinel_settings_are_read() {
    let env = |name: &str| match name {
        "REDIS_SENTINEL_URLS" => Some("redis://10.0.0.1:26379, redis://10.0.0.2:26379".into()),
        "REDIS_SENTINEL_MASTER" => Some("mymaster".into()),
        "REDIS_SENTINEL_PASSWORD" => Some("s3cret-sentinel".into()),
        _ => None,
    };
    let config = torn_quota::settings::Settings::from_sources(None, env)
        .unwrap()
        .rate_limit()
        .unwrap();
    assert!(config.is_redis_sentinel());
    assert_eq!(
        config.redis_sentinel_urls(),
        ["redis://10.0.0.1:26379", "redis://10.0.0.2:26379"]
    );
    assert_eq!(config.redis_sentinel_master(), Some("mymaster"));
    assert!(!format!("{config:?}").contains("s3cret-sentinel"));
    assert!(config.redis_target_redacted().starts_with("sentinel "));
}
