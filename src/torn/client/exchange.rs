//! One HTTP exchange with Torn on units already taken: the key in the `Authorization`
//! header, the ticket settled when an answer comes, and the answer sorted into data, a
//! Torn error, or an HTTP failure.

use std::fmt;
use std::sync::Mutex;

use reqwest::StatusCode;
use reqwest::header::{AUTHORIZATION, HeaderValue, USER_AGENT};
use serde_json::Value;
use tokio::time::Instant;
use zeroize::Zeroizing;

use super::retry::{Failure, least_time_left};
use super::wire::torn_error;
use super::{Boxed, TornClient, lock};
use crate::error::{Error, Result, Source};
use crate::gate::{Reach, Ticket};
use crate::identity::{ApiKey, TornUserId};
use crate::limiter::Wait;
use crate::torn::TornErrorCode;

impl Reach {
    /// Whether the request of an exchange reached Torn, from what the exchange returned.
    fn of(result: &Result<Value, Failure>) -> Self {
        let Err(f) = result else {
            return Self::Answered;
        };
        match &f.error {
            Error::Http { source, .. } => match source.downcast_ref::<reqwest::Error>() {
                Some(e) if e.is_connect() => Self::NotSent,
                // Timed out or cut while sending or waiting: Torn may have counted it.
                Some(e) if e.is_timeout() || e.is_request() => Self::Unknown,
                // A status, a body or JSON that came back: an answer.
                _ => Self::Answered,
            },
            _ => Self::Answered,
        }
    }
}

/// An HTTP status that is not Torn's usual 200, as an error source.
#[derive(Debug)]
pub(super) struct HttpStatus(StatusCode);

impl fmt::Display for HttpStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "torn answered http {}", self.0)
    }
}

impl std::error::Error for HttpStatus {}

impl TornClient {
    /// Sends one v2 request on quota the caller already took from the
    /// [gate](Self::gate) (the batch handler takes a chunk of owner and IP units as one
    /// ticket, and settles or gives it back when its requests are done). Once, without
    /// retries and without taking quota: the caller re-queues, since another attempt needs
    /// another unit.
    ///
    /// Everything else is as for [`get`](Self::get): a disabled or held key fails at once,
    /// and Torn's codes act by class (code 5 penalizes the owner, 8 and 9 pause the client).
    /// A unit taken in advance must be sent at once, or Torn's count drifts from ours: while
    /// the client is paused the call fails at once with the code that paused it.
    ///
    /// The request timeout counts from this call, so the caller's units must have been
    /// taken just before it.
    pub async fn send_prepaid(&self, key: &ApiKey, owner: TornUserId, path: &str) -> Result<Value> {
        let deadline = Instant::now() + self.inner.config.request_timeout();
        self.send_on_ticket(key, owner, path, deadline).await.0
    }

