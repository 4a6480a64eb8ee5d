//! [`TornClient`]: one client for every caller of the Torn API. The key travels only in the
//! `Authorization` header, every Torn error code is typed through the one table in
//! [`code`](super::TornErrorCode), retries happen only where they help, and the limiter is
//! consulted for the key's owner (and for the IP) before every request.
//!
//! One concept a file: the client and its calls here; [`builder`] assembles it; [`path`]
//! checks callers' paths and builds URLs; [`owner`] resolves a key's owner; [`blocks`]
//! keeps the keys Torn refused; [`pause`] holds every call after codes 8 and 9; [`retry`]
//! bounds attempts; [`exchange`] is one HTTP round trip; [`answers`] does what Torn's codes
//! ask; [`wire`] reads Torn's JSON; [`wall_clock`] tells when a day ends.

mod answers;
mod blocks;
mod builder;
mod exchange;
mod owner;
mod path;
mod pause;
mod retry;
mod shared_error;
mod wall_clock;
mod wire;

pub use blocks::KeyStatus;
pub use builder::TornClientBuilder;
pub use path::check_path;
pub use wall_clock::{SystemWallClock, WallClock};

use std::fmt;
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};

use reqwest::header::HeaderValue;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::error::{Error, Result};
use crate::gate::QuotaGate;
use crate::identity::{ApiKey, KeyHash, KeyInfo};
use crate::limiter::{Limiter, Wait};
use crate::torn::config::TornClientConfig;
use blocks::Block;
use path::checked_path;
use pause::Pause;

/// The Torn API client. Cheap to clone; clones share everything (HTTP connections, the
/// owner cache, disabled keys, pauses).
///
/// Before each request it takes its quota through the [quota gate](crate::gate): one unit of
/// the key's owner's quota (under `TORN_QUOTA_MODE`) and one of the per-IP bucket, as one
/// ticket, settled when Torn answers and given back when the request is never sent. The
/// owner comes from [`owner_of`](Self::owner_of), cached for the configured TTL.
///
/// What Torn's answers do, by [`ErrorClass`](crate::torn::ErrorClass):
///
/// | class | codes | the client |
/// |---|---|---|
/// | `Retry` | 0, 11, 12, 17 | retries with back-off, each attempt with its own grant, up to `max_attempts` (so do HTTP 5xx, timeouts, dropped connections and malformed JSON) |
/// | `HoldOwner` | 5 | [penalizes](Limiter::penalize) the owner's bucket for every process, returns the error |
/// | `PauseAll` | 8, 9 | pauses every call of this client for the configured time, returns the error |
/// | `DisableKey` | 2, 10 | never sends the key again (until [`reinstate`](Self::reinstate)), returns the error |
/// | `DisableKey` | 13, 18 | parks the key for [`key_recheck`](TornClientConfig::key_recheck); its next use after that asks `/v2/key/info` once and sends it again when Torn accepts it |
/// | — | HTTP 429 | pauses every call, as for code 8, returns [`Error::Http`] |
/// | — | HTTP 403 with `cf-mitigated: challenge` | returns [`Error::Challenge`], never retried |
/// | — | HTTP 200 with a body that is not Torn's JSON | retried as above; the last failure is [`Error::TornAnswer`] |
/// | `HoldKey` | 14 | holds the key back until the next UTC day, returns the error |
/// | `Reroute`, `FailRequest` | 16; 1, 3, 4, 6, 7, 19+ | returns the error |
///
/// Codes 2, 10, 13 and 18 also delete the key's owner memo shared through Redis, so no
/// process resolves the key from it. The map of refused keys is bounded by the owner
/// cache's capacity and forgets a key two days after its refusal at most.
///
/// A call with a disabled or held key, or one that would wait past its deadline while the
/// client is paused, fails at once with [`Error::Torn`] carrying the code that caused it,
/// and sends nothing.
///
/// The key never appears in a URL, a log line or an error: log lines name the owner and at
/// most the first characters of the key's hash.
///
/// ```no_run
/// # async fn run() -> Result<(), torn_quota::Error> {
/// use torn_quota::torn::{TornClient, TornClientConfig};
/// use torn_quota::ApiKey;
/// use torn_quota::{Limiter, RateLimitConfig};
///
/// let limiter = Limiter::redis(RateLimitConfig::from_env()?)?;
/// let client = TornClient::new(limiter, TornClientConfig::from_env()?)?;
/// let key: ApiKey = std::env::var("TORN_API_KEY").unwrap_or_default().parse()?;
/// let me = client.get(&key, "user/basic?striptags=false").await?;
/// println!("{}", me["profile"]["name"]);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct TornClient {
    inner: Arc<Inner>,
}

struct Inner {
    config: TornClientConfig,
    http: reqwest::Client,
    user_agent: HeaderValue,
    gate: QuotaGate,
    owners: moka::future::Cache<KeyHash, KeyInfo>,
    /// Refused keys: bounded, so a flood of bad keys cannot grow it without end.
    blocks: moka::sync::Cache<KeyHash, Block>,
    /// Re-checks in flight, so concurrent uses of a parked key share one call.
    rechecks: moka::future::Cache<KeyHash, KeyInfo>,
    pause: Mutex<Option<Pause>>,
    wall: Arc<dyn WallClock>,
    shutdown: CancellationToken,
    /// The base URL without its trailing slash.
    base: String,
}

