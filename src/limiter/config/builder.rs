//! [`RateLimitConfigBuilder`]: plain data in, a validated [`RateLimitConfig`] out.

use std::num::{NonZeroU32, NonZeroU64, NonZeroUsize};
use std::time::Duration;

use crate::error::Result;
use crate::limiter::{MAX_SPAN, MAX_UNITS, TornUserId};

use super::redis_url::{RedisUrl, validate_cluster_url, validate_redis_url};
use super::{MAX_CONNECTIONS, Mode, OnRedisDown, RateLimitConfig, invalid};

/// Builds a [`RateLimitConfig`]; [`build`](Self::build) validates.
#[derive(Debug, Clone)]
#[must_use]
pub struct RateLimitConfigBuilder {
    pub(super) config: RateLimitConfig,
    pub(super) window_ms: u64,
}

impl RateLimitConfigBuilder {
    /// Units admitted per window (default 100); at most
    /// [`MAX_UNITS`](crate::limiter::MAX_UNITS) (10,000).
    pub fn limit(mut self, limit: NonZeroU32) -> Self {
        self.config.limit = limit;
        self
    }
    /// The window's length (default 60 s); whole milliseconds, at least 1, at most one day.
    pub fn window(mut self, window: Duration) -> Self {
        self.window_ms = u64::try_from(window.as_millis()).unwrap_or(u64::MAX);
        self
    }
    /// One user's limit, instead of the default; at most 10,000.
    pub fn user_limit(mut self, user: TornUserId, limit: NonZeroU32) -> Self {
        self.config.user_limits.insert(user, limit);
        self
    }
    /// The prefix of every Redis key (default `tq`), so several apps or tests share a Redis.
    pub fn key_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.config.key_prefix = prefix.into();
        self
    }
    /// Log every decision at `info` (default off).
    pub fn log_decisions(mut self, on: bool) -> Self {
        self.config.log_decisions = on;
        self
    }
    /// Keep the journal of this process's grants still in their window (default on), so
    /// that a Redis that lost its state (a restart, a failover, a flush) is rebuilt and the
    /// local fallback starts from what this process granted (docs/failover.md). Off saves
    /// 32 bytes per grant in the window and a mutex per decision; then a lost Redis costs
    /// up to one window of over-admission again. For measurements, mostly.
    pub fn journal(mut self, on: bool) -> Self {
        self.config.journal = on;
        self
    }
    /// How often the in-memory backend sweeps idle buckets (default 60 s).
    pub fn cleanup_interval(mut self, every: Duration) -> Self {
        self.config.cleanup_interval = every;
        self
    }
    /// The Redis URL (default `redis://127.0.0.1:6379`).
    pub fn redis_url(mut self, url: impl Into<String>) -> Self {
        self.config.redis_url = RedisUrl(url.into());
        self
    }
    /// Redis Cluster node URLs (default none). When any is given, the Redis backend connects
    /// to the cluster they belong to instead of [`redis_url`](Self::redis_url); an empty
    /// list goes back to the single Redis. A few nodes are enough: the client discovers the
    /// rest.
    pub fn redis_cluster_urls<I>(mut self, urls: I) -> Self
    where
        I: IntoIterator,
        I::Item: Into<String>,
    {
        self.config.redis_cluster_urls = urls.into_iter().map(|u| RedisUrl(u.into())).collect();
        self
    }
    /// A PEM CA to trust for `rediss://` instead of the public web roots (default none).
    pub fn redis_ca_file(mut self, path: impl Into<std::path::PathBuf>) -> Self {
        self.config.redis_tls.ca = Some(path.into());
        self
    }
    /// A PEM client certificate (chain) and its key, for Redis that asks for mutual TLS
    /// (default none). Both are needed.
    pub fn redis_client_cert(
        mut self,
        cert: impl Into<std::path::PathBuf>,
        key: impl Into<std::path::PathBuf>,
    ) -> Self {
        self.config.redis_tls.client_cert = Some(cert.into());
        self.config.redis_tls.client_key = Some(key.into());
        self
    }
    /// The client certificate alone; [`build`](Self::build) refuses it without its key.
    pub fn redis_client_cert_file(mut self, cert: impl Into<std::path::PathBuf>) -> Self {
        self.config.redis_tls.client_cert = Some(cert.into());
        self
    }
    /// The client key alone; [`build`](Self::build) refuses it without its certificate.
    pub fn redis_client_key_file(mut self, key: impl Into<std::path::PathBuf>) -> Self {
        self.config.redis_tls.client_key = Some(key.into());
        self
    }
    /// Redis behind Sentinel: the sentinels' URLs (`redis://` or `rediss://`) and the name
    /// of the service they watch. The store asks them for the primary, and asks again after
    /// a connection error or a `READONLY` answer (a failover). An empty list goes back to
    /// [`redis_url`](Self::redis_url).
    pub fn redis_sentinel<I>(mut self, urls: I, master: impl Into<String>) -> Self
    where
        I: IntoIterator,
        I::Item: Into<String>,
    {
        self.config.redis_sentinel.urls = urls.into_iter().map(|u| RedisUrl(u.into())).collect();
        self.config.redis_sentinel.master = Some(master.into());
        self
    }
    /// The sentinels' URLs alone; [`build`](Self::build) refuses them without a master name.
    pub fn redis_sentinel_urls<I>(mut self, urls: I) -> Self
    where
        I: IntoIterator,
        I::Item: Into<String>,
    {
        self.config.redis_sentinel.urls = urls.into_iter().map(|u| RedisUrl(u.into())).collect();
        self
    }
    /// The service's name alone; [`build`](Self::build) refuses it without sentinels.
    pub fn redis_sentinel_master(mut self, master: impl Into<String>) -> Self {
        self.config.redis_sentinel.master = Some(master.into());
        self
    }
    /// The sentinels' own password (default none); the primary's password goes in the
    /// sentinels' URLs' user info, as the primary and the sentinels usually share it.
    pub fn redis_sentinel_password(mut self, password: impl Into<String>) -> Self {
        self.config.redis_sentinel.password = Some(zeroize::Zeroizing::new(password.into()));
        self
    }
    /// Time allowed to open a connection (default 500 ms).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.config.connect_timeout = timeout;
        self
    }
    /// Time allowed for one command (default 500 ms).
    pub fn command_timeout(mut self, timeout: Duration) -> Self {
        self.config.command_timeout = timeout;
        self
    }
    /// After a Redis failure, how long calls skip Redis before trying it again (default 1 s).
    pub fn reconnect_interval(mut self, every: Duration) -> Self {
        self.config.reconnect_interval = every;
        self
    }
    /// Multiplexed connections shared by all calls (default 2, at most 64). Each pipelines
    /// every call in flight on it, so a few are enough for thousands of concurrent callers;
    /// siblings share them.
    pub fn connections(mut self, n: NonZeroUsize) -> Self {
        self.config.connections = n;
        self
    }
    /// What to do when Redis is unreachable (default [`OnRedisDown::FailFast`]).
    pub fn on_redis_down(mut self, policy: OnRedisDown) -> Self {
        self.config.on_redis_down = policy;
        self
    }
    /// Units a low-priority call must leave to others (default 0).
    pub fn low_priority_reserve(mut self, reserve: u32) -> Self {
        self.config.low_priority_reserve = reserve;
        self
    }
    /// Which limiter enforces (default per-user).
    pub fn mode(mut self, mode: Mode) -> Self {
        self.config.mode = mode;
        self
    }
    /// The share of users, 0 to 100, that the per-user limiter governs (default unset:
    /// see [`crate::rollout::effective_percent`]). Above 100 is refused by `build`.
    pub fn rollout_percent(mut self, percent: u8) -> Self {
        self.config.rollout_percent = Some(percent);
        self
    }
    /// The legacy limiter's limit per key hash (default 50).
    pub fn legacy_limit(mut self, limit: NonZeroU32) -> Self {
        self.config.legacy_limit = limit;
        self
    }
    /// The legacy limiter's window (default 60 s); at least 1 ms, counted in whole
    /// milliseconds.
    pub fn legacy_window(mut self, window: Duration) -> Self {
        self.config.legacy_window = Duration::from_millis(window.as_millis() as u64);
        self
    }
    /// How often the legacy limiter deletes expired rows (default 60 s).
    pub fn legacy_cleanup_interval(mut self, every: Duration) -> Self {
        self.config.legacy_cleanup_interval = every;
        self
    }

    /// Validates and returns the configuration.
    pub fn build(self) -> Result<RateLimitConfig> {
        let mut c = self.config;
        c.window_ms = NonZeroU64::new(self.window_ms)
            .filter(|w| u128::from(w.get()) <= MAX_SPAN.as_millis())
            .ok_or_else(|| {
                invalid(
                    "TORN_QUOTA_WINDOW_MS",
                    format!(
                        "must be from 1 millisecond to one day ({} ms), got {}",
                        MAX_SPAN.as_millis(),
                        self.window_ms
                    ),
                )
            })?;
        check_bounds(&c)?;
        validate_redis_url(&c.redis_url.0)?;
        for url in &c.redis_cluster_urls {
            validate_cluster_url(&url.0)?;
        }
        c.redis_tls.validate()?;
        c.redis_sentinel.validate()?;
        check_topology(&c)?;
        if c.key_prefix.is_empty() || c.key_prefix.contains(['{', '}', ' ']) {
            return Err(invalid(
                "TORN_QUOTA_KEY_PREFIX",
                format!(
                    "must be non-empty without braces or spaces (braces would break the hash \
                     tag), got '{}'",
                    c.key_prefix
                ),
            ));
        }
        for (name, d) in [
            ("TORN_QUOTA_REDIS_CONNECT_TIMEOUT_MS", c.connect_timeout),
            ("TORN_QUOTA_REDIS_COMMAND_TIMEOUT_MS", c.command_timeout),
            ("TORN_QUOTA_CLEANUP_INTERVAL_MS", c.cleanup_interval),
            ("TORN_QUOTA_LEGACY_WINDOW_MS", c.legacy_window),
            (
                "TORN_QUOTA_LEGACY_CLEANUP_INTERVAL_MS",
                c.legacy_cleanup_interval,
            ),
            ("TORN_QUOTA_RECONNECT_INTERVAL_MS", c.reconnect_interval),
        ] {
            // Bounded, so that sums of them (a call's connect + command bound) cannot wrap.
            if d.is_zero() || d > MAX_SPAN {
                return Err(invalid(
                    name,
                    format!(
                        "must be from 1 millisecond to one day ({} ms), got {} ms",
                        MAX_SPAN.as_millis(),
                        d.as_millis()
                    ),
                ));
            }
        }
        if let Some(p) = c.rollout_percent.filter(|p| *p > 100) {
            return Err(invalid(
                "TORN_QUOTA_ROLLOUT_PERCENT",
                format!("must be 0 to 100, got {p}"),
            ));
        }
        if c.low_priority_reserve >= c.limit.get() {
            return Err(invalid(
                "TORN_QUOTA_RESERVE",
                format!(
                    "must be below the limit {} so that low-priority calls can ever run, got {}",
                    c.limit, c.low_priority_reserve
                ),
            ));
        }
        Ok(c)
    }
}

