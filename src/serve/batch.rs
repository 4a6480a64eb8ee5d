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
//! Each line is sent as soon as its request and every one before it are answered, so a
//! slow request holds back only the lines after it. A client that goes away stops the
//! batch: nothing more is sent, the requests in flight finish and count.

use std::convert::Infallible;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_util::sync::{CancellationToken, DropGuard};

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
    let mut slots: Vec<Option<Result<Value, RequestError>>> = Vec::with_capacity(paths.len());
    // `positions[i]`: where the batch's request `i` stands in the body's list.
    let mut positions = Vec::new();
    let mut requests = Vec::new();
    for (at, path) in paths.iter().enumerate() {
        let checked = match check_path(path) {
            Ok(_) if keys.iter().any(|k| path.contains(k.expose())) => Err(RequestError {
                code: None,
                message: "not sent: the path carries an api key; keys go in keys".into(),
            }),
            Ok(p) => {
                requests
                    .push(BatchRequest::new(p.strip_prefix("v2/").unwrap_or(p)).priority(priority));
                positions.push(at);
                slots.push(None);
                continue;
            }
            Err(e) => Err(RequestError {
                code: None,
                message: format!("not sent: {e}"),
            }),
        };
        slots.push(Some(checked));
    }
    let (tx, mut events) = mpsc::unbounded_channel();
    let cancel = CancellationToken::new();
    let results = tx.clone();
    let handler = handler.cancel_on(cancel.clone()).on_result(move |i, r| {
        let _ = results.send(Event::Answered(positions[i], r.clone()));
    });
    let runner = Arc::clone(&shared);
    tokio::spawn(async move {
        let done = match handler.run(requests, pool).await {
            Ok(outcome) => {
                record(&runner, &outcome.stats);
                Ok(())
            }
            Err(e) => Err(e.to_string()),
        };
        // The handler (and with it the hook's sender) goes first, so `Done` is the last event.
        drop(handler);
        let _ = tx.send(Event::Done(done));
    });
    // The first event decides the status: a batch that fails as a whole (no usable key)
    // does so before any request is answered, and still gets its 503.
    let first = events.recv().await;
    if let Some(Event::Done(Err(e))) = &first {
        return bad(
            StatusCode::SERVICE_UNAVAILABLE,
            "requests",
            &format!("the batch failed: {e}"),
        );
    }
    shared.metrics.call("batch");
    let lines = Lines {
        slots,
        next: 0,
        first,
        events,
        // The body goes when the client does: the batch then sends nothing more.
        _stop: cancel.drop_guard(),
    };
    (
        [(CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(lines.into_stream()),
    )
        .into_response()
}

/// Counts the batch's sends in the gateway's figures, per owner.
fn record(shared: &Shared, stats: &crate::batch::BatchStats) {
    for (owner, s) in &stats.owners {
        let owner = crate::identity::TornUserId::new(*owner);
        for i in 0..s.sent {
            let code = (i < s.rate_limited).then_some(5);
            shared.stats.record(Some(owner), code);
        }
    }
}

/// What the running batch tells the response.
enum Event {
    /// The request at this place in the body is answered.
    Answered(usize, Result<Value, RequestError>),
    /// The batch ended: every answer is in (or it failed as a whole, with why).
    Done(Result<(), String>),
}

/// The answer's lines, in input order: each goes as soon as it and every one before it
/// are answered.
struct Lines {
    slots: Vec<Option<Result<Value, RequestError>>>,
    next: usize,
    first: Option<Event>,
    events: mpsc::UnboundedReceiver<Event>,
    _stop: DropGuard,
}

impl Lines {
    /// The lines ready now, in order, as one chunk.
    fn ready(&mut self) -> String {
        let mut out = String::new();
        while let Some(Some(result)) = self.slots.get_mut(self.next).map(Option::take) {
            out.push_str(&line(self.next, &result));
            self.next += 1;
        }
        out
    }

    /// Whatever is still missing once the batch ended (none, unless it failed).
    fn rest(&mut self, why: &str) -> String {
        let mut out = String::new();
        for index in self.next..self.slots.len() {
            let result = self.slots[index].take().unwrap_or_else(|| {
                Err(RequestError {
                    code: None,
                    message: why.to_owned(),
                })
            });
            out.push_str(&line(index, &result));
        }
        self.next = self.slots.len();
        out
    }

    fn into_stream(self) -> impl futures_util::Stream<Item = Result<String, Infallible>> {
        futures_util::stream::unfold(Some(self), |state| async move {
            let mut lines = state?;
            loop {
                let event = match lines.first.take() {
                    Some(e) => Some(e),
                    None => lines.events.recv().await,
                };
                let chunk = match event {
                    Some(Event::Answered(at, result)) => {
                        if let Some(slot) = lines.slots.get_mut(at) {
                            *slot = Some(result);
                        }
                        lines.ready()
                    }
                    Some(Event::Done(done)) => {
                        let mut out = lines.ready();
                        out.push_str(&lines.rest(match &done {
                            Ok(()) => "no result",
                            Err(e) => e,
                        }));
                        return Some((Ok(out), None));
                    }
                    None => {
                        let out = lines.rest("no result");
                        return Some((Ok(out), None));
                    }
                };
                if !chunk.is_empty() {
                    return Some((Ok(chunk), Some(lines)));
                }
            }
        })
    }
}

/// One JSON line, as `torn-quota batch` writes them.
fn line(index: usize, result: &Result<Value, RequestError>) -> String {
    let mut out = result_line(index, result).to_string();
    out.push('\n');
    out
}
