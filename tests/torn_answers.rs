//! Torn's answers the client must act on beyond its error codes: HTTP 429 from Torn's front,
//! a Cloudflare challenge, keys parked by codes 13 and 18 and re-checked, a key-info answer
//! without its owner, and the shared owner memo of a refused key. Real Redis, the simulator
//! over real sockets.

mod common;

use std::num::NonZeroU32;
use std::time::Duration;

use tokio::time::Instant;
use torn_quota::sim::{Fault, KeyState, SimConfig, SimHandle, SimKey, Simulator};
use torn_quota::torn::{KeyStatus, TornClient, TornClientConfig, TornClientConfigBuilder};
use torn_quota::{AccessLevel, ApiKey, Error, KeyHash, Limiter, TornUserId, Wait};

const OWNER_KEY: &str = "FullKeyOfOwner04";
const SPARE_KEY: &str = "SpareKeyOfOwnr09";
const OWNER: TornUserId = TornUserId::new(4);

fn key(k: &str) -> ApiKey {
    ApiKey::new(k).unwrap()
}

async fn sim() -> SimHandle {
    let config = SimConfig::builder()
        .limit(NonZeroU32::new(20).unwrap())
        .window(Duration::from_millis(1000))
        .build()
        .unwrap();
    Simulator::start(
        [
            SimKey::new(OWNER_KEY, OWNER, AccessLevel::Full),
            SimKey::new(SPARE_KEY, TornUserId::new(9), AccessLevel::Public),
        ],
        config,
    )
    .await
    .unwrap()
}

fn client_config(sim: &SimHandle) -> TornClientConfigBuilder {
    TornClientConfig::builder()
        .base_url(sim.base_url())
        .safety_margin(Duration::from_millis(20))
        .retry_min_delay(Duration::from_millis(5))
        .retry_max_delay(Duration::from_millis(40))
        .pause(Duration::from_millis(400))
}

async fn limiter(name: &str) -> Limiter {
    common::redis_conn().await;
    Limiter::redis(common::config(name, 20, 1000).build().unwrap()).unwrap()
}

fn code_of(r: &Result<serde_json::Value, Error>) -> Option<u16> {
    match r {
        Err(Error::Torn { code, .. }) => Some(code.get()),
        _ => None,
    }
}

/// Requests the simulator received with `k`.
fn sent_with(sim: &SimHandle, k: &str) -> u64 {
    sim.counters()
        .requests_by_key
        .get(&KeyHash::of(k))
        .copied()
        .unwrap_or(0)
}

#[tokio::test]
async fn http_429_pauses_every_call_like_code_8() {
    let sim = sim().await;
    let client =
        TornClient::new(limiter("a429").await, client_config(&sim).build().unwrap()).unwrap();
    let (a, spare) = (key(OWNER_KEY), key(SPARE_KEY));
    client.owner_of(&a).await.unwrap();
    client.owner_of(&spare).await.unwrap();
    let before = sim.counters().requests;
    sim.inject(Fault::Http(429));
    let r = client.get(&a, "user/basic").await;
    assert!(matches!(r, Err(Error::Http { .. })), "{r:?}");
    assert_eq!(sim.counters().requests, before + 1, "a 429 is not retried");
    assert!(client.paused_for().is_some(), "a 429 pauses the client");
    // Every key waits, and a call that cannot wait fails at once, sending nothing.
    let short = Wait::forever().at_most(Duration::from_millis(50));
    let r = client.get_with(&spare, "user/basic", &short).await;
    assert_eq!(code_of(&r), Some(8), "{r:?}");
    assert_eq!(
        sim.counters().requests,
        before + 1,
        "nothing sent while paused"
    );
    let started = Instant::now();
    client.get(&spare, "user/basic").await.unwrap();
    assert!(started.elapsed() >= Duration::from_millis(250));
}

#[tokio::test]
async fn a_cloudflare_challenge_is_its_own_error_and_never_retried() {
    let sim = sim().await;
    let client = TornClient::new(
        limiter("challenge").await,
        client_config(&sim).max_attempts(3).build().unwrap(),
    )
    .unwrap();
    let a = key(OWNER_KEY);
    client.owner_of(&a).await.unwrap();
    let before = sim.counters().requests;
    sim.inject(Fault::Challenge);
    let err = client.get(&a, "user/basic").await.unwrap_err();
    assert!(matches!(err, Error::Challenge { .. }), "{err:?}");
    assert!(err.to_string().contains("cf-mitigated"), "{err}");
    assert_eq!(
        sim.counters().requests,
        before + 1,
        "sent once, not retried"
    );
    // Not a reason to stop using the key or to pause everything.
    assert_eq!(client.key_status(&a), KeyStatus::Usable);
    assert!(client.paused_for().is_none());
    client.get(&a, "user/basic").await.unwrap();
}

