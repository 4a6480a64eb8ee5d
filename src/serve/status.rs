//! `/__torn_quota/status` (JSON), `/__torn_quota/` (the page that shows it) and
//! `/__torn_quota/healthz`.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::http::header::{CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::Shared;

/// The status page: one self-contained file with inline script and style that fetches
/// `status` from its own origin.
const PAGE: &str = include_str!("page/index.html");

/// Inline script and style of the page itself, requests to its own origin only, nothing
/// else (no frames, no forms, no other origin's scripts).
const PAGE_CSP: &str = "default-src 'none'; script-src 'unsafe-inline'; \
    style-src 'unsafe-inline'; connect-src 'self'; img-src 'self' data:; \
    base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// The status page.
pub(crate) async fn page() -> Response {
    (
        [
            (CONTENT_TYPE, "text/html; charset=utf-8"),
            (CONTENT_SECURITY_POLICY, PAGE_CSP),
            (CACHE_CONTROL, "no-store"),
        ],
        PAGE,
    )
        .into_response()
}

/// This gateway and the quotas it serves:
///
/// ```json
/// {"mode":"per-user","degraded":false,"egress_id":null,"window_ms":60000,
///  "ip":{"used":3,"limit":1000,"remaining":997},
///  "owners":[{"owner":4,"used":3,"limit":100,"remaining":97,"calls":5,"code5":0}],
///  "rpm":[0,5],"errors":{"2":1},"uptime_ms":61234}
/// ```
///
/// `owners` lists each owner this process answered a call for in the last window:
/// `used`/`limit`/`remaining` from the limiter (every process's units), `calls`/`code5`
/// this process's calls and code-5 answers in that window (cache hits count as calls).
/// `rpm` is calls per minute through this gateway, oldest first, up to 15 minutes; `errors`
/// counts the Torn error codes it answered in the last 15 minutes (its own code 5s and
/// refusals included). A bucket Redis could not read shows zeros and `degraded` true.
pub(crate) async fn status(State(shared): State<Arc<Shared>>) -> Response {
    let gate = shared.client.gate();
    let mut degraded = shared.client.limiter().degraded_for().is_some();
    let ip = if let Ok(s) = gate.ip_status().await {
        degraded |= s.degraded;
        json!({ "used": s.used, "limit": s.limit, "remaining": s.remaining })
    } else {
        degraded = true;
        json!({ "used": 0, "limit": shared.client.config().ip_limit().get(), "remaining": 0 })
    };
    let mut owners = Vec::new();
    for seen in shared.stats.owners() {
        let (used, limit, remaining) =
            if let Ok(s) = shared.client.limiter().status(seen.owner).await {
                degraded |= s.degraded;
                (s.used, s.limit, s.remaining)
            } else {
                degraded = true;
                (0, gate.limit_for(seen.owner).get(), 0)
            };
        owners.push(json!({
            "owner": seen.owner.get(),
            "used": used,
            "limit": limit,
            "remaining": remaining,
            "calls": seen.calls,
            "code5": seen.code5,
        }));
    }
    let errors: serde_json::Map<String, Value> = shared
        .stats
        .errors()
        .into_iter()
        .map(|(code, n)| (code.to_string(), Value::from(n)))
        .collect();
    let body = json!({
        "mode": gate.mode().as_str(),
        "degraded": degraded,
        "egress_id": shared.client.config().egress_id(),
        "window_ms": gate.window().as_millis() as u64,
        "ip": ip,
        "owners": owners,
        "rpm": shared.stats.rpm(),
        "errors": errors,
        "uptime_ms": shared.stats.uptime().as_millis() as u64,
    });
    (
        [
            (CONTENT_TYPE, "application/json"),
            (CACHE_CONTROL, "no-store"),
        ],
        body.to_string(),
    )
        .into_response()
}

/// 200 `{"ok":true}` while the limiter's Redis answers, else 503 with why.
pub(crate) async fn healthz(State(shared): State<Arc<Shared>>) -> Response {
    match shared.client.limiter().ping().await {
        Ok(()) => (
            [(CONTENT_TYPE, "application/json")],
            json!({ "ok": true }).to_string(),
        )
            .into_response(),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            [(CONTENT_TYPE, "application/json")],
            json!({ "ok": false, "error": e.to_string() }).to_string(),
        )
            .into_response(),
    }
}
