//! [`RateLimitConfig`]: what the limiter enforces and how it reaches Redis, validated once at
//! start so that a bad value is a clear error naming its setting, never a surprise later.

mod builder;
mod mode;
mod on_redis_down;
mod redis_sentinel;
mod redis_tls;
mod redis_url;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::num::{NonZeroU32, NonZeroU64, NonZeroUsize};
use std::time::Duration;

use crate::error::Error;
use crate::limiter::TornUserId;

pub use builder::RateLimitConfigBuilder;
pub use mode::Mode;
pub use on_redis_down::OnRedisDown;
use redis_sentinel::RedisSentinel;
use redis_tls::RedisTls;
use redis_url::RedisUrl;

/// The most Redis connections one process opens (`TORN_QUOTA_REDIS_CONNECTIONS`): each
/// pipelines every call in flight, so more only cost Redis file descriptors.
pub const MAX_CONNECTIONS: usize = 64;

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
    journal: bool,
    cleanup_interval: Duration,
    redis_url: RedisUrl,
    redis_cluster_urls: Vec<RedisUrl>,
    redis_tls: RedisTls,
    redis_sentinel: RedisSentinel,
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
            journal: true,
            cleanup_interval: Duration::from_secs(60),
            redis_url: RedisUrl("redis://127.0.0.1:6379".to_owned()),
            redis_cluster_urls: Vec::new(),
            redis_tls: RedisTls::default(),
            redis_sentinel: RedisSentinel::default(),
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
    /// Whether the Redis backend keeps a journal of this process's grants (see
    /// [`RateLimitConfigBuilder::journal`]).
    pub fn journal(&self) -> bool {
        self.journal
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
        } else if self.is_redis_sentinel() {
            let urls: Vec<String> = self
                .redis_sentinel
                .urls
                .iter()
                .map(RedisUrl::redacted)
                .collect();
            format!(
                "sentinel {} master {}",
                urls.join(","),
                self.redis_sentinel.master.as_deref().unwrap_or_default()
            )
        } else {
            self.redis_url.redacted()
        }
    }
    /// The sentinels' URLs (`REDIS_SENTINEL_URLS`); empty when Redis is not behind
    /// Sentinel.
    pub fn redis_sentinel_urls(&self) -> Vec<&str> {
        self.redis_sentinel
            .urls
            .iter()
            .map(|u| u.0.as_str())
            .collect()
    }
    /// The service the sentinels watch (`REDIS_SENTINEL_MASTER`).
    pub fn redis_sentinel_master(&self) -> Option<&str> {
        self.redis_sentinel.master.as_deref()
    }
    /// Whether the store asks sentinels for its primary instead of using `REDIS_URL`.
    pub fn is_redis_sentinel(&self) -> bool {
        self.redis_sentinel.is_set()
    }
    /// The sentinels' password, for the store only.
    pub(crate) fn redis_sentinel_password(&self) -> Option<&str> {
        self.redis_sentinel.password.as_ref().map(|p| p.as_str())
    }
    /// The CA file trusted for `rediss://` instead of the public web roots
    /// (`TORN_QUOTA_REDIS_CA_FILE`).
    pub fn redis_ca_file(&self) -> Option<&std::path::Path> {
        self.redis_tls.ca.as_deref()
    }
    /// The TLS certificates read from the files, `None` when no file is set (the public
    /// web roots, no client certificate).
    pub(crate) fn redis_tls_certificates(
        &self,
    ) -> crate::error::Result<Option<redis::TlsCertificates>> {
        if self.redis_tls.is_set() {
            self.redis_tls.certificates().map(Some)
        } else {
            Ok(None)
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

fn invalid(setting: &'static str, reason: String) -> Error {
    Error::Config { setting, reason }
}
