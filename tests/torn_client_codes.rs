//! The Torn client's answer to each error code, against the simulator with real Redis:
//! code 2 disables a key, 10/13/18 until reinstated, 5 holds the owner back in every
//! process, 8/9 pause every call, 14 holds the key until the next UTC day.

mod common;

use common::torn_client::{
    FULL_A, FULL_B, INACTIVE, JAILED, LIMIT, OWNER_4, PAUSED, SPARE, UNKNOWN, WINDOW_MS,
    assert_clean, assert_no_key_in_urls, captured, client_config, key, limiter, sent_with, setup,
    sim_config, start_sim, torn_code,
};

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::time::Instant;
use torn_quota::sim::{Fault, KeyState};
use torn_quota::torn::{KeyStatus, TornClient, TornErrorCode, WallClock};
use torn_quota::{AccessLevel, KeyInfo, Wait};
use torn_quota::{Error, Limiter};

#[tokio::test]
async fn code_2_disables_the_key_after_one_request() {
    let s = setup("code2", |c| c).await;
    let k = key(UNKNOWN);
    assert_eq!(torn_code(&s.client.get(&k, "user/basic").await), 2);
    assert_eq!(s.sim.counters().requests, 1);
    assert_eq!(
        s.client.key_status(&k),
        KeyStatus::Disabled {
            code: TornErrorCode::INCORRECT_KEY
        }
    );
    for _ in 0..3 {
        assert_eq!(torn_code(&s.client.get(&k, "user/basic").await), 2);
    }
    let err = s.client.owner_of(&k).await.unwrap_err();
    assert!(matches!(err, Error::Torn { code, .. } if code.get() == 2));
    assert_eq!(
        s.sim.counters().requests,
        1,
        "an incorrect key is sent once, never again"
    );
    // A re-check may bring it back; the simulator still refuses it, once more.
    assert!(s.client.reinstate(&k));
    assert_eq!(torn_code(&s.client.get(&k, "user/basic").await), 2);
    assert_eq!(s.sim.counters().requests, 2);
    assert_no_key_in_urls(&s.sim);
}

#[tokio::test]
async fn codes_10_13_18_disable_the_key_until_reinstated() {
    let s = setup("disable", |c| c).await;
    // Refused while resolving the owner: one request.
    for (k, code) in [(JAILED, 10), (INACTIVE, 13), (PAUSED, 18)] {
        let err = s.client.owner_of(&key(k)).await.unwrap_err();
        assert!(
            matches!(&err, Error::Torn { code: c, .. } if c.get() == code),
            "{err:?}"
        );
        assert_clean(&err);
        assert_eq!(torn_code(&s.client.get(&key(k), "user/basic").await), code);
        assert_eq!(sent_with(&s.sim, k), 1, "code {code}");
    }
    // Refused after the owner is known: the state changes under a working key.
    let k = key(FULL_A);
    s.client.owner_of(&k).await.unwrap();
    for (state, code) in [
        (KeyState::Jail, 10),
        (KeyState::Inactive, 13),
        (KeyState::Paused, 18),
    ] {
        assert!(s.sim.set_key_state(FULL_A, state));
        let before = sent_with(&s.sim, FULL_A);
        assert_eq!(torn_code(&s.client.get(&k, "user/basic").await), code);
        assert_eq!(torn_code(&s.client.get(&k, "user/basic").await), code);
        assert_eq!(
            sent_with(&s.sim, FULL_A),
            before + 1,
            "code {code}: sent once"
        );
        assert!(s.sim.set_key_state(FULL_A, KeyState::Ok));
        assert_eq!(
            torn_code(&s.client.get(&k, "user/basic").await),
            code,
            "still disabled in this client until a re-check"
        );
        assert!(s.client.reinstate(&k));
        assert_eq!(s.client.key_status(&k), KeyStatus::Usable);
    }
    s.client.get(&k, "user/basic").await.unwrap();
    assert_no_key_in_urls(&s.sim);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn code_5_holds_the_owner_back_in_every_process() {
    captured();
    // A long window, so that the other app's requests stay in it for the whole test.
    let window_ms = 10_000;
    let sim = start_sim(sim_config(LIMIT, window_ms)).await;
    let config = common::config("code5", LIMIT, window_ms).build().unwrap();
    let prefix = config.key_prefix().to_owned();
    common::redis_conn().await;
    let limiter = Limiter::redis(config.clone()).unwrap();
    let client = TornClient::new(limiter.clone(), client_config(&sim).build().unwrap()).unwrap();
    let k = key(FULL_A);
    client.owner_of(&k).await.unwrap();

    // Another app spends the rest of owner 4's quota with the owner's other key.
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    for _ in 1..LIMIT {
        let answer: serde_json::Value = http
            .get(format!("{}/v2/user/basic", sim.base_url()))
            .header("Authorization", format!("ApiKey {FULL_B}"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert!(answer.get("error").is_none(), "{answer}");
    }
    assert_eq!(torn_code(&client.get(&k, "user/basic").await), 5);
    let status = limiter.status(OWNER_4).await.unwrap();
    assert_eq!(status.remaining, 0, "{status:?}");
    assert!(status.penalty > Duration::from_secs(1), "{status:?}");

    // Another process sees the hold: the operator CLI...
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_torn-quota"))
            .args(["status", "--user", "4"])
            .env("REDIS_URL", common::redis_url())
            .env("TORN_QUOTA_KEY_PREFIX", &prefix)
            .env("TORN_QUOTA_LIMIT", LIMIT.to_string())
            .env("TORN_QUOTA_WINDOW_MS", window_ms.to_string())
            .env_remove("TORN_QUOTA_CONFIG")
            .env_remove("TORN_QUOTA_MODE")
            .output()
            .expect("run torn-quota status")
    })
    .await
    .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let json: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(json["remaining"], 0, "{json}");
    assert!(json["penalty_ms"].as_u64().unwrap() > 0, "{json}");

    // ...and another client on its own limiter holds back without sending.
    let other = TornClient::new(
        Limiter::redis(config).unwrap(),
        client_config(&sim).build().unwrap(),
    )
    .unwrap();
    other
        .remember_owner(
            &key(FULL_B),
            KeyInfo {
                owner: OWNER_4,
                access: AccessLevel::Full,
            },
        )
        .await;
    let before = sim.counters().requests;
    let err = other
        .get_with(
            &key(FULL_B),
            "user/basic",
            &Wait::forever().at_most(Duration::from_millis(200)),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Deadline), "{err:?}");
    assert_eq!(sim.counters().requests, before, "held back: nothing sent");
    assert_eq!(sim.counters().errors(5), 1);
    assert_no_key_in_urls(&sim);
}

