//! Answers per key: identical calls in flight with the same key share one Torn request, and
//! an answer is reused for the same key and path for `TORN_QUOTA_SERVE_CACHE_MS`. Entries
//! are keyed by the key's hash and the forwarded path, so one player's answer is never
//! served to another key. Only answers with data are kept: an error is Torn's word on one
//! attempt, and the next call should ask again.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use crate::limiter::TornUserId;
use crate::torn::KeyHash;

/// Entries kept at most; the oldest unused go first.
const CAPACITY: u64 = 20_000;

/// A Torn answer with data, and the owner whose quota it spent.
#[derive(Debug)]
pub(crate) struct Answer {
    pub(crate) body: Value,
    pub(crate) owner: Option<TornUserId>,
}

/// Where an answer came from, for the `X-Torn-Quota-Cache` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Source {
    /// This call asked Torn.
    Miss,
    /// Another call in flight asked Torn; this one shared its answer.
    Shared,
    /// A stored answer, younger than the cache time.
    Hit,
}

impl Source {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Miss => "miss",
            Self::Shared => "shared",
            Self::Hit => "hit",
        }
    }
}

type Slot = (KeyHash, String);

/// The answer cache and the calls in flight.
pub(crate) struct Answers {
    /// Answers kept for the cache time (absent when the cache is off).
    stored: Option<moka::future::Cache<Slot, Arc<Answer>>>,
    /// Calls in flight only: an entry leaves as soon as its call ends.
    flying: moka::future::Cache<Slot, Arc<Answer>>,
}

impl Answers {
    pub(crate) fn new(ttl: Duration) -> Self {
        let stored = (!ttl.is_zero()).then(|| {
            moka::future::Cache::builder()
                .max_capacity(CAPACITY)
                .time_to_live(ttl)
                .build()
        });
        Self {
            stored,
            flying: moka::future::Cache::builder()
                .max_capacity(CAPACITY)
                .build(),
        }
    }

    /// The answer for `path` with the key of `hash`: stored, shared with an identical call
    /// in flight, or fetched by `fetch`. `bypass` (a `timestamp` parameter) skips the
    /// stored answers, both ways, but still shares a call in flight.
    pub(crate) async fn get<E, F>(
        &self,
        hash: &KeyHash,
        path: &str,
        bypass: bool,
        fetch: F,
    ) -> (Result<Arc<Answer>, Arc<E>>, Source)
    where
        E: Send + Sync + 'static,
        F: Future<Output = Result<Answer, E>>,
    {
        let slot: Slot = (hash.clone(), path.to_owned());
        let fetch = async move { fetch.await.map(Arc::new) };
        if let (Some(stored), false) = (&self.stored, bypass) {
            if let Some(hit) = stored.get(&slot).await {
                return (Ok(hit), Source::Hit);
            }
            match stored.entry(slot).or_try_insert_with(fetch).await {
                Ok(e) if e.is_fresh() => (Ok(e.into_value()), Source::Miss),
                Ok(e) => (Ok(e.into_value()), Source::Shared),
                Err(e) => (Err(e), Source::Miss),
            }
        } else {
            let result = self
                .flying
                .entry(slot.clone())
                .or_try_insert_with(fetch)
                .await;
            // Only callers in flight together share: the next call asks again.
            self.flying.invalidate(&slot).await;
            match result {
                Ok(e) if e.is_fresh() => (Ok(e.into_value()), Source::Miss),
                Ok(e) => (Ok(e.into_value()), Source::Shared),
                Err(e) => (Err(e), Source::Miss),
            }
        }
    }
}
