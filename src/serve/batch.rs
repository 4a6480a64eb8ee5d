//! `POST /__torn_quota/batch`: the batch handler over the gateway's client, for apps that
//! cannot link the crate. The body is JSON, `{"requests":[paths],"keys":[keys]}` or
//! `{"requests":[paths],"account":"<uuid>"}` (the account's live keys in the vault); the
//! answer is JSON Lines in input order, as `torn-quota batch` writes them:
//! `{"index":i,"ok":true,"data":{...}}` or `{"index":i,"ok":false,"error":{"code":N,"message":"..."}}`.
//!
//! A body over [`MAX_BATCH_BODY`] bytes is refused with 413; a malformed one with 400
//! naming the field (`{"error":{"field":"keys[2]","message":"..."}}`, never repeating a
//! key). A path the client would refuse fails alone, in its line, unsent.
//!
//! The lines are written once the batch is done (the batch handler answers all at once);
//! the body is sent as it is produced.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::Shared;
use super::proxy::priority;
use crate::batch::{BatchConfig, BatchHandler, BatchRequest, PoolKey, RequestError, result_line};
use crate::identity::ApiKey;
use crate::limiter::Priority;
use crate::torn::check_path;
use crate::vault::AppUserId;

/// The largest batch body accepted, in bytes (1 MiB).
pub const MAX_BATCH_BODY: usize = 1 << 20;
/// The most requests one batch may carry.
pub const MAX_BATCH_REQUESTS: usize = 10_000;

/// 400 (or another status) naming the field at fault.
fn bad(status: StatusCode, field: &str, message: &str) -> Response {
    (
        status,
        [(CONTENT_TYPE, "application/json")],
        json!({ "error": { "field": field, "message": message } }).to_string(),
    )
        .into_response()
}

fn boxed(status: StatusCode, field: &str, message: &str) -> Box<Response> {
    Box::new(bad(status, field, message))
}

/// Where the batch's keys come from.
enum Pool {
    Keys(Vec<ApiKey>),
    Account(AppUserId),
}

/// The body's fields, checked; the response to send when they are not right.
fn parse(body: &[u8]) -> Result<(Vec<String>, Pool), Box<Response>> {
    let value: Value = serde_json::from_slice(body).map_err(|e| {
        boxed(
            StatusCode::BAD_REQUEST,
            "body",
            &format!("is not json: {e}"),
        )
    })?;
    let Some(object) = value.as_object() else {
        return Err(boxed(
            StatusCode::BAD_REQUEST,
            "body",
            "must be a json object",
        ));
    };
    if let Some(other) = object
        .keys()
        .find(|k| !matches!(k.as_str(), "requests" | "keys" | "account"))
    {
        return Err(boxed(
            StatusCode::BAD_REQUEST,
            other,
            "is not a field of a batch (requests, keys, account)",
        ));
    }
    let Some(Value::Array(raw)) = object.get("requests") else {
        return Err(boxed(
            StatusCode::BAD_REQUEST,
            "requests",
            "must be an array of torn v2 paths",
        ));
    };
    if raw.is_empty() || raw.len() > MAX_BATCH_REQUESTS {
        return Err(boxed(
            StatusCode::BAD_REQUEST,
            "requests",
            &format!(
                "must hold 1 to {MAX_BATCH_REQUESTS} paths, got {}",
                raw.len()
            ),
        ));
    }
    let mut requests = Vec::with_capacity(raw.len());
    for (i, r) in raw.iter().enumerate() {
        let Some(s) = r.as_str() else {
            return Err(boxed(
                StatusCode::BAD_REQUEST,
                &format!("requests[{i}]"),
                "must be a string",
            ));
        };
        requests.push(s.to_owned());
    }
    let pool = parse_pool(object)?;
    Ok((requests, pool))
}

/// The `keys` or `account` field.
fn parse_pool(object: &serde_json::Map<String, Value>) -> Result<Pool, Box<Response>> {
    let pool = match (object.get("keys"), object.get("account")) {
        (Some(_), Some(_)) | (None, None) => {
            return Err(boxed(
                StatusCode::BAD_REQUEST,
                "keys",
                "give exactly one of keys (an array of torn api keys) or account (a uuid)",
            ));
        }
        (Some(Value::Array(raw)), None) => {
            if raw.is_empty() {
                return Err(boxed(StatusCode::BAD_REQUEST, "keys", "must not be empty"));
            }
            let mut keys = Vec::with_capacity(raw.len());
            for (i, k) in raw.iter().enumerate() {
                match k.as_str().map(ApiKey::new) {
                    Some(Ok(key)) => keys.push(key),
                    // ApiKey's error never repeats the key.
                    Some(Err(e)) => {
                        return Err(boxed(
                            StatusCode::BAD_REQUEST,
                            &format!("keys[{i}]"),
                            &e.to_string(),
                        ));
                    }
                    None => {
                        return Err(boxed(
                            StatusCode::BAD_REQUEST,
                            &format!("keys[{i}]"),
                            "must be a string",
                        ));
                    }
                }
            }
            Pool::Keys(keys)
        }
        (Some(_), None) => {
            return Err(boxed(
                StatusCode::BAD_REQUEST,
                "keys",
                "must be an array of torn api keys",
            ));
        }
        (None, Some(account)) => match account.as_str().map(str::parse::<AppUserId>) {
            Some(Ok(user)) => Pool::Account(user),
            _ => {
                return Err(boxed(
                    StatusCode::BAD_REQUEST,
                    "account",
                    "must be the account's uuid",
                ));
            }
        },
    };
    Ok(pool)
}

