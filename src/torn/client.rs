//! [`TornClient`]: one client for every caller of the Torn API. The key travels only in the
//! `Authorization` header, every Torn error code is typed through the one table in
//! [`code`](super::TornErrorCode), retries happen only where they help, and the limiter is
//! consulted for the key's owner (and for the IP) before every request.

use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use backon::{ExponentialBuilder, Retryable};
use reqwest::StatusCode;
use reqwest::header::{AUTHORIZATION, HeaderValue, USER_AGENT};
use serde_json::Value;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use zeroize::Zeroizing;

use super::KeyInfo;
use super::config::TornClientConfig;
use super::{AccessLevel, ApiKey, ErrorClass, KeyHash, TornErrorCode};
use crate::error::{Error, Result};
use crate::gate::{QuotaGate, Reach, Ticket};
use crate::limiter::{Limiter, Priority, TornUserId};

/// How many hex characters of a key's hash a log line shows: enough to tell keys apart,
/// too few to look one up.
const HASH_SHOWN: usize = 12;

/// A source of wall-clock time: Torn's daily read limit (code 14) resets at midnight UTC.
/// Injected so tests can cross midnight without waiting for it.
pub trait WallClock: Send + Sync + fmt::Debug + 'static {
    /// The time now.
    fn now(&self) -> SystemTime;
}

/// The system's wall clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemWallClock;

impl WallClock for SystemWallClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }
}

/// How long one call may wait, and for whom it is made.
///
/// A deadline bounds the waits: for the owner's or the IP's quota, for a pause after code
/// 8 or 9, and for a back-off before a retry. A call that would have to wait past it ends
/// at once: with [`Error::Cancelled`] when it was waiting for quota, with the Torn error
/// that caused the pause when it was paused, and with the last failure when it was about
/// to retry. The HTTP exchange itself is bounded by the configured request timeout.
///
/// ```
/// use std::time::Duration;
/// use torn_quota::Priority;
/// use torn_quota::torn::CallOptions;
///
/// let opts = CallOptions::new()
///     .timeout(Duration::from_secs(5))
///     .priority(Priority::Low);
/// ```
#[derive(Debug, Clone, Default)]
#[must_use]
pub struct CallOptions {
    deadline: Option<Instant>,
    cancel: Option<CancellationToken>,
    priority: Priority,
}

impl CallOptions {
    /// Waits as long as it takes, at high priority.
    pub fn new() -> Self {
        Self::default()
    }
    /// Gives up rather than wait past `deadline`.
    pub fn deadline(mut self, deadline: Instant) -> Self {
        self.deadline = Some(deadline);
        self
    }
    /// Gives up rather than wait longer than `timeout` from now.
    pub fn timeout(self, timeout: Duration) -> Self {
        self.deadline(Instant::now() + timeout)
    }
    /// Ends the call with [`Error::Cancelled`] when `token` is cancelled.
    pub fn cancel_on(mut self, token: CancellationToken) -> Self {
        self.cancel = Some(token);
        self
    }
    /// The priority of the owner's grant (see [`Priority`]).
    pub fn priority(mut self, priority: Priority) -> Self {
        self.priority = priority;
        self
    }

    pub(crate) fn priority_of(&self) -> Priority {
        self.priority
    }

    pub(crate) fn is_cancelled(&self) -> bool {
        self.cancel
            .as_ref()
            .is_some_and(CancellationToken::is_cancelled)
    }

    pub(crate) fn too_late(&self, at: Instant) -> bool {
        self.deadline.is_some_and(|d| at > d)
    }
}

/// Whether this client still sends a key, from [`TornClient::key_status`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum KeyStatus {
    /// The client sends it.
    Usable,
    /// Torn said the key cannot be used (codes 2, 10): the client never sends it again
    /// until [`TornClient::reinstate`].
    Disabled {
        /// Torn's code.
        code: TornErrorCode,
    },
    /// Torn refused the key for now (code 13, owner inactive; 18, paused by its owner): it
    /// is parked until `recheck_at`, and its next use after that first asks
    /// `/v2/key/info` once; the key is used again when Torn accepts it.
    Parked {
        /// Torn's code.
        code: TornErrorCode,
        /// When the next use re-checks it.
        recheck_at: SystemTime,
    },
    /// The key hit its daily read limit (code 14): held back until the next UTC day.
    Held {
        /// Torn's code.
        code: TornErrorCode,
        /// When the client sends it again.
        until: SystemTime,
    },
}

/// A key this client no longer sends: disabled (`until` is `None`), held until a time, or
/// parked until a re-check (`recheck`).
#[derive(Debug, Clone, Copy)]
struct Block {
    code: TornErrorCode,
    until: Option<SystemTime>,
    /// Once `until` passes, one `/v2/key/info` call decides whether the key comes back;
    /// until then it stays refused.
    recheck: bool,
    /// The key's owner when Torn refused it, so the re-check takes that owner's unit.
    owner: Option<TornUserId>,
}

/// How long a refused key is remembered at most: a day past the longest hold or re-check
/// time (both at most a day). A key evicted earlier (the map is bounded by the owner cache's
/// capacity) costs one more request, which Torn refuses again.
const BLOCK_TTL: Duration = Duration::from_secs(2 * 86_400);

/// Every call of the client waits until `until` (codes 8, 9).
#[derive(Debug, Clone, Copy)]
struct Pause {
    code: TornErrorCode,
    until: Instant,
}

/// The Torn API client. Cheap to clone; clones share everything (HTTP connections, the
/// owner cache, disabled keys, pauses).
///
/// Before each request it takes its quota through the [quota gate](crate::gate): one unit of
/// the key's owner's quota (under `TORN_QUOTA_MODE`) and one of the per-IP bucket, as one
/// ticket, settled when Torn answers and given back when the request is never sent. The
/// owner comes from [`owner_of`](Self::owner_of), cached for the configured TTL.
///
/// What Torn's answers do, by [`ErrorClass`]:
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
/// use torn_quota::torn::{ApiKey, TornClient, TornClientConfig};
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

/// Builds a [`TornClient`] with parts injected: an IP limiter, a shutdown token, a wall
/// clock, an HTTP client.
#[derive(Debug)]
#[must_use]
pub struct TornClientBuilder {
    limiter: Limiter,
    config: TornClientConfig,
    gate: Option<QuotaGate>,
    ip: Option<Limiter>,
    shutdown: Option<CancellationToken>,
    wall: Option<Arc<dyn WallClock>>,
    http: Option<reqwest::Client>,
}

