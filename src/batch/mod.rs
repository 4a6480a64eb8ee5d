//! Many Torn requests over many owners' keys, at the full quota of every owner and never
//! above it, with the results in the original order.
//!
//! Keys are grouped by owner: one quota per owner, however many keys. Quota is taken in
//! chunks (one script call grants as many units as there are requests ready to go at
//! once), always from the owner with the most room, and each owner's keys take turns
//! least-recently-used. Requests go only to keys with enough access. What Torn answers
//! decides what happens next:
//!
//! | Torn says | the batch |
//! |---|---|
//! | 2, 10, 13, 18 (key unusable), 14 (daily limit) | drops the key from this batch at once (an invalid key is sent at most once) and re-queues its request |
//! | 5 (owner over the limit) | holds the owner back (the client penalized its bucket for every process) and re-queues |
//! | 8, 9 (IP blocked, API disabled) | pauses everything, then re-queues |
//! | 16 (access too low) | re-queues for a key with more access; fails the request if there is none |
//! | 0, 11, 12, 17, transport errors | re-queues, up to [`BatchConfig::max_attempts`] sends |
//! | anything else | fails that request with Torn's code and text |
//!
//! A request fails only with a clear error: no key in the pool could serve it, or Torn
//! refused the request itself. One rate-limit answer never fails a job.
//!
//! ```no_run
//! # async fn run() -> Result<(), torn_quota::Error> {
//! use torn_quota::batch::{BatchConfig, BatchHandler, BatchRequest};
//! use torn_quota::torn::{TornClient, TornClientConfig};
//! use torn_quota::ApiKey;
//! use torn_quota::{Limiter, RateLimitConfig};
//!
//! let limiter = Limiter::redis(RateLimitConfig::from_env()?)?;
//! let client = TornClient::new(limiter, TornClientConfig::from_env()?)?;
//! let keys: Vec<ApiKey> = vec!["AbCdEfGh12345678".parse()?];
//! let requests: Vec<_> = (1..=300).map(|id| BatchRequest::new(format!("user/{id}/basic"))).collect();
//! let outcome = BatchHandler::new(client, BatchConfig::default())
//!     .run(requests, keys)
//!     .await?;
//! for (i, result) in outcome.results.iter().enumerate() {
//!     match result {
//!         Ok(data) => println!("{i}: {}", data["profile"]["name"]),
//!         Err(e) => eprintln!("{i}: {e}"),
//!     }
//! }
//! # Ok(()) }
//! ```

mod engine;

use std::collections::BTreeMap;
use std::fmt;
use std::num::{NonZeroU32, NonZeroUsize};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::error::{Error, Result};
use crate::identity::{AccessLevel, ApiKey, KeyHash, KeyInfo, TornUserId};
use crate::limiter::Priority;
use crate::torn::{TornClient, TornErrorCode};
use crate::vault::{LiveKey, Vault};

/// One request of a batch: a Torn v2 path with its query (`user/4/basic`,
/// `faction/9/members?striptags=false`), the access level it needs, and a priority.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchRequest {
    path: String,
    min_access: AccessLevel,
    priority: Priority,
}

impl BatchRequest {
    /// A request any key may serve (public access), at high priority.
    pub fn new(path: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            min_access: AccessLevel::Public,
            priority: Priority::High,
        }
    }
    /// Only keys with at least this access level serve it.
    #[must_use]
    pub fn min_access(mut self, level: AccessLevel) -> Self {
        self.min_access = level;
        self
    }
    /// Low-priority requests go after high-priority ones.
    #[must_use]
    pub fn priority(mut self, priority: Priority) -> Self {
        self.priority = priority;
        self
    }
    /// The path.
    pub fn path(&self) -> &str {
        &self.path
    }
}

/// One key of the pool, with what the batch may take from its owner.
#[derive(Debug, Clone)]
pub struct PoolKey {
    key: ApiKey,
    share_cap: Option<NonZeroU32>,
    info: Option<KeyInfo>,
}

