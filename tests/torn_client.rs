//! The Torn client against the simulator over real sockets, with real Redis: every error
//! code's path, bounded retries, the owner's and the IP's quota, the owner cache, and keys
//! that never reach a log line, a URL or an error.

mod common;

use std::fmt::Write as _;
use std::io::Write;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use torn_quota::sim::{Fault, KeyState, SimConfig, SimHandle, SimKey, Simulator};
use torn_quota::torn::{
    KeyStatus, TornClient, TornClientConfig, TornClientConfigBuilder, TornErrorCode, WallClock,
};
use torn_quota::vault::ResolveOwner;
use torn_quota::{AccessLevel, ApiKey, Error, KeyInfo, Limiter, TornUserId, Wait};

/// Owner 4's keys, both full.
const FULL_A: &str = "FullKeyOfOwner04";
const FULL_B: &str = "SecondKeyOwner04";
/// Owner 5's key, minimal access.
const MINIMAL: &str = "MinimalKeyOwnr05";
/// Owner 8's keys, in states that Torn refuses.
const PAUSED: &str = "PausedKeyOwner08";
const INACTIVE: &str = "InactiveKeyOwnr8";
const JAILED: &str = "JailedKeyOwner08";
/// Owner 9's key.
const SPARE: &str = "SpareKeyOfOwnr09";
/// A well-formed key the simulator does not know: code 2.
const UNKNOWN: &str = "NobodyKnowsThis1";

const ALL_KEYS: &[&str] = &[
    FULL_A, FULL_B, MINIMAL, PAUSED, INACTIVE, JAILED, SPARE, UNKNOWN,
];

const OWNER_4: TornUserId = TornUserId::new(4);
const LIMIT: u32 = 20;
const WINDOW_MS: u64 = 1000;

fn key(k: &str) -> ApiKey {
    ApiKey::new(k).expect("the test keys are well formed")
}

fn sim_keys() -> Vec<SimKey> {
    vec![
        SimKey::new(FULL_A, OWNER_4, AccessLevel::Full),
        SimKey::new(FULL_B, OWNER_4, AccessLevel::Full),
        SimKey::new(MINIMAL, TornUserId::new(5), AccessLevel::Minimal),
        SimKey::new(PAUSED, TornUserId::new(8), AccessLevel::Full).with_state(KeyState::Paused),
        SimKey::new(INACTIVE, TornUserId::new(8), AccessLevel::Full).with_state(KeyState::Inactive),
        SimKey::new(JAILED, TornUserId::new(8), AccessLevel::Full).with_state(KeyState::Jail),
        SimKey::new(SPARE, TornUserId::new(9), AccessLevel::Public),
    ]
}

// ---------------------------------------------------------------------------------------
// Every tracing event of this test binary, at TRACE, reqwest's and hyper's included, goes
// into one buffer; `no_key_reaches_logs_errors_or_urls` searches it for the keys.

#[derive(Clone)]
struct Buffer(Arc<Mutex<Vec<u8>>>);

impl Write for Buffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn captured() -> &'static Buffer {
    static BUFFER: OnceLock<Buffer> = OnceLock::new();
    BUFFER.get_or_init(|| {
        let buffer = Buffer(Arc::new(Mutex::new(Vec::new())));
        let writer = buffer.clone();
        // Also turns `log` records (reqwest's) into events.
        tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .try_init()
            .expect("the only subscriber of this test binary");
        buffer
    })
}

fn captured_text() -> String {
    String::from_utf8_lossy(&captured().0.lock().unwrap()).into_owned()
}

/// No key, not even its first 12 characters, in `text`.
fn assert_no_key(text: &str, what: &str) {
    for k in ALL_KEYS {
        assert!(!text.contains(&k[..12]), "a key appears in {what}: {text}");
    }
}

/// An error, every way it prints and its whole source chain, carries no key.
fn assert_clean(error: &Error) {
    let mut shown = format!("{error}\n{error:?}\n{error:#?}");
    let mut source = std::error::Error::source(error);
    while let Some(s) = source {
        write!(shown, "\n{s}\n{s:?}").unwrap();
        source = s.source();
    }
    assert_no_key(&shown, "an error");
}

fn torn_code(result: &Result<serde_json::Value, Error>) -> u16 {
    match result {
        Err(e @ Error::Torn { code, .. }) => {
            assert_clean(e);
            code.get()
        }
        Err(other) => panic!("expected a Torn error, got {other:?}"),
        Ok(v) => panic!("expected a Torn error, got {v}"),
    }
}