#[tokio::test]
async fn codes_8_and_9_pause_every_call() {
    let s = setup("pause", |c| c).await;
    let (a, spare) = (key(FULL_A), key(SPARE));
    s.client.owner_of(&a).await.unwrap();
    s.client.owner_of(&spare).await.unwrap();
    for code in [8, 9] {
        s.sim.inject(Fault::Code(code));
        assert_eq!(torn_code(&s.client.get(&a, "user/basic").await), code);
        assert!(s.client.paused_for().is_some());
        let sent = s.sim.counters().requests;
        // A call that cannot wait that long fails at once, whatever its key.
        let short = Wait::forever().at_most(Duration::from_millis(50));
        for k in [&a, &spare] {
            let r = s.client.get_with(k, "user/basic", &short).await;
            assert_eq!(torn_code(&r), code);
        }
        assert_eq!(s.sim.counters().requests, sent, "nothing sent while paused");
        // One that can wait goes out once the pause ends.
        let started = Instant::now();
        s.client.get(&spare, "user/basic").await.unwrap();
        assert!(
            started.elapsed() >= Duration::from_millis(200),
            "waited {:?}",
            started.elapsed()
        );
        assert!(s.client.paused_for().is_none());
    }
    assert_no_key_in_urls(&s.sim);
}

#[derive(Debug)]
struct TestWall(Mutex<SystemTime>);

impl WallClock for TestWall {
    fn now(&self) -> SystemTime {
        *self.0.lock().unwrap()
    }
}

#[tokio::test]
async fn code_14_holds_the_key_until_the_next_utc_day() {
    captured();
    let sim = start_sim(sim_config(LIMIT, WINDOW_MS)).await;
    let day = 20_000 * 86_400;
    let wall = Arc::new(TestWall(Mutex::new(
        UNIX_EPOCH + Duration::from_secs(day - 10),
    )));
    let client = TornClient::builder(
        limiter("code14", LIMIT, WINDOW_MS).await,
        client_config(&sim).build().unwrap(),
    )
    .wall_clock(wall.clone())
    .build()
    .unwrap();
    let (a, b) = (key(FULL_A), key(FULL_B));
    client.owner_of(&a).await.unwrap();
    sim.inject(Fault::Code(14));
    assert_eq!(torn_code(&client.get(&a, "user/basic").await), 14);
    assert_eq!(
        client.key_status(&a),
        KeyStatus::Held {
            code: TornErrorCode::new(14),
            until: UNIX_EPOCH + Duration::from_secs(day),
        }
    );
    let sent = sent_with(&sim, FULL_A);
    assert_eq!(torn_code(&client.get(&a, "user/basic").await), 14);
    assert_eq!(sent_with(&sim, FULL_A), sent, "held: not sent");
    // The owner's other key is not held.
    client.get(&b, "user/basic").await.unwrap();

    *wall.0.lock().unwrap() = UNIX_EPOCH + Duration::from_secs(day + 1);
    assert_eq!(client.key_status(&a), KeyStatus::Usable);
    client.get(&a, "user/basic").await.unwrap();
    assert_eq!(sent_with(&sim, FULL_A), sent + 1);
}
