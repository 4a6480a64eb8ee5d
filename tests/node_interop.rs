//! The Lua contract is language-neutral: 2 Node processes calling `lua/acquire.lua`
//! through ioredis (`examples/node/acquire-worker.mjs`, which knows only the script and the
//! key names) and 2 Rust processes using `torn_quota::Limiter` hammer the same 3 users on a
//! short window (20 per 500 ms) for 3 s. Beside them, a legacy Node app
//! (`examples/node/gateway-fetch.mjs`: plain `fetch` with `?key=`) calls the simulator
//! through a `torn-quota serve` gateway process on the same Redis buckets, with keys of the
//! same users.
//!
//! The gateway's grants are taken from the simulator, the ground truth: the wall-clock
//! time at which it counted each call of each owner ([`torn_quota::sim::SimHandle::admissions`]). A gateway
//! unit counts in Redis from its admission until one window after Torn's answer, so the
//! moment Torn counted the call lies inside it; and Redis `TIME` reads the same wall clock.
//! The oracle then proves, over every grant of the three together, that no window held
//! more than the limit (by Redis time and simulator time; and again by the callers' own round
//! trips), that the simulator counted exactly the calls the legacy app was answered with data
//! and never refused one with code 5, that every user got at least 90 % of its quota, and
//! that all three were granted.
//!
//! This file runs its own `main` (`harness = false`): without arguments it is the oracle
//! and spawns copies of itself with `--worker` as the Rust worker processes. It fails (never
//! skips) when `node` or `examples/node/node_modules` is missing.

mod common;

use std::collections::BTreeMap;
use std::num::NonZeroU32;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::oracle_worker::{self, epoch_us};
use common::redis_url;
use torn_quota::sim::{SimConfig, SimKey, Simulator};
use torn_quota::{AccessLevel, TornUserId};

#[path = "common/gateway_process.rs"]
mod gateway_process;

use gateway_process::GatewayProcess;

const RUST_PROCESSES: usize = 2;
const NODE_PROCESSES: usize = 2;
const TASKS_PER_USER: usize = 3;
const USERS: [u64; 3] = [11, 22, 33];
const LIMIT: u32 = 20;
const WINDOW_MS: u64 = 500;
const RUN_MS: u64 = 3_000;
/// What each Rust worker process runs (tests/common/oracle_worker.rs).
const PLAN: oracle_worker::Plan = oracle_worker::Plan {
    users: &USERS,
    tasks_per_user: TASKS_PER_USER,
    eager: false,
    limit: LIMIT,
    window_ms: WINDOW_MS,
    run_ms: RUN_MS,
};
const INSTALL: &str = "npm ci --prefix examples/node";
/// Legacy callers per key in the gateway's Node process.
const GATEWAY_TASKS_PER_KEY: usize = 3;

/// The simulator's key of `user`: 16 letters and digits, as Torn's are.
fn key_of(user: u64) -> String {
    format!("NodeInterop{user:05}")
}

fn main() {
    if let Some((prefix, start_us)) = oracle_worker::worker_args() {
        oracle_worker::run(&PLAN, &prefix, start_us);
    } else if std::env::args().any(|a| a == "--list") {
        // cargo test --list / nextest discovery: one test.
        println!("node_interop: test");
    } else {
        oracle();
    }
}

/// Panics with the command that fixes it when Node or the example's packages are missing:
/// this test proves a contract, so it fails rather than skips.
fn node_ready(dir: &Path) {
    match Command::new("node").arg("--version").output() {
        Ok(out) if out.status.success() => {}
        Ok(out) => panic!(
            "node_interop: `node --version` failed ({}): install Node 20, then run `{INSTALL}`",
            out.status
        ),
        Err(e) => panic!(
            "node_interop needs `node` on PATH ({e}): install Node 20 (e.g. apt-get install \
             nodejs npm), then run `{INSTALL}`"
        ),
    }
    let ioredis = dir.join("node_modules/ioredis/package.json");
    assert!(
        ioredis.is_file(),
        "node_interop: {} is missing: run `{INSTALL}` (from the repository root) and run again",
        ioredis.display()
    );
}

