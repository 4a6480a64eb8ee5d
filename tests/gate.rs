//! The quota gate: every unit a call takes goes back when the call is never sent, is
//! settled when Torn answers, and the IP bucket follows the egress id. Real Redis, the
//! simulator.

mod common;

use std::time::Duration;

use torn_quota::gate::QuotaGate;
use torn_quota::torn::{CallOptions, KeyHash, TornClientConfig};
use torn_quota::{Limiter, TornUserId};

fn client_config() -> TornClientConfig {
    TornClientConfig::builder()
        .request_timeout(Duration::from_secs(5))
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_settled_ticket_counts_one_window_from_the_answer() {
    let limiter = Limiter::redis(common::config("gate-settle", 5, 300).build().unwrap()).unwrap();
    let gate = QuotaGate::builder(limiter.clone(), &client_config())
        .build()
        .unwrap();
    let owner = TornUserId::new(7);
    let hash = KeyHash::of("AbCdEfGh12345678");
    let kept = gate
        .take(Some(owner), &hash, &CallOptions::new())
        .await
        .unwrap();
    let settled = gate
        .take(Some(owner), &hash, &CallOptions::new())
        .await
        .unwrap();
    assert_eq!(limiter.status(owner).await.unwrap().used, 2);
    gate.settle(settled).await;
    tokio::time::sleep(Duration::from_millis(450)).await;
    // The settled unit left after one window; the one never settled is still in flight
    // (request timeout + window).
    assert_eq!(limiter.status(owner).await.unwrap().used, 1);
    drop(kept);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_chunk() {
    use torn_quota::Priority;
    let limiter = Limiter::redis(common::config("gate-probe", 5, 300).build().unwrap()).unwrap();
    let gate = QuotaGate::builder(limiter.clone(), &client_config())
        .build()
        .unwrap();
    let owner = TornUserId::new(7);
    let t = gate.try_take(Some(owner), None, 5, Priority::High, None).await.unwrap().unwrap();
    println!("units {}", t.units());
    gate.settle(t).await;
    let r = gate.try_take(Some(owner), None, 5, Priority::High, None).await.unwrap();
    println!("{:?}", r.as_ref().map(|t| t.units()));
    println!("{:?}", limiter.status(owner).await.unwrap());
}
