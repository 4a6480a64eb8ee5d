//! [`AccessNeeds`]: the access level each (section, selection) needs, learned from Torn's
//! code 16 and shared by every process.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use crate::identity::AccessLevel;
use crate::limiter::{KeyBuilder, Limiter};

/// How long a learned need is shared: Torn changes a selection's access rarely, and a
/// stale need costs at most one more code 16 once it expires.
const SHARED_FOR: Duration = Duration::from_secs(24 * 3600);

/// The access level each (section, selection) is known to need. A code 16 from a key of
/// level L raises the need to L + 1 for every later request of that selection: in this
/// process at once, and in every process through the limiter's shared memo (Redis, for a
/// day). So a batch meets at most one code 16 per low-access key and selection.
///
/// ```
/// use torn_quota::gate::AccessNeeds;
///
/// assert_eq!(AccessNeeds::selection_of("user/4/battlestats").as_deref(), Some("user/battlestats"));
/// assert_eq!(AccessNeeds::selection_of("/v2/user/battlestats?striptags=1").as_deref(), Some("user/battlestats"));
/// assert_eq!(AccessNeeds::selection_of("user/4").as_deref(), Some("user"));
/// ```
#[derive(Debug, Clone)]
pub struct AccessNeeds {
    limiter: Limiter,
    known: Arc<Mutex<HashMap<String, AccessLevel>>>,
}

impl AccessNeeds {
    pub(super) fn new(limiter: Limiter) -> Self {
        Self {
            limiter,
            known: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// The selection a v2 path asks for, as `section/selection` (the id left out, so every
    /// id shares one need; `selections=` of the query joined in order); `None` when the
    /// path has no usable name.
    pub fn selection_of(path: &str) -> Option<String> {
        let path = path.trim().trim_start_matches('/');
        let path = path.strip_prefix("v2/").unwrap_or(path);
        let (segments, query) = path.split_once('?').unwrap_or((path, ""));
        let named: Vec<&str> = segments
            .split('/')
            .filter(|s| !s.is_empty() && !s.bytes().all(|b| b.is_ascii_digit()))
            .collect();
        let (section, rest) = named.split_first()?;
        let mut name = section.to_ascii_lowercase();
        if let Some(selection) = rest.last() {
            name.push('/');
            name.push_str(&selection.to_ascii_lowercase());
        }
        let mut selections: Vec<String> = url::form_urlencoded::parse(query.as_bytes())
            .filter(|(k, _)| k == "selections")
            .flat_map(|(_, v)| {
                v.split(',')
                    .map(|s| s.trim().to_ascii_lowercase())
                    .collect::<Vec<_>>()
            })
            .filter(|s| !s.is_empty())
            .collect();
        selections.sort();
        if !selections.is_empty() {
            name.push('?');
            name.push_str(&selections.join(","));
        }
        let ok = name.len() <= 120
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'/' | b'_' | b',' | b'?'));
        ok.then_some(name)
    }

    /// The need known in this process for `path`'s selection.
    pub fn known(&self, path: &str) -> Option<AccessLevel> {
        let name = Self::selection_of(path)?;
        lock(&self.known).get(&name).copied()
    }

    /// The need for `path`'s selection: known here, else shared by another process (then
    /// known here too). A shared memo that cannot be read is no need.
    pub async fn need(&self, path: &str) -> Option<AccessLevel> {
        let name = Self::selection_of(path)?;
        if let Some(level) = lock(&self.known).get(&name).copied() {
            return Some(level);
        }
        let shared = match self.limiter.recall(&memo(&name)).await {
            Ok(v) => v?,
            Err(e) => {
                tracing::debug!(error = %e, "shared access needs unreadable");
                return None;
            }
        };
        let level = shared.parse().ok().and_then(AccessLevel::from_number)?;
        let mut known = lock(&self.known);
        let entry = known.entry(name).or_insert(level);
        *entry = (*entry).max(level);
        Some(*entry)
    }

    /// Torn answered code 16 to `path` sent with a key of `key_level`: the selection needs
    /// more. Returns the need now known (`None` when no level is above the key's).
    pub async fn learn(&self, path: &str, key_level: AccessLevel) -> Option<AccessLevel> {
        let higher = AccessLevel::from_number(key_level.number() + 1)?;
        let name = Self::selection_of(path)?;
        let raised = {
            let mut known = lock(&self.known);
            let entry = known.entry(name.clone()).or_insert(higher);
            let raised = *entry <= higher;
            *entry = (*entry).max(higher);
            raised.then_some(*entry)
        };
        if let Some(level) = raised {
            tracing::info!(
                selection = name.as_str(),
                need = level.number(),
                "torn code 16: the selection needs a higher access level"
            );
            let value = level.number().to_string();
            if let Err(e) = self
                .limiter
                .remember(&memo(&name), &value, SHARED_FOR)
                .await
            {
                tracing::debug!(error = %e, "cannot share an access need");
            }
        }
        Some(lock(&self.known).get(&name).copied().unwrap_or(higher))
    }
}

fn memo(selection: &str) -> String {
    KeyBuilder::access_memo_name(selection)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}