// ---------------------------------------------------------------------------------------

fn sim_config(limit: u32, window_ms: u64) -> torn_quota::sim::SimConfigBuilder {
    SimConfig::builder()
        .limit(NonZeroU32::new(limit).unwrap())
        .window(Duration::from_millis(window_ms))
}

async fn start_sim(config: torn_quota::sim::SimConfigBuilder) -> SimHandle {
    Simulator::start(sim_keys(), config.build().unwrap())
        .await
        .expect("start the simulator")
}

/// A client config for `sim`: a small margin, fast back-off, short pauses and holds.
fn client_config(sim: &SimHandle) -> TornClientConfigBuilder {
    TornClientConfig::builder()
        .base_url(sim.base_url())
        .safety_margin(Duration::from_millis(20))
        .retry_min_delay(Duration::from_millis(5))
        .retry_max_delay(Duration::from_millis(40))
        .request_timeout(Duration::from_secs(5))
        .pause(Duration::from_millis(300))
        .owner_hold(Duration::from_secs(3))
}

/// A Redis limiter of `limit` per `window_ms` under a fresh prefix.
async fn limiter(name: &str, limit: u32, window_ms: u64) -> Limiter {
    common::redis_conn().await;
    Limiter::redis(common::config(name, limit, window_ms).build().unwrap()).unwrap()
}

struct Setup {
    sim: SimHandle,
    client: TornClient,
    limiter: Limiter,
}

/// The usual setup: the simulator and the limiter both at 20 per 1000 ms.
async fn setup(
    name: &str,
    tweak: impl FnOnce(TornClientConfigBuilder) -> TornClientConfigBuilder,
) -> Setup {
    captured();
    let sim = start_sim(sim_config(LIMIT, WINDOW_MS)).await;
    let limiter = limiter(name, LIMIT, WINDOW_MS).await;
    let config = tweak(client_config(&sim)).build().unwrap();
    let client = TornClient::new(limiter.clone(), config).unwrap();
    Setup {
        sim,
        client,
        limiter,
    }
}

/// Requests the simulator received with `k` (known keys only).
fn sent_with(sim: &SimHandle, k: &str) -> u64 {
    let hash = torn_quota::KeyHash::of(k);
    sim.counters()
        .requests_by_key
        .get(&hash)
        .copied()
        .unwrap_or(0)
}

fn assert_no_key_in_urls(sim: &SimHandle) {
    assert_eq!(sim.counters().key_in_url, 0, "a key travelled in a URL");
}

// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn a_malformed_key_or_a_key_in_the_path_never_leaves() {
    let s = setup("malformed", |c| c).await;
    // Code 1 (empty key) cannot happen: an ApiKey is never empty.
    for bad in ["", "short", "FullKeyOfOwner04!", "FullKeyOfOwner0!"] {
        let err = ApiKey::new(bad).unwrap_err();
        assert!(
            matches!(
                err,
                Error::InvalidArgument {
                    name: "api key",
                    ..
                }
            ),
            "{err:?}"
        );
        assert_clean(&err);
    }
    let k = key(FULL_A);
    for path in [
        "user/basic?key=FullKeyOfOwner04",
        "user/basic?striptags=false&key=x",
        "user/FullKeyOfOwner04/basic",
        "https://api.torn.com/v2/user/basic",
        "",
    ] {
        let err = s.client.get(&k, path).await.unwrap_err();
        assert!(
            matches!(err, Error::InvalidArgument { name: "path", .. }),
            "{err:?}"
        );
        assert_clean(&err);
    }
    let err = s
        .client
        .get_v1(&k, "user", &["basic", "key=x"])
        .await
        .unwrap_err();
    assert!(matches!(
        err,
        Error::InvalidArgument {
            name: "selections",
            ..
        }
    ));
    assert_eq!(s.sim.counters().requests, 0, "nothing was sent");
}