impl fmt::Debug for TornClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let i = &self.inner;
        f.debug_struct("TornClient")
            .field("base_url", &i.base)
            .field("limiter", &i.gate.limiter().backend_name())
            .field("mode", &i.gate.mode().as_str())
            .field("owners_cached", &i.owners.entry_count())
            .field("keys_blocked", &i.blocks.entry_count())
            .field("paused", &self.paused_for())
            .finish_non_exhaustive()
    }
}

/// A boxed future, its type erased: the client's futures nest the limiter's and reqwest's,
/// and erasing them keeps both their size and the compiler's `Send` proofs small.
type Boxed<'a, T> = std::pin::Pin<Box<dyn Future<Output = T> + Send + 'a>>;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Every critical section leaves the map or the pause whole: a panic elsewhere is no
    // reason to stop serving.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl TornClient {
    /// A client over `limiter` (the owners' buckets), with the per-IP limiter built from it:
    /// the same backend, Redis keys under its prefix + `:ip`.
    pub fn new(limiter: Limiter, config: TornClientConfig) -> Result<Self> {
        Self::builder(limiter, config).build()
    }

    /// A builder, to inject an IP limiter, a shutdown token, a wall clock or an HTTP client.
    pub fn builder(limiter: Limiter, config: TornClientConfig) -> TornClientBuilder {
        TornClientBuilder::new(limiter, config)
    }

    /// The configuration in force.
    pub fn config(&self) -> &TornClientConfig {
        &self.inner.config
    }

    /// The owners' limiter (the gate's per-user limiter).
    pub fn limiter(&self) -> &Limiter {
        self.inner.gate.limiter()
    }

    /// The per-IP limiter (the gate's).
    pub fn ip_limiter(&self) -> &Limiter {
        self.inner.gate.ip_limiter()
    }

    /// The quota gate every call of this client takes its quota through.
    pub fn gate(&self) -> &QuotaGate {
        &self.inner.gate
    }

    /// GETs a v2 path, e.g. `user/4/basic` or `user/basic?striptags=false` (a leading `/`
    /// or `v2/` is allowed), waiting as long as quota and pauses require.
    ///
    /// Refuses a path that carries a key (`key=`) without sending anything.
    pub async fn get(&self, key: &ApiKey, path: &str) -> Result<Value> {
        self.get_with(key, path, &Wait::forever()).await
    }

    /// [`get`](Self::get) with a deadline, a cancellation token or a priority.
    pub async fn get_with(&self, key: &ApiKey, path: &str, wait: &Wait) -> Result<Value> {
        let url = self.v2_url(key, path)?;
        self.guarded(wait, async {
            self.admit_key(key, wait).await?;
            let owner = self.resolve(key, wait).await?.owner;
            self.call(key, Some(owner), &url, "torn request", wait)
                .await
        })
        .await
    }

    /// GETs a v1 path with selections: `get_v1(&key, "user/4", &["basic", "profile"])`
    /// asks `{base}/user/4?selections=basic,profile`, with the key in the header.
    pub async fn get_v1(
        &self,
        key: &ApiKey,
        section_path: &str,
        selections: &[&str],
    ) -> Result<Value> {
        self.get_v1_with(key, section_path, selections, &Wait::forever())
            .await
    }

    /// [`get_v1`](Self::get_v1) with a deadline, a cancellation token or a priority.
    pub async fn get_v1_with(
        &self,
        key: &ApiKey,
        section_path: &str,
        selections: &[&str],
        wait: &Wait,
    ) -> Result<Value> {
        let path = checked_path(section_path, key)?;
        if let Some(bad) = selections
            .iter()
            .find(|s| s.is_empty() || !s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'))
        {
            return Err(Error::InvalidArgument {
                name: "selections",
                reason: format!(
                    "a selection is letters, digits and '_', got {} characters of something else",
                    bad.len()
                ),
            });
        }
        let mut url = self.url(path)?;
        if !selections.is_empty() {
            url.query_pairs_mut()
                .append_pair("selections", &selections.join(","));
        }
        self.guarded(wait, async {
            self.admit_key(key, wait).await?;
            let owner = self.resolve(key, wait).await?.owner;
            self.call(key, Some(owner), &url, "torn request", wait)
                .await
        })
        .await
    }

    /// Runs `call` unless the client shuts down or the call is cancelled first.
    async fn guarded<T>(&self, wait: &Wait, call: impl Future<Output = Result<T>>) -> Result<T> {
        if self.inner.shutdown.is_cancelled() || wait.is_cancelled() {
            return Err(Error::Cancelled);
        }
        tokio::select! {
            biased;
            () = self.inner.shutdown.cancelled() => Err(Error::Cancelled),
            () = wait.cancelled() => Err(Error::Cancelled),
            result = call => result,
        }
    }
}