impl TornClientBuilder {
    /// The per-IP limiter, instead of the one built from the owner limiter: the same backend
    /// (Redis keys under its prefix + `:ip`; in memory, on the system clock), with the
    /// configured IP limit and window. The client uses one bucket of it, user id 0.
    pub fn ip_limiter(mut self, limiter: Limiter) -> Self {
        self.ip = Some(limiter);
        self
    }
    /// The quota gate every call takes its quota through, instead of one built from the
    /// limiter and the configuration (say, one over a
    /// [`RolloutLimiter`](crate::rollout::RolloutLimiter) with its legacy database). Its
    /// per-user limiter replaces the builder's.
    pub fn gate(mut self, gate: QuotaGate) -> Self {
        self.gate = Some(gate);
        self
    }
    /// Every call ends with [`Error::Cancelled`] once `token` is cancelled (shutdown).
    pub fn shutdown(mut self, token: CancellationToken) -> Self {
        self.shutdown = Some(token);
        self
    }
    /// The wall clock that decides when a key held by code 14 comes back.
    pub fn wall_clock(mut self, clock: Arc<dyn WallClock>) -> Self {
        self.wall = Some(clock);
        self
    }
    /// An HTTP client of the caller's. The configured `User-Agent` and request timeout still
    /// apply to every request; its connect timeout, proxies and TLS are the caller's.
    /// Follow no redirects with it: Torn sends none.
    pub fn http_client(mut self, client: reqwest::Client) -> Self {
        self.http = Some(client);
        self
    }

    /// Builds the client. Fails when the gate cannot be built (see
    /// [`QuotaGateBuilder::build`](crate::gate::QuotaGateBuilder::build)), or the HTTP
    /// client cannot.
    pub fn build(self) -> Result<TornClient> {
        let config = self.config;
        #[allow(clippy::single_match_else)]
        let gate = match self.gate {
            Some(gate) => gate,
            None => {
                let b = QuotaGate::builder(self.limiter, &config);
                match self.ip {
                    Some(ip) => b.ip_limiter(ip),
                    None => b,
                }
                .build()?
            }
        };
        let http = match self.http {
            Some(http) => http,
            None => http_client_for(&config)?,
        };
        let user_agent = HeaderValue::from_str(config.user_agent()).map_err(|_| Error::Config {
            setting: "TORN_API_USER_AGENT",
            reason: "is not a valid header value".into(),
        })?;
        let owners = moka::future::Cache::builder()
            .max_capacity(config.owner_cache_capacity().get())
            .time_to_live(config.owner_cache_ttl())
            .build();
        let base = config.base_url().as_str().trim_end_matches('/').to_owned();
        Ok(TornClient {
            inner: Arc::new(Inner {
                http,
                user_agent,
                gate,
                owners,
                blocks: moka::sync::Cache::builder()
                    .max_capacity(config.owner_cache_capacity().get())
                    .time_to_live(BLOCK_TTL)
                    .build(),
                rechecks: moka::future::Cache::builder()
                    .max_capacity(config.owner_cache_capacity().get())
                    .build(),
                pause: Mutex::new(None),
                wall: self.wall.unwrap_or_else(|| Arc::new(SystemWallClock)),
                shutdown: self.shutdown.unwrap_or_default(),
                base,
                config,
            }),
        })
    }
}

fn http_client_for(config: &TornClientConfig) -> Result<reqwest::Client> {
    let mut b = reqwest::Client::builder()
        .user_agent(config.user_agent())
        .timeout(config.request_timeout())
        .connect_timeout(config.connect_timeout())
        // Torn never redirects; a redirect is somebody else answering.
        .redirect(reqwest::redirect::Policy::none());
    // A proxy from the environment must not stand between us and a local simulator or
    // sidecar.
    if is_loopback(config.base_url()) {
        b = b.no_proxy();
    }
    b.build().map_err(|e| Error::Http {
        operation: "build the http client",
        source: Box::new(e.without_url()),
    })
}

fn is_loopback(url: &url::Url) -> bool {
    match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        None => false,
    }
}

/// A boxed future, its type erased: the client's futures nest the limiter's and reqwest's,
/// and erasing them keeps both their size and the compiler's `Send` proofs small.
type Boxed<'a, T> = std::pin::Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A failed attempt, and whether another may help.
#[derive(Debug)]
struct Failure {
    error: Error,
    retry: bool,
}

impl Reach {
    /// Whether the request of an exchange reached Torn, from what the exchange returned.
    fn of(result: &Result<Value, Failure>) -> Self {
        let Err(f) = result else {
            return Self::Answered;
        };
        match &f.error {
            Error::Http { source, .. } => match source.downcast_ref::<reqwest::Error>() {
                Some(e) if e.is_connect() => Self::NotSent,
                // Timed out or cut while sending or waiting: Torn may have counted it.
                Some(e) if e.is_timeout() || e.is_request() => Self::Unknown,
                // A status, a body or JSON that came back: an answer.
                _ => Self::Answered,
            },
            _ => Self::Answered,
        }
    }
}

impl Failure {
    fn fatal(error: Error) -> Self {
        Self {
            error,
            retry: false,
        }
    }
    fn transient(error: Error) -> Self {
        Self { error, retry: true }
    }
}

/// An error and its causes on one line, for logs. Every error here is free of keys and
/// URLs (reqwest's are stripped of theirs).
struct Chain<'a>(&'a Error);

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = std::error::Error::source(self.0);
        while let Some(cause) = source {
            write!(f, ": {cause}")?;
            source = cause.source();
        }
        Ok(())
    }
}

/// An HTTP status that is not Torn's usual 200, as an error source.
#[derive(Debug)]
struct HttpStatus(StatusCode);

impl fmt::Display for HttpStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "torn answered http {}", self.0)
    }
}

impl std::error::Error for HttpStatus {}

/// An error shared by the callers that waited on one owner resolution, as a source: it
/// shows the shared error's cause.
#[derive(Debug)]
struct SharedCause(Arc<Error>);

impl fmt::Display for SharedCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match std::error::Error::source(&*self.0) {
            Some(cause) => fmt::Display::fmt(cause, f),
            None => fmt::Display::fmt(&self.0, f),
        }
    }
}

impl std::error::Error for SharedCause {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        std::error::Error::source(&*self.0).and_then(std::error::Error::source)
    }
}

