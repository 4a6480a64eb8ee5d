//! The Torn client's bounded retries, against the simulator with real Redis: what is never
//! retried (code 16, request errors), transient failures and timeouts retried until an
//! answer, the attempt limit, and a connect error giving its units back.

mod common;

use common::torn_client::{
    FULL_A, LIMIT, MINIMAL, OWNER_4, WINDOW_MS, assert_clean, assert_no_key_in_urls, captured, key,
    limiter, sent_with, setup, torn_code,
};

use std::time::Duration;

use tokio::time::Instant;
use torn_quota::sim::Fault;
use torn_quota::torn::{KeyStatus, TornClient, TornClientConfig};
use torn_quota::{AccessLevel, KeyInfo};
use torn_quota::{Error, TornUserId};

#[tokio::test]
async fn codes_16_and_request_errors_fail_without_retry() {
    let s = setup("fail", |c| c).await;
    let minimal = key(MINIMAL);
    assert_eq!(
        torn_code(&s.client.get(&minimal, "user/battlestats").await),
        16
    );
    assert_eq!(sent_with(&s.sim, MINIMAL), 2, "key info, then one try");
    assert_eq!(s.client.key_status(&minimal), KeyStatus::Usable);
    s.client.get(&minimal, "user/basic").await.unwrap();

    let full = key(FULL_A);
    s.client.owner_of(&full).await.unwrap();
    for (path, code) in [("nosuch/basic", 3), ("user/nosuch", 4), ("user/0/basic", 6)] {
        let before = sent_with(&s.sim, FULL_A);
        assert_eq!(torn_code(&s.client.get(&full, path).await), code);
        assert_eq!(sent_with(&s.sim, FULL_A), before + 1, "{path}: one try");
    }
    assert_eq!(s.client.key_status(&full), KeyStatus::Usable);
}

#[tokio::test]
async fn transient_failures_are_retried_until_an_answer() {
    let s = setup("transient", |c| c).await;
    let k = key(FULL_A);
    s.client.owner_of(&k).await.unwrap();
    for fault in [
        Fault::Code(0),
        Fault::Code(11),
        Fault::Code(12),
        Fault::Code(17),
        Fault::Http(500),
        Fault::Http(503),
        Fault::MalformedJson,
        Fault::DropConnection,
    ] {
        let before = sent_with(&s.sim, FULL_A);
        s.sim.inject(fault.clone());
        let me = s.client.get(&k, "user/basic").await;
        assert_eq!(me.unwrap()["profile"]["id"], 4, "{fault:?}");
        assert_eq!(
            sent_with(&s.sim, FULL_A),
            before + 2,
            "{fault:?}: one retry"
        );
    }
    assert_eq!(s.sim.counters().errors(5), 0);
    assert_no_key_in_urls(&s.sim);
}

#[tokio::test]
async fn a_timeout_is_retried() {
    let s = setup("timeout", |c| c.request_timeout(Duration::from_millis(300))).await;
    let k = key(FULL_A);
    s.client.owner_of(&k).await.unwrap();
    s.sim.inject(Fault::Slow(Duration::from_secs(3)));
    let started = Instant::now();
    s.client.get(&k, "user/basic").await.unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(
        sent_with(&s.sim, FULL_A),
        3,
        "key info, the slow try, the retry"
    );
    // The slow try reached Torn: its unit stays counted.
    assert_eq!(s.limiter.status(OWNER_4).await.unwrap().used, 3);
}

#[tokio::test]
async fn retries_stop_at_max_attempts() {
    let s = setup("bound", |c| c.max_attempts(3)).await;
    let k = key(FULL_A);
    s.client.owner_of(&k).await.unwrap();
    for _ in 0..5 {
        s.sim.inject(Fault::Code(17));
    }
    assert_eq!(torn_code(&s.client.get(&k, "user/basic").await), 17);
    assert_eq!(
        sent_with(&s.sim, FULL_A),
        1 + 3,
        "key info, then exactly 3 attempts"
    );
    assert_eq!(s.sim.counters().errors(17), 3);
    // Each attempt took its own unit of the owner's quota.
    assert_eq!(s.limiter.status(OWNER_4).await.unwrap().used, 1 + 3);

    let s = setup("bound1", |c| c.max_attempts(1)).await;
    s.client.owner_of(&k).await.unwrap();
    s.sim.inject(Fault::Http(502));
    let err = s.client.get(&k, "user/basic").await.unwrap_err();
    assert!(matches!(err, Error::Http { .. }), "{err:?}");
    assert_clean(&err);
    assert_eq!(sent_with(&s.sim, FULL_A), 2, "max_attempts 1: no retry");
}

#[tokio::test]
async fn a_connect_error_gives_its_units_back() {
    captured();
    // A port nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let limiter = limiter("connect", LIMIT, WINDOW_MS).await;
    let config = TornClientConfig::builder()
        .base_url(format!("http://127.0.0.1:{port}"))
        .retry_min_delay(Duration::from_millis(5))
        .retry_max_delay(Duration::from_millis(20))
        .build()
        .unwrap();
    let client = TornClient::new(limiter.clone(), config).unwrap();
    let k = key(FULL_A);
    client
        .remember_owner(
            &k,
            KeyInfo {
                owner: OWNER_4,
                access: AccessLevel::Full,
            },
        )
        .await;
    let err = client.get(&k, "user/basic").await.unwrap_err();
    assert!(matches!(err, Error::Http { .. }), "{err:?}");
    assert_clean(&err);
    assert!(
        !format!("{err:?}").contains("http://"),
        "the url is stripped (the socket address may show): {err:?}"
    );
    assert_eq!(
        limiter.status(OWNER_4).await.unwrap().used,
        0,
        "owner units refunded"
    );
    let ip = client
        .ip_limiter()
        .status(TornUserId::new(0))
        .await
        .unwrap();
    assert_eq!(ip.used, 0, "ip units refunded");
}
