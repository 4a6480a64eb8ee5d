//! The bearer token on every route, when `TORN_QUOTA_SERVE_TOKEN` is set. The status page
//! alone also takes it as `?token=T`: a browser opening the page cannot send a header (the
//! page then sends it as a bearer for `/status` and strips it from the address bar).

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::header::AUTHORIZATION;
use axum::middleware::Next;
use axum::response::Response;

use super::Shared;
use super::proxy::torn_error;

/// The header that carries the token when `Authorization` carries the Torn key.
pub(crate) const TOKEN_HEADER: &str = "x-torn-quota-token";

/// Lets the request through when no token is set or it presents the token, as
/// `Authorization: Bearer T` or `X-Torn-Quota-Token: T` (or `?token=T` on the status page
/// only); else 401, Torn-shaped, sending nothing on.
pub(crate) async fn require_token(
    State(shared): State<Arc<Shared>>,
    request: Request,
    next: Next,
) -> Response {
    let Some(token) = shared.config.token() else {
        return next.run(request).await;
    };
    let headers = request.headers();
    let bearer = headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, rest) = v.trim().split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
        });
    let own = headers
        .get(TOKEN_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::trim);
    let page = matches!(request.uri().path(), "/__torn_quota" | "/__torn_quota/");
    // Only the page: anywhere else a token in the query would end up in proxies' and
    // servers' access logs for no gain, since scripts can send headers.
    let query = page.then(|| request.uri().query()).flatten().and_then(|q| {
        url::form_urlencoded::parse(q.as_bytes())
            .find(|(name, _)| name == "token")
            .map(|(_, v)| zeroize::Zeroizing::new(v.into_owned()))
    });
    let from_query = query.as_deref().map(|t| t.trim());
    if bearer
        .into_iter()
        .chain(own)
        .chain(from_query)
        .any(|t| token.matches(t))
    {
        return next.run(request).await;
    }
    shared.metrics.call("unauthorized");
    torn_error(
        axum::http::StatusCode::UNAUTHORIZED,
        0,
        "gateway token missing or wrong: send Authorization: Bearer <token> or \
         X-Torn-Quota-Token: <token>",
    )
}
