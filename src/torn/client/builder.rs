//! [`TornClientBuilder`]: a client assembled from injected parts (an IP limiter, a gate, a
//! shutdown token, a wall clock, an HTTP client) or from the configuration.

use std::sync::{Arc, Mutex};

use reqwest::header::HeaderValue;
use tokio_util::sync::CancellationToken;

use super::blocks::BLOCK_TTL;
use super::{Inner, SystemWallClock, TornClient, WallClock};
use crate::error::{Error, Result, Source};
use crate::gate::QuotaGate;
use crate::limiter::Limiter;
use crate::torn::config::TornClientConfig;

/// Builds a [`TornClient`] with parts injected: an IP limiter, a shutdown token, a wall
/// clock, an HTTP client.
#[derive(Debug)]
#[must_use]
pub struct TornClientBuilder {
    limiter: Limiter,
    config: TornClientConfig,
    gate: Option<QuotaGate>,
    ip: Option<Limiter>,
    shutdown: Option<CancellationToken>,
    wall: Option<Arc<dyn WallClock>>,
    http: Option<reqwest::Client>,
}

impl TornClientBuilder {
    /// Nothing injected yet: everything else is built from `limiter` and `config`.
    pub(super) fn new(limiter: Limiter, config: TornClientConfig) -> Self {
        Self {
            limiter,
            config,
            gate: None,
            ip: None,
            shutdown: None,
            wall: None,
            http: None,
        }
    }

    /// The per-IP limiter, instead of the one built from the owner limiter: the same backend
    /// (Redis keys under its prefix + `:ip`; in memory, on the system clock), with the
    /// configured IP limit and window. The client uses one bucket of it, user id 0.
    pub fn ip_limiter(mut self, limiter: Limiter) -> Self {
        self.ip = Some(limiter);
        self
    }
    /// The quota gate every call takes its quota through, instead of one built from the
    /// limiter and the configuration (say, one over a
    /// [`RolloutLimiter`](crate::rollout::RolloutLimiter) with its legacy database). Its
    /// per-user limiter replaces the builder's.
    pub fn gate(mut self, gate: QuotaGate) -> Self {
        self.gate = Some(gate);
        self
    }
    /// Every call ends with [`Error::Cancelled`] once `token` is cancelled (shutdown).
    pub fn shutdown(mut self, token: CancellationToken) -> Self {
        self.shutdown = Some(token);
        self
    }
    /// The wall clock that decides when a key held by code 14 comes back.
    pub fn wall_clock(mut self, clock: Arc<dyn WallClock>) -> Self {
        self.wall = Some(clock);
        self
    }
    /// An HTTP client of the caller's. The configured `User-Agent` and request timeout still
    /// apply to every request; its connect timeout, proxies and TLS are the caller's.
    /// Follow no redirects with it: Torn sends none.
    pub fn http_client(mut self, client: reqwest::Client) -> Self {
        self.http = Some(client);
        self
    }

    /// Builds the client. Fails when the gate cannot be built (see
    /// [`QuotaGateBuilder::build`](crate::gate::QuotaGateBuilder::build)), or the HTTP
    /// client cannot.
    pub fn build(self) -> Result<TornClient> {
        let config = self.config;
        #[allow(clippy::single_match_else)]
        let gate = match self.gate {
            Some(gate) => gate,
            None => {
                let b = QuotaGate::builder(self.limiter, &config);
                match self.ip {
                    Some(ip) => b.ip_limiter(ip),
                    None => b,
                }
                .build()?
            }
        };
        let http = match self.http {
            Some(http) => http,
            None => http_client_for(&config)?,
        };
        let user_agent = HeaderValue::from_str(config.user_agent()).map_err(|_| Error::Config {
            setting: "TORN_API_USER_AGENT",
            reason: "is not a valid header value".into(),
        })?;
        let owners = moka::future::Cache::builder()
            .max_capacity(config.owner_cache_capacity().get())
            .time_to_live(config.owner_cache_ttl())
            .build();
        let base = config.base_url().as_str().trim_end_matches('/').to_owned();
        Ok(TornClient {
            inner: Arc::new(Inner {
                http,
                user_agent,
                gate,
                owners,
                blocks: moka::sync::Cache::builder()
                    .max_capacity(config.owner_cache_capacity().get())
                    .time_to_live(BLOCK_TTL)
                    .build(),
                rechecks: moka::future::Cache::builder()
                    .max_capacity(config.owner_cache_capacity().get())
                    .build(),
                pause: Mutex::new(None),
                wall: self.wall.unwrap_or_else(|| Arc::new(SystemWallClock)),
                shutdown: self.shutdown.unwrap_or_default(),
                base,
                config,
            }),
        })
    }
}

pub(super) fn http_client_for(config: &TornClientConfig) -> Result<reqwest::Client> {
    let mut b = reqwest::Client::builder()
        .user_agent(config.user_agent())
        .timeout(config.request_timeout())
        .connect_timeout(config.connect_timeout())
        // Torn never redirects; a redirect is somebody else answering.
        .redirect(reqwest::redirect::Policy::none());
    // A proxy from the environment must not stand between us and a local simulator or
    // sidecar.
    if is_loopback(config.base_url()) {
        b = b.no_proxy();
    }
    b.build().map_err(|e| Error::Http {
        operation: "build the http client",
        source: Source::new(e.without_url()),
    })
}

pub(super) fn is_loopback(url: &url::Url) -> bool {
    match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        None => false,
    }
}