/// The batch handler and its keys: those given, or the account's live keys in the vault.
async fn pool_keys(
    shared: &Shared,
    pool: Pool,
) -> Result<(BatchHandler, Vec<PoolKey>), Box<Response>> {
    let client = shared.client.clone();
    let mut handler = BatchHandler::new(client, BatchConfig::default());
    let pool: Vec<PoolKey> = match pool {
        Pool::Keys(keys) => keys.into_iter().map(PoolKey::from).collect(),
        Pool::Account(user) => {
            let Some(vault) = &shared.vault else {
                return Err(boxed(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "account",
                    "this gateway has no key vault (set DATABASE_URL and \
                     TORN_QUOTA_ENCRYPTION_KEY)",
                ));
            };
            let keys = match vault.live_keys(&[user]).await {
                Ok(keys) => keys,
                Err(e) => {
                    return Err(boxed(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "account",
                        &format!("the vault failed: {e}"),
                    ));
                }
            };
            if keys.is_empty() {
                return Err(boxed(
                    StatusCode::BAD_REQUEST,
                    "account",
                    "has no usable key in the vault",
                ));
            }
            handler = handler.disable_in_vault(vault.clone());
            keys.into_iter().map(PoolKey::from).collect()
        }
    };
    Ok((handler, pool))
}

/// Runs a batch; see the [module documentation](self).
pub(crate) async fn batch(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    let priority = priority(request.headers(), Priority::Low);
    let Ok(body) = axum::body::to_bytes(request.into_body(), MAX_BATCH_BODY).await else {
        return bad(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body",
            &format!("must be at most {MAX_BATCH_BODY} bytes"),
        );
    };
    let (paths, pool) = match parse(&body) {
        Ok(parsed) => parsed,
        Err(response) => return *response,
    };
    drop(body);
    let (handler, pool) = match pool_keys(&shared, pool).await {
        Ok(found) => found,
        Err(response) => return *response,
    };
    let keys: Vec<ApiKey> = pool.iter().map(|k| k.key().clone()).collect();
    let mut results: Vec<Option<Result<Value, RequestError>>> = Vec::with_capacity(paths.len());
    let mut requests = Vec::new();
    for path in &paths {
        let checked = match check_path(path) {
            Ok(_) if keys.iter().any(|k| path.contains(k.expose())) => Err(RequestError {
                code: None,
                message: "not sent: the path carries an api key; keys go in keys".into(),
            }),
            Ok(p) => {
                requests
                    .push(BatchRequest::new(p.strip_prefix("v2/").unwrap_or(p)).priority(priority));
                results.push(None);
                continue;
            }
            Err(e) => Err(RequestError {
                code: None,
                message: format!("not sent: {e}"),
            }),
        };
        results.push(Some(checked));
    }
    let outcome = match handler.run(requests, pool).await {
        Ok(o) => o,
        Err(e) => {
            return bad(
                StatusCode::SERVICE_UNAVAILABLE,
                "requests",
                &format!("the batch failed: {e}"),
            );
        }
    };
    for (owner, s) in &outcome.stats.owners {
        let owner = crate::identity::TornUserId::new(*owner);
        for i in 0..s.sent {
            let code = (i < s.rate_limited).then_some(5);
            shared.stats.record(Some(owner), code);
        }
    }
    let out = lines(results, outcome.results);
    shared.metrics.call("batch");
    ([(CONTENT_TYPE, "application/x-ndjson")], Body::from(out)).into_response()
}

/// The JSON Lines: the refused requests in their places, the batch's results between.
fn lines(
    results: Vec<Option<Result<Value, RequestError>>>,
    ran: Vec<Result<Value, RequestError>>,
) -> String {
    let mut ran = ran.into_iter();
    let mut out = String::new();
    for (index, slot) in results.into_iter().enumerate() {
        let result = slot.or_else(|| ran.next()).unwrap_or_else(|| {
            Err(RequestError {
                code: None,
                message: "no result".into(),
            })
        });
        out.push_str(&result_line(index, &result).to_string());
        out.push('\n');
    }
    out
}