/// The error of a resolution that several callers waited on, for one of them.
fn unshare(shared: Arc<Error>) -> Error {
    let shared = match Arc::try_unwrap(shared) {
        Ok(error) => return error,
        Err(shared) => shared,
    };
    match &*shared {
        Error::Torn { code, message } => Error::Torn {
            code: *code,
            message: message.clone(),
        },
        Error::Cancelled => Error::Cancelled,
        Error::Challenge { operation } => Error::Challenge { operation },
        Error::InvalidArgument { name, reason } => Error::InvalidArgument {
            name,
            reason: reason.clone(),
        },
        Error::Config { setting, reason } => Error::Config {
            setting,
            reason: reason.clone(),
        },
        Error::CostExceedsLimit { cost, limit } => Error::CostExceedsLimit {
            cost: *cost,
            limit: *limit,
        },
        Error::Timeout { operation, timeout } => Error::Timeout {
            operation,
            timeout: *timeout,
        },
        Error::Http { operation, .. } => Error::Http {
            operation,
            source: Box::new(SharedCause(Arc::clone(&shared))),
        },
        _ => Error::Http {
            operation: "torn key info",
            source: Box::new(SharedCause(Arc::clone(&shared))),
        },
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Every critical section leaves the map or the pause whole: a panic elsewhere is no
    // reason to stop serving.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn short(hash: &KeyHash) -> &str {
    &hash.as_str()[..HASH_SHOWN]
}

/// Midnight UTC after `now`: when Torn's daily read limit resets.
fn next_utc_day(now: SystemTime) -> SystemTime {
    const DAY: u64 = 86_400;
    let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    UNIX_EPOCH + Duration::from_secs((secs / DAY + 1) * DAY)
}

fn bad_path(reason: &str) -> Error {
    Error::InvalidArgument {
        name: "path",
        reason: reason.to_owned(),
    }
}

/// Checks a caller's path (with an optional query) and returns it without a leading `/`.
/// The key goes only in the header: a path that carries one is refused, and the refusal
/// never repeats the path.
fn checked_path<'a>(raw: &'a str, key: &ApiKey) -> Result<&'a str> {
    let path = check_path(raw)?;
    if path.contains(key.expose()) {
        return Err(bad_path(
            "carries the api key; the key goes only in the Authorization header",
        ));
    }
    Ok(path)
}

/// Checks a Torn path as [`TornClient::get`] does before it sends anything, and returns
/// it without a leading `/`: not empty, no whitespace, control characters, `#` or `\`, not
/// a URL, no `.` or `..` segment, no `key=` parameter (the key goes only in the
/// `Authorization` header). The error is [`Error::InvalidArgument`] named `path`, and
/// never repeats the path (it may carry a key). A caller with many requests (a batch)
/// checks them all up front with it, so a bad one fails alone and spends no quota.
///
/// ```
/// use torn_quota::torn::check_path;
///
/// assert_eq!(check_path("/user/4/basic").unwrap(), "user/4/basic");
/// assert!(check_path("user/basic?key=AbCdEfGh12345678").is_err());
/// assert!(check_path("user/../key/info").is_err());
/// ```
pub fn check_path(raw: &str) -> Result<&str> {
    let path = raw.trim().trim_start_matches('/');
    if path.is_empty() {
        return Err(bad_path("is empty"));
    }
    if path
        .chars()
        .any(|c| c.is_whitespace() || c.is_control() || matches!(c, '#' | '\\'))
    {
        return Err(bad_path("has whitespace, control characters, '#' or '\\'"));
    }
    if path.contains("://") {
        return Err(bad_path("must be a path, not a URL"));
    }
    let (segments, query) = path.split_once('?').unwrap_or((path, ""));
    if segments.split('/').any(|s| s == ".." || s == ".") {
        return Err(bad_path("must not have '.' or '..' segments"));
    }
    if url::form_urlencoded::parse(query.as_bytes())
        .any(|(name, _)| name.trim().eq_ignore_ascii_case("key"))
    {
        return Err(bad_path(
            "carries a key= parameter; the key goes only in the Authorization header",
        ));
    }
    Ok(path)
}

impl TornClient {
    /// A client over `limiter` (the owners' buckets), with the per-IP limiter built from it:
    /// the same backend, Redis keys under its prefix + `:ip`.
    pub fn new(limiter: Limiter, config: TornClientConfig) -> Result<Self> {
        Self::builder(limiter, config).build()
    }

    /// A builder, to inject an IP limiter, a shutdown token, a wall clock or an HTTP client.
    pub fn builder(limiter: Limiter, config: TornClientConfig) -> TornClientBuilder {
        TornClientBuilder {
            limiter,
            config,
            gate: None,
            ip: None,
            shutdown: None,
            wall: None,
            http: None,
        }
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
        self.get_with(key, path, &CallOptions::new()).await
    }

    /// [`get`](Self::get) with a deadline, a cancellation token or a priority.
    pub async fn get_with(&self, key: &ApiKey, path: &str, opts: &CallOptions) -> Result<Value> {
        let url = self.v2_url(key, path)?;
        self.guarded(opts, async {
            self.admit_key(key, opts).await?;
            let owner = self.resolve(key, opts).await?.owner;
            self.call(key, Some(owner), &url, "torn request", opts)
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
        self.get_v1_with(key, section_path, selections, &CallOptions::new())
            .await
    }

    /// [`get_v1`](Self::get_v1) with a deadline, a cancellation token or a priority.
    pub async fn get_v1_with(
        &self,
        key: &ApiKey,
        section_path: &str,
        selections: &[&str],
        opts: &CallOptions,
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
        self.guarded(opts, async {
            self.admit_key(key, opts).await?;
            let owner = self.resolve(key, opts).await?.owner;
            self.call(key, Some(owner), &url, "torn request", opts)
                .await
        })
        .await
    }

    /// Sends one v2 request on quota the caller already took from the
    /// [gate](Self::gate) (the batch handler takes a chunk of owner and IP units as one
    /// ticket, and settles or gives it back when its requests are done). Once, without
    /// retries and without taking quota: the caller re-queues, since another attempt needs
    /// another unit.
    ///
    /// Everything else is as for [`get`](Self::get): a disabled or held key fails at once,
    /// and Torn's codes act by class (code 5 penalizes the owner, 8 and 9 pause the client).
    /// A unit taken in advance must be sent at once, or Torn's count drifts from ours: while
    /// the client is paused the call fails at once with the code that paused it.
    pub async fn send_prepaid(&self, key: &ApiKey, owner: TornUserId, path: &str) -> Result<Value> {
        self.send_on_ticket(key, owner, path).await.0
    }

    /// [`send_prepaid`](Self::send_prepaid), and whether the request reached Torn, for the
    /// caller's ticket.
    pub(crate) async fn send_on_ticket(
        &self,
        key: &ApiKey,
        owner: TornUserId,
        path: &str,
    ) -> (Result<Value>, Reach) {
        let url = match self.v2_url(key, path) {
            Ok(url) => url,
            Err(e) => return (Err(e), Reach::NotSent),
        };
        let opts = CallOptions::new();
        let reach = Mutex::new(Reach::NotSent);
        // Boxed: the futures inside would make every caller's future large.
        let call: Boxed<'_, Result<Value>> = Box::pin(async {
            self.admit_key(key, &opts).await?;
            let now = CallOptions::new().deadline(Instant::now());
            self.wait_out_pause(Some(owner), &now).await?;
            let result = self
                .exchange(key, Some(owner), &url, "torn request", None)
                .await;
            *lock(&reach) = Reach::of(&result);
            result.map_err(|f| f.error)
        });
        let result = self.guarded(&opts, call).await;
        let reach = *lock(&reach);
        (result, reach)
    }

