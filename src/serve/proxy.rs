//! The proxied call: the key from `Authorization: ApiKey K` or `?key=K` (forwarded only in
//! the header, stripped from the query), the shared refused-key memo, the key's owner from
//! the vault when there is one, the answer cache and
//! the calls in flight, then the [`TornClient`](crate::torn::TornClient) with a deadline of
//! `X-Torn-Quota-Wait-Ms`. Every answer is Torn-shaped, so apps keep their error handling:
//!
//! | case | HTTP | body |
//! |---|---|---|
//! | Torn's data | 200 | as Torn sent it |
//! | Torn's error | 200 | as Torn sent it (`{"error":{"code":N,"error":"..."}}`) |
//! | no key | 200 | code 1, nothing sent |
//! | a key that is not 16 letters and digits | 200 | code 2, nothing sent |
//! | a key Torn refused (2, 10, 13, 18), in any gateway on this Redis, within its hold | 200 | that code, nothing sent |
//! | no quota within the wait | 200 | code 5, `Retry-After` (s, rounded up) and `X-Torn-Quota-Retry-After-Ms` |
//! | a path the client refuses | 400 | code 0, why |
//! | Torn unreachable or failing | 502 | code 17, why |
//! | Redis unavailable | 503 | code 0, why |
//!
//! Neither the key nor the query (which may carry it) appears in a log line or an error.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::header::{AUTHORIZATION, CONTENT_TYPE, RETRY_AFTER};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use tokio::time::Instant;

use super::Shared;
use super::cache::{Answer, Source};
use super::owner;
use super::refused::{self, FirstSend};
use crate::error::Error;
use crate::identity::TornUserId;
use crate::identity::{ApiKey, KeyHash};
use crate::limiter::{Decision, Priority, Request as QuotaRequest, Wait};
use crate::torn::TornErrorCode;

/// How long a call may wait for quota, in ms; at most `TORN_QUOTA_SERVE_MAX_WAIT_MS`.
pub const WAIT_HEADER: &str = "x-torn-quota-wait-ms";
/// `interactive` (the default; may use the owner's whole limit) or `batch` (leaves the
/// reserve to interactive calls).
pub const PRIORITY_HEADER: &str = "x-torn-quota-priority";
/// On answers: the owner's units left now, across every process.
pub const REMAINING_HEADER: &str = "x-torn-quota-remaining";
/// On a code 5 of the gateway's: the wait in ms before the same call is admitted.
pub const RETRY_AFTER_MS_HEADER: &str = "x-torn-quota-retry-after-ms";
/// On answers with data: `miss`, `shared` (an identical call in flight) or `hit`.
pub const CACHE_HEADER: &str = "x-torn-quota-cache";

/// Torn's error body with `code` and `text`, at `status`.
pub(crate) fn torn_error(status: StatusCode, code: u16, text: &str) -> Response {
    (
        status,
        [(CONTENT_TYPE, HeaderValue::from_static("application/json"))],
        json!({ "error": { "code": code, "error": text } }).to_string(),
    )
        .into_response()
}

/// Why a call got no data: Torn's word, or ours.
#[derive(Debug)]
enum Failure {
    /// Torn's error code and text.
    Torn { code: u16, text: String },
    /// No quota before the deadline.
    NoQuota,
    /// The path is refused before sending.
    BadPath(String),
    /// Torn could not be reached, or failed.
    Upstream(String),
    /// Redis could not be reached.
    Unavailable(String),
}

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        match e {
            Error::Torn { code, message } => Self::Torn {
                code: code.get(),
                text: message,
            },
            Error::Cancelled | Error::Deadline => Self::NoQuota,
            e @ (Error::InvalidArgument { .. } | Error::CostExceedsLimit { .. }) => {
                Self::BadPath(e.to_string())
            }
            e @ (Error::Http { .. } | Error::TornAnswer { .. } | Error::Challenge { .. }) => {
                Self::Upstream(chain(&e))
            }
            e => Self::Unavailable(chain(&e)),
        }
    }
}

/// An error and its causes on one line. None of the crate's errors carries a key or a URL.
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let more = cause.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = cause.source();
    }
    text
}

/// The Torn key of a request: `Authorization: ApiKey K`, else `?key=K`. `None` when
/// neither is there (or is empty).
fn presented_key(headers: &HeaderMap, query: &str) -> Option<String> {
    let from_header = headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, rest) = v.trim().split_once(' ')?;
            scheme
                .eq_ignore_ascii_case("apikey")
                .then(|| rest.trim().to_owned())
        })
        .filter(|k| !k.is_empty());
    from_header.or_else(|| {
        url::form_urlencoded::parse(query.as_bytes())
            .find(|(name, _)| name.trim().eq_ignore_ascii_case("key"))
            .map(|(_, v)| v.trim().to_owned())
            .filter(|k| !k.is_empty())
    })
}