impl PoolKey {
    /// A key whose owner's whole quota the batch may use.
    pub fn new(key: ApiKey) -> Self {
        Self {
            key,
            share_cap: None,
            info: None,
        }
    }
    /// The key's owner and access, when already known (the vault's mapping): the batch
    /// then needs no lookup, which matters because a lookup reaches Torn before anyone
    /// knows whose quota it spends.
    #[must_use]
    pub fn known(mut self, info: KeyInfo) -> Self {
        self.info = Some(info);
        self
    }
    /// The owner's share for pooled use (the vault's `max_requests_per_minute`): the batch
    /// takes at most this many units of the owner per window, so the owner's own apps keep
    /// headroom. With several keys of one owner, the smallest cap applies.
    #[must_use]
    pub fn share_cap(mut self, cap: NonZeroU32) -> Self {
        self.share_cap = Some(cap);
        self
    }
    /// The key.
    pub fn key(&self) -> &ApiKey {
        &self.key
    }
}

impl From<ApiKey> for PoolKey {
    fn from(key: ApiKey) -> Self {
        Self::new(key)
    }
}

/// A vault key with its owner, access and share cap: no lookup needed.
impl From<LiveKey> for PoolKey {
    fn from(k: LiveKey) -> Self {
        let mut p = Self::new(k.key).known(KeyInfo {
            owner: k.owner,
            access: k.access,
        });
        p.share_cap = k.max_requests_per_minute;
        p
    }
}

/// Why one request of a batch has no data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RequestError {
    /// Torn's error code: the one Torn answered, or 16 for a request no key of the pool has
    /// the access for (what Torn would answer every key; it was not sent). `None` for
    /// failures of our own: the network after retries, cancellation, no usable key left.
    pub code: Option<u16>,
    /// What happened, for a person. Never carries a key.
    pub message: String,
}

/// The JSON Lines line of request `index`'s result, one shape for `torn-quota batch` and
/// the gateway's batch: `{"index","ok":true,"data"}` or `{"index","ok":false,"error":{"code","message"}}`.
pub fn result_line(index: usize, result: &std::result::Result<Value, RequestError>) -> Value {
    match result {
        Ok(data) => serde_json::json!({ "index": index, "ok": true, "data": data }),
        Err(e) => serde_json::json!({
            "index": index,
            "ok": false,
            "error": { "code": e.code, "message": e.message },
        }),
    }
}

impl RequestError {
    fn torn(code: TornErrorCode, message: &str) -> Self {
        Self {
            code: Some(code.get()),
            message: message.to_owned(),
        }
    }
    fn ours(message: impl Into<String>) -> Self {
        Self {
            code: None,
            message: message.into(),
        }
    }
}

impl fmt::Display for RequestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.code {
            Some(code) => write!(f, "torn error {code}: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

impl std::error::Error for RequestError {}

/// What one owner did in a batch.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct OwnerStats {
    /// Keys of this owner the batch used.
    pub keys: usize,
    /// Units of the owner's quota granted to the batch.
    pub granted: u64,
    /// Requests sent with the owner's keys.
    pub sent: u64,
    /// Of those, answered with an error (any code, or a transport failure).
    pub errored: u64,
    /// Of those, code 5: the owner was over Torn's limit (spent elsewhere, or a margin
    /// too small).
    pub rate_limited: u64,
}

/// A batch's figures.
#[derive(Debug, Clone, Default, Serialize)]
pub struct BatchStats {
    /// Requests in the batch.
    pub requests: usize,
    /// Requests that got data.
    pub succeeded: usize,
    /// Requests that failed (each with a clear error).
    pub failed: usize,
    /// Distinct fetches after identical requests were merged.
    pub fetches: usize,
    /// Of those, answered from the handler's cache of recent answers, without a call.
    pub cached: usize,
    /// Requests sent to Torn (retries and re-routes included).
    pub sent: u64,
    /// Code-5 answers.
    pub rate_limited: u64,
    /// Keys dropped from the batch because Torn said they cannot be used.
    pub keys_dropped: usize,
    /// Wall time.
    #[serde(serialize_with = "ser_millis")]
    pub duration: Duration,
    /// From the first request sent to the last: with [`sent`](Self::sent), the steady
    /// rate, free of the lookups before and the answers after.
    #[serde(serialize_with = "ser_millis")]
    pub send_span: Duration,
    /// Per owner.
    pub owners: BTreeMap<u64, OwnerStats>,
    /// Requests sent against what the owners' quotas allowed over the batch's duration
    /// (owners × limit × windows elapsed, at least one window): 1.0 means every unit used.
    pub quota_used: f64,
}

#[allow(clippy::trivially_copy_pass_by_ref)] // serde's signature
fn ser_millis<S: serde::Serializer>(d: &Duration, s: S) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_u64(d.as_millis() as u64)
}

