//! Callers' paths, checked before anything is sent (the key goes only in the header), and
//! the URLs built from them (v2 under `/v2/`, v1 as given, `TORN_API_COMMENT` added).

use super::TornClient;
use crate::error::{Error, Result};
use crate::identity::ApiKey;

pub(super) fn bad_path(reason: &str) -> Error {
    Error::InvalidArgument {
        name: "path",
        reason: reason.to_owned(),
    }
}

/// Checks a caller's path (with an optional query) and returns it without a leading `/`.
/// The key goes only in the header: a path that carries one is refused, and the refusal
/// never repeats the path.
pub(super) fn checked_path<'a>(raw: &'a str, key: &ApiKey) -> Result<&'a str> {
    let path = check_path(raw)?;
    if path.contains(key.expose()) {
        return Err(bad_path(
            "carries the api key; the key goes only in the Authorization header",
        ));
    }
    Ok(path)
}

/// Checks a Torn path as [`TornClient::get`] does before it sends anything, and returns
/// it without a leading `/`: not empty, no whitespace, control characters, `#` or `\`, not
/// a URL, no `.` or `..` segment, no `key=` parameter (the key goes only in the
/// `Authorization` header). The error is [`Error::InvalidArgument`] named `path`, and
/// never repeats the path (it may carry a key). A caller with many requests (a batch)
/// checks them all up front with it, so a bad one fails alone and spends no quota.
///
/// ```
/// use torn_quota::torn::check_path;
///
/// assert_eq!(check_path("/user/4/basic").unwrap(), "user/4/basic");
/// assert!(check_path("user/basic?key=AbCdEfGh12345678").is_err());
/// assert!(check_path("user/../key/info").is_err());
/// ```
pub fn check_path(raw: &str) -> Result<&str> {
    let path = raw.trim().trim_start_matches('/');
    if path.is_empty() {
        return Err(bad_path("is empty"));
    }
    if path
        .chars()
        .any(|c| c.is_whitespace() || c.is_control() || matches!(c, '#' | '\\'))
    {
        return Err(bad_path("has whitespace, control characters, '#' or '\\'"));
    }
    if path.contains("://") {
        return Err(bad_path("must be a path, not a URL"));
    }
    let (segments, query) = path.split_once('?').unwrap_or((path, ""));
    if segments.split('/').any(|s| s == ".." || s == ".") {
        return Err(bad_path("must not have '.' or '..' segments"));
    }
    if url::form_urlencoded::parse(query.as_bytes())
        .any(|(name, _)| name.trim().eq_ignore_ascii_case("key"))
    {
        return Err(bad_path(
            "carries a key= parameter; the key goes only in the Authorization header",
        ));
    }
    Ok(path)
}

impl TornClient {
    pub(super) fn v2_url(&self, key: &ApiKey, path: &str) -> Result<url::Url> {
        let path = checked_path(path, key)?;
        let path = path.strip_prefix("v2/").unwrap_or(path);
        self.url(&format!("v2/{path}"))
    }

    pub(super) fn url(&self, path: &str) -> Result<url::Url> {
        let mut url = url::Url::parse(&format!("{}/{path}", self.inner.base))
            .map_err(|e| bad_path(&format!("does not make a valid URL ({e})")))?;
        // `TORN_API_COMMENT` names the tool in the owner's usage log, on every call; a
        // caller's own comment wins.
        if let Some(comment) = self.inner.config.comment()
            && !url.query_pairs().any(|(k, _)| k == "comment")
        {
            url.query_pairs_mut().append_pair("comment", comment);
        }
        Ok(url)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> ApiKey {
        ApiKey::new("AbCdEfGh12345678").unwrap()
    }

    #[test]
    fn paths_are_checked_without_echoing_them() {
        let k = key();
        for ok in [
            "user/4/basic",
            "/user/basic?striptags=false",
            "v2/key/info",
            "faction/chain?from=1&to=2",
        ] {
            assert!(checked_path(ok, &k).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "/",
            "user/basic?key=AbCdEfGh12345678",
            "user/basic?striptags=false&KEY=x",
            "user/AbCdEfGh12345678/basic",
            "user/../key/info",
            "https://evil.example/user",
            "user/basic#frag",
            "user/ basic",
        ] {
            let err = checked_path(bad, &k).unwrap_err();
            let shown = format!("{err} {err:?}");
            assert!(!shown.contains("AbCdEfGh"), "{shown}");
            assert!(matches!(err, Error::InvalidArgument { name: "path", .. }));
        }
    }
}
