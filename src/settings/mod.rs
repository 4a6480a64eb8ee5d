//! The one typed reader of settings for the whole tool: an optional TOML file whose keys are
//! the environment names, under the environment, which wins.
//!
//! [`Settings`] names every setting once, as a field; the library's configurations
//! ([`RateLimitConfig`](crate::RateLimitConfig), [`TornClientConfig`](crate::torn::TornClientConfig), [`DatabaseConfig`](crate::vault::DatabaseConfig),
//! [`VaultConfig`](crate::vault::VaultConfig)) take plain data through their builders and know no names but the ones
//! their validation reports. figment layers the two sources and extracts the struct, each
//! error with the path of the setting it is about; `deny_unknown_fields` refuses a name
//! nobody reads, because a typo must not silently leave a default in force. Values that are
//! secrets are wiped when dropped and never appear in an error.

mod convert;
mod de;
mod file;
mod from_env;
#[cfg(test)]
pub(crate) mod test_env;

use std::net::SocketAddr;
use std::num::{NonZeroU32, NonZeroU64, NonZeroUsize};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use figment::Figment;
use figment::providers::Serialized;
use serde::Deserialize;

use crate::TornUserId;
use crate::error::Result;
use crate::limiter::Mode;

pub use de::Secret;

/// The environment variable naming the settings file (`--config` on the command line).
pub const CONFIG_FILE: &str = "TORN_QUOTA_CONFIG";

/// What the limiter does when Redis is down (`TORN_QUOTA_ON_REDIS_DOWN`), before the worker
/// count that `local` needs is joined to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RedisDownPolicy {
    /// `fail`: return an error at once.
    Fail,
    /// `local`: decide in this process at `limit / TORN_QUOTA_WORKERS`.
    Local,
}