/// One way to reach Redis at a time, and TLS files only where they are used.
fn check_topology(c: &RateLimitConfig) -> Result<()> {
    if c.redis_sentinel.is_set() && !c.redis_cluster_urls.is_empty() {
        return Err(invalid(
            "REDIS_SENTINEL_URLS",
            "cannot be used with REDIS_CLUSTER_URLS: a cluster fails over by itself".into(),
        ));
    }
    if !c.redis_tls.is_set() {
        return Ok(());
    }
    let setting = if c.redis_tls.ca.is_some() {
        "TORN_QUOTA_REDIS_CA_FILE"
    } else {
        "TORN_QUOTA_REDIS_CLIENT_CERT_FILE"
    };
    let all_tls = |urls: &[RedisUrl]| urls.iter().all(|u| u.0.starts_with("rediss://"));
    let tls = if !c.redis_cluster_urls.is_empty() {
        all_tls(&c.redis_cluster_urls)
    } else if c.redis_sentinel.is_set() {
        all_tls(&c.redis_sentinel.urls)
    } else {
        c.redis_url.0.starts_with("rediss://")
    };
    if !tls {
        return Err(invalid(
            setting,
            "needs a rediss:// URL (REDIS_URL, or every REDIS_CLUSTER_URLS or \
             REDIS_SENTINEL_URLS): over redis:// it would be ignored"
                .into(),
        ));
    }
    Ok(())
}

