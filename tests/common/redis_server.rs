//! A `redis-server` of one test's own, on a free loopback port, so that stopping, freezing
//! or flooding it disturbs no other test. The machine's `redis-server` must be on PATH.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A private `redis-server`, killed (after a resume, if frozen) when the value drops.
pub struct PrivateRedis {
    /// The loopback port it listens on.
    pub port: u16,
    child: Child,
}

impl PrivateRedis {
    /// A server on a free port, answering PING before this returns.
    pub fn start() -> Self {
        Self::start_on(free_port())
    }

    /// A server on `port` (e.g. the port of one that was killed: "Redis came back").
    pub fn start_on(port: u16) -> Self {
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            // Nothing on disk: a restart comes back empty, and tests leave no files.
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("these tests start their own redis-server, which is not on PATH ({e})")
            });
        wait_for_ping(port, "private redis-server did not start");
        Self { port, child }
    }

    /// A server on `port` that keeps its data in `dir` (`dump.rdb`), written only by an
    /// explicit `SAVE` and loaded when a server starts there again: a restart that comes
    /// back with an old snapshot, as with persistence on.
    pub fn start_persistent_on(port: u16, dir: &std::path::Path) -> Self {
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args([
                "--save",
                "",
                "--appendonly",
                "no",
                "--dbfilename",
                "dump.rdb",
            ])
            .arg("--dir")
            .arg(dir)
            .stdout(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("these tests start their own redis-server, which is not on PATH ({e})")
            });
        wait_for_ping(port, "private redis-server did not start");
        Self { port, child }
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Sends `sig` (`-STOP`, `-CONT`, ...) to the server; panics if it cannot be sent.
    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill {sig} failed");
    }

    /// Kills the server and waits until it is gone.
    pub fn kill(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// Wakes a frozen server; harmless on a running or dead one.
    fn resume(&self) {
        let _ = Command::new("kill")
            .args(["-CONT", &self.child.id().to_string()])
            .stderr(Stdio::null())
            .status();
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        // A stopped process would not die of SIGKILL before it is continued on every
        // platform; resume it first.
        self.resume();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A loopback port nothing listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits (10 s at most, then panics with `failure`) until the Redis on `port` answers PING.
pub fn wait_for_ping(port: u16, failure: &str) {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while client
        .get_connection()
        .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c))
        .is_err()
    {
        assert!(Instant::now() < deadline, "{failure}");
        std::thread::sleep(Duration::from_millis(20));
    }
}
