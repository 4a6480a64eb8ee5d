//! The per-request span names the owner and never the key. Alone in its binary: tracing
//! caches each callsite's interest process-wide, so a test running beside it without a
//! subscriber could turn the span off for it.

use std::sync::{Arc, Mutex};

use torn_quota::sim::{SimConfig, SimKey, Simulator};
use torn_quota::torn::{TornClient, TornClientConfig};
use torn_quota::{AccessLevel, ApiKey, Limiter, RateLimitConfig, TornUserId};

const KEY: &str = "SoakTestKey00001";

/// A writer the test reads back: what the tracing subscriber printed.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
    type Writer = Self;
    fn make_writer(&'a self) -> Self {
        self.clone()
    }
}

#[tokio::test]
async fn every_request_runs_in_a_span_with_the_owner_never_the_key() {
    let captured = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter("torn_quota=debug")
        .with_writer(captured.clone())
        .with_ansi(false)
        .finish();
    // Global, in a binary of its own: a thread-local default raced the other tests of a
    // shared binary, whose callsites registered first and cached "never interested".
    tracing::subscriber::set_global_default(subscriber).expect("the only subscriber");

    let sim = Simulator::start(
        [SimKey::new(KEY, TornUserId::new(77), AccessLevel::Full)],
        SimConfig::default(),
    )
    .await
    .unwrap();
    let limiter = Limiter::in_memory(RateLimitConfig::builder().build().unwrap());
    let client = TornClient::new(
        limiter,
        TornClientConfig::builder()
            .base_url(sim.base_url())
            .build()
            .unwrap(),
    )
    .unwrap();
    let key = ApiKey::new(KEY).unwrap();
    client.get(&key, "user/4/basic").await.unwrap();

    let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    assert!(
        text.contains("torn_request{owner=77"),
        "no span with the owner:\n{text}"
    );
    assert!(!text.contains(KEY), "the key was logged:\n{text}");
}