/// Every setting of torn-quota, read once at start. Each field is one setting, named as
/// the environment spells it (the field's name in capitals); `None` leaves the library's
/// default in force. The README's settings tables list exactly these names (a test checks).
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "SCREAMING_SNAKE_CASE")]
#[non_exhaustive]
pub struct Settings {
    // --- the limiter ---
    /// `REDIS_URL`: the Redis the limiter uses (default `redis://127.0.0.1:6379`).
    #[serde(deserialize_with = "de::secret_kept")]
    pub redis_url: Option<Secret>,
    /// `REDIS_CLUSTER_URLS`: Redis Cluster node URLs (comma-separated, or a TOML list); when
    /// set, used instead of `REDIS_URL`.
    #[serde(deserialize_with = "de::secret_list")]
    pub redis_cluster_urls: Option<Vec<Secret>>,
    /// `TORN_QUOTA_LIMIT`: units per window for a user without an override (default 100).
    #[serde(deserialize_with = "de::number")]
    pub torn_quota_limit: Option<NonZeroU32>,
    /// `TORN_QUOTA_WINDOW_MS`: the rolling window (default 60 000 ms).
    #[serde(deserialize_with = "de::millis")]
    pub torn_quota_window_ms: Option<Duration>,
    /// `TORN_QUOTA_USER_LIMITS`: per-user limits, `ID=LIMIT,...` or a TOML table.
    #[serde(deserialize_with = "de::user_limits")]
    pub torn_quota_user_limits: Option<Vec<(TornUserId, NonZeroU32)>>,
    /// `TORN_QUOTA_KEY_PREFIX`: the prefix of every Redis key (default `tq`).
    #[serde(deserialize_with = "de::text")]
    pub torn_quota_key_prefix: Option<String>,
    /// `TORN_QUOTA_LOG_DECISIONS`: log every decision (default false).
    #[serde(deserialize_with = "de::flag")]
    pub torn_quota_log_decisions: Option<bool>,
    /// `TORN_QUOTA_CLEANUP_INTERVAL_MS`: the in-memory sweep (default 60 000 ms).
    #[serde(deserialize_with = "de::millis")]
    pub torn_quota_cleanup_interval_ms: Option<Duration>,
    /// `TORN_QUOTA_REDIS_CONNECT_TIMEOUT_MS`: opening a Redis connection (default 500 ms).
    #[serde(deserialize_with = "de::millis")]
    pub torn_quota_redis_connect_timeout_ms: Option<Duration>,
    /// `TORN_QUOTA_REDIS_COMMAND_TIMEOUT_MS`: one Redis command (default 500 ms).
    #[serde(deserialize_with = "de::millis")]
    pub torn_quota_redis_command_timeout_ms: Option<Duration>,
    /// `TORN_QUOTA_RECONNECT_INTERVAL_MS`: how long Redis is skipped after a failure
    /// (default 1 000 ms).
    #[serde(deserialize_with = "de::millis")]
    pub torn_quota_reconnect_interval_ms: Option<Duration>,
    /// `TORN_QUOTA_REDIS_CONNECTIONS`: multiplexed Redis connections (default 2, at most 64).
    #[serde(deserialize_with = "de::number")]
    pub torn_quota_redis_connections: Option<NonZeroUsize>,
    /// `TORN_QUOTA_RESERVE`: units a low-priority call leaves to others (default 0).
    #[serde(deserialize_with = "de::number")]
    pub torn_quota_reserve: Option<u32>,
    /// `TORN_QUOTA_MODE`: `legacy`, `shadow` or `per-user` (default).
    #[serde(deserialize_with = "de::mode")]
    pub torn_quota_mode: Option<Mode>,
    /// `TORN_QUOTA_ROLLOUT_PERCENT`: the share of users the per-user limiter governs, 0–100.
    #[serde(deserialize_with = "de::percent")]
    pub torn_quota_rollout_percent: Option<u8>,
    /// `TORN_QUOTA_LEGACY_LIMIT`: the legacy limiter's limit per key hash (default 50).
    #[serde(deserialize_with = "de::number")]
    pub torn_quota_legacy_limit: Option<NonZeroU32>,
    /// `TORN_QUOTA_LEGACY_WINDOW_MS`: the legacy limiter's window (default 60 000 ms).
    #[serde(deserialize_with = "de::millis")]
    pub torn_quota_legacy_window_ms: Option<Duration>,
    /// `TORN_QUOTA_LEGACY_CLEANUP_INTERVAL_MS`: how often legacy rows expire (default
    /// 60 000 ms).
    #[serde(deserialize_with = "de::millis")]
    pub torn_quota_legacy_cleanup_interval_ms: Option<Duration>,
    /// `TORN_QUOTA_ON_REDIS_DOWN`: `fail` (default) or `local`.
    #[serde(deserialize_with = "de::redis_down")]
    pub torn_quota_on_redis_down: Option<RedisDownPolicy>,
    /// `TORN_QUOTA_WORKERS`: processes sharing each user's quota under `local`.
    #[serde(deserialize_with = "de::number")]
    pub torn_quota_workers: Option<NonZeroU32>,

