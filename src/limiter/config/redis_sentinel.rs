//! Redis behind Sentinel: the sentinels to ask, the name of the service they watch, and the
//! sentinels' own password.

use zeroize::Zeroizing;

use crate::error::Result;

use super::invalid;
use super::redis_url::{RedisUrl, validate_sentinel_url};

/// `REDIS_SENTINEL_URLS`, `REDIS_SENTINEL_MASTER` and `REDIS_SENTINEL_PASSWORD`. With no
/// sentinel the store uses `REDIS_URL` (or the cluster).
#[derive(Clone, Default)]
pub(super) struct RedisSentinel {
    pub(super) urls: Vec<RedisUrl>,
    pub(super) master: Option<String>,
    pub(super) password: Option<Zeroizing<String>>,
}

impl std::fmt::Debug for RedisSentinel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisSentinel")
            .field("urls", &self.urls)
            .field("master", &self.master)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .finish()
    }
}

impl RedisSentinel {
    pub(super) fn is_set(&self) -> bool {
        !self.urls.is_empty()
    }

    /// Sentinels need the service's name; a name without sentinels is a typo'd setup.
    pub(super) fn validate(&self) -> Result<()> {
        for url in &self.urls {
            validate_sentinel_url(&url.0)?;
        }
        match (self.urls.is_empty(), &self.master) {
            (false, None) => Err(invalid(
                "REDIS_SENTINEL_MASTER",
                "is required with REDIS_SENTINEL_URLS: the name of the service the sentinels \
                 watch (e.g. mymaster)"
                    .into(),
            )),
            (false, Some(m)) if m.is_empty() => {
                Err(invalid("REDIS_SENTINEL_MASTER", "must not be empty".into()))
            }
            (true, Some(_)) => Err(invalid(
                "REDIS_SENTINEL_URLS",
                "is required with REDIS_SENTINEL_MASTER: the sentinels to ask for its primary"
                    .into(),
            )),
            _ => Ok(()),
        }
    }
}
