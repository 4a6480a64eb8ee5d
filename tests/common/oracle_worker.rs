//! The worker process of the multi-process oracles (tests/oracle.rs, tests/node_interop.rs):
//! tasks per user acquire on a shared Redis bucket until the run ends, and every grant is
//! printed as `user redis_ms send_us recv_us` (the Node worker's format too), for the oracle
//! to check against the limit.

use std::num::NonZeroU32;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use torn_quota::{Decision, Limiter, RateLimitConfig, Request, TornUserId, Wait};

/// What one worker process runs.
pub struct Plan {
    /// The Torn users every process hammers.
    pub users: &'static [u64],
    /// Tasks per user that wait politely for room.
    pub tasks_per_user: usize,
    /// Also one task per user asking without pause (see [`run`]).
    pub eager: bool,
    /// Grants per user per window.
    pub limit: u32,
    /// The window, in milliseconds.
    pub window_ms: u64,
    /// How long the workers run, in milliseconds.
    pub run_ms: u64,
}

/// Microseconds since the Unix epoch, on this machine's clock.
pub fn epoch_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64
}

/// `(prefix, start_us)` when this process was started as `--worker PREFIX START_US`.
pub fn worker_args() -> Option<(String, u64)> {
    let args: Vec<String> = std::env::args().collect();
    let pos = args.iter().position(|a| a == "--worker")?;
    Some((args[pos + 1].clone(), args[pos + 2].parse().unwrap()))
}

/// One worker process: from `start_us` (shared by every process, so that they start
/// together) for `plan.run_ms`, then prints its grants on stdout.
pub fn run(plan: &Plan, prefix: &str, start_us: u64) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let config = RateLimitConfig::builder()
            .redis_url(super::redis_url())
            .key_prefix(prefix)
            .limit(NonZeroU32::new(plan.limit).unwrap())
            .window(Duration::from_millis(plan.window_ms))
            .build()
            .unwrap();
        let limiter = Limiter::redis(config).unwrap();
        limiter.ping().await.expect("worker reaches Redis");
        let now = epoch_us();
        if start_us > now {
            tokio::time::sleep(Duration::from_micros(start_us - now)).await;
        }
        let end = tokio::time::Instant::now() + Duration::from_millis(plan.run_ms);
        let mut tasks = tokio::task::JoinSet::new();
        for &user in plan.users {
            for _ in 0..plan.tasks_per_user {
                let limiter = limiter.clone();
                tasks.spawn(async move {
                    let mut lines = Vec::new();
                    let wait = Wait::forever().until(end);
                    loop {
                        let send = epoch_us();
                        let d = limiter
                            .acquire_with(TornUserId::new(user), &Request::new(1), &wait)
                            .await
                            .unwrap();
                        let recv = epoch_us();
                        match d {
                            Decision::Granted(g) => {
                                lines.push(format!("{user} {} {send} {recv}", g.granted_at_ms()));
                            }
                            _ => return lines,
                        }
                    }
                });
            }
            if !plan.eager {
                continue;
            }
            // One task per user asks without pause, so that some grant lands in the very
            // millisecond a unit leaves the window: the edge where Redis's millisecond
            // floor could admit a grant less than one real window after another.
            let limiter = limiter.clone();
            tasks.spawn(async move {
                let mut lines = Vec::new();
                while tokio::time::Instant::now() < end {
                    let send = epoch_us();
                    let d = limiter.try_acquire(TornUserId::new(user), 1).await.unwrap();
                    let recv = epoch_us();
                    if let Decision::Granted(g) = d {
                        lines.push(format!("{user} {} {send} {recv}", g.granted_at_ms()));
                    }
                }
                lines
            });
        }
        let mut out = String::new();
        while let Some(lines) = tasks.join_next().await {
            for line in lines.unwrap() {
                out.push_str(&line);
                out.push('\n');
            }
        }
        print!("{out}");
    });
}
