//! `torn-quota serve`, the Torn API gateway: two processes of the binary on one Redis act
//! as one in front of the simulator (issue 14's proof), plus focused checks of the wait,
//! the cache, the merging of identical calls, the token and the batch route. Real Redis,
//! real PostgreSQL for the vault, the project's simulator.

mod common;

use std::io::{BufRead, BufReader};
use std::num::NonZeroU32;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use torn_quota::serve::{Gateway, ServeConfig};
use torn_quota::sim::{SimConfig, SimHandle, SimKey, Simulator};
use torn_quota::torn::{TornClient, TornClientConfig};
use torn_quota::vault::{AppUserId, Keyring, Vault};
use torn_quota::{AccessLevel, ApiKey};
use torn_quota::{Limiter, TornUserId};

const KEY: &str = "GatewayKeyOwner4";
const OTHER: &str = "GatewayKeyOwner7";
/// Well-formed, unknown to the simulator: Torn answers 2.
const BAD: &str = "GatewayBadKey000";

async fn sim(limit: u32, window: Duration, latency: Duration) -> SimHandle {
    let config = SimConfig::builder()
        .limit(NonZeroU32::new(limit).unwrap())
        .window(window)
        .latency(latency)
        .build()
        .unwrap();
    Simulator::start(
        [
            SimKey::new(KEY, TornUserId::new(4), AccessLevel::Full),
            SimKey::new(OTHER, TornUserId::new(7), AccessLevel::Full),
        ],
        config,
    )
    .await
    .unwrap()
}

fn hash(key: &str) -> torn_quota::KeyHash {
    torn_quota::KeyHash::of(key)
}

/// A gateway process of the built binary, its stderr kept for the key check.
struct Proc {
    child: Child,
    base: String,
    stderr: Arc<Mutex<String>>,
}

impl Proc {
    fn start(
        prefix: &str,
        sim: &SimHandle,
        limit: u32,
        window_ms: u64,
        extra: &[(&str, &str)],
    ) -> Self {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_torn-quota"));
        cmd.args(["serve", "--listen", "127.0.0.1:0"])
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("REDIS_URL", common::redis_url())
            .env("TORN_QUOTA_KEY_PREFIX", prefix)
            .env("TORN_QUOTA_LIMIT", limit.to_string())
            .env("TORN_QUOTA_WINDOW_MS", window_ms.to_string())
            // As the batch CLI's tests: a short window on a loaded machine needs the margin
            // the limiter's own tests run with.
            .env("TORN_QUOTA_SAFETY_MARGIN_MS", "20")
            .env("TORN_API_BASE_URL", sim.base_url())
            .env("RUST_LOG", "debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in extra {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("start torn-quota serve");
        let stderr = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let reader = BufReader::new(child.stderr.take().unwrap());
        let kept = Arc::clone(&stderr);
        std::thread::spawn(move || {
            for line in reader.lines().map_while(Result::ok) {
                if let Some(rest) = line.split("listening on ").nth(1) {
                    let addr = rest.split_whitespace().next().unwrap_or("").to_owned();
                    let _ = tx.send(addr);
                }
                let mut s = kept.lock().unwrap();
                s.push_str(&line);
                s.push('\n');
            }
        });
        let base = rx
            .recv_timeout(Duration::from_secs(20))
            .unwrap_or_else(|_| panic!("gateway did not start: {}", stderr.lock().unwrap()));
        Self {
            child,
            base,
            stderr,
        }
    }

    /// SIGTERM, then the exit status.
    fn stop(mut self) -> (std::process::ExitStatus, String) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let status = self.child.wait().unwrap();
        // Let the reader thread drain the last lines.
        std::thread::sleep(Duration::from_millis(100));
        (status, self.stderr.lock().unwrap().clone())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
    }
}