    /// [`send_prepaid`](Self::send_prepaid) on a ticket that runs out at `deadline` (its
    /// [`Ticket::deadline`]), and whether the request reached Torn, for the caller's
    /// ticket. When too little is left by the time it would leave (a key re-check ran
    /// first, the runtime was busy), nothing is sent: [`Error::Deadline`] and
    /// [`Reach::NotSent`], so that the caller gives the ticket back and sends again on a
    /// fresh one.
    pub(crate) async fn send_on_ticket(
        &self,
        key: &ApiKey,
        owner: TornUserId,
        path: &str,
        deadline: Instant,
    ) -> (Result<Value>, Reach) {
        let url = match self.v2_url(key, path) {
            Ok(url) => url,
            Err(e) => return (Err(e), Reach::NotSent),
        };
        let wait = Wait::forever();
        let reach = Mutex::new(Reach::NotSent);
        // Boxed: the futures inside would make every caller's future large.
        let call: Boxed<'_, Result<Value>> = Box::pin(async {
            self.admit_key(key, &wait).await?;
            let now = Wait::forever().until(Instant::now());
            self.wait_out_pause(Some(owner), &now).await?;
            let least = least_time_left(self.inner.config.request_timeout());
            if deadline.saturating_duration_since(Instant::now()) < least {
                tracing::debug!(
                    owner = owner.get(),
                    "too little of the ticket's time is left to send on: not sent"
                );
                return Err(Error::Deadline);
            }
            let result = self
                .exchange(key, Some(owner), &url, "torn request", None, deadline)
                .await;
            *lock(&reach) = Reach::of(&result);
            result.map_err(|f| f.error)
        });
        let result = self.guarded(&wait, call).await;
        let reach = *lock(&reach);
        (result, reach)
    }

    /// Sends once on units already taken (the call's ticket, or the caller's when `None`),
    /// and reads the answer, inside a span that names the owner (never the key), counting
    /// the answer by Torn's code. The request is over by `deadline` (its ticket's), however
    /// late it leaves.
    pub(super) async fn exchange(
        &self,
        key: &ApiKey,
        owner: Option<TornUserId>,
        url: &url::Url,
        operation: &'static str,
        ticket: Option<Ticket>,
        deadline: Instant,
    ) -> Result<Value, Failure> {
        use tracing::Instrument as _;
        let span = tracing::info_span!(
            "torn_request",
            owner = owner.map(TornUserId::get),
            operation
        );
        let result = self
            .exchange_once(key, owner, url, operation, ticket, deadline)
            .instrument(span)
            .await;
        crate::telemetry::torn_answer(match &result {
            Ok(_) => Some(Ok(())),
            Err(Failure {
                error: Error::Torn { code, .. },
                ..
            }) => Some(Err(code.get())),
            Err(_) => None,
        });
        result
    }

    pub(super) async fn exchange_once(
        &self,
        key: &ApiKey,
        owner: Option<TornUserId>,
        url: &url::Url,
        operation: &'static str,
        ticket: Option<Ticket>,
        deadline: Instant,
    ) -> Result<Value, Failure> {
        tracing::debug!(
            owner = owner.map(TornUserId::get),
            path = url.path(),
            "torn request"
        );
        let http_err = |e: reqwest::Error| Error::Http {
            operation,
            source: Source::new(e.without_url()),
        };
        let response = match self.send(key, url, deadline).await {
            Ok(r) => r,
            Err(e) => {
                // A request that never connected never reached Torn: its units go back.
                // Any other failure may have reached it: the units keep their records.
                if let Some(ticket) = ticket.filter(|_| e.is_connect()) {
                    self.inner.gate.give_back(ticket).await;
                }
                return Err(Failure::transient(http_err(e)));
            }
        };
        // An answer came, so Torn has counted the request: from now its units count for one
        // window, not for the whole timeout.
        if let Some(ticket) = ticket {
            self.inner.gate.settle(ticket).await;
        }
        let status = response.status();
        if status == StatusCode::TOO_MANY_REQUESTS {
            // Torn's front refuses this address: the same as code 8, for every call.
            self.pause_all(TornErrorCode::IP_BLOCK, owner);
            return Err(Failure::fatal(Error::Http {
                operation,
                source: Source::new(HttpStatus(status)),
            }));
        }
        if status == StatusCode::FORBIDDEN && is_challenge(response.headers()) {
            tracing::warn!(
                owner = owner.map(TornUserId::get),
                operation,
                "cloudflare challenged the request: not retried (check TORN_API_USER_AGENT)"
            );
            return Err(Failure::fatal(Error::Challenge { operation }));
        }
        if !status.is_success() {
            let error = Error::Http {
                operation,
                source: Source::new(HttpStatus(status)),
            };
            let transient = status.is_server_error() || status == StatusCode::REQUEST_TIMEOUT;
            return Err(Failure {
                error,
                retry: transient,
            });
        }
        let bytes = response
            .bytes()
            .await
            .map_err(|e| Failure::transient(http_err(e)))?;
        let body: Value = serde_json::from_slice(&bytes).map_err(|e| {
            Failure::transient(Error::TornAnswer {
                operation,
                source: Source::new(e),
            })
        })?;
        match torn_error(&body) {
            None => Ok(body),
            Some((code, message)) => Err(self.on_torn_error(key, owner, code, message).await),
        }
    }

    /// One GET with the key in its header, timed out at `deadline`: the request timeout
    /// counts from the grant, not from now (see [`Ticket::deadline`]).
    pub(super) async fn send(
        &self,
        key: &ApiKey,
        url: &url::Url,
        deadline: Instant,
    ) -> reqwest::Result<reqwest::Response> {
        let header = Zeroizing::new(format!("ApiKey {}", key.expose()));
        let mut auth =
            HeaderValue::from_str(&header).expect("a key is ASCII alphanumerics, a valid header");
        // Sensitive values print as "Sensitive" in any Debug output of the request.
        auth.set_sensitive(true);
        self.inner
            .http
            .get(url.clone())
            .header(AUTHORIZATION, auth)
            .header(USER_AGENT, self.inner.user_agent.clone())
            // What is left of the ticket's timeout; the callers checked that enough is.
            .timeout(deadline.saturating_duration_since(Instant::now()))
            .send()
            .await
    }
}

/// Whether Cloudflare marked the answer as a challenge (`cf-mitigated: challenge`).
pub(super) fn is_challenge(headers: &reqwest::header::HeaderMap) -> bool {
    headers
        .get_all("cf-mitigated")
        .iter()
        .any(|v| v.as_bytes().eq_ignore_ascii_case(b"challenge"))
}
