//! The quota gate: every unit a call takes goes back when the call is never sent, is
//! settled when Torn answers, and the IP bucket follows the egress id. Real Redis, the
//! simulator.

mod common;

use std::time::Duration;

use std::num::NonZeroU32;
use std::sync::Arc;

use common::torn_client::SlowFirstGrant;

use torn_quota::batch::{BatchConfig, BatchHandler, BatchRequest, PoolKey};
use torn_quota::gate::QuotaGate;
use torn_quota::sim::{SimConfig, SimKey, Simulator};
use torn_quota::torn::{TornClient, TornClientConfig};
use torn_quota::{AccessLevel, ApiKey, KeyHash, KeyInfo, Limiter, TornUserId, Wait};

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
        .take(Some(owner), &hash, &Wait::forever())
        .await
        .unwrap();
    let settled = gate
        .take(Some(owner), &hash, &Wait::forever())
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
async fn a_request_never_sent_gives_back_every_unit() {
    // Nothing listens on this port: every request is refused before it reaches anyone.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let limiter =
        Limiter::redis(common::config("gate-refused", 5, 60_000).build().unwrap()).unwrap();
    let client = TornClient::new(
        limiter.clone(),
        TornClientConfig::builder()
            .base_url(format!("http://127.0.0.1:{port}"))
            .max_attempts(1)
            .build()
            .unwrap(),
    )
    .unwrap();
    let owner = TornUserId::new(8);
    let key = ApiKey::new("AbCdEfGh12345678").unwrap();
    client
        .remember_owner(
            &key,
            KeyInfo {
                owner,
                access: AccessLevel::Full,
            },
        )
        .await;
    // Through the client, with retries off ...
    let err = client.get(&key, "user/basic").await.unwrap_err();
    assert!(matches!(err, torn_quota::Error::Http { .. }), "{err}");
    // ... and through a batch, whose requests all fail the same way.
    let outcome = BatchHandler::new(client.clone(), BatchConfig::default())
        .run(
            (1..=4).map(|i| BatchRequest::new(format!("user/{i}/basic"))),
            vec![PoolKey::new(key.clone()).known(KeyInfo {
                owner,
                access: AccessLevel::Full,
            })],
        )
        .await
        .unwrap();
    assert!(outcome.results.iter().all(Result::is_err));
    assert!(outcome.stats.sent > 0, "the batch tried");
    let owner_used = limiter.status(owner).await.unwrap().used;
    let ip_used = client
        .ip_limiter()
        .status(TornUserId::new(0))
        .await
        .unwrap()
        .used;
    assert_eq!(
        (owner_used, ip_used),
        (0, 0),
        "units kept for requests never sent"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ip_refusal_charges_the_owner_nothing() {
    let keys: Vec<SimKey> = vec![SimKey::new(
        "IpRefusalKey0001",
        TornUserId::new(9),
        AccessLevel::Full,
    )];
    let sim = Simulator::start(keys.clone(), SimConfig::default())
        .await
        .unwrap();
    // The owner's window is long, so every unit it was charged is still there at the end;
    // the IP's is short and tight, so the batch keeps meeting IP refusals.
    let limiter = Limiter::redis(
        common::config("gate-iprefusal", 100, 60_000)
            .build()
            .unwrap(),
    )
    .unwrap();
    let client = TornClient::new(
        limiter.clone(),
        TornClientConfig::builder()
            .base_url(sim.base_url())
            .ip_limit(NonZeroU32::new(3).unwrap())
            .ip_window(Duration::from_millis(300))
            .build()
            .unwrap(),
    )
    .unwrap();
    let owner = TornUserId::new(9);
    let key = ApiKey::new(&keys[0].key).unwrap();
    let outcome = BatchHandler::new(client, BatchConfig::default())
        .run(
            (1..=9).map(|i| BatchRequest::new(format!("user/{i}/basic"))),
            vec![PoolKey::new(key).known(KeyInfo {
                owner,
                access: AccessLevel::Full,
            })],
        )
        .await
        .unwrap();
    assert!(outcome.results.iter().all(Result::is_ok));
    let counted = sim.counters().admitted;
    assert_eq!(counted, 9);
    let used = limiter.status(owner).await.unwrap().used;
    assert_eq!(
        used, 9,
        "the owner paid for more requests than Torn counted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn egress_ids_name_their_own_ip_buckets() {
    let config = common::config("gate-egress", 100, 60_000).build().unwrap();
    let gate = |egress: &str| {
        // A limiter of its own, as another process would have.
        let limiter = Limiter::redis(config.clone()).unwrap();
        let torn = TornClientConfig::builder()
            .ip_limit(NonZeroU32::new(2).unwrap())
            .egress_id(egress)
            .build()
            .unwrap();
        QuotaGate::builder(limiter, &torn).build().unwrap()
    };
    let hash = KeyHash::of("AbCdEfGh12345678");
    let now = || Wait::forever().until(tokio::time::Instant::now());
    let a = gate("203.0.113.1");
    let a_again = gate("203.0.113.1");
    let b = gate("203.0.113.2");
    let mut kept = Vec::new();
    for _ in 0..2 {
        kept.push(a.take(None, &hash, &now()).await.unwrap());
    }
    // The same id shares the bucket: full.
    assert!(matches!(
        a_again.take(None, &hash, &now()).await,
        Err(torn_quota::Error::Deadline)
    ));
    // Another id has its own.
    for _ in 0..2 {
        kept.push(b.take(None, &hash, &now()).await.unwrap());
    }
    assert!(b.take(None, &hash, &now()).await.is_err());
    drop(kept);
}

/// Accepts HTTP requests on loopback, answers each with a small Torn body, and keeps the
/// request lines it saw.
async fn recording_server() -> (String, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else {
                return;
            };
            let log = log.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                loop {
                    let Ok(n) = socket.read(&mut buf).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    let text = String::from_utf8_lossy(&buf[..n]).to_string();
                    if let Some(line) = text.lines().next() {
                        log.lock().unwrap().push(line.to_owned());
                    }
                    let body = r#"{"profile":{"id":1}}"#;
                    let reply = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                        body.len()
                    );
                    if socket.write_all(reply.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (url, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_comment_rides_on_every_call_of_the_client_and_the_batch() {
    let (url, seen) = recording_server().await;
    let limiter =
        Limiter::redis(common::config("gate-comment", 100, 60_000).build().unwrap()).unwrap();
    let client = TornClient::new(
        limiter,
        TornClientConfig::builder()
            .base_url(url)
            .comment("tq-bot")
            .build()
            .unwrap(),
    )
    .unwrap();
    let owner = TornUserId::new(10);
    let key = ApiKey::new("CommentKey000001").unwrap();
    let info = KeyInfo {
        owner,
        access: AccessLevel::Full,
    };
    client.remember_owner(&key, info).await;
    client
        .get(&key, "user/basic?striptags=false")
        .await
        .unwrap();
    client.get_v1(&key, "user/4", &["basic"]).await.unwrap();
    let outcome = BatchHandler::new(client, BatchConfig::default())
        .run(
            (1..=2).map(|i| BatchRequest::new(format!("user/{i}/basic"))),
            vec![PoolKey::new(key).known(info)],
        )
        .await
        .unwrap();
    assert!(outcome.results.iter().all(Result::is_ok));
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 4, "{seen:?}");
    for line in &seen {
        assert!(line.contains("comment=tq-bot"), "{line}");
        assert!(
            !line.contains("CommentKey"),
            "the key stays in the header: {line}"
        );
    }
}

#[test]
fn a_comment_is_short_and_url_safe() {
    for bad in ["", "eleven-char", "a b", "tq&x=1", "ünï"] {
        let err = TornClientConfig::builder()
            .comment(bad)
            .build()
            .unwrap_err();
        assert!(err.to_string().contains("TORN_API_COMMENT"), "{bad}: {err}");
    }
    assert!(
        TornClientConfig::builder()
            .comment("ten-chars.")
            .build()
            .is_ok()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batchs_share_overrides_expire_on_their_own() {
    let limiter =
        Limiter::redis(common::config("gate-shares", 100, 1000).build().unwrap()).unwrap();
    let gate = QuotaGate::builder(limiter.clone(), &client_config())
        .build()
        .unwrap();
    let owner = TornUserId::new(11);
    let shares = gate
        .shares(&[(owner, NonZeroU32::new(5).unwrap())])
        .await
        .unwrap();
    let key = shares.limiter().keys().bucket(owner).limit;
    let mut conn = common::redis_conn().await;
    let ttl: i64 = redis::cmd("PTTL")
        .arg(&key)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(
        ttl > 0 && ttl as u128 <= shares.ttl().as_millis(),
        "share override without expiry: {ttl}"
    );
    shares.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_ticket_stale_before_its_send_goes_back_and_the_request_goes_again() {
    let owner = TornUserId::new(6);
    let keys = vec![SimKey::new("StaleBatchKey001", owner, AccessLevel::Full)];
    let sim = Simulator::start(keys.clone(), SimConfig::default())
        .await
        .unwrap();
    let limiter = Limiter::redis(
        common::config("gate-stale-batch", 100, 60_000)
            .build()
            .unwrap(),
    )
    .unwrap();
    let timeout = Duration::from_millis(300);
    let config = TornClientConfig::builder()
        .base_url(sim.base_url())
        .request_timeout(timeout)
        .build()
        .unwrap();
    // The first grant comes back after the timeout has run out: its ticket is stale on
    // arrival at the send.
    let slow = Arc::new(SlowFirstGrant::new(
        limiter.clone(),
        Duration::from_millis(450),
    ));
    let gate = QuotaGate::builder(limiter.clone(), &config)
        .owner_quota(slow.clone())
        .build()
        .unwrap();
    let client = TornClient::builder(limiter.clone(), config)
        .gate(gate)
        .build()
        .unwrap();
    let key = ApiKey::new(&keys[0].key).unwrap();
    let outcome = BatchHandler::new(client.clone(), BatchConfig::default())
        .run(
            [BatchRequest::new("user/6/basic")],
            vec![PoolKey::new(key).known(KeyInfo {
                owner,
                access: AccessLevel::Full,
            })],
        )
        .await
        .unwrap();
    let data = outcome.results[0]
        .as_ref()
        .expect("answered on a fresh ticket");
    assert_eq!(data["profile"]["id"], 6);
    assert_eq!(
        slow.late_arrival(&sim, owner, timeout),
        None,
        "a request reached torn this many µs after its grant, past the {timeout:?} its \
         units are held for"
    );
    assert_eq!(slow.asked_us().len(), 2, "the stale ticket was replaced");
    assert_eq!(sim.admissions(owner).len(), 1);
    assert_eq!(
        outcome.stats.sent, 1,
        "the request never sent is not counted"
    );
    // The stale ticket's units went back, the fresh one's were settled.
    assert_eq!(limiter.status(owner).await.unwrap().used, 1);
    let ip = client.ip_limiter().status(TornUserId::new(0)).await;
    assert_eq!(ip.unwrap().used, 1);
}
