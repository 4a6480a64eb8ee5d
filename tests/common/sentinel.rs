//! A primary, a replica of it and one sentinel watching them, all the test's own on free
//! loopback ports; `failover` has the sentinel promote the replica and waits until it did.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::redis_server::{PrivateRedis, free_port, wait_for_ping};

/// The service name the sentinel watches.
pub const MASTER: &str = "tq-test-master";

/// Primary, replica and sentinel; every process killed on drop.
pub struct SentinelSet {
    pub primary: PrivateRedis,
    pub replica: PrivateRedis,
    pub sentinel_port: u16,
    sentinel: Child,
    conf: PathBuf,
}

impl SentinelSet {
    /// Starts the three and waits until the sentinel knows the replica as a good one (a
    /// failover before then would find no replica to promote).
    pub fn start() -> Self {
        let primary = PrivateRedis::start();
        let replica = PrivateRedis::start();
        // A full sync streams the RDB (diskless on both ends), so no file lands in the
        // tree (the servers' working directory); both may become replicas.
        for port in [primary.port, replica.port] {
            let _: () = query(
                port,
                redis::cmd("CONFIG")
                    .arg("SET")
                    .arg("repl-diskless-sync")
                    .arg("yes")
                    .arg("repl-diskless-load")
                    .arg("swapdb"),
            );
        }
        let _: () = query(
            replica.port,
            redis::cmd("REPLICAOF").arg("127.0.0.1").arg(primary.port),
        );
        let sentinel_port = free_port();
        // The sentinel rewrites its file, so each set has its own.
        let conf = std::env::temp_dir().join(format!(
            "tq-sentinel-{}-{}.conf",
            std::process::id(),
            rand::random::<u64>()
        ));
        std::fs::write(
            &conf,
            format!(
                "port {sentinel_port}\nbind 127.0.0.1\n\
                 sentinel monitor {MASTER} 127.0.0.1 {} 1\n\
                 sentinel down-after-milliseconds {MASTER} 2000\n\
                 sentinel failover-timeout {MASTER} 10000\n",
                primary.port
            ),
        )
        .unwrap();
        let sentinel = Command::new("redis-server")
            .arg(&conf)
            .arg("--sentinel")
            .stdout(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("these tests start their own redis-server ({e})"));
        wait_for_ping(sentinel_port, "the sentinel did not start");
        let set = Self {
            primary,
            replica,
            sentinel_port,
            sentinel,
            conf,
        };
        wait_until(
            Duration::from_secs(30),
            "the sentinel never saw the replica",
            || {
                let replicas: Vec<Vec<String>> = query(
                    set.sentinel_port,
                    redis::cmd("SENTINEL").arg("REPLICAS").arg(MASTER),
                );
                replicas.iter().any(|fields| {
                    let get = |k: &str| {
                        fields
                            .chunks(2)
                            .find(|p| p[0] == k)
                            .map(|p| p[1].clone())
                            .unwrap_or_default()
                    };
                    get("flags") == "slave" && get("master-link-status") == "ok"
                })
            },
        );
        set
    }

    /// `redis://127.0.0.1:SENTINEL_PORT`.
    pub fn sentinel_url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.sentinel_port)
    }

    /// The port the sentinel names as primary now.
    pub fn primary_port(&self) -> u16 {
        let addr: Vec<String> = query(
            self.sentinel_port,
            redis::cmd("SENTINEL")
                .arg("GET-MASTER-ADDR-BY-NAME")
                .arg(MASTER),
        );
        addr[1].parse().unwrap()
    }

    /// `SENTINEL FAILOVER`, then waits until the replica is the primary and says so.
    pub fn failover(&self) {
        let _: String = query(
            self.sentinel_port,
            redis::cmd("SENTINEL").arg("FAILOVER").arg(MASTER),
        );
        let replica = self.replica.port;
        wait_until(
            Duration::from_secs(30),
            "the failover did not happen",
            || {
                let role: Vec<redis::Value> = query(replica, &redis::cmd("ROLE"));
                self.primary_port() == replica
                    && matches!(&role[0], redis::Value::BulkString(r) if r == b"master")
            },
        );
    }

    /// Waits until the sentinel has demoted the old primary to a replica of the new one
    /// (it does so some seconds after the promotion; until then both accept writes).
    pub fn wait_for_old_primary_demoted(&self) {
        let old = self.primary.port;
        wait_until(
            Duration::from_secs(60),
            "the old primary was never demoted",
            || {
                let role: Vec<redis::Value> = query(old, &redis::cmd("ROLE"));
                matches!(&role[0], redis::Value::BulkString(r) if r == b"slave")
            },
        );
    }
}

impl Drop for SentinelSet {
    fn drop(&mut self) {
        let _ = self.sentinel.kill();
        let _ = self.sentinel.wait();
        let _ = std::fs::remove_file(&self.conf);
    }
}

/// One command to the server on `port`, on a connection of its own.
pub fn query<T: redis::FromRedisValue>(port: u16, cmd: &redis::Cmd) -> T {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}")).unwrap();
    let mut c = client.get_connection().unwrap();
    cmd.query(&mut c).unwrap()
}

/// Polls `done` until it holds; panics with `failure` after `limit`.
fn wait_until(limit: Duration, failure: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < deadline, "{failure}");
        std::thread::sleep(Duration::from_millis(50));
    }
}