/// The answer to a batch: one result per request, in the original order, and the figures.
#[derive(Debug)]
pub struct BatchOutcome {
    /// `results[i]` answers request `i`.
    pub results: Vec<std::result::Result<Value, RequestError>>,
    /// The figures.
    pub stats: BatchStats,
}

/// Progress, reported after each request completes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// Requests answered (with data or an error).
    pub done: usize,
    /// Of those, failed.
    pub failed: usize,
    /// Requests in the batch.
    pub total: usize,
}

/// How a batch runs.
#[derive(Debug, Clone)]
#[must_use]
pub struct BatchConfig {
    concurrency: NonZeroUsize,
    max_chunk: NonZeroU32,
    max_attempts: NonZeroU32,
    merge_identical: bool,
    cache_for: Duration,
}

impl Default for BatchConfig {
    fn default() -> Self {
        Self {
            concurrency: NonZeroUsize::new(32).unwrap_or(NonZeroUsize::MIN),
            max_chunk: NonZeroU32::new(25).unwrap_or(NonZeroU32::MIN),
            max_attempts: NonZeroU32::new(4).unwrap_or(NonZeroU32::MIN),
            merge_identical: true,
            cache_for: Duration::from_secs(29),
        }
    }
}

impl BatchConfig {
    /// Requests in flight at once, over all owners (default 32).
    pub fn concurrency(mut self, n: NonZeroUsize) -> Self {
        self.concurrency = n;
        self
    }
    /// The most units taken from one owner in one script call (default 25). Units are
    /// taken only for requests that leave at once, so a chunk never sits unused while
    /// its window runs.
    pub fn max_chunk(mut self, n: NonZeroU32) -> Self {
        self.max_chunk = n;
        self
    }
    /// Sends of one request that end in a retryable failure (codes 0, 11, 12, 17, the
    /// network) before it fails (default 4). Rate limits, pauses and unusable keys do not
    /// count: they are not the request's fault.
    pub fn max_attempts(mut self, n: NonZeroU32) -> Self {
        self.max_attempts = n;
        self
    }
    /// Identical requests (same path and access) in one batch are fetched once and the
    /// answer shared, as Torn would serve them from its ~29 s cache anyway (default on).
    pub fn merge_identical(mut self, on: bool) -> Self {
        self.merge_identical = on;
        self
    }
    /// How long a handler remembers an answer, so that the same request in a later batch
    /// (same path and access) is served without a call (default 29 s, Torn's own cache
    /// time: a fresh call could not get newer data). Zero turns it off.
    pub fn cache_for(mut self, ttl: Duration) -> Self {
        self.cache_for = ttl;
        self
    }
}

/// Answers a handler remembers: what Torn would serve from its cache anyway.
pub(crate) type AnswerCache = moka::sync::Cache<(String, AccessLevel), Value>;

type ProgressFn = Arc<dyn Fn(Progress) + Send + Sync>;
type ResultFn = Arc<dyn Fn(usize, &std::result::Result<Value, RequestError>) + Send + Sync>;
type DisabledFn = Arc<dyn Fn(&KeyHash, TornErrorCode) + Send + Sync>;