    /// Asks Torn (`/v2/key/info`) for the key's owner and access level, now, and remembers
    /// the answer as [`owner_of`](Self::owner_of) does. When the owner is already known,
    /// the call takes a unit of the owner's quota like any other.
    pub async fn key_info(&self, key: &ApiKey) -> Result<KeyInfo> {
        let opts = CallOptions::new();
        self.guarded(&opts, async {
            if let Some(info) = self.admit_key(key, &opts).await? {
                // The re-check was the call this asks for.
                return Ok(info);
            }
            let hash = key.hash();
            let known = self.inner.owners.get(&hash).await.map(|i| i.owner);
            let info = self.fetch_key_info(key, known, &opts).await?;
            self.inner.owners.insert(hash, info).await;
            Ok(info)
        })
        .await
    }

    /// The key's owner and access level: from the in-process cache (kept for the configured
    /// TTL), else from one call to `/v2/key/info`. Concurrent misses for one key share that
    /// one call.
    ///
    /// That call reaches Torn before the owner is known, so it cannot wait for the owner's
    /// quota: it takes a unit of the IP bucket first and, once the answer names the owner,
    /// records one unit on the owner's bucket for certain, even when it is full (Torn
    /// counted the call), so later grants see it. Callers that know the owner already (the vault's key-hash mapping) avoid the
    /// call with [`remember_owner`](Self::remember_owner).
    pub async fn owner_of(&self, key: &ApiKey) -> Result<KeyInfo> {
        let opts = CallOptions::new();
        self.guarded(&opts, self.resolve(key, &opts)).await
    }

    /// Remembers a key's owner and access level learnt elsewhere (say, the vault's mapping),
    /// for the cache's TTL.
    pub async fn remember_owner(&self, key: &ApiKey, info: KeyInfo) {
        self.inner.owners.insert(key.hash(), info).await;
    }

    /// The key's owner and access level when this process already knows them, without
    /// asking anyone (the gateway reports whose quota a call spent, even after a failure,
    /// and must not spend another unit to find out).
    pub async fn known_owner(&self, key: &ApiKey) -> Option<KeyInfo> {
        self.inner.owners.get(&key.hash()).await
    }

    /// Whether the client still sends `key`.
    pub fn key_status(&self, key: &ApiKey) -> KeyStatus {
        let now = self.inner.wall.now();
        match self.inner.blocks.get(&key.hash()) {
            None => KeyStatus::Usable,
            Some(Block {
                code,
                until: Some(recheck_at),
                recheck: true,
                ..
            }) => KeyStatus::Parked { code, recheck_at },
            Some(Block { until: Some(u), .. }) if u <= now => KeyStatus::Usable,
            Some(Block {
                code,
                until: Some(until),
                ..
            }) => KeyStatus::Held { code, until },
            Some(Block {
                code, until: None, ..
            }) => KeyStatus::Disabled { code },
        }
    }

    /// Sends `key` again after it was disabled or held (say, once a re-check found the
    /// owner out of jail). Returns whether it was blocked.
    pub fn reinstate(&self, key: &ApiKey) -> bool {
        let hash = key.hash();
        let was = self.inner.blocks.remove(&hash).is_some();
        if was {
            tracing::info!(key_hash = short(&hash), "torn key reinstated");
        }
        was
    }

    /// How long every call is still paused after a code 8 or 9, if it is.
    pub fn paused_for(&self) -> Option<Duration> {
        self.current_pause()
            .map(|p| p.until.saturating_duration_since(Instant::now()))
    }

    /// Runs `call` unless the client shuts down or the call is cancelled first.
    async fn guarded<T>(
        &self,
        opts: &CallOptions,
        call: impl Future<Output = Result<T>>,
    ) -> Result<T> {
        let cancelled = async {
            match &opts.cancel {
                Some(token) => token.cancelled().await,
                None => std::future::pending().await,
            }
        };
        if self.inner.shutdown.is_cancelled()
            || opts
                .cancel
                .as_ref()
                .is_some_and(CancellationToken::is_cancelled)
        {
            return Err(Error::Cancelled);
        }
        tokio::select! {
            biased;
            () = self.inner.shutdown.cancelled() => Err(Error::Cancelled),
            () = cancelled => Err(Error::Cancelled),
            result = call => result,
        }
    }

    fn v2_url(&self, key: &ApiKey, path: &str) -> Result<url::Url> {
        let path = checked_path(path, key)?;
        let path = path.strip_prefix("v2/").unwrap_or(path);
        self.url(&format!("v2/{path}"))
    }

    fn url(&self, path: &str) -> Result<url::Url> {
        let mut url = url::Url::parse(&format!("{}/{path}", self.inner.base))
            .map_err(|e| bad_path(&format!("does not make a valid URL ({e})")))?;
        // `TORN_API_COMMENT` names the tool in the owner's usage log, on every call; a
        // caller's own comment wins.
        if let Some(comment) = self.inner.config.comment()
            && !url.query_pairs().any(|(k, _)| k == "comment")
        {
            url.query_pairs_mut().append_pair("comment", comment);
        }
        Ok(url)
    }

