//! `torn-quota serve`: a Torn API gateway. Apps point `TORN_API_BASE_URL` at it and change
//! nothing else: every call (v2 `/v2/...` and v1 `/{section}/{id}?selections=`, key in
//! `Authorization: ApiKey K` or `?key=K`) goes through the one [`TornClient`] and its
//! [quota gate](crate::gate), so it counts on the key owner's exact quota across every
//! process of every language. Several gateways on one Redis act as one.
//!
//! | route | does |
//! |---|---|
//! | `GET /v2/...`, `GET /{section}/{id}?selections=...` | the proxied call (see [`proxy`]) |
//! | `POST /__torn_quota/batch` | a batch over given keys or an account's vault keys, JSON Lines in input order, each sent as soon as it and those before it are answered |
//! | `GET /__torn_quota/status` | this gateway and the quotas it serves, as JSON |
//! | `GET /__torn_quota/` | the status page |
//! | `GET /__torn_quota/healthz` | 200 while Redis answers, else 503 |
//! | `GET /metrics` | Prometheus text (builds with the `prometheus` feature) |
//!
//! Request headers that help: `X-Torn-Quota-Wait-Ms` (how long a call may wait for quota,
//! at most `TORN_QUOTA_SERVE_MAX_WAIT_MS`; past it the answer is Torn's code 5 with
//! `Retry-After`), `X-Torn-Quota-Priority: interactive|batch`. Answers carry
//! `X-Torn-Quota-Remaining` (the owner's units left now) and `X-Torn-Quota-Cache`
//! (`miss`, `shared`, `hit`).
//!
//! With `TORN_QUOTA_SERVE_TOKEN` set, every route asks for it, as `Authorization: Bearer T`
//! or `X-Torn-Quota-Token: T` (the second leaves `Authorization` to the Torn key); the
//! status page alone also takes `?token=T`, since a browser opening it sends no header.

mod auth;
mod batch;
mod cache;
mod config;
mod metrics;
mod owner;
pub mod proxy;
mod refused;
mod stats;
mod status;

use std::future::Future;
use std::sync::Arc;

use axum::Router;
use axum::routing::{get, post};

pub use batch::{MAX_BATCH_BODY, MAX_BATCH_REQUESTS};
pub use config::{
    DEFAULT_CACHE, DEFAULT_LISTEN, DEFAULT_MAX_WAIT, ServeConfig, ServeConfigBuilder,
};

use crate::torn::TornClient;
use crate::vault::Vault;

/// The gateway: its client, settings, caches and counters. Cheap to clone.
#[derive(Clone)]
pub struct Gateway {
    shared: Arc<Shared>,
}

pub(crate) struct Shared {
    pub(crate) client: TornClient,
    pub(crate) config: ServeConfig,
    pub(crate) vault: Option<Vault>,
    pub(crate) answers: cache::Answers,
    pub(crate) stats: stats::Stats,
    pub(crate) metrics: metrics::Metrics,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway")
            .field("config", &self.shared.config)
            .field("vault", &self.shared.vault.is_some())
            .finish_non_exhaustive()
    }
}

impl Gateway {
    /// A gateway sending every call through `client` (build it as the CLI does, with the
    /// gate of the configured mode), without a vault: batches by `account` are refused.
    pub fn new(client: TornClient, config: ServeConfig) -> Self {
        Self::with_vault(client, config, None)
    }

    /// As [`new`](Self::new), with the vault batches by `account` take their keys from.
    pub fn with_vault(client: TornClient, config: ServeConfig, vault: Option<Vault>) -> Self {
        let window = client.gate().window();
        Self {
            shared: Arc::new(Shared {
                answers: cache::Answers::new(config.cache()),
                stats: stats::Stats::new(window),
                metrics: metrics::Metrics::install(),
                client,
                config,
                vault,
            }),
        }
    }

    /// The settings in force.
    pub fn config(&self) -> &ServeConfig {
        &self.shared.config
    }

    /// Every route, behind the token check when a token is set.
    pub fn router(&self) -> Router {
        let state = Arc::clone(&self.shared);
        Router::new()
            .route("/__torn_quota", get(status::page))
            .route("/__torn_quota/", get(status::page))
            .route("/__torn_quota/status", get(status::status))
            .route("/__torn_quota/healthz", get(status::healthz))
            .route("/__torn_quota/batch", post(batch::batch))
            .route("/metrics", get(metrics::render))
            .fallback(proxy::proxy)
            .layer(axum::middleware::from_fn_with_state(
                Arc::clone(&state),
                auth::require_token,
            ))
            .with_state(state)
    }

    /// Serves on `listener` until `shutdown` resolves, then stops accepting and lets every
    /// call in flight finish.
    pub async fn run(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        axum::serve(listener, self.router())
            .with_graceful_shutdown(shutdown)
            .await
    }
}
