//! A Torn API simulator on loopback: the ground truth the client, the batch handler and the
//! demo are tested against.
//!
//! It enforces what Torn enforces, the way Torn does: one exact rolling window per key
//! owner across all of their keys (code 5 when full; a refused request is not recorded),
//! a window per IP (code 8), and the key checks (codes 1, 2, 18, 13, 10, 16), each in Torn's
//! order, with Torn's error bodies. It answers v2 paths (`/v2/key/info`,
//! `/v2/user/{id}/basic`, `/v2/{section}/{id}/{selection}`) and v1 paths
//! (`/user/{id}?selections=basic`, `/key/?selections=info`) in Torn's shapes, counts what it
//! served, and serves [faults](Fault) on demand.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> std::io::Result<()> {
//! use torn_quota::TornUserId;
//! use torn_quota::sim::{SimConfig, SimKey, Simulator};
//! use torn_quota::AccessLevel;
//!
//! let key = SimKey::new("AbCdEfGh12345678", TornUserId::new(4), AccessLevel::Full);
//! let sim = Simulator::start([key], SimConfig::default()).await?;
//! // GET {base_url}/v2/key/info with `Authorization: ApiKey AbCdEfGh12345678` ...
//! assert!(sim.base_url().starts_with("http://127.0.0.1:"));
//! assert_eq!(sim.counters().requests, 0);
//! sim.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! Not simulated: Torn's 29-second response cache, the daily read limit (14), custom keys'
//! per-selection rights (a custom key reads what a public key reads).

mod config;
mod fault;
mod keys;
mod routes;
mod server;
mod state;

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::identity::TornUserId;

pub use config::{RandomFaults, SimConfig, SimConfigBuilder};
pub use fault::Fault;
pub use keys::{KeyState, KeysFileError, SimKey, parse_keys_file};
pub use state::{ADMISSIONS_KEPT, SimCounters, UNKNOWN_KEYS_TRACKED};

use server::Shared;

/// How long [`SimHandle::shutdown`] lets open connections finish before it cuts them.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Starts simulators. See the [module documentation](self).
#[derive(Debug)]
pub struct Simulator {
    _private: (),
}

impl Simulator {
    /// Starts a simulator on `127.0.0.1` at a free port, knowing `keys` (a later duplicate of
    /// a key replaces the earlier). Needs a Tokio runtime; the server runs on it until
    /// [`SimHandle::shutdown`] or until the handle drops.
    pub async fn start(
        keys: impl IntoIterator<Item = SimKey>,
        config: SimConfig,
    ) -> io::Result<SimHandle> {
        Self::start_on(0, keys, config).await
    }

    /// As [`start`](Self::start), on `127.0.0.1:port` (0 picks a free port).
    pub async fn start_on(
        port: u16,
        keys: impl IntoIterator<Item = SimKey>,
        config: SimConfig,
    ) -> io::Result<SimHandle> {
        let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, port)).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            state: Mutex::new(state::State::new(keys)),
            config,
            stop: CancellationToken::new(),
        });
        let task = server::spawn(listener, Arc::clone(&shared));
        tracing::debug!(%addr, "sim: listening");
        Ok(SimHandle {
            addr,
            shared,
            task: Some(task),
        })
    }
}

/// A running simulator. Dropping it stops the server (without waiting);
/// [`shutdown`](Self::shutdown) stops it and waits.
#[derive(Debug)]
pub struct SimHandle {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: Option<JoinHandle<()>>,
}

impl SimHandle {
    /// `http://127.0.0.1:PORT`, without a trailing slash. Torn's v2 paths go under `/v2/`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The configuration it runs with.
    pub fn config(&self) -> &SimConfig {
        &self.shared.config
    }

    /// A snapshot of the counters.
    pub fn counters(&self) -> SimCounters {
        self.shared.lock().counters()
    }

    /// When each of `owner`'s admitted requests was counted, as wall-clock µs since the Unix
    /// epoch, oldest first (the newest [`ADMISSIONS_KEPT`]): the ground truth an oracle
    /// checks windows against, on the clock Redis `TIME` reads. Kept across
    /// [`reset_counters`](Self::reset_counters), as the windows are.
    pub fn admissions(&self, owner: TornUserId) -> Vec<u64> {
        self.shared.lock().admissions(owner)
    }

    /// Zeroes the counters. The owners' and IPs' windows keep what they recorded: Torn does
    /// not forget a request because a test started counting afresh.
    pub fn reset_counters(&self) {
        self.shared.lock().reset_counters();
    }

    /// Changes a key's state from the next request on. Returns false (and changes nothing)
    /// when the simulator does not know the key.
    pub fn set_key_state(&self, key: &str, state: KeyState) -> bool {
        self.shared.lock().set_key_state(key, state)
    }

    /// Changes a key's state once `after` has passed (the simulator keeps serving in
    /// the meantime), as when an owner unpauses a key or comes back from inactivity: a
    /// key that goes from paused back to ok at run time. Returns false (and schedules
    /// nothing) when the simulator does not know the key. Needs a Tokio runtime.
    pub fn set_key_state_after(&self, key: &str, state: KeyState, after: Duration) -> bool {
        if !self.shared.lock().knows(key) {
            return false;
        }
        let shared = Arc::clone(&self.shared);
        let key = key.to_owned();
        tokio::spawn(async move {
            tokio::select! {
                () = tokio::time::sleep(after) => {
                    shared.lock().set_key_state(&key, state);
                }
                () = shared.stop.cancelled() => {}
            }
        });
        true
    }

    /// Adds a key, or replaces the one with the same key string. The owner's window is kept.
    pub fn add_key(&self, key: SimKey) {
        self.shared.lock().add_key(key);
    }

    /// Queues a fault for the next request that passes every check. Faults queue in order,
    /// one per such request.
    pub fn inject(&self, fault: Fault) {
        self.shared.lock().inject(fault);
    }

    /// Stops accepting connections, lets open ones finish (a slow answer is cut short), and
    /// waits for the server to end.
    pub async fn shutdown(mut self) {
        self.shared.stop.cancel();
        if let Some(mut task) = self.task.take()
            && tokio::time::timeout(SHUTDOWN_GRACE, &mut task)
                .await
                .is_err()
        {
            tracing::warn!("sim: connections still open after the grace period, cut");
            task.abort();
        }
    }
}

impl Drop for SimHandle {
    fn drop(&mut self) {
        self.shared.stop.cancel();
    }
}