    /// The cached owner, or one shared call to Torn.
    async fn resolve(&self, key: &ApiKey, opts: &CallOptions) -> Result<KeyInfo> {
        self.admit_key(key, opts).await?;
        self.inner
            .owners
            .try_get_with(key.hash(), Box::pin(self.lookup(key, opts)))
            .await
            .map_err(unshare)
    }

    /// An owner this process does not know: from the mapping every process shares through
    /// the limiter's Redis, else from Torn (then shared). Sharing matters because a lookup
    /// spends a unit of a quota nobody can check beforehand: a second process looking the
    /// same key up while the owner's window is full would meet a code 5.
    async fn lookup(&self, key: &ApiKey, opts: &CallOptions) -> Result<KeyInfo> {
        let hash = key.hash();
        let memo = format!("owner:{hash}");
        let limiter = self.inner.gate.limiter();
        match limiter.recall(&memo).await {
            Ok(Some(v)) => {
                if let Some(info) = parse_owner_memo(&v) {
                    return Ok(info);
                }
            }
            Ok(None) => {}
            Err(e) => tracing::debug!(error = %e, "shared owner mapping unreadable; asking torn"),
        }
        let info = self.fetch_key_info(key, None, opts).await?;
        let value = format!("{}:{}", info.owner.get(), info.access.number());
        if let Err(e) = limiter
            .remember(&memo, &value, self.inner.config.owner_cache_ttl())
            .await
        {
            tracing::debug!(error = %e, "cannot share the owner mapping");
        }
        Ok(info)
    }

    async fn fetch_key_info(
        &self,
        key: &ApiKey,
        owner: Option<TornUserId>,
        opts: &CallOptions,
    ) -> Result<KeyInfo> {
        let url = self.url("v2/key/info")?;
        let body = self.call(key, owner, &url, "torn key info", opts).await?;
        let (named, access) = parse_key_info(&body)?;
        let (resolved, calls) = if let Some(id) = named {
            (id, 1)
        } else {
            // Torn's key info does not always name the owner; the key's own profile does,
            // for one more counted call.
            let url = self.url("v2/user/basic")?;
            let body = self.call(key, owner, &url, "torn user basic", opts).await?;
            (parse_profile_id(&body)?, 2)
        };
        let info = KeyInfo {
            owner: resolved,
            access,
        };
        if owner.is_none() {
            for _ in 0..calls {
                self.inner.gate.record_lookup(info.owner).await;
            }
        }
        tracing::debug!(
            owner = info.owner.get(),
            access = info.access.number(),
            key_hash = short(&key.hash()),
            "torn key resolved"
        );
        Ok(info)
    }

    /// [`check_key`](Self::check_key), after re-checking a parked key whose time has come:
    /// one `/v2/key/info` call (shared by concurrent callers) that brings the key back when
    /// Torn accepts it. Returns what the re-check learnt, when one ran.
    async fn admit_key(&self, key: &ApiKey, opts: &CallOptions) -> Result<Option<KeyInfo>> {
        let hash = key.hash();
        let now = self.inner.wall.now();
        let due = self
            .inner
            .blocks
            .get(&hash)
            .filter(|b| b.recheck && b.until.is_some_and(|u| u <= now));
        let Some(block) = due else {
            self.check_key(key)?;
            return Ok(None);
        };
        let recheck = self
            .inner
            .rechecks
            .try_get_with(hash.clone(), Box::pin(self.recheck(key, block, opts)))
            .await;
        // Only concurrent callers share a re-check: the next one, after another refusal,
        // must call again.
        self.inner.rechecks.invalidate(&hash).await;
        let info = recheck.map_err(unshare)?;
        self.check_key(key)?;
        Ok(Some(info))
    }

    /// The one call that decides whether a parked key comes back.
    async fn recheck(&self, key: &ApiKey, block: Block, opts: &CallOptions) -> Result<KeyInfo> {
        let hash = key.hash();
        // The call itself must pass `check_key`. Should Torn refuse the key again, its
        // answer parks (or disables) the key anew.
        self.inner.blocks.invalidate(&hash);
        match self.fetch_key_info(key, block.owner, opts).await {
            Ok(info) => {
                tracing::info!(
                    owner = info.owner.get(),
                    key_hash = short(&hash),
                    code = block.code.get(),
                    "torn accepts the parked key again: it is used again"
                );
                self.inner.owners.insert(hash, info).await;
                Ok(info)
            }
            Err(e) => {
                let refused = matches!(&e, Error::Torn { code, .. }
                    if matches!(code.class(), ErrorClass::DisableKey { .. } | ErrorClass::HoldKey));
                // Not an answer about the key (the network, a pause): it stays parked and
                // due, so its next use re-checks again.
                if !refused && !self.inner.blocks.contains_key(&hash) {
                    self.inner.blocks.insert(hash, block);
                }
                Err(e)
            }
        }
    }

    /// Fails at once when the key is disabled, held or parked; forgets holds that have
    /// ended.
    fn check_key(&self, key: &ApiKey) -> Result<()> {
        let hash = key.hash();
        let now = self.inner.wall.now();
        let Some(block) = self.inner.blocks.get(&hash) else {
            return Ok(());
        };
        match block.until {
            Some(_) if block.recheck => Err(Error::Torn {
                code: block.code,
                message: format!(
                    "{} (the key is parked until a re-check finds torn accepts it; not sent)",
                    block.code.text()
                ),
            }),
            Some(until) if until <= now => {
                self.inner.blocks.invalidate(&hash);
                Ok(())
            }
            Some(_) => Err(Error::Torn {
                code: block.code,
                message: format!(
                    "{} (the key is held until the next UTC day; not sent)",
                    block.code.text()
                ),
            }),
            None => Err(Error::Torn {
                code: block.code,
                message: format!(
                    "{} (the key was disabled by an earlier answer; not sent)",
                    block.code.text()
                ),
            }),
        }
    }

    fn current_pause(&self) -> Option<Pause> {
        let mut pause = lock(&self.inner.pause);
        match *pause {
            Some(p) if p.until > Instant::now() => Some(p),
            Some(_) => {
                *pause = None;
                None
            }
            None => None,
        }
    }