#[tokio::test]
async fn codes_13_and_18_park_the_key_and_one_key_info_call_brings_it_back() {
    let sim = sim().await;
    let recheck = Duration::from_millis(300);
    let client = TornClient::new(
        limiter("park").await,
        client_config(&sim).key_recheck(recheck).build().unwrap(),
    )
    .unwrap();
    let a = key(OWNER_KEY);
    client.owner_of(&a).await.unwrap();
    for (state, code) in [(KeyState::Paused, 18), (KeyState::Inactive, 13)] {
        assert!(sim.set_key_state(OWNER_KEY, state));
        let parked_at = std::time::SystemTime::now();
        assert_eq!(code_of(&client.get(&a, "user/basic").await), Some(code));
        match client.key_status(&a) {
            KeyStatus::Parked {
                code: c,
                recheck_at,
            } => {
                assert_eq!(c.get(), code);
                assert!(recheck_at >= parked_at + recheck - Duration::from_millis(50));
            }
            other => panic!("code {code}: {other:?}"),
        }
        let sent = sent_with(&sim, OWNER_KEY);
        assert_eq!(code_of(&client.get(&a, "user/basic").await), Some(code));
        assert_eq!(sent_with(&sim, OWNER_KEY), sent, "parked: not sent");

        // Due, but Torn still refuses it: one key-info call, and it is parked anew.
        tokio::time::sleep(recheck + Duration::from_millis(50)).await;
        let info_before = sim.counters().requests;
        assert_eq!(code_of(&client.get(&a, "user/basic").await), Some(code));
        assert_eq!(
            sim.counters().requests,
            info_before + 1,
            "one re-check call"
        );
        assert!(matches!(client.key_status(&a), KeyStatus::Parked { .. }));

        // Due, and Torn accepts it: the re-check brings it back, then the call goes.
        assert!(sim.set_key_state(OWNER_KEY, KeyState::Ok));
        tokio::time::sleep(recheck + Duration::from_millis(50)).await;
        let before = sim.counters().requests;
        client.get(&a, "user/basic").await.unwrap();
        assert_eq!(
            sim.counters().requests,
            before + 2,
            "one key-info re-check, then the request"
        );
        assert_eq!(client.key_status(&a), KeyStatus::Usable);
    }
}

#[tokio::test]
async fn a_key_info_answer_without_the_owner_falls_back_to_the_profile() {
    let sim = sim().await;
    let limiter = limiter("nouser").await;
    let client = TornClient::new(limiter.clone(), client_config(&sim).build().unwrap()).unwrap();
    sim.inject(Fault::KeyInfoWithoutUser);
    let info = client.owner_of(&key(OWNER_KEY)).await.unwrap();
    assert_eq!(info.owner, OWNER);
    assert_eq!(info.access, AccessLevel::Full);
    let c = sim.counters();
    assert_eq!(c.requests, 2, "key info, then user basic");
    assert_eq!(c.admitted_by_owner[&OWNER], 2);
    assert_eq!(
        limiter.status(OWNER).await.unwrap().used,
        2,
        "both calls counted on the owner's bucket"
    );
}

#[tokio::test]
async fn a_refused_key_loses_its_shared_owner_memo() {
    let sim = sim().await;
    let limiter = limiter("memo").await;
    let config = client_config(&sim).build().unwrap();
    let client = TornClient::new(limiter.clone(), config.clone()).unwrap();
    let a = key(OWNER_KEY);
    client.owner_of(&a).await.unwrap();
    let memo = limiter.keys().memo(&format!("owner:{}", a.hash()));
    let mut redis = common::redis_conn().await;
    let exists = |r: &mut redis::aio::MultiplexedConnection| {
        let memo = memo.clone();
        let mut r = r.clone();
        async move {
            redis::cmd("EXISTS")
                .arg(&memo)
                .query_async::<u32>(&mut r)
                .await
                .unwrap()
        }
    };
    assert_eq!(exists(&mut redis).await, 1, "the lookup shared the owner");

    assert!(sim.set_key_state(OWNER_KEY, KeyState::Paused));
    assert_eq!(code_of(&client.get(&a, "user/basic").await), Some(18));
    assert_eq!(exists(&mut redis).await, 0, "code 18 deleted the memo");

    // Another process does not resolve the key from the memo: it asks Torn, which refuses.
    let other = TornClient::new(limiter.clone(), config).unwrap();
    let sent = sent_with(&sim, OWNER_KEY);
    let err = other.owner_of(&a).await.unwrap_err();
    assert!(
        matches!(&err, Error::Torn { code, .. } if code.get() == 18),
        "{err:?}"
    );
    assert_eq!(sent_with(&sim, OWNER_KEY), sent + 1);
}

/// A body that is not the JSON Torn sends is its own failure, not an HTTP one (issue 13).
#[tokio::test]
async fn a_malformed_body_is_a_torn_answer_error() {
    let sim = sim().await;
    let client = TornClient::new(
        limiter("malformed").await,
        client_config(&sim).max_attempts(1).build().unwrap(),
    )
    .unwrap();
    let k = key(OWNER_KEY);
    client.owner_of(&k).await.unwrap();
    sim.inject(Fault::MalformedJson);
    let err = client.get(&k, "user/basic").await.unwrap_err();
    assert!(matches!(err, Error::TornAnswer { .. }), "{err:?}");
    assert_eq!(err.kind(), torn_quota::error::ErrorKind::TornAnswer);
    assert!(err.is_retryable());
    assert!(
        std::error::Error::source(&err).is_some(),
        "the parser's error is chained"
    );
}
