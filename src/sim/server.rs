//! The HTTP side: one handler for every path, so that the checks run in Torn's order before
//! any routing.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State as AxumState};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use rand::Rng;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::config::SimConfig;
use super::fault::{Fault, dropped_body};
use super::routes::route;
use super::state::{Answer, State, Verdict};
use crate::torn::TornErrorCode;

/// What the server and the handle share.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) state: Mutex<State>,
    pub(crate) config: SimConfig,
    pub(crate) stop: CancellationToken,
}

impl Shared {
    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        // The state stays consistent between statements, so a panicking holder leaves
        // nothing half-done worth refusing service over.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Waits, or returns early when the simulator stops, so a slow answer never holds up
    /// shutdown.
    async fn pause(&self, d: Duration) {
        if d.is_zero() {
            return;
        }
        tokio::select! {
            () = tokio::time::sleep(d) => {}
            () = self.stop.cancelled() => {}
        }
    }

    fn arrival_delay(&self) -> Duration {
        let jitter = self.config.latency_jitter();
        let extra = if jitter.is_zero() {
            Duration::ZERO
        } else {
            let nanos = u64::try_from(jitter.as_nanos()).unwrap_or(u64::MAX);
            Duration::from_nanos(rand::rng().random_range(0..=nanos))
        };
        let c = &self.config;
        let stalled = c.stall_share() > 0.0 && rand::rng().random_bool(c.stall_share());
        let stall = if stalled { c.stall() } else { Duration::ZERO };
        c.latency() + extra + stall
    }
}

/// Serves `shared` on `listener` until `shared.stop` is cancelled.
pub(crate) fn spawn(listener: TcpListener, shared: Arc<Shared>) -> JoinHandle<()> {
    let stop = shared.stop.clone();
    let app = Router::new()
        .fallback(handle)
        .with_state(shared)
        .into_make_service_with_connect_info::<SocketAddr>();
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app)
            .with_graceful_shutdown(stop.cancelled_owned())
            .await
        {
            tracing::warn!(error = %e, "sim: the server stopped on an error");
        }
    })
}

async fn handle(
    AxumState(sim): AxumState<Arc<Shared>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    req: Request,
) -> Response {
    let path = req.uri().path().to_owned();
    let query: Vec<(String, String)> = req
        .uri()
        .query()
        .map(|q| {
            url::form_urlencoded::parse(q.as_bytes())
                .into_owned()
                .collect()
        })
        .unwrap_or_default();
    let header_key = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, key) = v.trim().split_once(' ')?;
            scheme
                .eq_ignore_ascii_case("ApiKey")
                .then(|| key.trim().to_owned())
        })
        .filter(|k| !k.is_empty());
    let query_key = query
        .iter()
        .find(|(k, _)| k == "key")
        .map(|(_, v)| v.clone())
        .filter(|k| !k.is_empty());
    // A key in the URL leaks into proxies' and servers' logs, even when the header carries
    // it too: count it whenever it is there.
    let key_in_url = query_key.is_some();
    let key = header_key.or(query_key);

    // Torn counts a request when it arrives: the latency comes before the count.
    sim.pause(sim.arrival_delay()).await;
    let verdict = {
        let mut state = sim.lock();
        // Read under the lock, so the times each window records never go backwards.
        let now = Instant::now();
        state.decide(&sim.config, peer.ip(), key.as_deref(), key_in_url, now)
    };
    let (key, fault) = match verdict {
        Verdict::Refused(code) => return torn_error(code),
        Verdict::Admitted { key, fault } => (key, fault),
    };
    let mut malformed = false;
    let mut no_user = false;
    match fault {
        None => {}
        Some(Fault::Code(n)) => {
            sim.lock().record_answer(Answer::Error(n));
            return torn_error(TornErrorCode::new(n));
        }
        Some(Fault::Slow(d)) => sim.pause(d).await,
        Some(Fault::Http(status)) => {
            sim.lock().record_answer(Answer::Broken);
            let status = StatusCode::from_u16(status)
                .ok()
                .filter(|s| (200..600).contains(&s.as_u16()))
                .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            return (status, status.to_string()).into_response();
        }
        Some(Fault::MalformedJson) => malformed = true,
        Some(Fault::DropConnection) => {
            sim.lock().record_answer(Answer::Broken);
            return json_response(dropped_body());
        }
        Some(Fault::Challenge) => {
            sim.lock().record_answer(Answer::Broken);
            let mut response = (
                StatusCode::FORBIDDEN,
                "<!DOCTYPE html><title>Just a moment...</title>",
            )
                .into_response();
            response
                .headers_mut()
                .insert("cf-mitigated", HeaderValue::from_static("challenge"));
            return response;
        }
        Some(Fault::KeyInfoWithoutUser) => no_user = true,
    }
    let (body, answer) = match route(&path, &query, &key) {
        Ok(mut data) => {
            if no_user && let Some(info) = data.get_mut("info").and_then(Value::as_object_mut) {
                info.remove("user");
            }
            (data, Answer::Ok)
        }
        Err(code) => (error_body(code), Answer::Error(code.get())),
    };
    if malformed {
        sim.lock().record_answer(Answer::Broken);
        let text = body.to_string();
        // An object cut anywhere before its closing brace is never valid JSON.
        let mut cut = text.len() / 2;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        return json_response(Body::from(text[..cut].to_owned()));
    }
    sim.lock().record_answer(answer);
    json_response(Body::from(body.to_string()))
}

fn error_body(code: TornErrorCode) -> Value {
    json!({ "error": { "code": code.get(), "error": code.text() } })
}

/// Torn's error answer: HTTP 200 with the code and its text.
fn torn_error(code: TornErrorCode) -> Response {
    json_response(Body::from(error_body(code).to_string()))
}

fn json_response(body: Body) -> Response {
    let mut response = Response::new(body);
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}