#[tokio::test]
async fn v2_and_v1_calls_answer_with_the_key_in_the_header() {
    let s = setup("calls", |c| c).await;
    let k = key(FULL_A);
    let me = s
        .client
        .get(&k, "user/basic?striptags=false")
        .await
        .unwrap();
    assert_eq!(me["profile"]["id"], 4);
    let other = s.client.get(&k, "/v2/user/77/basic").await.unwrap();
    assert_eq!(other["profile"]["id"], 77);
    let v1 = s.client.get_v1(&k, "user/12", &["basic"]).await.unwrap();
    assert_eq!(v1["player_id"], 12);
    let info = s.client.get_v1(&k, "key/", &["info"]).await.unwrap();
    assert_eq!(info["access_level"], 4);
    // One key-info call resolved the owner, then four calls.
    assert_eq!(sent_with(&s.sim, FULL_A), 5);
    assert_eq!(s.limiter.status(OWNER_4).await.unwrap().used, 5);
    assert_no_key_in_urls(&s.sim);
}

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
    assert!(matches!(err, Error::Cancelled), "{err:?}");
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_keys_of_one_owner_use_the_whole_quota_without_code_5() {
    // A margin of 100 ms: on a loaded machine the gap between grant and arrival can vary by
    // more than 20 ms, and this test must not flake on it.
    let s = setup("hammer", |c| c.safety_margin(Duration::from_millis(100))).await;
    let keys = [key(FULL_A), key(FULL_B)];
    for k in &keys {
        s.client.owner_of(k).await.unwrap();
    }
    let windows = 3;
    let end = Instant::now() + Duration::from_millis(WINDOW_MS * windows);
    let mut tasks = Vec::new();
    for i in 0..16 {
        let client = s.client.clone();
        let k = keys[i % 2].clone();
        tasks.push(tokio::spawn(async move {
            let opts = Wait::forever().until(end);
            let mut ok = 0u32;
            loop {
                match client.get_with(&k, "user/basic", &opts).await {
                    Ok(_) => ok += 1,
                    Err(Error::Cancelled) => return ok,
                    Err(e) => panic!("unexpected failure: {e}"),
                }
            }
        }));
    }
    let mut ok = 0;
    for t in tasks {
        ok += t.await.unwrap();
    }
    let c = s.sim.counters();
    assert_eq!(c.errors(5), 0, "{c:?}");
    let admitted = c.admitted_by_owner[&OWNER_4];
    let full = u64::from(LIMIT) * windows;
    assert!(admitted * 10 >= full * 9, "used {admitted} of {full}");
    assert!(c.max_in_window_by_owner[&OWNER_4] <= LIMIT);
    assert_eq!(
        admitted,
        u64::from(ok) + 2,
        "every admitted request but key info answered"
    );
    assert_no_key_in_urls(&s.sim);
}

#[tokio::test]
async fn the_ip_bucket_is_a_second_limit() {
    captured();
    // The owner's window is long, so every grant stays visible; the IP's is short.
    let sim = start_sim(
        sim_config(LIMIT, 10_000)
            .ip_limit(NonZeroU32::new(3).unwrap())
            .ip_window(Duration::from_millis(WINDOW_MS)),
    )
    .await;
    let limiter = limiter("ip", LIMIT, 10_000).await;
    let config = client_config(&sim)
        .ip_limit(NonZeroU32::new(3).unwrap())
        .ip_window(Duration::from_millis(WINDOW_MS))
        .build()
        .unwrap();
    let client = TornClient::new(limiter.clone(), config).unwrap();
    let k = key(FULL_A);
    let started = Instant::now();
    client.owner_of(&k).await.unwrap();
    for _ in 0..4 {
        client.get(&k, "user/basic").await.unwrap();
    }
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "the fourth IP unit waited for the IP window: {:?}",
        started.elapsed()
    );
    let c = sim.counters();
    assert_eq!((c.errors(8), c.admitted), (0, 5), "{c:?}");
    assert_eq!(
        limiter.status(OWNER_4).await.unwrap().used,
        5,
        "owner units taken while the IP bucket was full went back"
    );
    let ip_keys = common::keys_under(&format!("{}:ip", limiter.config().key_prefix())).await;
    assert!(
        !ip_keys.is_empty(),
        "the ip bucket lives in Redis under the prefix + :ip"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn owner_of_is_cached_shared_and_expires() {
    let s = setup("cache", |c| c.owner_cache_ttl(Duration::from_millis(400))).await;
    let k = key(FULL_A);
    let mut lookups = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let (client, k) = (s.client.clone(), k.clone());
        lookups.spawn(async move { client.owner_of(&k).await });
    }
    for info in lookups.join_all().await {
        let info = info.unwrap();
        assert_eq!((info.owner, info.access), (OWNER_4, AccessLevel::Full));
    }
    assert_eq!(
        sent_with(&s.sim, FULL_A),
        1,
        "concurrent misses made one request"
    );
    let info = ResolveOwner::resolve(&s.client, &k).await.unwrap();
    assert_eq!(info.owner, OWNER_4);
    s.client.get(&k, "user/basic").await.unwrap();
    assert_eq!(sent_with(&s.sim, FULL_A), 2, "cached: only the call itself");
    // The key-info call was counted on the owner's bucket once the owner was known.
    assert_eq!(s.limiter.status(OWNER_4).await.unwrap().used, 2);

    tokio::time::sleep(Duration::from_millis(500)).await;
    s.client.owner_of(&k).await.unwrap();
    assert_eq!(sent_with(&s.sim, FULL_A), 3, "expired after the TTL");
    // key_info always asks Torn; the owner is known, so it waits for the owner's quota.
    let info = s.client.key_info(&k).await.unwrap();
    assert_eq!(info.access, AccessLevel::Full);
    assert_eq!(sent_with(&s.sim, FULL_A), 4);
}

