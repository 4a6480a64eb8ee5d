//! The Torn API simulator over real sockets, with reqwest as the client: every check in
//! Torn's order, one rolling window per owner across keys, the counters, each fault, and
//! `torn-quota sim` as a process.

use std::io::{BufRead, BufReader};
use std::num::NonZeroU32;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use torn_quota::sim::{
    Fault, KeyState, RandomFaults, SimConfig, SimHandle, SimKey, Simulator, parse_keys_file,
};
use torn_quota::torn::TornErrorCode;
use torn_quota::{AccessLevel, KeyHash, TornUserId};

/// Owner 4's keys: one full, one public.
const FULL_4: &str = "FullKeyOfOwner04";
const PUBLIC_4: &str = "PublicKeyOwner04";
/// Owner 7's only key.
const PUBLIC_7: &str = "PublicKeyOwner07";
const PAUSED: &str = "PausedKeyOwner08";
const INACTIVE: &str = "InactiveKeyOwnr8";
const JAILED: &str = "JailedKeyOwner08";
const UNKNOWN: &str = "NobodyKnowsThis1";

fn keys() -> Vec<SimKey> {
    let four = TornUserId::new(4);
    let eight = TornUserId::new(8);
    vec![
        SimKey::new(FULL_4, four, AccessLevel::Full),
        SimKey::new(PUBLIC_4, four, AccessLevel::Public),
        SimKey::new(PUBLIC_7, TornUserId::new(7), AccessLevel::Public),
        SimKey::new(PAUSED, eight, AccessLevel::Full).with_state(KeyState::Paused),
        SimKey::new(INACTIVE, eight, AccessLevel::Full).with_state(KeyState::Inactive),
        SimKey::new(JAILED, eight, AccessLevel::Full).with_state(KeyState::Jail),
    ]
}

async fn start(config: SimConfig) -> SimHandle {
    Simulator::start(keys(), config)
        .await
        .expect("start the simulator")
}