/// The query without any `key` parameter: the key goes to Torn only in the header.
fn strip_key(query: &str) -> String {
    let kept: Vec<(String, String)> = url::form_urlencoded::parse(query.as_bytes())
        .filter(|(name, _)| !name.trim().eq_ignore_ascii_case("key"))
        .map(|(n, v)| (n.into_owned(), v.into_owned()))
        .collect();
    url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(kept)
        .finish()
}

/// The call's priority from `X-Torn-Quota-Priority` (`default` when absent or unknown).
pub(crate) fn priority(headers: &HeaderMap, default: Priority) -> Priority {
    match headers
        .get(PRIORITY_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim().to_ascii_lowercase())
        .as_deref()
    {
        Some("interactive") => Priority::High,
        Some("batch") => Priority::Low,
        _ => default,
    }
}

/// The wait this call may spend on quota: the header's, capped at the configured maximum.
fn wait_for(headers: &HeaderMap, max: Duration) -> Duration {
    headers
        .get(WAIT_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map_or(max, |ms| Duration::from_millis(ms).min(max))
}

/// Answers every request that no other route takes: a Torn call.
pub(crate) async fn proxy(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return torn_error(
            StatusCode::METHOD_NOT_ALLOWED,
            0,
            "the gateway forwards GET requests only",
        );
    }
    let headers = request.headers();
    let path = request.uri().path().trim_start_matches('/').to_owned();
    let query = request.uri().query().unwrap_or("");
    let Some(raw_key) = presented_key(headers, query) else {
        shared.stats.record(None, Some(1));
        shared.metrics.call("no_key");
        return torn_error(StatusCode::OK, 1, TornErrorCode::new(1).text());
    };
    let Ok(key) = ApiKey::new(&raw_key) else {
        shared.stats.record(None, Some(2));
        shared.metrics.call("malformed_key");
        return torn_error(StatusCode::OK, 2, TornErrorCode::INCORRECT_KEY.text());
    };
    drop(raw_key);
    let query = strip_key(query);
    let forwarded = if query.is_empty() {
        path.clone()
    } else {
        format!("{path}?{query}")
    };
    let bypass = url::form_urlencoded::parse(query.as_bytes()).any(|(n, _)| n == "timestamp");
    let wait = wait_for(headers, shared.config.max_wait());
    let priority = priority(headers, Priority::High);
    let v2 = path == "v2" || path.starts_with("v2/");
    let hash = key.hash();
    let client = &shared.client;

    if let Some(code) = refused::recall(client.limiter(), &hash).await {
        shared.stats.record(None, Some(code.get()));
        shared.metrics.call("refused_key");
        return torn_error(StatusCode::OK, code.get(), code.text());
    }

    owner::learn(client, shared.vault.as_ref(), &key).await;
    // A key no one knows may be bad: one gateway on this Redis sends it, the others wait.
    let mut claim = None;
    if client.known_owner(&key).await.is_none() {
        match refused::claim_first_send(client.limiter(), &hash, Instant::now() + wait).await {
            FirstSend::Send(held) => claim = held,
            FirstSend::Refused(code) => {
                shared.stats.record(None, Some(code.get()));
                shared.metrics.call("refused_key");
                return torn_error(StatusCode::OK, code.get(), code.text());
            }
        }
    }
    let response = answer(&shared, &key, &hash, &forwarded, bypass, v2, wait, priority).await;
    if let Some(claim) = claim {
        claim.release(client.limiter()).await;
    }
    response
}

/// The call's answer: cached, shared, or fetched through the client.
#[allow(clippy::too_many_arguments)] // the call's parts, parsed once by `proxy`
async fn answer(
    shared: &Shared,
    key: &ApiKey,
    hash: &KeyHash,
    forwarded: &str,
    bypass: bool,
    v2: bool,
    wait: Duration,
    priority: Priority,
) -> Response {
    let client = &shared.client;
    let opts = Wait::forever()
        .until(Instant::now() + wait)
        .priority(priority);
    let fetch = async {
        let body = if v2 {
            client.get_with(key, forwarded, &opts).await
        } else {
            client.get_v1_with(key, forwarded, &[], &opts).await
        };
        let owner = client.known_owner(key).await.map(|i| i.owner);
        match body {
            Ok(body) => Ok(Answer { body, owner }),
            Err(e) => Err((Failure::from(e), owner)),
        }
    };
    let (result, source) = Box::pin(shared.answers.get(hash, forwarded, bypass, fetch)).await;
    match result {
        Ok(answer) => {
            shared.stats.record(answer.owner, None);
            shared.metrics.call(match source {
                Source::Hit => "cache_hit",
                Source::Shared => "shared",
                Source::Miss => "ok",
            });
            let mut response = (
                [(CONTENT_TYPE, HeaderValue::from_static("application/json"))],
                answer.body.to_string(),
            )
                .into_response();
            let h = response.headers_mut();
            h.insert(CACHE_HEADER, HeaderValue::from_static(source.as_str()));
            if let Some(owner) = answer.owner {
                remaining(shared, owner, h).await;
            }
            response
        }
        Err(failed) => {
            let (failure, owner) = &*failed;
            failure_response(shared, key, failure, *owner, priority).await
        }
    }
}

