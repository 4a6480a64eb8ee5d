//! From [`Settings`] to the library's configurations, through their builders, which
//! validate: a setting left unset keeps the builder's default.

use crate::error::{Error, Result};
use crate::limiter::{OnRedisDown, RateLimitConfig};
#[cfg(feature = "vault")]
use crate::settings::Secret;
use crate::settings::{RedisDownPolicy, Settings};
use crate::torn::TornClientConfig;
#[cfg(feature = "vault")]
use crate::vault::{DatabaseConfig, Keyring, VaultConfig};

impl Settings {
    /// The limiter's configuration.
    pub fn rate_limit(&self) -> Result<RateLimitConfig> {
        let mut b = RateLimitConfig::builder();
        if let Some(v) = &self.redis_url {
            b = b.redis_url(v.expose());
        }
        if let Some(v) = &self.redis_cluster_urls {
            b = b.redis_cluster_urls(v.iter().map(|u| u.expose().to_owned()));
        }
        if let Some(v) = &self.torn_quota_redis_ca_file {
            b = b.redis_ca_file(v);
        }
        if let Some(v) = &self.torn_quota_redis_client_cert_file {
            b = b.redis_client_cert_file(v);
        }
        if let Some(v) = &self.torn_quota_redis_client_key_file {
            b = b.redis_client_key_file(v);
        }
        if let Some(v) = &self.redis_sentinel_urls {
            b = b.redis_sentinel_urls(v.iter().map(|u| u.expose().to_owned()));
        }
        if let Some(v) = &self.redis_sentinel_master {
            b = b.redis_sentinel_master(v);
        }
        if let Some(v) = &self.redis_sentinel_password {
            b = b.redis_sentinel_password(v.expose());
        }
        if let Some(v) = self.torn_quota_limit {
            b = b.limit(v);
        }
        if let Some(v) = self.torn_quota_window_ms {
            b = b.window(v);
        }
        for (user, limit) in self.torn_quota_user_limits.iter().flatten() {
            b = b.user_limit(*user, *limit);
        }
        if let Some(v) = &self.torn_quota_key_prefix {
            b = b.key_prefix(v);
        }
        if let Some(v) = self.torn_quota_log_decisions {
            b = b.log_decisions(v);
        }
        if let Some(v) = self.torn_quota_cleanup_interval_ms {
            b = b.cleanup_interval(v);
        }
        if let Some(v) = self.torn_quota_redis_connect_timeout_ms {
            b = b.connect_timeout(v);
        }
        if let Some(v) = self.torn_quota_redis_command_timeout_ms {
            b = b.command_timeout(v);
        }
        if let Some(v) = self.torn_quota_reconnect_interval_ms {
            b = b.reconnect_interval(v);
        }
        if let Some(v) = self.torn_quota_redis_connections {
            b = b.connections(v);
        }
        if let Some(v) = self.torn_quota_reserve {
            b = b.low_priority_reserve(v);
        }
        if let Some(v) = self.torn_quota_mode {
            b = b.mode(v);
        }
        if let Some(v) = self.torn_quota_rollout_percent {
            b = b.rollout_percent(v);
        }
        if let Some(v) = self.torn_quota_legacy_limit {
            b = b.legacy_limit(v);
        }
        if let Some(v) = self.torn_quota_legacy_window_ms {
            b = b.legacy_window(v);
        }
        if let Some(v) = self.torn_quota_legacy_cleanup_interval_ms {
            b = b.legacy_cleanup_interval(v);
        }
        // The worker count matters only to the local fallback, and is required by it.
        if self.torn_quota_on_redis_down == Some(RedisDownPolicy::Local) {
            let workers = self.torn_quota_workers.ok_or_else(|| Error::Config {
                setting: "TORN_QUOTA_WORKERS",
                reason: "required when TORN_QUOTA_ON_REDIS_DOWN=local: how many processes \
                         share each user's quota"
                    .into(),
            })?;
            b = b.on_redis_down(OnRedisDown::LocalFallback { workers });
        }
        b.build()
    }