    /// Waits until no pause is in force, or fails at once when the pause outlasts the
    /// call's deadline.
    async fn wait_out_pause(&self, owner: Option<TornUserId>, opts: &CallOptions) -> Result<()> {
        while let Some(p) = self.current_pause() {
            let left = p.until.saturating_duration_since(Instant::now());
            if opts.too_late(p.until) {
                return Err(Error::Torn {
                    code: p.code,
                    message: format!(
                        "{} (calls are paused for another {} ms; not sent)",
                        p.code.text(),
                        left.as_millis()
                    ),
                });
            }
            tracing::debug!(
                owner = owner.map(TornUserId::get),
                code = p.code.get(),
                wait_ms = left.as_millis() as u64,
                "torn calls paused: waiting"
            );
            tokio::time::sleep_until(p.until).await;
        }
        Ok(())
    }

    /// A call with bounded retries: each attempt waits out pauses, takes its own grants and
    /// sends once.
    async fn call(
        &self,
        key: &ApiKey,
        owner: Option<TornUserId>,
        url: &url::Url,
        operation: &'static str,
        opts: &CallOptions,
    ) -> Result<Value> {
        let config = &self.inner.config;
        let max = config.max_attempts().get();
        let backoff = ExponentialBuilder::default()
            .with_jitter()
            .with_min_delay(config.retry_min_delay())
            .with_max_delay(config.retry_max_delay())
            .with_max_times((max - 1) as usize);
        let attempts = AtomicU32::new(0);
        let result = (|| async {
            attempts.fetch_add(1, Ordering::Relaxed);
            // Boxed: the limiter's and reqwest's futures inside make it large, and one
            // allocation per request is nothing beside the request.
            let attempt: Boxed<'_, Result<Value, Failure>> =
                Box::pin(self.attempt(key, owner, url, operation, opts));
            attempt.await
        })
        .retry(backoff)
        .sleep(tokio::time::sleep)
        .when(|f: &Failure| f.retry)
        .adjust(|_, delay| match delay {
            Some(d) if opts.too_late(Instant::now() + d) => None,
            other => other,
        })
        .notify(|f: &Failure, delay: Duration| {
            tracing::debug!(
                owner = owner.map(TornUserId::get),
                attempt = attempts.load(Ordering::Relaxed),
                max_attempts = max,
                delay_ms = delay.as_millis() as u64,
                error = %Chain(&f.error),
                "torn call failed, retrying after back-off"
            );
        })
        .await;
        result.map_err(|f| {
            if f.retry {
                tracing::warn!(
                    owner = owner.map(TornUserId::get),
                    attempts = attempts.load(Ordering::Relaxed),
                    error = %Chain(&f.error),
                    "torn call failed, no more retries"
                );
            }
            f.error
        })
    }

    async fn attempt(
        &self,
        key: &ApiKey,
        owner: Option<TornUserId>,
        url: &url::Url,
        operation: &'static str,
        opts: &CallOptions,
    ) -> Result<Value, Failure> {
        // Another call may have disabled the key, or paused everything, while this one
        // waited for its back-off.
        self.check_key(key).map_err(Failure::fatal)?;
        let ticket = self
            .take_ticket(key, owner, opts)
            .await
            .map_err(Failure::fatal)?;
        self.exchange(key, owner, url, operation, Some(ticket))
            .await
    }

    /// Waits out any pause, then takes the call's ticket from the gate.
    async fn take_ticket(
        &self,
        key: &ApiKey,
        owner: Option<TornUserId>,
        opts: &CallOptions,
    ) -> Result<Ticket> {
        let hash = key.hash();
        loop {
            self.wait_out_pause(owner, opts).await?;
            let ticket = self.inner.gate.take(owner, &hash, opts).await?;
            // A pause may have begun while this call waited for quota.
            if self.current_pause().is_none() {
                return Ok(ticket);
            }
            self.inner.gate.give_back(ticket).await;
        }
    }

    /// Sends once on units already taken (the call's ticket, or the caller's when `None`),
    /// and reads the answer, inside a span that names the owner (never the key), counting
    /// the answer by Torn's code.
    async fn exchange(
        &self,
        key: &ApiKey,
        owner: Option<TornUserId>,
        url: &url::Url,
        operation: &'static str,
        ticket: Option<Ticket>,
    ) -> Result<Value, Failure> {
        use tracing::Instrument as _;
        let span = tracing::info_span!(
            "torn_request",
            owner = owner.map(TornUserId::get),
            operation
        );
        let result = self
            .exchange_once(key, owner, url, operation, ticket)
            .instrument(span)
            .await;
        crate::metrics::torn_answer(match &result {
            Ok(_) => Some(Ok(())),
            Err(Failure {
                error: Error::Torn { code, .. },
                ..
            }) => Some(Err(code.get())),
            Err(_) => None,
        });
        result
    }

    async fn exchange_once(
        &self,
        key: &ApiKey,
        owner: Option<TornUserId>,
        url: &url::Url,
        operation: &'static str,
        ticket: Option<Ticket>,
    ) -> Result<Value, Failure> {
        tracing::debug!(
            owner = owner.map(TornUserId::get),
            path = url.path(),
            "torn request"
        );
        let http_err = |e: reqwest::Error| Error::Http {
            operation,
            source: Box::new(e.without_url()),
        };
        let response = match self.send(key, url).await {
            Ok(r) => r,
            Err(e) => {
                // A request that never connected never reached Torn: its units go back.
                // Any other failure may have reached it: the units keep their records.
                if let Some(ticket) = ticket.filter(|_| e.is_connect()) {
                    self.inner.gate.give_back(ticket).await;
                }
                return Err(Failure::transient(http_err(e)));
            }
        };
        // An answer came, so Torn has counted the request: from now its units count for one
        // window, not for the whole timeout.
        if let Some(ticket) = ticket {
            self.inner.gate.settle(ticket).await;
        }
        let status = response.status();
        if status == StatusCode::TOO_MANY_REQUESTS {
            // Torn's front refuses this address: the same as code 8, for every call.
            self.pause_all(TornErrorCode::IP_BLOCK, owner);
            return Err(Failure::fatal(Error::Http {
                operation,
                source: Box::new(HttpStatus(status)),
            }));
        }
        if status == StatusCode::FORBIDDEN && is_challenge(response.headers()) {
            tracing::warn!(
                owner = owner.map(TornUserId::get),
                operation,
                "cloudflare challenged the request: not retried (check TORN_API_USER_AGENT)"
            );
            return Err(Failure::fatal(Error::Challenge { operation }));
        }
        if !status.is_success() {
            let error = Error::Http {
                operation,
                source: Box::new(HttpStatus(status)),
            };
            let transient = status.is_server_error() || status == StatusCode::REQUEST_TIMEOUT;
            return Err(Failure {
                error,
                retry: transient,
            });
        }
        let bytes = response
            .bytes()
            .await
            .map_err(|e| Failure::transient(http_err(e)))?;
        let body: Value = serde_json::from_slice(&bytes).map_err(|e| {
            Failure::transient(Error::Http {
                operation,
                source: Box::new(e),
            })
        })?;
        match torn_error(&body) {
            None => Ok(body),
            Some((code, message)) => Err(self.on_torn_error(key, owner, code, message).await),
        }
    }

