//! [`Mode`]: which limiter enforces (`TORN_QUOTA_MODE`).

use crate::error::{Error, Result};

use super::invalid;

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