#[tokio::test]
async fn shutdown_and_deadlines_end_waiting_calls() {
    captured();
    let sim = start_sim(sim_config(LIMIT, WINDOW_MS)).await;
    let limiter = limiter("shutdown", 2, 60_000).await;
    let token = CancellationToken::new();
    let client = TornClient::builder(limiter.clone(), client_config(&sim).build().unwrap())
        .shutdown(token.clone())
        .build()
        .unwrap();
    let k = key(FULL_A);
    client.owner_of(&k).await.unwrap();
    client.get(&k, "user/basic").await.unwrap();
    // The owner's 2 units are spent for a minute: calls wait.
    let err = client
        .get_with(
            &k,
            "user/basic",
            &Wait::forever().at_most(Duration::from_millis(100)),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Cancelled), "{err:?}");

    let call = CancellationToken::new();
    let waiting = {
        let (client, k, call) = (client.clone(), k.clone(), call.clone());
        tokio::spawn(async move {
            client
                .get_with(&k, "user/basic", &Wait::forever().cancel_on(call))
                .await
        })
    };
    call.cancel();
    assert!(matches!(waiting.await.unwrap(), Err(Error::Cancelled)));

    let waiting = {
        let (client, k) = (client.clone(), k.clone());
        tokio::spawn(async move { client.get(&k, "user/basic").await })
    };
    token.cancel();
    let ended = tokio::time::timeout(Duration::from_secs(2), waiting).await;
    assert!(matches!(ended.unwrap().unwrap(), Err(Error::Cancelled)));
    assert!(matches!(client.owner_of(&k).await, Err(Error::Cancelled)));
    assert_eq!(sent_with(&sim, FULL_A), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_key_reaches_logs_errors_or_urls() {
    let s = setup("leak", |c| c.max_attempts(2)).await;
    let mut errors = Vec::new();
    let full = key(FULL_A);
    s.client.owner_of(&full).await.unwrap();
    for fault in [
        Fault::Code(17),
        Fault::Code(17),
        Fault::Http(500),
        Fault::MalformedJson,
        Fault::DropConnection,
        Fault::DropConnection,
    ] {
        s.sim.inject(fault);
    }
    for _ in 0..4 {
        if let Err(e) = s.client.get(&full, "user/basic").await {
            errors.push(e);
        }
    }
    for k in [UNKNOWN, JAILED, INACTIVE, PAUSED] {
        errors.push(s.client.get(&key(k), "user/basic").await.unwrap_err());
        errors.push(s.client.get(&key(k), "user/basic").await.unwrap_err());
    }
    errors.push(
        s.client
            .get(&key(MINIMAL), "user/battlestats")
            .await
            .unwrap_err(),
    );
    errors.push(
        s.client
            .get(&full, "user/basic?key=FullKeyOfOwner04")
            .await
            .unwrap_err(),
    );
    s.sim.inject(Fault::Code(8));
    errors.push(s.client.get(&full, "user/basic").await.unwrap_err());
    errors.push(
        s.client
            .get_with(
                &key(SPARE),
                "user/basic",
                &Wait::forever().at_most(Duration::from_millis(10)),
            )
            .await
            .unwrap_err(),
    );
    assert!(errors.len() >= 12, "{errors:?}");
    for e in &errors {
        assert_clean(e);
    }
    assert_no_key(&format!("{:?}", s.client), "the client's Debug");
    assert_no_key(&format!("{:?}", s.client.config()), "the config's Debug");
    assert_no_key_in_urls(&s.sim);

    let logs = captured_text();
    assert!(
        logs.contains("torn call failed, retrying") && logs.contains("torn refused the key"),
        "the client's own events are captured"
    );
    assert!(
        logs.contains("reqwest") || logs.contains("hyper"),
        "the HTTP stack's events are captured too"
    );
    assert!(logs.contains("owner=4"), "log lines name the owner");
    assert_no_key(&logs, "the tracing output");
}