    async fn send(&self, key: &ApiKey, url: &url::Url) -> reqwest::Result<reqwest::Response> {
        let header = Zeroizing::new(format!("ApiKey {}", key.expose()));
        let mut auth =
            HeaderValue::from_str(&header).expect("a key is ASCII alphanumerics, a valid header");
        // Sensitive values print as "Sensitive" in any Debug output of the request.
        auth.set_sensitive(true);
        self.inner
            .http
            .get(url.clone())
            .header(AUTHORIZATION, auth)
            .header(USER_AGENT, self.inner.user_agent.clone())
            .timeout(self.inner.config.request_timeout())
            .send()
            .await
    }

    /// Penalizes the owner's bucket, so every process holds the owner back.
    async fn hold_owner(&self, user: TornUserId) {
        let hold = self.inner.config.owner_hold();
        match self.inner.gate.limiter().penalize(user, hold).await {
            Ok(held) => tracing::warn!(
                owner = user.get(),
                hold_ms = held.as_millis() as u64,
                "torn code 5: the owner's window is full, holding the owner back in every process"
            ),
            Err(e) => tracing::warn!(
                owner = user.get(),
                error = %e,
                "torn code 5, and the owner's bucket cannot be penalized"
            ),
        }
    }

    /// Pauses every call of this client (codes 8, 9, and HTTP 429, which is code 8 from
    /// Torn's front) for the configured time.
    fn pause_all(&self, code: TornErrorCode, owner: Option<TornUserId>) {
        let pause = self.inner.config.pause();
        let until = Instant::now() + pause;
        {
            let mut current = lock(&self.inner.pause);
            if current.is_none_or(|p| p.until < until) {
                *current = Some(Pause { code, until });
            }
        }
        tracing::warn!(
            owner = owner.map(TornUserId::get),
            code = code.get(),
            pause_ms = pause.as_millis() as u64,
            "torn blocked this ip or the api: pausing every call"
        );
    }

    /// Deletes the key's owner memo that every process shares through Redis, so that no
    /// process resolves a key Torn refused from it (the memo lives up to the owner cache's
    /// TTL). A failure is logged only: the memo expires on its own.
    async fn forget_shared_owner(&self, hash: &KeyHash) {
        let memo = self
            .inner
            .gate
            .limiter()
            .keys()
            .memo(&owner_memo_name(hash));
        let deleted = self
            .inner
            .gate
            .limiter()
            .with_redis("forget owner memo", |mut c| async move {
                ::redis::cmd("DEL").arg(&memo).exec_async(&mut c).await
            })
            .await;
        if let Some(Err(e)) = deleted {
            tracing::debug!(
                key_hash = short(hash),
                error = %e,
                "cannot delete the shared owner mapping of a refused key"
            );
        }
    }

    /// Does what Torn's code asks of the client, and returns the error for the caller.
    async fn on_torn_error(
        &self,
        key: &ApiKey,
        owner: Option<TornUserId>,
        code: TornErrorCode,
        message: String,
    ) -> Failure {
        let owner_id = owner.map(TornUserId::get);
        let error = Error::Torn { code, message };
        match code.class() {
            ErrorClass::Retry => return Failure::transient(error),
            ErrorClass::HoldOwner => {
                if let Some(user) = owner {
                    self.hold_owner(user).await;
                } else {
                    tracing::warn!(
                        key_hash = short(&key.hash()),
                        "torn code 5 while resolving a key's owner"
                    );
                }
            }
            ErrorClass::PauseAll => self.pause_all(code, owner),
            ErrorClass::DisableKey { permanent } => {
                let hash = key.hash();
                // Torn gives no time at which an inactive owner's or a paused key comes
                // back; jail (10) and an incorrect key (2) wait for a re-check from outside.
                let parked = matches!(
                    code,
                    TornErrorCode::OWNER_INACTIVE | TornErrorCode::KEY_PAUSED
                );
                let recheck = self.inner.config.key_recheck();
                let block = Block {
                    code,
                    until: parked
                        .then(|| self.inner.wall.now().checked_add(recheck))
                        .flatten(),
                    recheck: parked,
                    owner,
                };
                tracing::warn!(
                    owner = owner_id,
                    key_hash = short(&hash),
                    code = code.get(),
                    permanent,
                    recheck_after_ms = parked.then_some(recheck.as_millis() as u64),
                    "torn refused the key: it is not sent again until torn accepts it"
                );
                self.inner.blocks.insert(hash.clone(), block);
                self.inner.owners.invalidate(&hash).await;
                self.forget_shared_owner(&hash).await;
            }
            ErrorClass::HoldKey => {
                let hash = key.hash();
                let until = next_utc_day(self.inner.wall.now());
                tracing::warn!(
                    owner = owner_id,
                    key_hash = short(&hash),
                    code = code.get(),
                    "torn daily read limit: the key is held until the next UTC day"
                );
                self.inner.blocks.insert(
                    hash,
                    Block {
                        code,
                        until: Some(until),
                        recheck: false,
                        owner,
                    },
                );
            }
            _ => tracing::debug!(
                owner = owner_id,
                code = code.get(),
                "torn refused the request"
            ),
        }
        Failure::fatal(error)
    }
}

/// Whether Cloudflare marked the answer as a challenge (`cf-mitigated: challenge`).
fn is_challenge(headers: &reqwest::header::HeaderMap) -> bool {
    headers
        .get_all("cf-mitigated")
        .iter()
        .any(|v| v.as_bytes().eq_ignore_ascii_case(b"challenge"))
}

/// The name of a key's owner memo, as [`TornClient::lookup`] shares it.
fn owner_memo_name(hash: &KeyHash) -> String {
    format!("owner:{hash}")
}