/// The most grants of one bucket in any closed interval of one window's length: a grant
/// stamped `t` leaves only once `t + window < now`, so two grants exactly one window apart
/// both count. This is stricter than letting it leave at `t + window`, and it is what makes
/// the limit hold in real time when Redis's clock is floored to the millisecond.
fn busiest_closed_window(times: &[u64], window_ms: u64) -> usize {
    let mut sorted = times.to_vec();
    sorted.sort_unstable();
    let mut best = 0;
    let mut lo = 0;
    for hi in 0..sorted.len() {
        while sorted[hi] - sorted[lo] > window_ms {
            lo += 1;
        }
        best = best.max(hi - lo + 1);
    }
    best
}

/// Who was granted a unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    /// A Rust worker process (`torn_quota::Limiter`).
    Rust,
    /// A Node worker calling `lua/acquire.lua` through ioredis.
    Node,
    /// The legacy Node app's call through the gateway.
    Gateway,
}

impl Source {
    fn name(self) -> &'static str {
        match self {
            Source::Rust => "Rust",
            Source::Node => "Node",
            Source::Gateway => "gateway",
        }
    }
}

/// One grant: its Redis-clock stamp (ms; for the gateway, the simulator's count, taken
/// apart in [`check_user`]) and the caller's round trip around it (µs, wall clock).
struct Record {
    source: Source,
    redis_ms: u64,
    send_us: u64,
    recv_us: u64,
}

/// The gateway's grants of one user, as the simulator counted them, and how many calls it
/// refused with code 5.
struct GatewayTruth {
    admissions_us: BTreeMap<u64, Vec<u64>>,
    code5: u64,
}

