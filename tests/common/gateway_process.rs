//! A `torn-quota serve` gateway as its own OS process, the way an operator runs it: the built
//! binary, configured by environment only, on a free loopback port. Shared by the status-page
//! test, the Node interop oracle and the gateway benchmark (each includes this file by path).

#![allow(dead_code, unreachable_pub)]

use std::io::Read;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a gateway may take to answer its health check after start.
const READY_WITHIN: Duration = Duration::from_secs(30);

/// A running gateway process; killed (and reaped) on drop, so a failing test leaves none.
pub struct GatewayProcess {
    child: Child,
    base_url: String,
    stderr: Arc<Mutex<String>>,
}

impl GatewayProcess {
    /// Starts `exe serve --listen 127.0.0.1:<free port>` with `envs` added to this process's
    /// environment, and waits until `/__torn_quota/healthz` answers 200.
    pub async fn start(exe: &Path, envs: &[(&str, String)]) -> Self {
        let port = free_port();
        let listen = format!("127.0.0.1:{port}");
        let mut child = Command::new(exe)
            .args(["serve", "--listen", &listen])
            .envs(envs.iter().map(|(k, v)| (*k, v.as_str())))
            .env("TORN_QUOTA_LISTEN", &listen)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {} serve: {e}", exe.display()));
        // Drained on a thread of its own, so the gateway never blocks on a full pipe and the
        // test can read everything it logged.
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut pipe = child.stderr.take().unwrap();
        let sink = Arc::clone(&stderr);
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = pipe.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        let mut gw = Self {
            child,
            base_url: format!("http://{listen}"),
            stderr,
        };
        gw.wait_ready().await;
        gw
    }

    /// `http://127.0.0.1:PORT`, without a trailing slash.
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// Everything the gateway wrote to stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    async fn wait_ready(&mut self) {
        let client = reqwest::Client::new();
        let url = format!("{}/__torn_quota/healthz", self.base_url);
        let deadline = Instant::now() + READY_WITHIN;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!(
                    "the gateway exited before answering ({status}); its stderr:\n{}",
                    self.stderr()
                );
            }
            if let Ok(res) = client.get(&url).send().await
                && res.status().is_success()
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the gateway did not answer {url} within {READY_WITHIN:?}; its stderr:\n{}",
                self.stderr()
            );
            // Polling is the only signal a separate process gives before it listens.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A loopback port free right now: the OS picks it, and it is released for the gateway.
fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().unwrap().port()
}
