//! [`RateLimitConfig`]: what the limiter enforces and how it reaches Redis, validated once at
//! start so that a bad value is a clear error naming its setting, never a surprise later.

use std::collections::HashMap;
use std::num::{NonZeroU32, NonZeroU64, NonZeroUsize};
use std::time::Duration;

use crate::error::{Error, Result};
use crate::limiter::{MAX_SPAN, MAX_UNITS, TornUserId};

/// The most Redis connections one process opens (`TORN_QUOTA_REDIS_CONNECTIONS`): each
/// pipelines every call in flight, so more only cost Redis file descriptors.
pub const MAX_CONNECTIONS: usize = 64;

/// What the limiter does when Redis cannot be reached or does not answer in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum OnRedisDown {
    /// Return [`Error::Unavailable`] (or [`Error::Timeout`]) at once. The default: a caller
    /// that cannot reach the shared count should not guess.
    #[default]
    FailFast,
    /// Decide in this process with a local limiter at `limit / workers` per window, so that
    /// `workers` processes deciding alone still stay under the shared limit together. Every
    /// such decision says [`degraded`](crate::Decision::is_degraded), and a log line marks
    /// the start and end of the degraded spell.
    LocalFallback {
        /// How many processes share each user's quota when Redis is gone.
        workers: NonZeroU32,
    },
}

/// Which limiter governs `acquire` calls (`TORN_QUOTA_MODE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Mode {
    /// The legacy per-key limiter (50 per minute per key hash, in PostgreSQL).
    Legacy,
    /// Legacy enforces; the per-user limiter decides beside it and disagreements are counted.
    Shadow,
    /// The per-user limiter in Redis. The default.
    #[default]
    PerUser,
}

impl Mode {
    /// The mode's name as written in `TORN_QUOTA_MODE` and in `enforced_by`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Legacy => "legacy",
            Self::Shadow => "shadow",
            Self::PerUser => "per-user",
        }
    }
}

impl std::str::FromStr for Mode {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "legacy" => Ok(Self::Legacy),
            "shadow" => Ok(Self::Shadow),
            "per-user" => Ok(Self::PerUser),
            other => Err(invalid(
                "TORN_QUOTA_MODE",
                format!("expected legacy, shadow or per-user, got '{other}'"),
            )),
        }
    }
}

/// The limiter's configuration. Build it with [`RateLimitConfig::builder`] or read it with
/// [`RateLimitConfig::from_env`] (with the `settings` feature); both validate, so an instance is always usable.
///
/// ```
/// use std::num::NonZeroU32;
/// use std::time::Duration;
/// use torn_quota::RateLimitConfig;
///
/// let config = RateLimitConfig::builder()
///     .limit(NonZeroU32::new(20).unwrap())
///     .window(Duration::from_millis(500))
///     .key_prefix("my-app")
///     .build()?;
/// assert_eq!(config.window(), Duration::from_millis(500));
/// # Ok::<(), torn_quota::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct RateLimitConfig {
    limit: NonZeroU32,
    window_ms: NonZeroU64,
    user_limits: HashMap<TornUserId, NonZeroU32>,
    key_prefix: String,
    log_decisions: bool,
    cleanup_interval: Duration,
    redis_url: RedisUrl,
    redis_cluster_urls: Vec<RedisUrl>,
    connect_timeout: Duration,
    command_timeout: Duration,
    reconnect_interval: Duration,
    connections: NonZeroUsize,
    on_redis_down: OnRedisDown,
    low_priority_reserve: u32,
    mode: Mode,
    rollout_percent: Option<u8>,
    legacy_limit: NonZeroU32,
    legacy_window: Duration,
    legacy_cleanup_interval: Duration,
}