/// Adds `X-Torn-Quota-Remaining` for `owner`, when the limiter answers.
async fn remaining(shared: &Shared, owner: TornUserId, headers: &mut HeaderMap) {
    if let Ok(status) = shared.client.limiter().status(owner).await {
        headers.insert(REMAINING_HEADER, HeaderValue::from(status.remaining));
    }
}

async fn failure_response(
    shared: &Shared,
    key: &ApiKey,
    failure: &Failure,
    owner: Option<TornUserId>,
    priority: Priority,
) -> Response {
    match failure {
        Failure::Torn { code, text } => {
            let code = *code;
            shared.stats.record(owner, Some(code));
            shared.metrics.call("torn_error");
            if refused::is_refusal(code) {
                let hold = refused::hold_for(code, shared.client.config().key_recheck());
                refused::remember(shared.client.limiter(), &key.hash(), code, hold).await;
            }
            let mut response = torn_error(StatusCode::OK, code, text);
            if code == 5 {
                retry_headers(shared, owner, priority, response.headers_mut()).await;
            }
            if let Some(owner) = owner {
                remaining(shared, owner, response.headers_mut()).await;
            }
            response
        }
        Failure::NoQuota => {
            shared.stats.record(owner, Some(5));
            shared.metrics.call("no_quota");
            let mut response = torn_error(
                StatusCode::OK,
                5,
                "Too many requests (the gateway found no quota within X-Torn-Quota-Wait-Ms)",
            );
            let h = response.headers_mut();
            retry_headers(shared, owner, priority, h).await;
            if let Some(owner) = owner {
                remaining(shared, owner, h).await;
            }
            response
        }
        Failure::BadPath(why) => {
            shared.metrics.call("bad_request");
            torn_error(StatusCode::BAD_REQUEST, 0, why)
        }
        Failure::Upstream(why) => {
            shared.stats.record(owner, Some(17));
            shared.metrics.call("upstream_error");
            torn_error(StatusCode::BAD_GATEWAY, 17, why)
        }
        Failure::Unavailable(why) => {
            shared.metrics.call("unavailable");
            torn_error(StatusCode::SERVICE_UNAVAILABLE, 0, why)
        }
    }
}

/// `Retry-After` (whole seconds, rounded up, at least 1) and `X-Torn-Quota-Retry-After-Ms`:
/// the owner's bucket is asked for one unit, which it refuses with the exact wait (nothing
/// is recorded then); should a unit have freed meanwhile, it is given back at once and the
/// wait is 0. When the owner is unknown or Redis fails, one second.
async fn retry_headers(
    shared: &Shared,
    owner: Option<TornUserId>,
    priority: Priority,
    headers: &mut HeaderMap,
) {
    let limiter = shared.client.limiter();
    let mut wait = Duration::from_secs(1);
    if let Some(owner) = owner {
        let ask = QuotaRequest::new(1).priority(priority);
        match limiter.try_acquire_with(owner, &ask).await {
            Ok(Decision::Granted(grant)) => {
                let _ = limiter.refund(grant).await;
                wait = Duration::ZERO;
            }
            Ok(limited) => wait = limited.retry_after(),
            Err(_) => {}
        }
    }
    let ms = wait.as_millis() as u64;
    headers.insert(RETRY_AFTER, HeaderValue::from(ms.div_ceil(1000).max(1)));
    headers.insert(RETRY_AFTER_MS_HEADER, HeaderValue::from(ms));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_from_header_or_query_and_stripped() {
        let mut h = HeaderMap::new();
        assert_eq!(
            presented_key(&h, "selections=basic&key=AbC"),
            Some("AbC".into())
        );
        h.insert(AUTHORIZATION, HeaderValue::from_static("ApiKey Hdr"));
        assert_eq!(presented_key(&h, "key=AbC"), Some("Hdr".into()));
        assert_eq!(
            strip_key("selections=basic&KEY=x&from=1"),
            "selections=basic&from=1"
        );
        assert_eq!(presented_key(&HeaderMap::new(), "key="), None);
    }

    #[test]
    fn wait_is_capped() {
        let mut h = HeaderMap::new();
        let max = Duration::from_secs(30);
        assert_eq!(wait_for(&h, max), max);
        h.insert(WAIT_HEADER, HeaderValue::from_static("250"));
        assert_eq!(wait_for(&h, max), Duration::from_millis(250));
        h.insert(WAIT_HEADER, HeaderValue::from_static("999999"));
        assert_eq!(wait_for(&h, max), max);
    }
}
