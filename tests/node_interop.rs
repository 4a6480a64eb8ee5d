//! The Lua contract is language-neutral: 2 Node processes calling `lua/acquire.lua`
//! through ioredis (`examples/node/acquire-worker.mjs`, which knows only the script and the
//! key names) and 2 Rust processes using `torn_quota::Limiter` hammer the same 3 users on a
//! short window (20 per 500 ms) for 3 s. The oracle then proves, over every grant of both
//! languages together, that no window held more than the limit, that every user got at
//! least 90 % of its quota, and that both languages were granted.
//!
//! This file runs its own `main` (`harness = false`): without arguments it is the oracle
//! and spawns copies of itself with `--worker` as the Rust worker processes. It fails (never
//! skips) when `node` or `examples/node/node_modules` is missing.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};

use common::oracle_worker::{self, epoch_us};
use common::redis_url;

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

struct Record {
    node: bool,
    redis_ms: u64,
    send_us: u64,
    recv_us: u64,
}

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

    let prefix = format!("tqtest-node-interop-{}", std::process::id());
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
        children.push((false, child));
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
        children.push((true, child));
    }
    // Each child is drained on its own thread, so that none blocks on a full pipe while the
    // oracle waits for another.
    let outputs: Vec<_> = children
        .into_iter()
        .map(|(node, child)| (node, std::thread::spawn(move || child.wait_with_output())))
        .collect();

    let mut by_user: BTreeMap<u64, Vec<Record>> = BTreeMap::new();
    let mut per_process = Vec::new();
    for (node, handle) in outputs {
        let out = handle.join().unwrap().expect("collect a worker's output");
        let lang = if node { "Node" } else { "Rust" };
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
            assert_eq!(f.len(), 4, "bad {lang} line {line:?}");
            by_user.entry(f[0]).or_default().push(Record {
                node,
                redis_ms: f[1],
                send_us: f[2],
                recv_us: f[3],
            });
            count += 1;
        }
        per_process.push(format!("{lang} {count}"));
    }
    println!("grants per process: {}", per_process.join(", "));

    let mut failures = Vec::new();
    for user in USERS {
        let records = by_user.remove(&user).unwrap_or_default();
        failures.extend(check_user(user, &records));
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

/// Checks one user's grants from every process; prints its figures, returns its failures.
fn check_user(user: u64, records: &[Record]) -> Vec<String> {
    let mut failures = Vec::new();
    let ideal = u64::from(LIMIT) * RUN_MS / WINDOW_MS;
    let from_node = records.iter().filter(|r| r.node).count();
    let from_rust = records.len() - from_node;
    // Exact check on the one clock every process shares: Redis TIME.
    let times: Vec<u64> = records.iter().map(|r| r.redis_ms).collect();
    let busiest = busiest_closed_window(&times, WINDOW_MS);
    // Independent check on the workers' own clocks (one machine, one system clock):
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
        "user {user}: {} grants ({from_node} Node, {from_rust} Rust; ideal {ideal}, \
         {:.1} %), busiest window {busiest} by Redis time, {busiest_seen} by round trips, \
         limit {LIMIT}",
        records.len(),
        share * 100.0
    );
    if busiest > LIMIT as usize {
        failures.push(format!(
            "user {user}: {busiest} grants in one window by Redis time"
        ));
    }
    if busiest_seen > LIMIT as usize {
        failures.push(format!(
            "user {user}: {busiest_seen} grants inside one window by round trips"
        ));
    }
    if share < 0.90 {
        failures.push(format!(
            "user {user}: only {:.1} % of its quota",
            share * 100.0
        ));
    }
    if from_node == 0 || from_rust == 0 {
        failures.push(format!(
            "user {user}: {from_node} grants to Node, {from_rust} to Rust: both languages \
             must share the bucket"
        ));
    }
    failures
}