fn client() -> reqwest::Client {
    // A proxy from the environment must not stand between the test and loopback.
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// GETs `path` with the key in the `Authorization` header, and returns the JSON.
async fn get(client: &reqwest::Client, sim: &SimHandle, path: &str, key: Option<&str>) -> Value {
    let mut req = client.get(format!("{}{path}", sim.base_url()));
    if let Some(key) = key {
        req = req.header("Authorization", format!("ApiKey {key}"));
    }
    let resp = req.send().await.expect("send");
    assert_eq!(
        resp.status(),
        200,
        "{path}: Torn answers errors with HTTP 200 too"
    );
    resp.json().await.expect("a JSON body")
}

/// The Torn error code of an answer, checking the error body's shape; `None` for data.
fn code(v: &Value) -> Option<u16> {
    let err = v.get("error")?;
    let code = u16::try_from(err["code"].as_u64().expect("a numeric code")).unwrap();
    assert_eq!(
        err["error"],
        TornErrorCode::new(code).text(),
        "Torn's text for code {code}"
    );
    Some(code)
}

fn limited(limit: u32, window_ms: u64) -> SimConfig {
    SimConfig::builder()
        .limit(NonZeroU32::new(limit).unwrap())
        .window(Duration::from_millis(window_ms))
        .build()
        .unwrap()
}

#[tokio::test]
async fn key_checks_answer_torns_codes_and_record_nothing() {
    let sim = start(SimConfig::default()).await;
    let c = client();
    let path = "/v2/user/basic";
    assert_eq!(code(&get(&c, &sim, path, None).await), Some(1));
    assert_eq!(code(&get(&c, &sim, path, Some(UNKNOWN)).await), Some(2));
    assert_eq!(code(&get(&c, &sim, path, Some(PAUSED)).await), Some(18));
    assert_eq!(code(&get(&c, &sim, path, Some(INACTIVE)).await), Some(13));
    assert_eq!(code(&get(&c, &sim, path, Some(JAILED)).await), Some(10));
    assert_eq!(code(&get(&c, &sim, path, Some(FULL_4)).await), None);

    // States change at run time, and new keys join.
    assert!(sim.set_key_state(FULL_4, KeyState::Paused));
    assert_eq!(code(&get(&c, &sim, path, Some(FULL_4)).await), Some(18));
    assert!(sim.set_key_state(FULL_4, KeyState::Ok));
    assert!(
        !sim.set_key_state(UNKNOWN, KeyState::Ok),
        "unknown keys stay unknown"
    );
    sim.add_key(SimKey::new(
        UNKNOWN,
        TornUserId::new(9),
        AccessLevel::Public,
    ));
    let me = get(&c, &sim, path, Some(UNKNOWN)).await;
    assert_eq!(me["profile"]["id"], 9);

    let n = sim.counters();
    assert_eq!(n.requests, 8);
    assert_eq!((n.admitted, n.ok), (2, 2));
    for (code, times) in [(1, 1), (2, 1), (18, 2), (13, 1), (10, 1)] {
        assert_eq!(n.errors(code), times, "code {code}");
    }
    assert_eq!(n.requests_by_owner[&TornUserId::new(8)], 3);
    assert_eq!(n.admitted_by_owner.get(&TornUserId::new(8)), None);
    sim.shutdown().await;
}

#[tokio::test]
async fn routes_answer_in_torns_shapes() {
    let sim = start(SimConfig::default()).await;
    let c = client();
    let info = get(&c, &sim, "/v2/key/info", Some(PUBLIC_4)).await;
    assert_eq!(info["info"]["user"]["id"], 4);
    assert_eq!(info["info"]["access"]["level"], 1);
    assert_eq!(
        info["info"]["access"]["type"],
        AccessLevel::Public.torn_name()
    );
    assert!(info["info"]["selections"]["user"].is_array(), "{info}");

    let me = get(&c, &sim, "/v2/user/basic", Some(FULL_4)).await;
    assert_eq!(me["profile"]["id"], 4);
    assert_eq!(me["profile"]["name"], "Player4");
    assert_eq!(me["profile"]["status"]["state"], "Okay");
    let other = get(&c, &sim, "/v2/user/123/basic", Some(FULL_4)).await;
    assert_eq!(other["profile"]["id"], 123);
    let stats = get(&c, &sim, "/v2/user/123/battlestats", Some(FULL_4)).await;
    assert!(stats["battlestats"]["total"].is_u64(), "{stats}");

    let v1 = get(&c, &sim, "/user/?selections=basic", Some(FULL_4)).await;
    assert_eq!(v1["player_id"], 4);
    let v1 = get(&c, &sim, "/user/55?selections=basic", Some(FULL_4)).await;
    assert_eq!(v1["player_id"], 55);
    assert_eq!(v1["name"], "Player55");
    let v1 = get(&c, &sim, "/key/?selections=info", Some(FULL_4)).await;
    assert_eq!(v1["access_level"], 4);
    assert_eq!(v1["access_type"], "Full Access");

    assert_eq!(
        code(&get(&c, &sim, "/v2/nosuch/1/basic", Some(FULL_4)).await),
        Some(3)
    );
    assert_eq!(
        code(&get(&c, &sim, "/v2/user/abc/basic", Some(FULL_4)).await),
        Some(6)
    );
    assert_eq!(
        code(&get(&c, &sim, "/v2/user/battlestats", Some(PUBLIC_4)).await),
        Some(16)
    );
    let n = sim.counters();
    // Requests with a good key count in the owner's window whatever the route says.
    assert_eq!((n.requests, n.admitted, n.ok), (10, 10, 7));
    assert_eq!((n.errors(3), n.errors(6), n.errors(16)), (1, 1, 1));
    sim.shutdown().await;
}

#[tokio::test]
async fn a_key_in_the_query_works_and_is_counted_by_hash() {
    let sim = start(SimConfig::default()).await;
    let c = client();
    let url = format!("{}/v2/user/basic?key={PUBLIC_7}", sim.base_url());
    let v: Value = c.get(url).send().await.unwrap().json().await.unwrap();
    assert_eq!(v["profile"]["id"], 7);
    let url = format!("{}/user/?selections=basic&key={FULL_4}", sim.base_url());
    let v: Value = c.get(url).send().await.unwrap().json().await.unwrap();
    assert_eq!(v["player_id"], 4);
    get(&c, &sim, "/v2/user/basic", Some(PUBLIC_7)).await;

    let n = sim.counters();
    assert_eq!(n.key_in_url, 2);
    assert_eq!(n.requests_by_key[&KeyHash::of(PUBLIC_7)], 2);
    assert_eq!(n.requests_by_key[&KeyHash::of(FULL_4)], 1);
    let shown = serde_json::to_string(&n).unwrap();
    assert!(shown.contains(KeyHash::of(PUBLIC_7).as_str()), "{shown}");
    assert!(
        !shown.contains(PUBLIC_7),
        "counters never show a key: {shown}"
    );
    let json: Value = serde_json::from_str(&shown).unwrap();
    assert_eq!(json["requests_by_owner"]["7"], 2);

    sim.reset_counters();
    assert_eq!(sim.counters().requests, 0);
    sim.shutdown().await;
}

#[tokio::test]
async fn every_request_counts_toward_the_ip() {
    let config = SimConfig::builder()
        .ip_limit(NonZeroU32::new(5).unwrap())
        .build()
        .unwrap();
    let sim = start(config).await;
    let c = client();
    for key in [
        None,
        Some(UNKNOWN),
        Some(PAUSED),
        Some(FULL_4),
        Some(FULL_4),
    ] {
        assert_ne!(code(&get(&c, &sim, "/v2/user/basic", key).await), Some(8));
    }
    for key in [Some(PUBLIC_7), None] {
        assert_eq!(
            code(&get(&c, &sim, "/v2/user/basic", key).await),
            Some(8),
            "{key:?}"
        );
    }
    let n = sim.counters();
    assert_eq!((n.errors(8), n.admitted), (2, 2));
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_owners_two_keys_share_one_exact_window() {
    const LIMIT: u32 = 20;
    const WINDOW: Duration = Duration::from_millis(2000);
    let sim = start(limited(LIMIT, WINDOW.as_millis() as u64)).await;
    let c = client();
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for task in 0..16 {
        let c = c.clone();
        let url = format!("{}/v2/user/basic", sim.base_url());
        tasks.spawn(async move {
            let mut codes = Vec::new();
            for i in 0..5 {
                let key = if (task + i) % 2 == 0 {
                    FULL_4
                } else {
                    PUBLIC_4
                };
                let v: Value = c
                    .get(&url)
                    .header("Authorization", format!("ApiKey {key}"))
                    .send()
                    .await
                    .unwrap()
                    .json()
                    .await
                    .unwrap();
                codes.push(code(&v));
            }
            codes
        });
    }
    let codes: Vec<Option<u16>> = tasks.join_all().await.into_iter().flatten().collect();
    let hammer = started.elapsed();
    assert!(
        hammer < WINDOW,
        "the test needs all 80 requests inside one window; they took {hammer:?}"
    );
    let granted = codes.iter().filter(|c| c.is_none()).count();
    let refused = codes.iter().filter(|c| **c == Some(5)).count();
    assert_eq!((granted, refused), (LIMIT as usize, 80 - LIMIT as usize));

    let n = sim.counters();
    let owner = TornUserId::new(4);
    assert_eq!(n.admitted_by_owner[&owner], u64::from(LIMIT));
    assert_eq!(n.requests_by_owner[&owner], 80);
    assert_eq!(n.requests_by_key[&KeyHash::of(FULL_4)], 40);
    assert_eq!(n.errors(5), 60);
    assert_eq!(n.max_in_window, LIMIT);
    assert_eq!(n.max_in_window_by_owner[&owner], LIMIT);

    // Another owner is untouched by owner 4's full window.
    assert_eq!(
        code(&get(&c, &sim, "/v2/user/basic", Some(PUBLIC_7)).await),
        None
    );

    // Owner 4 gets in again once the first grants leave the window, and not before.
    let deadline = started + WINDOW + Duration::from_secs(10);
    loop {
        let v = get(&c, &sim, "/v2/user/basic", Some(PUBLIC_4)).await;
        match code(&v) {
            None => break,
            Some(5) => {
                assert!(Instant::now() < deadline, "owner 4 never admitted again");
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            other => panic!("unexpected answer {other:?}"),
        }
    }
    assert!(
        started.elapsed() >= WINDOW,
        "admitted again after {:?}, inside the window",
        started.elapsed()
    );
    assert!(sim.counters().max_in_window <= LIMIT);
    sim.shutdown().await;
}

#[tokio::test]
async fn queued_faults_reach_admitted_requests_in_order() {
    let sim = start(SimConfig::default()).await;
    let c = client();
    let url = format!("{}/v2/user/basic", sim.base_url());
    let ask = || {
        c.get(&url)
            .header("Authorization", format!("ApiKey {FULL_4}"))
    };

    sim.inject(Fault::Code(17));
    sim.inject(Fault::Http(502));
    sim.inject(Fault::MalformedJson);
    sim.inject(Fault::Slow(Duration::from_millis(300)));
    sim.inject(Fault::DropConnection);

    // Refused requests leave the queue alone.
    assert_eq!(code(&get(&c, &sim, "/v2/user/basic", None).await), Some(1));
    assert_eq!(
        code(&get(&c, &sim, "/v2/user/basic", Some(PAUSED)).await),
        Some(18)
    );

    assert_eq!(
        code(&ask().send().await.unwrap().json().await.unwrap()),
        Some(17)
    );

    let resp = ask().send().await.unwrap();
    assert_eq!(resp.status(), 502);
    assert!(resp.text().await.unwrap().contains("Bad Gateway"));

    let resp = ask().send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let body = resp.text().await.unwrap();
    assert!(
        serde_json::from_str::<Value>(&body).is_err(),
        "malformed: {body}"
    );
    assert!(body.starts_with('{'), "JSON cut short: {body}");

    let asked = Instant::now();
    let v: Value = ask().send().await.unwrap().json().await.unwrap();
    assert!(asked.elapsed() >= Duration::from_millis(300));
    assert_eq!(v["profile"]["id"], 4);

    let dropped = match ask().send().await {
        Ok(resp) => resp.bytes().await.err(),
        Err(e) => Some(e),
    };
    assert!(dropped.is_some(), "a dropped connection is a client error");

    // The queue is empty now.
    assert_eq!(
        code(&ask().send().await.unwrap().json().await.unwrap()),
        None
    );
    let n = sim.counters();
    assert_eq!(n.faults_served, 5);
    assert_eq!((n.admitted, n.ok), (6, 2));
    assert_eq!(n.errors(17), 1);
    sim.shutdown().await;
}

#[tokio::test]
async fn front_faults_and_a_key_info_without_its_owner() {
    let sim = start(SimConfig::default()).await;
    let c = client();
    let ask = |path: &str| {
        c.get(format!("{}{path}", sim.base_url()))
            .header("Authorization", format!("ApiKey {FULL_4}"))
    };
    sim.inject(Fault::Http(429));
    sim.inject(Fault::Challenge);
    sim.inject(Fault::KeyInfoWithoutUser);

    let resp = ask("/v2/user/basic").send().await.unwrap();
    assert_eq!(resp.status(), 429);

    let resp = ask("/v2/user/basic").send().await.unwrap();
    assert_eq!(resp.status(), 403);
    assert_eq!(resp.headers()["cf-mitigated"], "challenge");
    assert!(resp.text().await.unwrap().contains("<title>"));

    let info: Value = ask("/v2/key/info")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(info["info"].get("user").is_none(), "{info}");
    assert_eq!(info["info"]["access"]["level"], 4);
    let me: Value = ask("/v2/user/basic")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(me["profile"]["id"], 4, "the profile still names the owner");
    let info: Value = ask("/v2/key/info")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(info["info"]["user"]["id"], 4, "one answer only");

    let n = sim.counters();
    assert_eq!((n.faults_served, n.admitted, n.ok), (3, 5, 3));
    sim.shutdown().await;
}

#[tokio::test]
async fn a_paused_key_comes_back_at_run_time() {
    let sim = start(SimConfig::default()).await;
    let c = client();
    assert!(sim.set_key_state_after(PAUSED, KeyState::Ok, Duration::from_millis(300)));
    assert!(!sim.set_key_state_after(UNKNOWN, KeyState::Ok, Duration::ZERO));
    assert_eq!(
        code(&get(&c, &sim, "/v2/user/basic", Some(PAUSED)).await),
        Some(18)
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match code(&get(&c, &sim, "/v2/user/basic", Some(PAUSED)).await) {
            None => break,
            Some(18) => {
                assert!(Instant::now() < deadline, "never unpaused");
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            other => panic!("{other:?}"),
        }
    }
    sim.shutdown().await;
}

#[tokio::test]
async fn random_faults_follow_their_rates() {
    let config = SimConfig::builder()
        .random_faults(RandomFaults {
            backend_error: 1.0,
            ..RandomFaults::default()
        })
        .build()
        .unwrap();
    let sim = start(config).await;
    let c = client();
    for _ in 0..5 {
        assert_eq!(
            code(&get(&c, &sim, "/v2/user/basic", Some(FULL_4)).await),
            Some(17)
        );
    }
    // A queued fault wins over a random one.
    sim.inject(Fault::Code(0));
    assert_eq!(
        code(&get(&c, &sim, "/v2/user/basic", Some(FULL_4)).await),
        Some(0)
    );
    assert_eq!(sim.counters().faults_served, 6);
    sim.shutdown().await;
}

#[tokio::test]
async fn latency_delays_the_count_and_the_answer() {
    let config = SimConfig::builder()
        .latency(Duration::from_millis(150))
        .build()
        .unwrap();
    let sim = start(config).await;
    let c = client();
    let asked = Instant::now();
    get(&c, &sim, "/v2/user/basic", Some(FULL_4)).await;
    assert!(asked.elapsed() >= Duration::from_millis(150));
    sim.shutdown().await;
}

#[tokio::test]
async fn shutdown_and_drop_stop_serving() {
    let c = client();
    let sim = start(SimConfig::default()).await;
    let url = format!("{}/v2/user/basic", sim.base_url());
    get(&c, &sim, "/v2/user/basic", Some(FULL_4)).await;
    // A slow answer in flight does not hold shutdown up.
    sim.inject(Fault::Slow(Duration::from_secs(60)));
    let slow = tokio::spawn(
        c.get(&url)
            .header("Authorization", format!("ApiKey {FULL_4}"))
            .send(),
    );
    while sim.counters().faults_served == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let stopping = Instant::now();
    sim.shutdown().await;
    assert!(stopping.elapsed() < Duration::from_secs(3));
    let _ = slow.await;
    assert!(c.get(&url).send().await.is_err(), "still serving");

    let sim = start(SimConfig::default()).await;
    let url = format!("{}/v2/user/basic", sim.base_url());
    drop(sim);
    let deadline = Instant::now() + Duration::from_secs(5);
    while c.get(&url).send().await.is_ok() {
        assert!(Instant::now() < deadline, "still serving after drop");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[test]
fn keys_file_errors_name_the_line_and_field_not_the_key() {
    let text = format!("# keys\n{FULL_4} 4 4\n\n{PUBLIC_4} 4 superuser\n");
    let err = parse_keys_file(&text).unwrap_err();
    assert_eq!((err.line, err.field), (4, "ACCESS_LEVEL"));
    let shown = err.to_string();
    assert!(
        shown.contains("line 4") && shown.contains("ACCESS_LEVEL"),
        "{shown}"
    );
    assert!(!shown.contains(PUBLIC_4), "{shown}");

    let keys = parse_keys_file(&format!("{FULL_4} 4 full\n{PAUSED} 8 3 paused")).unwrap();
    assert_eq!(keys[0].access, AccessLevel::Full);
    assert_eq!(keys[1].state, KeyState::Paused);
}

fn keys_file(name: &str, text: &str) -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!(
        "torn-quota-sim-{name}-{}-{:?}.keys",
        std::process::id(),
        std::thread::current().id()
    ));
    std::fs::write(&path, text).unwrap();
    path
}

fn sim_command(keys: &std::path::Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_torn-quota"));
    cmd.args(["sim", "--port", "0", "--keys"])
        .arg(keys)
        .env("TORN_QUOTA_LIMIT", "3")
        .env("TORN_QUOTA_WINDOW_MS", "60000")
        .env_remove("TORN_QUOTA_CONFIG");
    cmd
}

#[test]
fn cli_refuses_a_bad_keys_file_with_exit_2() {
    let path = keys_file("bad", &format!("{FULL_4} 4 4\n{PUBLIC_4} four 1\n"));
    let out = sim_command(&path).output().unwrap();
    let _ = std::fs::remove_file(&path);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("line 2") && stderr.contains("OWNER_ID"),
        "{stderr}"
    );
    assert!(!stderr.contains(PUBLIC_4), "{stderr}");
    assert!(out.stdout.is_empty());
}

#[tokio::test]
async fn cli_serves_the_keys_file_with_the_configured_limit() {
    let path = keys_file("ok", &format!("{FULL_4} 4 4\n{PAUSED} 8 4 paused\n"));
    let mut child = sim_command(&path)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let line = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).map(|_| line)
    });
    let line = tokio::time::timeout(Duration::from_secs(20), line).await;
    let _ = std::fs::remove_file(&path);
    let line = match line {
        Ok(Ok(Ok(line))) => line,
        other => {
            let _ = child.kill();
            panic!("no base_url line: {other:?}");
        }
    };
    let base_url = serde_json::from_str::<Value>(&line).unwrap()["base_url"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(base_url.starts_with("http://127.0.0.1:"), "{base_url}");

    let c = client();
    let mut codes = Vec::new();
    for key in [FULL_4, FULL_4, FULL_4, FULL_4, PAUSED] {
        let v: Value = c
            .get(format!("{base_url}/v2/key/info"))
            .header("Authorization", format!("ApiKey {key}"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        codes.push(code(&v));
    }
    child.kill().unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        codes,
        [None, None, None, Some(5), Some(18)],
        "TORN_QUOTA_LIMIT=3"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("2 keys of 2 owners"), "{stderr}");
    assert!(!stderr.contains(FULL_4), "{stderr}");
}
