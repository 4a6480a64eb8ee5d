//! The multi-process oracle: 4 OS processes hammer 3 users on a short window (20 per
//! 500 ms) through Redis for a few seconds, some tasks waiting politely, one per user
//! asking without pause. Each grant is recorded with the Redis time of
//! the decision and the worker's send and receive times. The oracle then proves that no
//! trailing window held more than the limit, and that every user got at least 95 % of its
//! quota.
//!
//! This file runs its own `main` (`harness = false`): without arguments it is the oracle
//! and spawns copies of itself with `--worker` as the worker processes.

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use common::oracle_worker::{self, epoch_us};
use common::redis_url;

const PROCESSES: usize = 4;
const TASKS_PER_USER: usize = 3;
const USERS: [u64; 3] = [11, 22, 33];
const LIMIT: u32 = 20;
const WINDOW_MS: u64 = 500;
const RUN_MS: u64 = 3_000;
/// What each Rust worker process runs (tests/common/oracle_worker.rs).
const PLAN: oracle_worker::Plan = oracle_worker::Plan {
    users: &USERS,
    tasks_per_user: TASKS_PER_USER,
    eager: true,
    limit: LIMIT,
    window_ms: WINDOW_MS,
    run_ms: RUN_MS,
};

fn main() {
    if let Some((prefix, start_us)) = oracle_worker::worker_args() {
        oracle_worker::run(&PLAN, &prefix, start_us);
    } else if std::env::args().any(|a| a == "--list") {
        // cargo test --list / nextest discovery: one test.
        println!("multi_process_oracle: test");
    } else {
        oracle();
    }
}

struct Record {
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
            "multi_process_oracle needs Redis at {} ({e}): start it and run again",
            redis_url()
        );
    }
    let prefix = format!("tqtest-oracle-{}", std::process::id());
    // Start together, a little ahead, so process start-up does not eat the first window.
    let start_us = epoch_us() + 700_000;
    let exe = std::env::current_exe().unwrap();
    let children: Vec<_> = (0..PROCESSES)
        .map(|_| {
            Command::new(&exe)
                .args(["--worker", &prefix, &start_us.to_string()])
                .stdout(Stdio::piped())
                .spawn()
                .expect("spawn worker process")
        })
        .collect();
    let mut by_user: BTreeMap<u64, Vec<Record>> = BTreeMap::new();
    for mut child in children {
        let stdout = child.stdout.take().unwrap();
        for line in BufReader::new(stdout).lines() {
            let line = line.unwrap();
            let f: Vec<u64> = line.split(' ').map(|x| x.parse().unwrap()).collect();
            by_user.entry(f[0]).or_default().push(Record {
                redis_ms: f[1],
                send_us: f[2],
                recv_us: f[3],
            });
        }
        assert!(child.wait().unwrap().success(), "a worker process failed");
    }

    let mut failures = Vec::new();
    let ideal = u64::from(LIMIT) * RUN_MS / WINDOW_MS;
    for user in USERS {
        let records = by_user.remove(&user).unwrap_or_default();
        // Exact check on the one clock every process shares: Redis TIME.
        let times: Vec<u64> = records.iter().map(|r| r.redis_ms).collect();
        let busiest = torn_quota::oracle::busiest_window(&times, WINDOW_MS);
        // Independent check on the workers' own clocks, with no tolerance: grants whose
        // whole round trips (send to receive) lie inside an interval shorter than one
        // window were certainly granted inside it, whatever Redis's clock says. A
        // violation is limit + 1 grants whose last receive - first send < window.
        let mut by_send: Vec<&Record> = records.iter().collect();
        by_send.sort_by_key(|r| r.send_us);
        let span = WINDOW_MS * 1000;
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
            "user {user}: {} grants (ideal {ideal}, {:.1} %), busiest window {busiest} by Redis \
             time, {busiest_seen} by round trips, limit {LIMIT}",
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
        if share < 0.95 {
            failures.push(format!(
                "user {user}: only {:.1} % of its quota",
                share * 100.0
            ));
        }
    }
    if failures.is_empty() {
        println!("test multi_process_oracle ... ok");
        println!("1 passed, 0 failed");
    } else {
        for f in &failures {
            eprintln!("FAILED: {f}");
        }
        println!("0 passed, 1 failed");
        std::process::exit(1);
    }
}