/// Torn's error in an answer, if it is one: `{"error":{"code":N,"error":"text"}}`.
fn torn_error(body: &Value) -> Option<(TornErrorCode, String)> {
    let error = body.get("error")?;
    let code = error
        .get("code")
        .and_then(Value::as_u64)
        .and_then(|c| u16::try_from(c).ok())
        // A body without a usable code is an unknown error, which Torn numbers 0.
        .map_or(TornErrorCode::new(0), TornErrorCode::new);
    let message = error
        .get("error")
        .and_then(Value::as_str)
        .map_or_else(|| code.text().to_owned(), str::to_owned);
    Some((code, message))
}

/// `{"info":{"user":{"id":N},"access":{"level":L}}}`: the access level, and the owner when
/// the answer names one (Torn's answer does not always carry `info.user.id`).
fn parse_key_info(body: &Value) -> Result<(Option<TornUserId>, AccessLevel)> {
    let owner = body
        .pointer("/info/user/id")
        .and_then(Value::as_u64)
        .filter(|&id| id > 0)
        .map(TornUserId::new);
    let access = body
        .pointer("/info/access/level")
        .and_then(Value::as_u64)
        .and_then(|l| u8::try_from(l).ok())
        .and_then(AccessLevel::from_number)
        .ok_or_else(|| Error::Http {
            operation: "torn key info",
            source: "the answer has no known info.access.level".into(),
        })?;
    Ok((owner, access))
}

/// `{"profile":{"id":N,...}}` from `/v2/user/basic`: the key's owner.
fn parse_profile_id(body: &Value) -> Result<TornUserId> {
    body.pointer("/profile/id")
        .and_then(Value::as_u64)
        .filter(|&id| id > 0)
        .map(TornUserId::new)
        .ok_or_else(|| Error::Http {
            operation: "torn user basic",
            source: "the answer has no profile.id".into(),
        })
}

/// Reads `owner:access` as [`TornClient::lookup`] shares it.
fn parse_owner_memo(v: &str) -> Option<KeyInfo> {
    let (owner, access) = v.split_once(':')?;
    Some(KeyInfo {
        owner: TornUserId::new(owner.parse().ok()?),
        access: AccessLevel::from_number(access.parse().ok()?)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> ApiKey {
        ApiKey::new("AbCdEfGh12345678").unwrap()
    }

    #[test]
    fn paths_are_checked_without_echoing_them() {
        let k = key();
        for ok in [
            "user/4/basic",
            "/user/basic?striptags=false",
            "v2/key/info",
            "faction/chain?from=1&to=2",
        ] {
            assert!(checked_path(ok, &k).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "/",
            "user/basic?key=AbCdEfGh12345678",
            "user/basic?striptags=false&KEY=x",
            "user/AbCdEfGh12345678/basic",
            "user/../key/info",
            "https://evil.example/user",
            "user/basic#frag",
            "user/ basic",
        ] {
            let err = checked_path(bad, &k).unwrap_err();
            let shown = format!("{err} {err:?}");
            assert!(!shown.contains("AbCdEfGh"), "{shown}");
            assert!(matches!(err, Error::InvalidArgument { name: "path", .. }));
        }
    }

    #[test]
    fn the_next_utc_day_starts_at_midnight() {
        let t = UNIX_EPOCH + Duration::from_secs(86_400 * 20_000 + 3_600);
        assert_eq!(
            next_utc_day(t),
            UNIX_EPOCH + Duration::from_secs(86_400 * 20_001)
        );
        let midnight = UNIX_EPOCH + Duration::from_secs(86_400 * 20_001);
        assert_eq!(
            next_utc_day(midnight),
            UNIX_EPOCH + Duration::from_secs(86_400 * 20_002)
        );
    }

    #[test]
    fn torn_errors_and_key_info_parse() {
        let body = serde_json::json!({"error": {"code": 17, "error": "Backend error"}});
        let (code, message) = torn_error(&body).unwrap();
        assert_eq!((code.get(), message.as_str()), (17, "Backend error"));
        let (code, _) = torn_error(&serde_json::json!({"error": {}})).unwrap();
        assert_eq!(code.get(), 0);
        assert!(torn_error(&serde_json::json!({"profile": {}})).is_none());

        let info = serde_json::json!({"info": {"user": {"id": 4}, "access": {"level": 3}}});
        let (owner, access) = parse_key_info(&info).unwrap();
        assert_eq!(owner, Some(TornUserId::new(4)));
        assert_eq!(access, AccessLevel::Limited);
        assert!(parse_key_info(&serde_json::json!({"info": {"user": {"id": 4}}})).is_err());
        let no_user = serde_json::json!({"info": {"access": {"level": 1}}});
        assert_eq!(
            parse_key_info(&no_user).unwrap(),
            (None, AccessLevel::Public)
        );
        let me = serde_json::json!({"profile": {"id": 7, "name": "x"}});
        assert_eq!(parse_profile_id(&me).unwrap(), TornUserId::new(7));
        assert!(parse_profile_id(&serde_json::json!({"profile": {"id": 0}})).is_err());
    }

    #[tokio::test]
    async fn the_map_of_refused_keys_is_bounded() {
        use crate::sim::{SimConfig, Simulator};
        let sim = Simulator::start([], SimConfig::default()).await.unwrap();
        let limiter = Limiter::in_memory(crate::RateLimitConfig::builder().build().unwrap());
        let cap = 8;
        let config = TornClientConfig::builder()
            .base_url(sim.base_url())
            .owner_cache_capacity(std::num::NonZeroU64::new(cap).unwrap())
            .build()
            .unwrap();
        let client = TornClient::new(limiter, config).unwrap();
        // An attacker's random keys: each answered code 2, each refused for good.
        for i in 0..100 {
            let k = ApiKey::new(&format!("RandomKey{i:07}")).unwrap();
            assert!(client.owner_of(&k).await.is_err());
        }
        assert_eq!(sim.counters().requests, 100);
        client.inner.blocks.run_pending_tasks();
        assert!(
            client.inner.blocks.entry_count() <= cap,
            "{} refused keys kept",
            client.inner.blocks.entry_count()
        );
    }

    #[test]
    fn a_shared_error_keeps_its_code() {
        let shared = Arc::new(Error::Torn {
            code: TornErrorCode::INCORRECT_KEY,
            message: "Incorrect Key".into(),
        });
        let _other_waiter = Arc::clone(&shared);
        match unshare(shared) {
            Error::Torn { code, .. } => assert_eq!(code, TornErrorCode::INCORRECT_KEY),
            other => panic!("{other:?}"),
        }
    }
}
