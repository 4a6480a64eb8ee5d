//! The `from_env` constructors of the library's configurations. They live here, beside the
//! one reader, so that the arrows run one way: settings knows the parts' builders, no part
//! knows settings (a library user without the `settings` feature builds them by hand).

use crate::error::Result;
use crate::limiter::RateLimitConfig;
use crate::settings::Settings;
#[cfg(feature = "torn")]
use crate::torn::TornClientConfig;
#[cfg(feature = "vault")]
use crate::vault::{DatabaseConfig, VaultConfig};

impl RateLimitConfig {
    /// Reads the settings once through [`Settings`]: the process environment over the TOML
    /// file that `TORN_QUOTA_CONFIG` names, when set.
    pub fn from_env() -> Result<Self> {
        Settings::from_env()?.rate_limit()
    }
}

#[cfg(feature = "torn")]
impl TornClientConfig {
    /// Reads the settings once through [`Settings`]: the process environment over the TOML
    /// file that `TORN_QUOTA_CONFIG` names, when set.
    pub fn from_env() -> Result<Self> {
        Settings::from_env()?.torn_client()
    }
}

#[cfg(feature = "vault")]
impl DatabaseConfig {
    /// Reads `DATABASE_URL` and the `TORN_QUOTA_DATABASE_*` settings once through
    /// [`Settings`]: the process environment over the TOML file that `TORN_QUOTA_CONFIG`
    /// names, when set.
    pub fn from_env() -> Result<Self> {
        Settings::from_env()?.database()
    }
}

#[cfg(feature = "vault")]
impl VaultConfig {
    /// Reads `DATABASE_URL`, `TORN_QUOTA_ENCRYPTION_KEY` and the `TORN_QUOTA_DATABASE_*`
    /// settings once through [`Settings`].
    pub fn from_env() -> Result<Self> {
        Settings::from_env()?.vault()
    }
}