    /// The Torn client's configuration.
    pub fn torn_client(&self) -> Result<TornClientConfig> {
        let mut b = TornClientConfig::builder();
        if let Some(v) = &self.torn_api_base_url {
            b = b.base_url(v);
        }
        if let Some(v) = &self.torn_api_user_agent {
            b = b.user_agent(v);
        }
        if let Some(v) = self.torn_api_timeout_ms {
            b = b.request_timeout(v);
        }
        if let Some(v) = self.torn_api_connect_timeout_ms {
            b = b.connect_timeout(v);
        }
        if let Some(v) = self.torn_api_max_attempts {
            b = b.max_attempts(v);
        }
        if let Some(v) = self.torn_api_retry_min_delay_ms {
            b = b.retry_min_delay(v);
        }
        if let Some(v) = self.torn_api_retry_max_delay_ms {
            b = b.retry_max_delay(v);
        }
        if let Some(v) = self.torn_api_pause_ms {
            b = b.pause(v);
        }
        if let Some(v) = self.torn_api_owner_cache_ttl_ms {
            b = b.owner_cache_ttl(v);
        }
        if let Some(v) = self.torn_api_owner_cache_capacity {
            b = b.owner_cache_capacity(v);
        }
        if let Some(v) = self.torn_quota_safety_margin_ms {
            b = b.safety_margin(v);
        }
        if let Some(v) = self.torn_quota_ip_limit {
            b = b.ip_limit(v);
        }
        if let Some(v) = self.torn_quota_ip_window_ms {
            b = b.ip_window(v);
        }
        if let Some(v) = self.torn_quota_owner_hold_ms {
            b = b.owner_hold(v);
        }
        if let Some(v) = self.torn_api_key_recheck_ms {
            b = b.key_recheck(v);
        }
        if let Some(v) = &self.torn_quota_egress_id {
            b = b.egress_id(v);
        }
        if let Some(v) = &self.torn_api_comment {
            b = b.comment(v);
        }
        b.build()
    }
}

// The vault's (and the legacy limiter's) database and keys: only with the vault.
#[cfg(feature = "vault")]
impl Settings {
    /// The database's configuration; `DATABASE_URL` is required.
    pub fn database(&self) -> Result<DatabaseConfig> {
        let url = self.database_url.as_ref().ok_or_else(|| Error::Config {
            setting: "DATABASE_URL",
            reason: "is not set; expected postgres://user:password@host:5432/database".into(),
        })?;
        let mut config = DatabaseConfig::new(url.expose())?;
        if let Some(v) = self.torn_quota_database_max_connections {
            config = config.max_connections(v);
        }
        if let Some(v) = self.torn_quota_database_acquire_timeout_ms {
            config = config.acquire_timeout(v);
        }
        if let Some(v) = self.torn_quota_database_statement_timeout_ms {
            config = config.statement_timeout((!v.is_zero()).then_some(v));
        }
        Ok(config)
    }

    /// The encryption keys; `TORN_QUOTA_ENCRYPTION_KEY` is required.
    pub fn keyring(&self) -> Result<Keyring> {
        Keyring::from_setting(self.torn_quota_encryption_key.as_ref().map(Secret::expose))
    }

    /// The vault's configuration: the database and the encryption keys.
    pub fn vault(&self) -> Result<VaultConfig> {
        Ok(VaultConfig {
            keyring: self.keyring()?,
            database: self.database()?,
        })
    }
}

#[cfg(feature = "serve")]
impl Settings {
    /// The gateway's configuration; `listen` (from `--listen`) wins over
    /// `TORN_QUOTA_LISTEN`.
    pub fn serve(&self, listen: Option<std::net::SocketAddr>) -> Result<crate::serve::ServeConfig> {
        let mut b = crate::serve::ServeConfig::builder();
        if let Some(addr) = listen.or(self.torn_quota_listen) {
            b = b.listen(addr);
        }
        if let Some(v) = self.torn_quota_serve_max_wait_ms {
            b = b.max_wait_ms(v.as_millis() as u64);
        }
        if let Some(v) = self.torn_quota_serve_cache_ms {
            b = b.cache_ms(v.as_millis() as u64);
        }
        b.token(
            self.torn_quota_serve_token
                .as_ref()
                .map(|t| t.expose().to_owned()),
        )
        .build()
    }
}