/// A gateway in this process over its own prefix.
struct InProc {
    base: String,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl InProc {
    async fn start(
        name: &str,
        sim: &SimHandle,
        limit: u32,
        window_ms: u64,
        config: ServeConfig,
        vault: Option<Vault>,
    ) -> Self {
        let limiter =
            Limiter::redis(common::config(name, limit, window_ms).build().unwrap()).unwrap();
        let torn = TornClientConfig::builder()
            .base_url(sim.base_url())
            .build()
            .unwrap();
        let client = TornClient::new(limiter, torn).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let stop = CancellationToken::new();
        let gateway = Gateway::with_vault(client, config, vault);
        let task = tokio::spawn(gateway.run(listener, stop.clone().cancelled_owned()));
        Self { base, stop, task }
    }

    async fn shutdown(self) {
        self.stop.cancel();
        self.task.await.unwrap().unwrap();
    }
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap()
}

async fn get_with_key(base: &str, path: &str, key: &str) -> reqwest::Response {
    http()
        .get(format!("{base}/{path}"))
        .header("Authorization", format!("ApiKey {key}"))
        .send()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[allow(clippy::too_many_lines)] // one story, the proof, read top to bottom
async fn two_gateway_processes_act_as_one_on_the_owners_quota() {
    let sim = sim(20, Duration::from_millis(1000), Duration::from_millis(5)).await;
    let prefix = common::unique_prefix("serve-proof");
    let cache_off = [("TORN_QUOTA_SERVE_CACHE_MS", "0")];
    let a = Proc::start(&prefix, &sim, 20, 1000, &cache_off);
    let b = Proc::start(&prefix, &sim, 20, 1000, &cache_off);
    let client = http();

    // The bad key: once through A, then B and A again, in turn: Torn sees it once.
    for base in [&a.base, &b.base, &a.base] {
        let r: Value = get_with_key(base, "v2/user/basic", BAD)
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(r["error"]["code"], 2, "{r}");
    }

    let calls = (0..150).map(|i| {
        let base = if i % 2 == 0 {
            a.base.clone()
        } else {
            b.base.clone()
        };
        let client = client.clone();
        async move {
            // Distinct paths, so neither merging nor caching hides a call.
            let r = if i % 3 == 0 {
                client
                    .get(format!("{base}/user/4?selections=basic&n={i}&key={KEY}"))
                    .send()
                    .await
            } else {
                client
                    .get(format!("{base}/v2/user/4/basic?n={i}"))
                    .header("Authorization", format!("ApiKey {KEY}"))
                    .send()
                    .await
            };
            let r = r.unwrap();
            assert_eq!(r.status(), 200);
            let remaining = r.headers().contains_key("x-torn-quota-remaining");
            let body = r.json::<Value>().await.unwrap();
            assert!(remaining, "call {i} without X-Torn-Quota-Remaining: {body}");
            body
        }
    });
    let answers = common::join_all(calls).await;
    for (i, a) in answers.iter().enumerate() {
        let id = a["player_id"]
            .as_u64()
            .or_else(|| a["profile"]["id"].as_u64());
        assert_eq!(id, Some(4), "call {i}: {a}");
    }

    let c = sim.counters();
    assert_eq!(c.errors(5), 0, "the simulator served code 5: {c:?}");
    assert!(c.max_in_window <= 20, "{c:?}");
    assert_eq!(c.key_in_url, 0, "a key reached the simulator in a URL");
    assert_eq!(c.requests_by_key.get(&hash(BAD)).copied(), Some(1), "{c:?}");
    // The gateways share one owner lookup: the second waits for the first's memo rather
    // than send a lookup no bucket counts while it is in flight.
    assert_eq!(
        c.ok,
        150 + 1,
        "150 calls and one owner lookup for both gateways: {c:?}"
    );

    // "owners" lists the owners of the last window (1 s here): one more call, then look.
    let last = get_with_key(&a.base, "v2/user/4/basic?n=last", KEY).await;
    assert!(last.headers().contains_key("x-torn-quota-remaining"));
    let status: Value = client
        .get(format!("{}/__torn_quota/status", a.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let owner = status["owners"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["owner"] == 4)
        .unwrap_or_else(|| panic!("owner 4 missing: {status}"));
    assert_eq!(owner["limit"], 20);
    assert_eq!(owner["code5"], 0);
    assert!(owner["calls"].as_u64().unwrap() >= 1);
    assert_eq!(status["mode"], "per-user");
    assert_eq!(status["window_ms"], 1000);
    assert!(
        status["rpm"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap())
            .sum::<u64>()
            >= 75
    );

    for p in [a, b] {
        let (exit, stderr) = p.stop();
        assert!(exit.success(), "gateway exit {exit}: {stderr}");
        assert!(stderr.contains("listening on"), "{stderr}");
        for secret in [KEY, BAD] {
            assert!(
                !stderr.contains(secret),
                "a key in the gateway's stderr:\n{stderr}"
            );
        }
    }
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_wait_answers_code_5_with_retry_headers() {
    let sim = sim(2, Duration::from_millis(3000), Duration::ZERO).await;
    let config = ServeConfig::builder().cache_ms(0).build().unwrap();
    let gw = InProc::start("serve-wait", &sim, 2, 3000, config, None).await;
    // The owner lookup and one call fill the owner's window of 2.
    let r: Value = get_with_key(&gw.base, "v2/user/4/basic", KEY)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(r["profile"]["id"], 4, "{r}");
    let r = http()
        .get(format!("{}/v2/user/4/basic?n=2", gw.base))
        .header("Authorization", format!("ApiKey {KEY}"))
        .header("X-Torn-Quota-Wait-Ms", "0")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let retry: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let retry_ms: u64 = r.headers()["x-torn-quota-retry-after-ms"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=3).contains(&retry), "Retry-After {retry}");
    assert!(retry_ms > 0 && retry_ms <= 3000, "{retry_ms}");
    assert_eq!(retry, retry_ms.div_ceil(1000).max(1));
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], 5, "{body}");
    assert_eq!(
        sim.counters().errors(5),
        0,
        "the gateway answered, not Torn"
    );
    gw.shutdown().await;
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_is_per_key_and_timestamp_bypasses_it() {
    let sim = sim(100, Duration::from_millis(60_000), Duration::ZERO).await;
    let gw = InProc::start(
        "serve-cache",
        &sim,
        100,
        60_000,
        ServeConfig::default(),
        None,
    )
    .await;
    let path = "v2/torn/items";
    let first = get_with_key(&gw.base, path, KEY).await;
    assert_eq!(first.headers()["x-torn-quota-cache"], "miss");
    sim.reset_counters();
    let again = get_with_key(&gw.base, path, KEY).await;
    assert_eq!(again.headers()["x-torn-quota-cache"], "hit");
    assert_eq!(sim.counters().requests, 0, "a cache hit asked Torn");
    // Another key never sees the first key's answer.
    let other = get_with_key(&gw.base, path, OTHER).await;
    assert_eq!(other.headers()["x-torn-quota-cache"], "miss");
    assert_eq!(
        sim.counters().requests_by_key.get(&hash(OTHER)).copied(),
        Some(2),
        "lookup + call"
    );
    // A timestamp parameter asks Torn again.
    sim.reset_counters();
    let fresh = get_with_key(&gw.base, &format!("{path}?timestamp=1"), KEY).await;
    assert_eq!(fresh.headers()["x-torn-quota-cache"], "miss");
    let again = get_with_key(&gw.base, &format!("{path}?timestamp=1"), KEY).await;
    assert_eq!(again.headers()["x-torn-quota-cache"], "miss");
    assert_eq!(sim.counters().requests, 2);
    gw.shutdown().await;
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn identical_calls_in_flight_share_one_request() {
    // A slow Torn, so the calls overlap.
    let sim = sim(
        100,
        Duration::from_millis(60_000),
        Duration::from_millis(300),
    )
    .await;
    let config = ServeConfig::builder().cache_ms(0).build().unwrap();
    let gw = InProc::start("serve-dedup", &sim, 100, 60_000, config, None).await;
    // Learn the owner first, so the lookup is not part of the count.
    get_with_key(&gw.base, "v2/user/4/basic", KEY).await;
    sim.reset_counters();
    let calls = (0..10).map(|_| async {
        let r = get_with_key(&gw.base, "v2/user/4/profile", KEY).await;
        let source = r.headers()["x-torn-quota-cache"]
            .to_str()
            .unwrap()
            .to_owned();
        let body: Value = r.json().await.unwrap();
        (source, body)
    });
    let answers = common::join_all(calls).await;
    assert_eq!(
        sim.counters().requests,
        1,
        "identical calls were sent separately"
    );
    assert_eq!(answers.iter().filter(|(s, _)| s == "miss").count(), 1);
    assert!(
        answers.iter().all(|(_, b)| b.get("error").is_none()),
        "{answers:?}"
    );
    // Done, not cached: the next call asks again.
    get_with_key(&gw.base, "v2/user/4/profile", KEY).await;
    assert_eq!(sim.counters().requests, 2);
    gw.shutdown().await;
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_torn_shaped_and_never_sent() {
    let sim = sim(100, Duration::from_millis(60_000), Duration::ZERO).await;
    let gw = InProc::start(
        "serve-input",
        &sim,
        100,
        60_000,
        ServeConfig::default(),
        None,
    )
    .await;
    let none: Value = http()
        .get(format!("{}/v2/user/basic", gw.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(none["error"]["code"], 1, "{none}");
    let malformed: Value = get_with_key(&gw.base, "v2/user/basic", "short")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(malformed["error"]["code"], 2, "{malformed}");
    assert_eq!(sim.counters().requests, 0);
    let health = http()
        .get(format!("{}/__torn_quota/healthz", gw.base))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    let page = http()
        .get(format!("{}/__torn_quota/", gw.base))
        .send()
        .await
        .unwrap();
    assert!(
        page.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    assert!(page.headers().contains_key("content-security-policy"));
    gw.shutdown().await;
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_is_required_beyond_loopback_and_on_every_route() {
    let sim = sim(100, Duration::from_millis(60_000), Duration::ZERO).await;
    // The binary refuses to listen beyond loopback without a token, and says why.
    let out = Command::new(env!("CARGO_BIN_EXE_torn-quota"))
        .args(["serve", "--listen", "0.0.0.0:0"])
        .env_remove("TORN_QUOTA_SERVE_TOKEN")
        .env("TORN_API_BASE_URL", sim.base_url())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("TORN_QUOTA_SERVE_TOKEN"), "{stderr}");

    let token = "serve-test-token-0123456789";
    let prefix = common::unique_prefix("serve-token");
    let p = Proc::start(
        &prefix,
        &sim,
        100,
        60_000,
        &[("TORN_QUOTA_SERVE_TOKEN", token)],
    );
    for route in [
        "__torn_quota/status",
        "__torn_quota/healthz",
        "v2/user/4/basic",
    ] {
        let r = get_with_key(&p.base, route, KEY).await;
        assert_eq!(r.status(), 401, "{route}");
    }
    assert_eq!(sim.counters().requests, 0);
    let ok = http()
        .get(format!("{}/v2/user/4/basic", p.base))
        .header("Authorization", format!("ApiKey {KEY}"))
        .header("X-Torn-Quota-Token", token)
        .send()
        .await
        .unwrap();
    let body: Value = ok.json().await.unwrap();
    assert_eq!(body["profile"]["id"], 4, "{body}");
    let bearer = http()
        .get(format!("{}/user/4?selections=basic&key={KEY}", p.base))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(bearer.status(), 200);
    // A browser opening the page cannot send a header: `?token=` works there, and only there.
    let sent = sim.counters().requests;
    let page = http()
        .get(format!("{}/__torn_quota/?token={token}", p.base))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    let bare = http()
        .get(format!("{}/__torn_quota/", p.base))
        .send()
        .await
        .unwrap();
    assert_eq!(bare.status(), 401);
    let wrong = http()
        .get(format!(
            "{}/__torn_quota/?token=not-the-token-at-all",
            p.base
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    for route in [
        "__torn_quota/status",
        "__torn_quota/healthz",
        "v2/user/4/basic",
    ] {
        let r = http()
            .get(format!("{}/{route}?token={token}", p.base))
            .header("Authorization", format!("ApiKey {KEY}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "{route} takes the token in a header only");
    }
    assert_eq!(
        sim.counters().requests,
        sent,
        "nothing unauthorised was sent"
    );
    let (exit, stderr) = p.stop();
    assert!(exit.success(), "{stderr}");
    assert!(!stderr.contains(token), "the token was printed");
    assert!(!stderr.contains(KEY));
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_answers_json_lines_and_refuses_bad_bodies() {
    let sim = sim(100, Duration::from_millis(60_000), Duration::ZERO).await;
    let gw = InProc::start(
        "serve-batch",
        &sim,
        100,
        60_000,
        ServeConfig::default(),
        None,
    )
    .await;
    let url = format!("{}/__torn_quota/batch", gw.base);
    let big = "x".repeat(torn_quota::serve::MAX_BATCH_BODY + 1);
    let r = http().post(&url).body(big).send().await.unwrap();
    assert_eq!(r.status(), 413);
    for (body, field) in [
        (json!({"keys": [KEY]}), "requests"),
        (
            json!({"requests": ["user/4/basic", 3], "keys": [KEY]}),
            "requests[1]",
        ),
        (
            json!({"requests": ["user/4/basic"], "keys": [KEY, "nope"]}),
            "keys[1]",
        ),
        (json!({"requests": ["user/4/basic"]}), "keys"),
        (
            json!({"requests": ["user/4/basic"], "account": "x"}),
            "account",
        ),
    ] {
        let r = http().post(&url).json(&body).send().await.unwrap();
        assert_eq!(r.status(), 400, "{body}");
        let e: Value = r.json().await.unwrap();
        assert_eq!(e["error"]["field"], field, "{e}");
        assert!(!e.to_string().contains(KEY));
    }
    assert_eq!(sim.counters().requests, 0);
    let r = http()
        .post(&url)
        .json(&json!({"requests": ["user/4/basic", "user/../key/info", "user/7/basic"], "keys": [KEY, OTHER]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let lines: Vec<Value> = r
        .text()
        .await
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3);
    assert_eq!(lines[0]["index"], 0);
    assert_eq!(lines[0]["data"]["profile"]["id"], 4);
    assert_eq!(lines[1]["ok"], false);
    assert_eq!(lines[2]["data"]["profile"]["id"], 7);
    gw.shutdown().await;
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_by_account_uses_the_vault_keys() {
    let sim = sim(100, Duration::from_millis(60_000), Duration::ZERO).await;
    let db = common::pg::TestDb::migrated("serve_vault").await;
    let keyring = Keyring::parse("AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=").unwrap();
    let vault = Vault::new(db.pool.clone(), keyring);
    let limiter = Limiter::redis(
        common::config("serve-vault-add", 100, 60_000)
            .build()
            .unwrap(),
    )
    .unwrap();
    let resolver = TornClient::new(
        limiter,
        TornClientConfig::builder()
            .base_url(sim.base_url())
            .build()
            .unwrap(),
    )
    .unwrap();
    let account = AppUserId::new(uuid::Uuid::new_v4());
    sqlx::query("INSERT INTO auth.users (id) VALUES ($1)")
        .bind(account.get())
        .execute(&db.pool)
        .await
        .unwrap();
    vault
        .add_key(account, &ApiKey::new(KEY).unwrap(), &resolver)
        .await
        .unwrap();
    let gw = InProc::start(
        "serve-vault",
        &sim,
        100,
        60_000,
        ServeConfig::default(),
        Some(vault),
    )
    .await;
    let r = http()
        .post(format!("{}/__torn_quota/batch", gw.base))
        .json(&json!({"requests": ["user/4/basic", "user/4/profile"], "account": account.to_string()}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let lines: Vec<Value> = r
        .text()
        .await
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(lines.iter().all(|l| l["ok"] == true), "{lines:?}");
    let empty = http()
        .post(format!("{}/__torn_quota/batch", gw.base))
        .json(&json!({"requests": ["user/4/basic"], "account": uuid::Uuid::new_v4().to_string()}))
        .send()
        .await
        .unwrap();
    assert_eq!(empty.status(), 400);
    gw.shutdown().await;
    sim.shutdown().await;
}

/// The batch's lines as they arrive, each with the time it was read.
async fn read_lines(mut r: reqwest::Response, upto: usize) -> Vec<(Value, std::time::Instant)> {
    let mut got = Vec::new();
    let mut buf = String::new();
    while got.len() < upto {
        let Some(chunk) = r.chunk().await.unwrap() else {
            break;
        };
        buf.push_str(std::str::from_utf8(&chunk).unwrap());
        while let Some(end) = buf.find('\n') {
            let line: String = buf.drain(..=end).collect();
            got.push((
                serde_json::from_str(line.trim()).unwrap(),
                std::time::Instant::now(),
            ));
        }
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_streams_lines_as_they_complete_and_stops_when_the_client_leaves() {
    // 3 units per 1.5 s: the owner lookup and the first requests go at once, the last
    // ones only a window later, so the first lines must reach the client long before.
    let window = 1_500;
    let sim = sim(3, Duration::from_millis(window), Duration::ZERO).await;
    let gw = InProc::start(
        "serve-stream",
        &sim,
        3,
        window,
        ServeConfig::default(),
        None,
    )
    .await;
    let url = format!("{}/__torn_quota/batch", gw.base);
    let paths: Vec<String> = (0..4).map(|i| format!("user/4/basic?n={i}")).collect();
    let r = http()
        .post(&url)
        .json(&json!({"requests": paths, "keys": [KEY]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let lines = read_lines(r, 4).await;
    assert_eq!(lines.len(), 4);
    for (i, (line, _)) in lines.iter().enumerate() {
        assert_eq!(line["index"], i, "input order: {line}");
        assert_eq!(line["ok"], true, "{line}");
    }
    let gap = lines[3].1 - lines[0].1;
    assert!(
        gap >= Duration::from_millis(window / 2),
        "the first line came only with the last ({gap:?} apart): not streamed"
    );

    // A client that leaves after the first line stops the batch: nothing more is sent.
    let paths: Vec<String> = (0..12).map(|i| format!("user/4/basic?m={i}")).collect();
    let r = http()
        .post(&url)
        .json(&json!({"requests": paths, "keys": [KEY]}))
        .send()
        .await
        .unwrap();
    let first = read_lines(r, 1).await;
    assert_eq!(first[0].0["index"], 0);
    let at_leave = sim.counters().requests;
    // Dropped with the response above; three windows would let 9 more requests go.
    tokio::time::sleep(Duration::from_millis(window * 3)).await;
    let after = sim.counters().requests;
    assert!(
        after <= at_leave + 3,
        "the batch went on after its client left: {at_leave} -> {after}"
    );
    // The gateway and the owner's quota are fine: the next call is served.
    let ok = get_with_key(&gw.base, "v2/user/4/basic", KEY).await;
    let body: Value = ok.json().await.unwrap();
    assert_eq!(body["profile"]["id"], 4, "{body}");
    assert!(sim.counters().max_in_window <= 3);
    gw.shutdown().await;
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxied_calls_take_the_owner_from_the_vault() {
    let sim = sim(100, Duration::from_millis(60_000), Duration::ZERO).await;
    let db = common::pg::TestDb::migrated("serve_vault_owner").await;
    let keyring = Keyring::parse("AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=").unwrap();
    let vault = Vault::new(db.pool.clone(), keyring);
    let resolver = TornClient::new(
        Limiter::redis(
            common::config("serve-owner-add", 100, 60_000)
                .build()
                .unwrap(),
        )
        .unwrap(),
        TornClientConfig::builder()
            .base_url(sim.base_url())
            .build()
            .unwrap(),
    )
    .unwrap();
    let account = AppUserId::new(uuid::Uuid::new_v4());
    sqlx::query("INSERT INTO auth.users (id) VALUES ($1)")
        .bind(account.get())
        .execute(&db.pool)
        .await
        .unwrap();
    vault
        .add_key(account, &ApiKey::new(KEY).unwrap(), &resolver)
        .await
        .unwrap();
    // Its own prefix: no owner memo shared from the add above.
    let gw = InProc::start(
        "serve-owner",
        &sim,
        100,
        60_000,
        ServeConfig::builder().cache_ms(0).build().unwrap(),
        Some(vault),
    )
    .await;
    let before = sim.counters().requests;
    let body: Value = get_with_key(&gw.base, "v2/user/4/basic", KEY)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(body["profile"]["id"], 4, "{body}");
    assert_eq!(
        sim.counters().requests - before,
        1,
        "a key stored in the vault needs no /v2/key/info"
    );
    // A key the vault does not hold still costs its one lookup: the count above can fail.
    let before = sim.counters().requests;
    let body: Value = get_with_key(&gw.base, "v2/user/7/basic", OTHER)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(body["profile"]["id"], 7, "{body}");
    assert_eq!(sim.counters().requests - before, 2);
    gw.shutdown().await;
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_bad_key_fired_at_two_gateways_at_once_reaches_torn_once() {
    let sim = sim(
        100,
        Duration::from_millis(60_000),
        Duration::from_millis(50),
    )
    .await;
    let prefix = common::unique_prefix("serve-first-send");
    let a = Proc::start(&prefix, &sim, 100, 60_000, &[]);
    let b = Proc::start(&prefix, &sim, 100, 60_000, &[]);
    // Different paths, so no call shares another's answer inside one gateway: only the
    // claim through Redis keeps the key from going out more than once.
    let mut calls = Vec::new();
    for i in 0..16 {
        for base in [a.base.clone(), b.base.clone()] {
            calls.push(tokio::spawn(async move {
                let r = get_with_key(&base, &format!("v2/user/{i}/basic"), BAD).await;
                r.json::<Value>().await.unwrap()
            }));
        }
    }
    for call in calls {
        let body = call.await.unwrap();
        assert_eq!(body["error"]["code"], 2, "{body}");
    }
    let sent = sim
        .counters()
        .requests_by_key
        .get(&hash(BAD))
        .copied()
        .unwrap_or(0);
    assert_eq!(sent, 1, "the bad key reached torn {sent} times");
    let (ea, sa) = a.stop();
    let (eb, sb) = b.stop();
    assert!(ea.success() && eb.success(), "{sa}\n{sb}");
    assert!(!sa.contains(BAD) && !sb.contains(BAD));
    sim.shutdown().await;
}