/// Runs batches over a [`TornClient`] (and through it, its limiter). Cheap to clone.
#[derive(Clone)]
pub struct BatchHandler {
    client: TornClient,
    config: BatchConfig,
    cache: Option<AnswerCache>,
    cancel: CancellationToken,
    progress: Option<ProgressFn>,
    on_result: Option<ResultFn>,
    on_key_disabled: Option<DisabledFn>,
}

impl fmt::Debug for BatchHandler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BatchHandler")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl BatchHandler {
    /// A handler over `client`.
    pub fn new(client: TornClient, config: BatchConfig) -> Self {
        let cache = (!config.cache_for.is_zero()).then(|| {
            moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(config.cache_for)
                .build()
        });
        Self {
            client,
            config,
            cache,
            cancel: CancellationToken::new(),
            progress: None,
            on_result: None,
            on_key_disabled: None,
        }
    }

    /// Cancels running batches when `token` is cancelled: nothing new is sent, requests in
    /// flight finish, and every request not answered gets a "cancelled" error.
    #[must_use]
    pub fn cancel_on(mut self, token: CancellationToken) -> Self {
        self.cancel = token;
        self
    }

    /// Called after each request completes.
    #[must_use]
    pub fn on_progress(mut self, f: impl Fn(Progress) + Send + Sync + 'static) -> Self {
        self.progress = Some(Arc::new(f));
        self
    }

    /// Called once per request as soon as it is answered (in completion order, not input
    /// order), with its index in the batch and its result: what a caller streams from
    /// before the batch ends. The same results are in [`BatchOutcome::results`]. Runs on
    /// the batch's task, so it should hand the result on (a channel) rather than block.
    #[must_use]
    pub fn on_result(
        mut self,
        f: impl Fn(usize, &std::result::Result<Value, RequestError>) + Send + Sync + 'static,
    ) -> Self {
        self.on_result = Some(Arc::new(f));
        self
    }

    /// Called once for each key Torn says cannot be used (codes 2, 10, 13, 18), with the
    /// key's hash and the code: the vault disables it there.
    #[must_use]
    pub fn on_key_disabled(
        mut self,
        f: impl Fn(&KeyHash, TornErrorCode) + Send + Sync + 'static,
    ) -> Self {
        self.on_key_disabled = Some(Arc::new(f));
        self
    }

    /// Disables in `vault` every key Torn refuses (codes 2, 10, 13, 18), for every account
    /// that stored it. The update runs in the background; a failure is logged, never
    /// fails the batch.
    #[must_use]
    pub fn disable_in_vault(self, vault: Vault) -> Self {
        self.on_key_disabled(move |hash, code| {
            let vault = vault.clone();
            let hash = hash.clone();
            tokio::spawn(async move {
                if let Err(e) = vault.disable_key_hash(&hash, code).await {
                    tracing::warn!(error = %e, code = code.get(), "cannot disable a key in the vault");
                }
            });
        })
    }

    /// Runs `requests` over the keys in `pool` and answers each, in order.
    ///
    /// Fails as a whole only for an empty pool or when no key of the pool is usable
    /// (every one refused by Torn when its owner was looked up); a request no key can
    /// serve fails alone, at once.
    pub async fn run(
        &self,
        requests: impl IntoIterator<Item = BatchRequest>,
        pool: impl IntoIterator<Item = impl Into<PoolKey>>,
    ) -> Result<BatchOutcome> {
        let requests: Vec<BatchRequest> = requests.into_iter().collect();
        let pool: Vec<PoolKey> = pool.into_iter().map(Into::into).collect();
        if pool.is_empty() {
            return Err(Error::InvalidArgument {
                name: "pool",
                reason: "a batch needs at least one key".into(),
            });
        }
        engine::Engine::start(self, requests, pool).await
    }

    /// The client batches run through.
    pub fn client(&self) -> &TornClient {
        &self.client
    }
}

/// Owners of a pool, for reports: which Torn user each key belongs to.
pub(crate) fn owner_label(owner: TornUserId) -> u64 {
    owner.get()
}
