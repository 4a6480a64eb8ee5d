//! Redis restarted empty in the middle of a batch at full quota, under the default policy
//! (fail-fast): the batch waits the outage out, the process writes its journal of grants
//! back before granting anything new, and Torn (the simulator) never answers code 5.
//! The same for a Redis flushed under the batch, where no connection breaks: the first
//! grant from a bucket holding less than this process granted gives the loss away. And for
//! a Redis restarted from an old snapshot, whose epoch survived: its new run_id gives it
//! away.

mod common;

use common::redis_server::PrivateRedis;

use std::num::{NonZeroU32, NonZeroUsize};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use torn_quota::batch::{BatchConfig, BatchHandler, BatchRequest, Progress};
use torn_quota::sim::{SimConfig, SimKey, Simulator};
use torn_quota::torn::{TornClient, TornClientConfig};
use torn_quota::{AccessLevel, ApiKey, Limiter, TornUserId};

/// Per owner per window, the simulator's and the limiter's.
const LIMIT: u32 = 10;
/// Long enough that a restart (a few hundred ms) lands well inside one window.
const WINDOW: Duration = Duration::from_millis(1500);

/// What happens to Redis in the middle of the batch.
#[derive(Clone, Copy)]
enum Fault {
    /// Killed and started again on its port, empty: connections break.
    Restart,
    /// `FLUSHALL` from another client: every window is gone, no connection breaks.
    Flush,
    /// Killed and started again from a snapshot taken in the first window: the epoch is
    /// there, as when it was saved, and the grants since are gone. Only the server's new
    /// run_id tells.
    RestartFromSnapshot,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_restarted_empty_mid_batch_costs_no_code_5() {
    full_quota_batch_through(Fault::Restart).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_flushed_mid_batch_costs_no_code_5() {
    full_quota_batch_through(Fault::Flush).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_restarted_from_an_old_snapshot_mid_batch_costs_no_code_5() {
    full_quota_batch_through(Fault::RestartFromSnapshot).await;
}

/// A directory of one test's own, removed when dropped.
struct TempDir(std::path::PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(common::unique_prefix(name).replace(':', "-"));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

async fn full_quota_batch_through(fault: Fault) {
    common::trace_on_failure();
    let dir = TempDir::new("redis-snapshot");
    let redis = match fault {
        Fault::RestartFromSnapshot => {
            PrivateRedis::start_persistent_on(common::redis_server::free_port(), &dir.0)
        }
        Fault::Restart | Fault::Flush => PrivateRedis::start(),
    };
    let owner = TornUserId::new(46);
    let k = SimKey::new("Owner00046Key001", owner, AccessLevel::Full);
    let sim = Simulator::start(
        vec![k.clone()],
        SimConfig::builder()
            .limit(NonZeroU32::new(LIMIT).unwrap())
            .window(WINDOW)
            .build()
            .unwrap(),
    )
    .await
    .unwrap();
    let config = common::config("redis-restart", LIMIT, WINDOW.as_millis() as u64)
        .redis_url(redis.url())
        .command_timeout(Duration::from_millis(300))
        .connect_timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let client = TornClient::new(
        Limiter::redis(config).unwrap(),
        TornClientConfig::builder()
            .base_url(sim.base_url())
            .safety_margin(Duration::from_millis(40))
            .request_timeout(Duration::from_secs(1))
            .retry_min_delay(Duration::from_millis(20))
            .retry_max_delay(Duration::from_millis(200))
            .owner_hold(Duration::from_millis(200))
            .build()
            .unwrap(),
    )
    .unwrap();
    let done = Arc::new(Mutex::new(0usize));
    let seen = done.clone();
    let handler = BatchHandler::new(
        client,
        BatchConfig::default().concurrency(NonZeroUsize::new(8).unwrap()),
    )
    .on_progress(move |p: Progress| *seen.lock().unwrap() = p.done);

    // Three and a half windows' worth: the quota is full in every window, and the restart
    // comes in the middle of the third, right after its grants.
    let requests: Vec<BatchRequest> = (1000..1035)
        .map(|id| BatchRequest::new(format!("user/{id}/basic")))
        .collect();
    let restarter = {
        let done = done.clone();
        let dir = dir.0.clone();
        tokio::task::spawn_blocking(move || inject(fault, redis, &dir, &done))
    };
    let outcome = handler
        .run(requests, vec![ApiKey::new(&k.key).unwrap()])
        .await
        .expect("a restarted or flushed Redis must not abort the batch");
    let _redis = restarter.await.unwrap();

    for (i, r) in outcome.results.iter().enumerate() {
        let data = r
            .as_ref()
            .unwrap_or_else(|e| panic!("request {i} failed: {e}"));
        assert_eq!(
            data["profile"]["id"],
            1000 + i as u64,
            "result {i} out of order"
        );
    }
    let c = sim.counters();
    assert_eq!(c.errors(5), 0, "code-5 answers after the fault: {c:?}");
    assert!(
        c.max_in_window <= LIMIT,
        "Torn counted {} in a window",
        c.max_in_window
    );
}

/// Waits for the batch's progress, then does `fault` to `redis`; returns the server now
/// running on its port.
fn inject(
    fault: Fault,
    mut redis: PrivateRedis,
    dir: &std::path::Path,
    done: &Mutex<usize>,
) -> PrivateRedis {
    let port = redis.port;
    let cli = |args: &[&str]| {
        let out = std::process::Command::new("redis-cli")
            .arg("-p")
            .arg(port.to_string())
            .args(args)
            .output()
            .expect("run redis-cli");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    let until_done = |n: usize| {
        while *done.lock().unwrap() < n {
            std::thread::sleep(Duration::from_millis(2));
        }
    };
    if let Fault::RestartFromSnapshot = fault {
        // In the first window: the epoch and the first grants go to disk.
        until_done(2);
        assert_eq!(cli(&["SAVE"]), "OK");
    }
    until_done(2 * LIMIT as usize + 2);
    match fault {
        Fault::Restart => {
            redis.kill();
            // Back on the same port, empty (no persistence): every window is gone.
            PrivateRedis::start_on(port)
        }
        Fault::Flush => {
            assert_eq!(cli(&["FLUSHALL"]), "OK");
            redis
        }
        Fault::RestartFromSnapshot => {
            // SIGKILL: nothing is saved on the way down.
            redis.kill();
            PrivateRedis::start_persistent_on(port, dir)
        }
    }
}