impl Default for RateLimitConfig {
    /// Torn's own limit: 100 per 60 000 ms, Redis on localhost, fail fast.
    fn default() -> Self {
        Self {
            limit: NonZeroU32::new(100).expect("100 is not zero"),
            window_ms: NonZeroU64::new(60_000).expect("60000 is not zero"),
            user_limits: HashMap::new(),
            key_prefix: "tq".to_owned(),
            log_decisions: false,
            cleanup_interval: Duration::from_secs(60),
            redis_url: RedisUrl("redis://127.0.0.1:6379".to_owned()),
            redis_cluster_urls: Vec::new(),
            connect_timeout: Duration::from_millis(500),
            command_timeout: Duration::from_millis(500),
            reconnect_interval: Duration::from_secs(1),
            connections: NonZeroUsize::new(2).expect("2 is not zero"),
            on_redis_down: OnRedisDown::FailFast,
            low_priority_reserve: 0,
            mode: Mode::PerUser,
            rollout_percent: None,
            legacy_limit: NonZeroU32::new(50).expect("50 is not zero"),
            legacy_window: Duration::from_secs(60),
            legacy_cleanup_interval: Duration::from_secs(60),
        }
    }
}

impl RateLimitConfig {
    /// A builder starting from the defaults.
    pub fn builder() -> RateLimitConfigBuilder {
        let config = Self::default();
        RateLimitConfigBuilder {
            window_ms: config.window_ms.get(),
            config,
        }
    }

    /// Reads the settings once through [`Settings`](crate::settings::Settings): the process
    /// environment over the TOML file that `TORN_QUOTA_CONFIG` names, when set.
    #[cfg(feature = "settings")]
    pub fn from_env() -> Result<Self> {
        crate::settings::Settings::from_env()?.rate_limit()
    }

    /// Units admitted per window for users without an override.
    pub fn limit(&self) -> NonZeroU32 {
        self.limit
    }
    /// The rolling window's length.
    pub fn window(&self) -> Duration {
        Duration::from_millis(self.window_ms.get())
    }
    /// The window in milliseconds, as the Lua scripts take it.
    pub fn window_ms(&self) -> u64 {
        self.window_ms.get()
    }
    /// The limit configured for `user` (its override, else the default). A run-time
    /// override set with [`Limiter::set_user_limit`](crate::Limiter::set_user_limit) wins
    /// over this.
    pub fn limit_for(&self, user: TornUserId) -> NonZeroU32 {
        self.user_limits.get(&user).copied().unwrap_or(self.limit)
    }
    /// The prefix of every Redis key.
    pub fn key_prefix(&self) -> &str {
        &self.key_prefix
    }
    /// Whether every decision is logged (at `info`).
    pub fn log_decisions(&self) -> bool {
        self.log_decisions
    }
    /// How often the in-memory backend sweeps idle buckets.
    pub fn cleanup_interval(&self) -> Duration {
        self.cleanup_interval
    }
    /// The Redis URL.
    pub fn redis_url(&self) -> &str {
        &self.redis_url.0
    }
    /// The Redis URL with any password replaced by `***`: the form to print or log.
    pub fn redis_url_redacted(&self) -> String {
        self.redis_url.redacted()
    }
    /// The Redis Cluster node URLs (`REDIS_CLUSTER_URLS`); empty when the limiter uses the
    /// single Redis at [`redis_url`](Self::redis_url).
    pub fn redis_cluster_urls(&self) -> Vec<&str> {
        self.redis_cluster_urls
            .iter()
            .map(|u| u.0.as_str())
            .collect()
    }
    /// Whether the limiter uses Redis Cluster (`REDIS_CLUSTER_URLS` set) instead of
    /// `REDIS_URL`.
    pub fn is_redis_cluster(&self) -> bool {
        !self.redis_cluster_urls.is_empty()
    }
    /// Where the Redis backend connects, passwords replaced by `***`: the cluster's node
    /// URLs (comma-separated) when set, else the Redis URL. The form to print or log.
    pub fn redis_target_redacted(&self) -> String {
        if self.is_redis_cluster() {
            let urls: Vec<String> = self
                .redis_cluster_urls
                .iter()
                .map(RedisUrl::redacted)
                .collect();
            format!("cluster {}", urls.join(","))
        } else {
            self.redis_url.redacted()
        }
    }
    /// Time allowed to open a Redis connection.
    pub fn connect_timeout(&self) -> Duration {
        self.connect_timeout
    }
    /// Time allowed for one Redis command.
    pub fn command_timeout(&self) -> Duration {
        self.command_timeout
    }
    /// After Redis failed, how long calls skip it before trying again.
    pub fn reconnect_interval(&self) -> Duration {
        self.reconnect_interval
    }
    /// Multiplexed Redis connections shared by all calls.
    pub fn connections(&self) -> NonZeroUsize {
        self.connections
    }
    /// The policy when Redis is unreachable.
    pub fn on_redis_down(&self) -> OnRedisDown {
        self.on_redis_down
    }
    /// Units a [`Priority::Low`](crate::Priority::Low) call must leave to others.
    pub fn low_priority_reserve(&self) -> u32 {
        self.low_priority_reserve
    }
    /// Which limiter enforces.
    pub fn mode(&self) -> Mode {
        self.mode
    }
    /// `TORN_QUOTA_ROLLOUT_PERCENT` as set (0 to 100), `None` when unset. How it combines
    /// with the mode is [`crate::rollout::effective_percent`]'s to say.
    pub fn rollout_percent(&self) -> Option<u8> {
        self.rollout_percent
    }
    /// The legacy per-key limiter's limit per key hash (`TORN_QUOTA_LEGACY_LIMIT`, default
    /// 50, the old system's fixed value).
    pub fn legacy_limit(&self) -> NonZeroU32 {
        self.legacy_limit
    }
    /// The legacy limiter's window (`TORN_QUOTA_LEGACY_WINDOW_MS`, default 60 s).
    pub fn legacy_window(&self) -> Duration {
        self.legacy_window
    }
    /// How often the legacy limiter deletes rows older than its window
    /// (`TORN_QUOTA_LEGACY_CLEANUP_INTERVAL_MS`, default 60 s).
    pub fn legacy_cleanup_interval(&self) -> Duration {
        self.legacy_cleanup_interval
    }
}

