//! TLS material for `rediss://`: a CA to trust instead of the public web roots, and a client
//! certificate and key for mutual TLS. Only the paths are kept; the files are read when the
//! store is built, so a missing file is an error naming its setting at start.

use std::path::{Path, PathBuf};

use crate::error::Result;

use super::invalid;

/// The files behind `TORN_QUOTA_REDIS_CA_FILE`, `TORN_QUOTA_REDIS_CLIENT_CERT_FILE` and
/// `TORN_QUOTA_REDIS_CLIENT_KEY_FILE`. All unset: the public web roots, no client
/// certificate.
#[derive(Debug, Clone, Default)]
pub(super) struct RedisTls {
    pub(super) ca: Option<PathBuf>,
    pub(super) client_cert: Option<PathBuf>,
    pub(super) client_key: Option<PathBuf>,
}

impl RedisTls {
    /// Whether any file is set (the default trust store and no client certificate when not).
    pub(super) fn is_set(&self) -> bool {
        self.ca.is_some() || self.client_cert.is_some() || self.client_key.is_some()
    }

    /// A client certificate needs its key and the other way round.
    pub(super) fn validate(&self) -> Result<()> {
        match (&self.client_cert, &self.client_key) {
            (Some(_), None) => Err(invalid(
                "TORN_QUOTA_REDIS_CLIENT_KEY_FILE",
                "is required with TORN_QUOTA_REDIS_CLIENT_CERT_FILE (mutual TLS needs both)".into(),
            )),
            (None, Some(_)) => Err(invalid(
                "TORN_QUOTA_REDIS_CLIENT_CERT_FILE",
                "is required with TORN_QUOTA_REDIS_CLIENT_KEY_FILE (mutual TLS needs both)".into(),
            )),
            _ => Ok(()),
        }
    }

    /// The certificates redis-rs takes, read from the files. A read error names the setting
    /// and the path (a path is no secret; the key's contents never appear).
    pub(super) fn certificates(&self) -> Result<redis::TlsCertificates> {
        let read = |setting: &'static str, path: &Path| {
            std::fs::read(path).map_err(|e| {
                invalid(
                    setting,
                    format!("cannot read tls file {}: {e}", path.display()),
                )
            })
        };
        let root_cert = match &self.ca {
            Some(p) => Some(read("TORN_QUOTA_REDIS_CA_FILE", p)?),
            None => None,
        };
        let client_tls = match (&self.client_cert, &self.client_key) {
            (Some(cert), Some(key)) => Some(redis::ClientTlsConfig {
                client_cert: read("TORN_QUOTA_REDIS_CLIENT_CERT_FILE", cert)?,
                client_key: read("TORN_QUOTA_REDIS_CLIENT_KEY_FILE", key)?,
            }),
            _ => None,
        };
        Ok(redis::TlsCertificates {
            client_tls,
            root_cert,
        })
    }
}