/// The limiter's bounds: what one call may write to Redis, how many connections a process
/// opens, and a local fallback share that is never 0.
fn check_bounds(c: &RateLimitConfig) -> Result<()> {
    if c.limit.get() > MAX_UNITS {
        return Err(invalid(
            "TORN_QUOTA_LIMIT",
            format!(
                "must be at most {MAX_UNITS} (each unit is a record in Redis; Torn's own \
                 limits are 100 and 1,000), got {}",
                c.limit
            ),
        ));
    }
    let mut users: Vec<_> = c.user_limits.iter().collect();
    users.sort();
    if let Some((user, limit)) = users.iter().find(|(_, l)| l.get() > MAX_UNITS) {
        return Err(invalid(
            "TORN_QUOTA_USER_LIMITS",
            format!("user {user}: a limit must be at most {MAX_UNITS}, got {limit}"),
        ));
    }
    if c.connections.get() > MAX_CONNECTIONS {
        return Err(invalid(
            "TORN_QUOTA_REDIS_CONNECTIONS",
            format!(
                "must be at most {MAX_CONNECTIONS} (each pipelines every call in flight), \
                 got {}",
                c.connections
            ),
        ));
    }
    if let OnRedisDown::LocalFallback { workers } = c.on_redis_down {
        let smallest = users
            .iter()
            .map(|(_, l)| l.get())
            .fold(c.limit.get(), u32::min);
        if workers.get() > smallest {
            return Err(invalid(
                "TORN_QUOTA_WORKERS",
                format!(
                    "must be at most the smallest limit in force ({smallest}): each worker \
                     decides alone at limit / workers while Redis is down, so more workers \
                     would refuse every call; got {workers}"
                ),
            ));
        }
    }
    Ok(())
}