#[allow(clippy::too_many_lines)] // the whole oracle run, read top to bottom
fn oracle() {
    let client = redis::Client::open(redis_url()).unwrap();
    if let Err(e) = client
        .get_connection()
        .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c))
    {
        panic!(
            "node_interop needs Redis at {} ({e}): start it and run again",
            redis_url()
        );
    }
    let node_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/node");
    node_ready(&node_dir);

    // The simulator runs in this process (its admissions are the gateway's ground truth),
    // on the same limit and window as every other caller.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let prefix = format!("tqtest-node-interop-{}", std::process::id());
    let keys: Vec<String> = USERS.iter().map(|&u| key_of(u)).collect();
    let (sim, gateway) = rt.block_on(async {
        let sim_config = SimConfig::builder()
            .limit(NonZeroU32::new(LIMIT).unwrap())
            .window(Duration::from_millis(WINDOW_MS))
            .build()
            .unwrap();
        let sim_keys = USERS
            .iter()
            .map(|&u| SimKey::new(key_of(u), TornUserId::new(u), AccessLevel::Full));
        let sim = Simulator::start(sim_keys, sim_config).await.unwrap();
        let gateway = GatewayProcess::start(
            env!("CARGO_BIN_EXE_torn-quota").as_ref(),
            &[
                ("REDIS_URL", redis_url()),
                ("TORN_QUOTA_KEY_PREFIX", prefix.clone()),
                ("TORN_API_BASE_URL", sim.base_url()),
                ("TORN_QUOTA_MODE", "per-user".to_owned()),
                ("TORN_QUOTA_LIMIT", LIMIT.to_string()),
                ("TORN_QUOTA_WINDOW_MS", WINDOW_MS.to_string()),
            ],
        )
        .await;
        // One call per key before the run, so that the gateway knows each key's owner (its
        // one key-info call) more than a window before anyone starts counting.
        let http = reqwest::Client::new();
        for key in &keys {
            let body: serde_json::Value = http
                .get(format!(
                    "{}/user/?selections=basic&key={key}",
                    gateway.base_url()
                ))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            assert!(
                body["player_id"].is_u64(),
                "warm-up call through the gateway: {body}"
            );
        }
        (sim, gateway)
    });

    // Start together, a little ahead, so process start-up does not eat the first window.
    let start_us = epoch_us() + 1_000_000;
    let users = USERS.map(|u| u.to_string()).join(",");
    let exe = std::env::current_exe().unwrap();
    let mut children = Vec::new();
    for _ in 0..RUST_PROCESSES {
        let child = Command::new(&exe)
            .args(["--worker", &prefix, &start_us.to_string()])
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn Rust worker process");
        children.push((Source::Rust, child));
    }
    for _ in 0..NODE_PROCESSES {
        let child = Command::new("node")
            .arg(node_dir.join("acquire-worker.mjs"))
            .args(["--prefix", &prefix, "--users", &users])
            .args(["--limit", &LIMIT.to_string()])
            .args(["--window-ms", &WINDOW_MS.to_string()])
            .args(["--run-ms", &RUN_MS.to_string()])
            .args(["--tasks-per-user", &TASKS_PER_USER.to_string()])
            .args(["--start-us", &start_us.to_string()])
            .env("REDIS_URL", redis_url())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn Node worker process");
        children.push((Source::Node, child));
    }
    // The legacy app: its keys in the environment, never on a command line.
    let child = Command::new("node")
        .arg(node_dir.join("gateway-fetch.mjs"))
        .args(["--run-ms", &RUN_MS.to_string()])
        .args(["--tasks-per-key", &GATEWAY_TASKS_PER_KEY.to_string()])
        .args(["--start-us", &start_us.to_string()])
        .env("TORN_API_BASE_URL", gateway.base_url())
        .env("TORN_API_KEYS", keys.join(","))
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn the gateway's Node caller");
    children.push((Source::Gateway, child));
    // Each child is drained on its own thread, so that none blocks on a full pipe while the
    // oracle waits for another.
    let outputs: Vec<_> = children
        .into_iter()
        .map(|(source, child)| (source, std::thread::spawn(move || child.wait_with_output())))
        .collect();

    let mut by_user: BTreeMap<u64, Vec<Record>> = BTreeMap::new();
    let mut per_process = Vec::new();
    for (source, handle) in outputs {
        let out = handle.join().unwrap().expect("collect a worker's output");
        let lang = source.name();
        assert!(
            out.status.success(),
            "a {lang} worker process failed: {}",
            out.status
        );
        let text = String::from_utf8(out.stdout).unwrap();
        let mut count = 0;
        for line in text.lines() {
            let f: Vec<u64> = line
                .split(' ')
                .map(|x| {
                    x.parse()
                        .unwrap_or_else(|_| panic!("bad {lang} line {line:?}"))
                })
                .collect();
            // Workers: user redis_ms send_us recv_us; the gateway's caller: user send_us recv_us
            // (its Redis-clock stamps come from the simulator below).
            let record = match (source, f.as_slice()) {
                (Source::Gateway, &[_, send_us, recv_us]) => Record {
                    source,
                    redis_ms: 0,
                    send_us,
                    recv_us,
                },
                (Source::Rust | Source::Node, &[_, redis_ms, send_us, recv_us]) => Record {
                    source,
                    redis_ms,
                    send_us,
                    recv_us,
                },
                _ => panic!("bad {lang} line {line:?}"),
            };
            by_user.entry(f[0]).or_default().push(record);
            count += 1;
        }
        per_process.push(format!("{lang} {count}"));
    }
    println!("grants per process: {}", per_process.join(", "));

    let truth = GatewayTruth {
        admissions_us: USERS
            .iter()
            .map(|&u| (u, sim.admissions(TornUserId::new(u))))
            .collect(),
        code5: sim.counters().errors(5),
    };
    let gateway_log = gateway.stderr();
    drop(gateway);
    rt.block_on(sim.shutdown());

    let mut failures = Vec::new();
    if truth.code5 > 0 {
        failures.push(format!(
            "the simulator refused {} calls through the gateway with code 5",
            truth.code5
        ));
    }
    if keys.iter().any(|k| gateway_log.contains(k.as_str())) {
        failures.push("the gateway logged a key".to_owned());
    }
    for user in USERS {
        let records = by_user.remove(&user).unwrap_or_default();
        failures.extend(check_user(user, &records, &truth, start_us));
    }
    if !by_user.is_empty() {
        failures.push(format!("grants for unknown users {:?}", by_user.keys()));
    }
    if failures.is_empty() {
        println!("test node_interop ... ok");
        println!("1 passed, 0 failed");
    } else {
        for f in &failures {
            eprintln!("FAILED: {f}");
        }
        println!("0 passed, 1 failed");
        std::process::exit(1);
    }
}

