//! `/metrics`: Prometheus text from this process's recorder, in builds with the
//! `prometheus` feature; and the gateway's own counter of calls by outcome (no key, hash
//! or user id as a label).

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};

use super::Shared;

/// Calls answered, by `outcome`.
const CALLS: &str = "torn_quota_serve_calls_total";

/// The recorder's handle, when this process could install one.
pub(crate) struct Metrics {
    #[cfg(feature = "prometheus")]
    handle: Option<metrics_exporter_prometheus::PrometheusHandle>,
}

impl Metrics {
    /// Installs a Prometheus recorder for the process, once; a second gateway in the same
    /// process (tests) shares the first's. Without the feature, nothing.
    pub(crate) fn install() -> Self {
        #[cfg(feature = "prometheus")]
        {
            static HANDLE: std::sync::OnceLock<
                Option<metrics_exporter_prometheus::PrometheusHandle>,
            > = std::sync::OnceLock::new();
            let handle = HANDLE
                .get_or_init(|| {
                    let handle = metrics_exporter_prometheus::PrometheusBuilder::new()
                        .install_recorder()
                        .ok();
                    if handle.is_some() {
                        metrics::describe_counter!(CALLS, "gateway calls answered, by outcome");
                    }
                    handle
                })
                .clone();
            Self { handle }
        }
        #[cfg(not(feature = "prometheus"))]
        Self {}
    }

    /// Counts one answered call.
    #[allow(clippy::unused_self)] // the recorder is global; self keeps call sites uniform
    pub(crate) fn call(&self, outcome: &'static str) {
        metrics::counter!(CALLS, "outcome" => outcome).increment(1);
    }
}

/// The Prometheus text, or 404 with why there is none.
pub(crate) async fn render(State(shared): State<Arc<Shared>>) -> Response {
    #[cfg(feature = "prometheus")]
    if let Some(handle) = &shared.metrics.handle {
        return (
            [(CONTENT_TYPE, "text/plain; version=0.0.4")],
            handle.render(),
        )
            .into_response();
    }
    let _ = &shared;
    (
        StatusCode::NOT_FOUND,
        [(CONTENT_TYPE, "text/plain")],
        if cfg!(feature = "prometheus") {
            "metrics are served by the exporter of --metrics-addr\n"
        } else {
            "metrics need a build with the `prometheus` feature\n"
        },
    )
        .into_response()
}
