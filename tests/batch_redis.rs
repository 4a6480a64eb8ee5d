//! The batch handler on a Redis of its own (a private `redis-server`): a freeze mid-batch
//! waited out, and what a batch costs Redis per Torn request.

mod common;

use common::batch::{
    LIMIT, WINDOW, api_keys, assert_in_order, assert_torn_satisfied, basic, key, sim,
};
use common::redis_server::PrivateRedis;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use torn_quota::AccessLevel;
use torn_quota::batch::{BatchConfig, BatchHandler, Progress};
use torn_quota::sim::SimKey;
use torn_quota::torn::{TornClient, TornClientConfig};
use torn_quota::{Limiter, TornUserId};

/// Redis freezes for 3 s in the middle of a batch: the batch waits it out with back-off
/// and finishes with every answer, none lost to an abort.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_freeze_mid_batch_is_waited_out() {
    let redis = PrivateRedis::start();
    let k = SimKey::new(key(45, 1), TornUserId::new(45), AccessLevel::Full);
    let sim = sim(vec![k.clone()]).await;
    let config = common::config("batch-freeze", LIMIT, WINDOW.as_millis() as u64)
        .redis_url(redis.url())
        .command_timeout(Duration::from_millis(500))
        .build()
        .unwrap();
    let client = TornClient::new(
        Limiter::redis(config).unwrap(),
        TornClientConfig::builder()
            .base_url(sim.base_url())
            // A unit whose settle is lost in the freeze stays provisional this long.
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
    let freezer = {
        let url = redis.url();
        let done = done.clone();
        tokio::spawn(async move {
            while *done.lock().unwrap() < 15 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            let client = redis::Client::open(url).unwrap();
            let mut c = client.get_multiplexed_async_connection().await.unwrap();
            let _: () = redis::cmd("CLIENT")
                .arg("PAUSE")
                .arg(3000)
                .arg("ALL")
                .query_async(&mut c)
                .await
                .unwrap();
            std::time::Instant::now()
        })
    };
    let started = std::time::Instant::now();
    let outcome = handler
        .run(basic(900..940), api_keys(&[&k]))
        .await
        .expect("a frozen Redis must not abort the batch");
    let frozen_at = freezer.await.unwrap();
    assert_in_order(&outcome, 900);
    assert_torn_satisfied(&sim);
    assert!(
        started.elapsed() > frozen_at.duration_since(started) + Duration::from_secs(2),
        "the batch did not live through the freeze"
    );
}

/// Script calls (`EVAL`, `EVALSHA`) so far, from `INFO commandstats`: one per round trip of
/// the quota protocol (commands that scripts run inside are counted apart, and left out).
async fn redis_commands(url: &str) -> u64 {
    let client = redis::Client::open(url).unwrap();
    let mut c = client.get_multiplexed_async_connection().await.unwrap();
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut c)
        .await
        .unwrap();
    info.lines()
        .filter(|l| l.starts_with("cmdstat_eval:") || l.starts_with("cmdstat_evalsha:"))
        .filter_map(|l| {
            l.split("calls=")
                .nth(1)?
                .split(',')
                .next()?
                .parse::<u64>()
                .ok()
        })
        .sum()
}

/// What one Torn request costs Redis in a batch: its owner's and the IP's units, asked in
/// bursts, and their settles, coalesced by the limiter's dispatcher.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_costs_redis_few_commands_per_torn_request() {
    let redis = PrivateRedis::start();
    let keys: Vec<SimKey> = (51..=53)
        .map(|o| SimKey::new(key(o, 1), TornUserId::new(o), AccessLevel::Full))
        .collect();
    let sim = sim(keys.clone()).await;
    let config = common::config("batch-rtt", LIMIT, WINDOW.as_millis() as u64)
        .redis_url(redis.url())
        .build()
        .unwrap();
    let client = TornClient::new(
        Limiter::redis(config).unwrap(),
        TornClientConfig::builder()
            .base_url(sim.base_url())
            .build()
            .unwrap(),
    )
    .unwrap();
    let before = redis_commands(&redis.url()).await;
    let outcome = BatchHandler::new(client, BatchConfig::default())
        .run(
            basic(1000..1090),
            api_keys(&keys.iter().collect::<Vec<_>>()),
        )
        .await
        .unwrap();
    assert_in_order(&outcome, 1000);
    assert_torn_satisfied(&sim);
    let commands = redis_commands(&redis.url()).await - before;

    let requests = sim.counters().requests;
    let per_request = commands as f64 / requests as f64;
    eprintln!("redis script calls per torn request: {commands} / {requests} = {per_request:.2}");
    // One by one it would be 4 (owner acquire, IP acquire, two settles), plus the refused
    // asks of every wait.
    assert!(
        per_request < 3.0,
        "{per_request:.2} script calls per request"
    );
}