/// Checks one user's grants from every process and the gateway; prints its figures, returns
/// its failures.
fn check_user(user: u64, records: &[Record], truth: &GatewayTruth, start_us: u64) -> Vec<String> {
    let mut failures = Vec::new();
    let ideal = u64::from(LIMIT) * RUN_MS / WINDOW_MS;
    let count = |s: Source| records.iter().filter(|r| r.source == s).count();
    let (from_rust, from_node, from_gateway) = (
        count(Source::Rust),
        count(Source::Node),
        count(Source::Gateway),
    );
    // Every call the simulator counted for this user, warm-up included: all of them held a
    // unit in Redis. Those of the run are the ones the legacy app was answered with data.
    let admitted = truth
        .admissions_us
        .get(&user)
        .map_or(&[][..], Vec::as_slice);
    let admitted_in_run = admitted.iter().filter(|&&t| t >= start_us).count();
    // Exact check on the one clock every process shares: Redis TIME for the workers, and
    // for the gateway the moment the simulator counted the call (wall clock, floored to
    // the millisecond as Redis stamps), which lies inside its unit's time in Redis.
    let times: Vec<u64> = records
        .iter()
        .filter(|r| r.source != Source::Gateway)
        .map(|r| r.redis_ms)
        .chain(admitted.iter().map(|&us| us / 1000))
        .collect();
    let busiest = busiest_closed_window(&times, WINDOW_MS);
    // Independent check on the callers' own clocks (one machine, one system clock):
    // grants whose whole round trip lies inside one interval shorter than the window
    // (by 1 ms for Redis's ms rounding) certainly happened inside it.
    let mut by_send: Vec<&Record> = records.iter().collect();
    by_send.sort_by_key(|r| r.send_us);
    let span = (WINDOW_MS - 1) * 1000;
    let mut busiest_seen = 0;
    for (i, first) in by_send.iter().enumerate() {
        let inside = by_send[i..]
            .iter()
            .take_while(|r| r.send_us < first.send_us + span)
            .filter(|r| r.recv_us < first.send_us + span)
            .count();
        busiest_seen = busiest_seen.max(inside);
    }
    let share = records.len() as f64 / ideal as f64;
    println!(
        "user {user}: {} grants ({from_node} Node, {from_rust} Rust, {from_gateway} gateway; \
         ideal {ideal}, {:.1} %), busiest window {busiest} by Redis and simulator time, \
         {busiest_seen} by round trips, limit {LIMIT}",
        records.len(),
        share * 100.0
    );
    if busiest > LIMIT as usize {
        failures.push(format!(
            "user {user}: {busiest} grants in one window by Redis and simulator time"
        ));
    }
    if busiest_seen > LIMIT as usize {
        failures.push(format!(
            "user {user}: {busiest_seen} grants inside one window by round trips"
        ));
    }
    if admitted_in_run != from_gateway {
        failures.push(format!(
            "user {user}: the simulator counted {admitted_in_run} calls in the run, the legacy \
             app was answered {from_gateway}"
        ));
    }
    if share < 0.90 {
        failures.push(format!(
            "user {user}: only {:.1} % of its quota",
            share * 100.0
        ));
    }
    if from_node == 0 || from_rust == 0 || from_gateway == 0 {
        failures.push(format!(
            "user {user}: {from_node} grants to Node, {from_rust} to Rust, {from_gateway} \
             through the gateway: all three must share the bucket"
        ));
    }
    failures
}
