//! Redis URLs: validated at build, and printed only with their passwords masked.

use crate::error::Result;

use super::invalid;

/// A Redis URL whose Debug hides the password, so a logged configuration leaks no secret.
#[derive(Clone)]
pub(super) struct RedisUrl(pub(super) String);

impl RedisUrl {
    /// The URL with every password replaced by `***`: the one in the user info, and the
    /// `pass` / `password` query parameters that `redis+unix://` URLs carry it in.
    pub(super) fn redacted(&self) -> String {
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

pub(super) fn validate_redis_url(raw: &str) -> Result<()> {
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
pub(super) fn validate_cluster_url(raw: &str) -> Result<()> {
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

/// One sentinel's URL: `redis://` or `rediss://` with a host. The message never repeats the
/// URL, which may hold a password.
pub(super) fn validate_sentinel_url(raw: &str) -> Result<()> {
    let url = url::Url::parse(raw).map_err(|e| {
        invalid(
            "REDIS_SENTINEL_URLS",
            format!("a sentinel URL is not a URL ({e}); expected e.g. redis://10.0.0.1:26379"),
        )
    })?;
    if !matches!(url.scheme(), "redis" | "rediss") {
        return Err(invalid(
            "REDIS_SENTINEL_URLS",
            format!(
                "a sentinel URL's scheme must be redis:// or rediss://, got '{}://'",
                url.scheme()
            ),
        ));
    }
    if url.host().is_none() {
        return Err(invalid(
            "REDIS_SENTINEL_URLS",
            "a sentinel URL has no host".into(),
        ));
    }
    Ok(())
}