/// A Redis URL whose Debug hides the password, so a logged configuration leaks no secret.
#[derive(Clone)]
struct RedisUrl(String);

impl RedisUrl {
    /// The URL with every password replaced by `***`: the one in the user info, and the
    /// `pass` / `password` query parameters that `redis+unix://` URLs carry it in.
    fn redacted(&self) -> String {
        let Ok(mut u) = url::Url::parse(&self.0) else {
            return "<invalid url>".to_owned();
        };
        if u.password().is_some() {
            let _ = u.set_password(Some("***"));
        }
        let secret = |k: &str| k.eq_ignore_ascii_case("pass") || k.eq_ignore_ascii_case("password");
        if u.query_pairs().any(|(k, _)| secret(&k)) {
            let pairs: Vec<(String, String)> = u
                .query_pairs()
                .map(|(k, v)| {
                    let v = if secret(&k) {
                        "***".into()
                    } else {
                        v.into_owned()
                    };
                    (k.into_owned(), v)
                })
                .collect();
            u.query_pairs_mut().clear().extend_pairs(pairs);
        }
        u.to_string()
    }
}

impl std::fmt::Debug for RedisUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.redacted())
    }
}

/// Builds a [`RateLimitConfig`]; [`build`](Self::build) validates.
#[derive(Debug, Clone)]
#[must_use]
pub struct RateLimitConfigBuilder {
    config: RateLimitConfig,
    window_ms: u64,
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

fn invalid(setting: &'static str, reason: String) -> Error {
    Error::Config { setting, reason }
}

fn validate_redis_url(raw: &str) -> Result<()> {
    let url = url::Url::parse(raw).map_err(|e| {
        invalid(
            "REDIS_URL",
            format!("not a URL ({e}); expected e.g. redis://127.0.0.1:6379"),
        )
    })?;
    if !matches!(url.scheme(), "redis" | "rediss" | "redis+unix" | "unix") {
        return Err(invalid(
            "REDIS_URL",
            format!(
                "scheme must be redis:// or rediss://, got '{}://'",
                url.scheme()
            ),
        ));
    }
    if url.scheme().starts_with("redis") && !url.scheme().contains("unix") && url.host().is_none() {
        return Err(invalid("REDIS_URL", "has no host".into()));
    }
    Ok(())
}

/// One cluster node's URL: `redis://` or `rediss://` with a host (a cluster is reached over
/// TCP). The message never repeats the URL, which may hold a password.
fn validate_cluster_url(raw: &str) -> Result<()> {
    let url = url::Url::parse(raw).map_err(|e| {
        invalid(
            "REDIS_CLUSTER_URLS",
            format!("a node URL is not a URL ({e}); expected e.g. redis://10.0.0.1:7000"),
        )
    })?;
    if !matches!(url.scheme(), "redis" | "rediss") {
        return Err(invalid(
            "REDIS_CLUSTER_URLS",
            format!(
                "a node URL's scheme must be redis:// or rediss://, got '{}://'",
                url.scheme()
            ),
        ));
    }
    if url.host().is_none() {
        return Err(invalid(
            "REDIS_CLUSTER_URLS",
            "a node URL has no host".into(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The configuration the one [`Settings`](crate::settings::Settings) reader makes of
    /// `file` and `env`, as the binary reads it.
    #[cfg(feature = "settings")]
    fn from_sources(
        file: Option<&std::path::Path>,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<RateLimitConfig> {
        crate::settings::Settings::from_sources(file, env)?.rate_limit()
    }

    fn env<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |name| {
            pairs
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| (*v).to_owned())
        }
    }

    fn setting_of(err: Error) -> &'static str {
        match err {
            Error::Config { setting, .. } => setting,
            other => panic!("expected a config error, got {other:?}"),
        }
    }

    #[test]
    #[cfg(feature = "settings")]
    fn defaults_are_torns_limit() {
        let c = from_sources(None, env(&[])).unwrap();
        assert_eq!(c.limit().get(), 100);
        assert_eq!(c.window_ms(), 60_000);
        assert_eq!(c.mode(), Mode::PerUser);
        assert_eq!(c.on_redis_down(), OnRedisDown::FailFast);
    }

    #[test]
    #[cfg(feature = "settings")]
    fn bad_values_name_their_setting() {
        for (pairs, setting) in [
            (vec![("TORN_QUOTA_LIMIT", "0")], "TORN_QUOTA_LIMIT"),
            (vec![("TORN_QUOTA_LIMIT", "ten")], "TORN_QUOTA_LIMIT"),
            (vec![("TORN_QUOTA_WINDOW_MS", "0")], "TORN_QUOTA_WINDOW_MS"),
            (vec![("REDIS_URL", "not a url")], "REDIS_URL"),
            (vec![("REDIS_URL", "http://localhost:6379")], "REDIS_URL"),
            (vec![("TORN_QUOTA_MODE", "fast")], "TORN_QUOTA_MODE"),
            (
                vec![("TORN_QUOTA_USER_LIMITS", "12=0")],
                "TORN_QUOTA_USER_LIMITS",
            ),
            (
                vec![("TORN_QUOTA_USER_LIMITS", "12")],
                "TORN_QUOTA_USER_LIMITS",
            ),
            (
                vec![("TORN_QUOTA_ON_REDIS_DOWN", "local")],
                "TORN_QUOTA_WORKERS",
            ),
            (
                vec![("TORN_QUOTA_ON_REDIS_DOWN", "pray")],
                "TORN_QUOTA_ON_REDIS_DOWN",
            ),
            (vec![("TORN_QUOTA_RESERVE", "100")], "TORN_QUOTA_RESERVE"),
            (
                vec![("TORN_QUOTA_KEY_PREFIX", "a{b")],
                "TORN_QUOTA_KEY_PREFIX",
            ),
            (
                vec![("TORN_QUOTA_LOG_DECISIONS", "maybe")],
                "TORN_QUOTA_LOG_DECISIONS",
            ),
            (
                vec![("TORN_QUOTA_ROLLOUT_PERCENT", "101")],
                "TORN_QUOTA_ROLLOUT_PERCENT",
            ),
            (
                vec![("TORN_QUOTA_ROLLOUT_PERCENT", "-1")],
                "TORN_QUOTA_ROLLOUT_PERCENT",
            ),
            (
                vec![("TORN_QUOTA_ROLLOUT_PERCENT", "12.5")],
                "TORN_QUOTA_ROLLOUT_PERCENT",
            ),
            (
                vec![("TORN_QUOTA_LEGACY_LIMIT", "0")],
                "TORN_QUOTA_LEGACY_LIMIT",
            ),
            (
                vec![("TORN_QUOTA_LEGACY_WINDOW_MS", "0")],
                "TORN_QUOTA_LEGACY_WINDOW_MS",
            ),
        ] {
            let err = from_sources(None, env(&pairs)).unwrap_err();
            let message = err.to_string();
            assert_eq!(setting_of(err), setting, "for {pairs:?}");
            assert!(message.contains(setting), "{message}");
        }
    }

    #[test]
    #[cfg(feature = "settings")]
    fn rollout_percent_and_legacy_settings_parse() {
        let c = from_sources(None, env(&[])).unwrap();
        assert_eq!(c.rollout_percent(), None);
        assert_eq!(c.legacy_limit().get(), 50);
        assert_eq!(c.legacy_window(), Duration::from_secs(60));
        for (raw, want) in [("0", 0), ("10", 10), (" 50% ", 50), ("100", 100)] {
            let c = from_sources(
                None,
                env(&[
                    ("TORN_QUOTA_ROLLOUT_PERCENT", raw),
                    ("TORN_QUOTA_LEGACY_LIMIT", "7"),
                    ("TORN_QUOTA_LEGACY_WINDOW_MS", "1500"),
                ]),
            )
            .unwrap();
            assert_eq!(c.rollout_percent(), Some(want), "{raw}");
            assert_eq!(c.legacy_limit().get(), 7);
            assert_eq!(c.legacy_window(), Duration::from_millis(1500));
        }
        let err = RateLimitConfig::builder()
            .rollout_percent(101)
            .build()
            .unwrap_err();
        assert_eq!(setting_of(err), "TORN_QUOTA_ROLLOUT_PERCENT");
    }

    #[test]
    fn the_redis_password_never_shows() {
        let c = RateLimitConfig::builder()
            .redis_url("redis://worker:s3cret-pass@cache.internal:6380/2")
            .build()
            .unwrap();
        assert_eq!(
            c.redis_url(),
            "redis://worker:s3cret-pass@cache.internal:6380/2"
        );
        assert!(!format!("{c:?}").contains("s3cret"), "{c:?}");
        assert_eq!(
            c.redis_url_redacted(),
            "redis://worker:***@cache.internal:6380/2"
        );
    }

    /// Issue 12 item 6: `redis+unix://` URLs carry the password as a query parameter.
    #[test]
    fn a_unix_socket_password_never_shows() {
        for url in [
            "redis+unix:///run/redis.sock?db=2&pass=s3cret-pass",
            "redis+unix:///run/redis.sock?password=s3cret-pass&db=2",
            "unix:///run/redis.sock?PASS=s3cret-pass",
            "redis://:s3cret-pass@cache.internal:6379/?password=s3cret-pass",
        ] {
            let c = RateLimitConfig::builder().redis_url(url).build().unwrap();
            let shown = c.redis_url_redacted();
            assert!(!shown.contains("s3cret"), "{url} shows as {shown}");
            assert!(shown.contains("***"), "{shown}");
            assert!(!format!("{c:?}").contains("s3cret"));
            assert!(!c.redis_target_redacted().contains("s3cret"));
        }
        let c = RateLimitConfig::builder()
            .redis_url("redis+unix:///run/redis.sock?db=2&pass=s3cret")
            .build()
            .unwrap();
        assert_eq!(
            c.redis_url_redacted(),
            "redis+unix:///run/redis.sock?db=2&pass=***"
        );
    }

    /// Issue 12 items 2 and 5: limits, windows, timeouts, connections and workers bounded,
    /// each refusal naming its setting.
    #[test]
    #[cfg(feature = "settings")]
    fn bounds_name_their_setting() {
        let huge = u64::MAX.to_string();
        let cases: Vec<(Vec<(&str, &str)>, &str)> = vec![
            (vec![("TORN_QUOTA_LIMIT", "10001")], "TORN_QUOTA_LIMIT"),
            (vec![("TORN_QUOTA_LIMIT", "4294967295")], "TORN_QUOTA_LIMIT"),
            (
                vec![("TORN_QUOTA_USER_LIMITS", "7=40,8=30000000")],
                "TORN_QUOTA_USER_LIMITS",
            ),
            (
                vec![("TORN_QUOTA_WINDOW_MS", "86400001")],
                "TORN_QUOTA_WINDOW_MS",
            ),
            (
                vec![("TORN_QUOTA_WINDOW_MS", &huge)],
                "TORN_QUOTA_WINDOW_MS",
            ),
            (
                vec![("TORN_QUOTA_REDIS_COMMAND_TIMEOUT_MS", &huge)],
                "TORN_QUOTA_REDIS_COMMAND_TIMEOUT_MS",
            ),
            (
                vec![("TORN_QUOTA_REDIS_CONNECT_TIMEOUT_MS", &huge)],
                "TORN_QUOTA_REDIS_CONNECT_TIMEOUT_MS",
            ),
            (
                vec![("TORN_QUOTA_RECONNECT_INTERVAL_MS", &huge)],
                "TORN_QUOTA_RECONNECT_INTERVAL_MS",
            ),
            (
                vec![("TORN_QUOTA_LEGACY_WINDOW_MS", &huge)],
                "TORN_QUOTA_LEGACY_WINDOW_MS",
            ),
            (
                vec![("TORN_QUOTA_REDIS_CONNECTIONS", "65")],
                "TORN_QUOTA_REDIS_CONNECTIONS",
            ),
            (
                vec![
                    ("TORN_QUOTA_ON_REDIS_DOWN", "local"),
                    ("TORN_QUOTA_WORKERS", "101"),
                ],
                "TORN_QUOTA_WORKERS",
            ),
            (
                vec![
                    ("TORN_QUOTA_USER_LIMITS", "7=3"),
                    ("TORN_QUOTA_ON_REDIS_DOWN", "local"),
                    ("TORN_QUOTA_WORKERS", "4"),
                ],
                "TORN_QUOTA_WORKERS",
            ),
        ];
        for (pairs, setting) in cases {
            let err = from_sources(None, env(&pairs)).unwrap_err();
            assert_eq!(setting_of(err), setting, "{pairs:?}");
        }
        // The bounds themselves are fine.
        let c = from_sources(
            None,
            env(&[
                ("TORN_QUOTA_LIMIT", "10000"),
                ("TORN_QUOTA_WINDOW_MS", "86400000"),
                ("TORN_QUOTA_USER_LIMITS", "7=3"),
                ("TORN_QUOTA_REDIS_CONNECTIONS", "64"),
                ("TORN_QUOTA_ON_REDIS_DOWN", "local"),
                ("TORN_QUOTA_WORKERS", "3"),
            ]),
        )
        .unwrap();
        assert_eq!((c.limit().get(), c.window_ms()), (10_000, 86_400_000));
    }

    /// Issue 12 item 10: an id given twice in TORN_QUOTA_USER_LIMITS is refused, by name.
    #[test]
    #[cfg(feature = "settings")]
    fn a_user_given_twice_is_refused() {
        let err =
            from_sources(None, env(&[("TORN_QUOTA_USER_LIMITS", "7=40, 8=5, 7=50")])).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("user 7 is given twice"), "{msg}");
        assert_eq!(setting_of(err), "TORN_QUOTA_USER_LIMITS");
    }

    #[test]
    #[cfg(feature = "settings")]
    fn cluster_urls_parse_validate_and_stay_redacted() {
        let c = from_sources(None, env(&[])).unwrap();
        assert!(!c.is_redis_cluster());
        assert!(c.redis_cluster_urls().is_empty());
        let c = from_sources(
            None,
            env(&[(
                "REDIS_CLUSTER_URLS",
                " redis://:s3cret-pass@10.0.0.1:7000 , redis://10.0.0.2:7001,",
            )]),
        )
        .unwrap();
        assert!(c.is_redis_cluster());
        assert_eq!(
            c.redis_cluster_urls(),
            [
                "redis://:s3cret-pass@10.0.0.1:7000",
                "redis://10.0.0.2:7001"
            ]
        );
        assert!(!format!("{c:?}").contains("s3cret"), "{c:?}");
        let target = c.redis_target_redacted();
        assert!(
            !target.contains("s3cret") && target.contains("10.0.0.2:7001"),
            "{target}"
        );
        for bad in [
            "",
            " , ",
            "not a url",
            "http://10.0.0.1:7000",
            "unix:///tmp/redis.sock",
            "redis://10.0.0.1:7000,redis://:s3cret@[bad",
        ] {
            let err = from_sources(None, env(&[("REDIS_CLUSTER_URLS", bad)])).unwrap_err();
            let message = err.to_string();
            assert!(!message.contains("s3cret"), "{message}");
            assert_eq!(setting_of(err), "REDIS_CLUSTER_URLS", "for {bad:?}");
        }
    }

    #[test]
    #[cfg(feature = "settings")]
    fn cluster_urls_read_from_a_toml_list() {
        let dir = std::env::temp_dir().join(format!("tq-config-cluster-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("quota.toml");
        std::fs::write(
            &path,
            "REDIS_CLUSTER_URLS = [\"redis://10.0.0.1:7000\", \"redis://10.0.0.2:7000\"]\n",
        )
        .unwrap();
        let c = from_sources(Some(&path), env(&[])).unwrap();
        std::fs::remove_dir_all(&dir).ok();
        assert_eq!(
            c.redis_cluster_urls(),
            ["redis://10.0.0.1:7000", "redis://10.0.0.2:7000"]
        );
    }

    #[test]
    fn builder_rejects_a_zero_window() {
        let err = RateLimitConfig::builder()
            .window(Duration::ZERO)
            .build()
            .unwrap_err();
        assert_eq!(setting_of(err), "TORN_QUOTA_WINDOW_MS");
    }

    #[test]
    #[cfg(feature = "settings")]
    fn env_wins_over_the_file_and_overrides_parse() {
        let dir = std::env::temp_dir().join(format!("tq-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("quota.toml");
        std::fs::write(
            &path,
            "TORN_QUOTA_LIMIT = 80\nTORN_QUOTA_WINDOW_MS = 1000\n\
             [TORN_QUOTA_USER_LIMITS]\n7 = 40\n",
        )
        .unwrap();
        let c = from_sources(Some(&path), env(&[("TORN_QUOTA_LIMIT", "90")])).unwrap();
        assert_eq!(c.limit().get(), 90);
        assert_eq!(c.window_ms(), 1000);
        assert_eq!(c.limit_for(TornUserId::new(7)).get(), 40);
        assert_eq!(c.limit_for(TornUserId::new(8)).get(), 90);

        std::fs::write(&path, "TORN_QUOTA_LIMT = 80\n").unwrap();
        let err = from_sources(Some(&path), env(&[])).unwrap_err();
        assert!(
            std::error::Error::source(&err)
                .unwrap()
                .to_string()
                .contains("TORN_QUOTA_LIMT"),
            "{err:?}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