    // --- the Torn client ---
    /// `TORN_API_BASE_URL`: Torn's address (default `https://api.torn.com`).
    #[serde(deserialize_with = "de::text")]
    pub torn_api_base_url: Option<String>,
    /// `TORN_API_USER_AGENT`: the `User-Agent` of every request.
    #[serde(deserialize_with = "de::text")]
    pub torn_api_user_agent: Option<String>,
    /// `TORN_API_TIMEOUT_MS`: one HTTP exchange (default 10 000 ms).
    #[serde(deserialize_with = "de::millis")]
    pub torn_api_timeout_ms: Option<Duration>,
    /// `TORN_API_CONNECT_TIMEOUT_MS`: opening a connection (default 3 000 ms).
    #[serde(deserialize_with = "de::millis")]
    pub torn_api_connect_timeout_ms: Option<Duration>,
    /// `TORN_API_MAX_ATTEMPTS`: attempts of a transiently failing call, 1 to 10 (default 3).
    #[serde(deserialize_with = "de::number")]
    pub torn_api_max_attempts: Option<u32>,
    /// `TORN_API_RETRY_MIN_DELAY_MS`: the first back-off delay (default 250 ms).
    #[serde(deserialize_with = "de::millis")]
    pub torn_api_retry_min_delay_ms: Option<Duration>,
    /// `TORN_API_RETRY_MAX_DELAY_MS`: the longest back-off delay (default 5 000 ms).
    #[serde(deserialize_with = "de::millis")]
    pub torn_api_retry_max_delay_ms: Option<Duration>,
    /// `TORN_API_PAUSE_MS`: the pause after codes 8 and 9 (default 60 000 ms).
    #[serde(deserialize_with = "de::millis")]
    pub torn_api_pause_ms: Option<Duration>,
    /// `TORN_API_OWNER_CACHE_TTL_MS`: how long a key's owner is remembered.
    #[serde(deserialize_with = "de::millis")]
    pub torn_api_owner_cache_ttl_ms: Option<Duration>,
    /// `TORN_API_OWNER_CACHE_CAPACITY`: how many keys' owners are remembered.
    #[serde(deserialize_with = "de::number")]
    pub torn_api_owner_cache_capacity: Option<NonZeroU64>,
    /// `TORN_QUOTA_SAFETY_MARGIN_MS`: added to every grant's provisional hold (default 0).
    #[serde(deserialize_with = "de::millis_or_zero")]
    pub torn_quota_safety_margin_ms: Option<Duration>,
    /// `TORN_QUOTA_IP_LIMIT`: requests per IP window (default 1 000).
    #[serde(deserialize_with = "de::number")]
    pub torn_quota_ip_limit: Option<NonZeroU32>,
    /// `TORN_QUOTA_IP_WINDOW_MS`: the IP window (default 60 000 ms).
    #[serde(deserialize_with = "de::millis")]
    pub torn_quota_ip_window_ms: Option<Duration>,
    /// `TORN_QUOTA_OWNER_HOLD_MS`: how long a code 5 holds the owner back (default 10 000 ms).
    #[serde(deserialize_with = "de::millis")]
    pub torn_quota_owner_hold_ms: Option<Duration>,
    /// `TORN_API_KEY_RECHECK_MS`: how long a key refused with 13 or 18 is parked.
    #[serde(deserialize_with = "de::millis")]
    pub torn_api_key_recheck_ms: Option<Duration>,
    /// `TORN_QUOTA_EGRESS_ID`: the address (or a name) this process sends from.
    #[serde(deserialize_with = "de::text")]
    pub torn_quota_egress_id: Option<String>,
    /// `TORN_API_COMMENT`: added to every call as `comment=`.
    #[serde(deserialize_with = "de::text")]
    pub torn_api_comment: Option<String>,

    // --- the vault ---
    /// `DATABASE_URL`: PostgreSQL (a secret: it may carry the password). Empty is unset.
    #[serde(deserialize_with = "de::secret")]
    pub database_url: Option<Secret>,
    /// `TORN_QUOTA_ENCRYPTION_KEY`: the vault's keys (a secret). Empty is unset.
    #[serde(deserialize_with = "de::secret")]
    pub torn_quota_encryption_key: Option<Secret>,
    /// `TORN_QUOTA_DATABASE_MAX_CONNECTIONS`: the pool's size (default 10).
    #[serde(deserialize_with = "de::number")]
    pub torn_quota_database_max_connections: Option<NonZeroU32>,
    /// `TORN_QUOTA_DATABASE_ACQUIRE_TIMEOUT_MS`: waiting for a connection (default 5 000 ms).
    #[serde(deserialize_with = "de::millis")]
    pub torn_quota_database_acquire_timeout_ms: Option<Duration>,
    /// `TORN_QUOTA_DATABASE_STATEMENT_TIMEOUT_MS`: one statement; 0 for no limit (default
    /// 30 000 ms).
    #[serde(deserialize_with = "de::millis_or_zero")]
    pub torn_quota_database_statement_timeout_ms: Option<Duration>,

    // --- the gateway (`torn-quota serve`) ---
    /// `TORN_QUOTA_LISTEN`: the gateway's address, e.g. `127.0.0.1:8080`.
    #[serde(deserialize_with = "de::address")]
    pub torn_quota_listen: Option<SocketAddr>,
    /// `TORN_QUOTA_SERVE_MAX_WAIT_MS`: the longest a gateway request waits for quota.
    #[serde(deserialize_with = "de::millis")]
    pub torn_quota_serve_max_wait_ms: Option<Duration>,
    /// `TORN_QUOTA_SERVE_CACHE_MS`: how long the gateway reuses an answer; 0 for never.
    #[serde(deserialize_with = "de::millis_or_zero")]
    pub torn_quota_serve_cache_ms: Option<Duration>,
    /// `TORN_QUOTA_SERVE_TOKEN`: the bearer token gateway callers present (a secret).
    #[serde(deserialize_with = "de::secret")]
    pub torn_quota_serve_token: Option<Secret>,

    // --- Redis over TLS, and behind Sentinel (docs/redis.md) ---
    /// `TORN_QUOTA_REDIS_CA_FILE`: a PEM CA trusted for `rediss://` instead of the public
    /// web roots.
    #[serde(deserialize_with = "de::path")]
    pub torn_quota_redis_ca_file: Option<PathBuf>,
    /// `TORN_QUOTA_REDIS_CLIENT_CERT_FILE`: the PEM client certificate for mutual TLS
    /// (with `TORN_QUOTA_REDIS_CLIENT_KEY_FILE`).
    #[serde(deserialize_with = "de::path")]
    pub torn_quota_redis_client_cert_file: Option<PathBuf>,
    /// `TORN_QUOTA_REDIS_CLIENT_KEY_FILE`: the PEM key of the client certificate.
    #[serde(deserialize_with = "de::path")]
    pub torn_quota_redis_client_key_file: Option<PathBuf>,
    /// `REDIS_SENTINEL_URLS`: the sentinels (comma-separated `redis://` or `rediss://`);
    /// when set, the store asks them for the primary instead of using `REDIS_URL`.
    #[serde(deserialize_with = "de::secret_list")]
    pub redis_sentinel_urls: Option<Vec<Secret>>,
    /// `REDIS_SENTINEL_MASTER`: the name of the service the sentinels watch.
    #[serde(deserialize_with = "de::text")]
    pub redis_sentinel_master: Option<String>,
    /// `REDIS_SENTINEL_PASSWORD`: the sentinels' own password (a secret).
    #[serde(deserialize_with = "de::secret")]
    pub redis_sentinel_password: Option<Secret>,
}

impl Settings {
    /// Every setting's name, as the environment and the file spell it, in field order;
    /// `TORN_QUOTA_CONFIG` (which names the file) is not one of them.
    pub fn names() -> &'static [&'static str] {
        static NAMES: OnceLock<&'static [&'static str]> = OnceLock::new();
        NAMES.get_or_init(de::field_names::<Self>)
    }

    /// Reads the process environment and the file `TORN_QUOTA_CONFIG` names, if set.
    pub fn from_env() -> Result<Self> {
        let file = std::env::var_os(CONFIG_FILE).map(PathBuf::from);
        Self::load(file.as_deref())
    }

    /// Reads `file` (when given) and the process environment, which wins.
    pub fn load(file: Option<&Path>) -> Result<Self> {
        Self::from_sources(file, |name| std::env::var(name).ok())
    }

    /// Reads `file` (when given), then `env` for each known name, which wins. `env` is
    /// injected so tests and embedding programs control it; other names in it are ignored.
    pub fn from_sources(file: Option<&Path>, env: impl Fn(&str) -> Option<String>) -> Result<Self> {
        let mut figment = Figment::new();
        if let Some(path) = file {
            figment = figment.merge(Serialized::defaults(file::read(path, Self::names())?));
        }
        let from_env: std::collections::BTreeMap<&str, Secret> = Self::names()
            .iter()
            .filter_map(|name| env(name).map(|v| (*name, Secret::new(v))))
            .collect();
        figment = figment.merge(Serialized::defaults(from_env));
        figment.extract().map_err(|e| de::to_error(&e, file))
    }
}
