//! Shadow mode's bookkeeping: the disagreements between the legacy and the per-user limiter,
//! kept where every process writes (Redis, under the limiter's key prefix) so that
//! `torn-quota rollout report` sees the whole fleet; and the guard that keeps a failing
//! shadow from slowing or failing the calls legacy enforces.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::time::Instant;

use crate::error::{Error, Result};
use crate::identity::TornUserId;
use crate::limiter::{KeyBuilder, Limiter, RateLimitConfig, RedisConn};

/// Which side granted when the two limiters disagreed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Legacy granted, the per-user limiter refused: the user is over Torn's per-player
    /// limit through several keys (legacy counts each key alone), so Torn may answer
    /// code 5 to these calls. Expected for users with several keys.
    LegacyOnly,
    /// The per-user limiter granted, legacy refused: the user had quota that legacy's fixed
    /// 50 per key wasted. Expected for busy single-key users.
    PerUserOnly,
}

impl Direction {
    /// Both directions, in report order.
    pub const ALL: [Self; 2] = [Self::LegacyOnly, Self::PerUserOnly];

    /// The name in metrics labels, JSON and Redis: `legacy_only` or `per_user_only`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::LegacyOnly => "legacy_only",
            Self::PerUserOnly => "per_user_only",
        }
    }

    /// The direction of a disagreement, `None` when both sides agree.
    pub fn of(legacy_granted: bool, per_user_granted: bool) -> Option<Self> {
        match (legacy_granted, per_user_granted) {
            (true, false) => Some(Self::LegacyOnly),
            (false, true) => Some(Self::PerUserOnly),
            _ => None,
        }
    }

    fn index(self) -> usize {
        match self {
            Self::LegacyOnly => 0,
            Self::PerUserOnly => 1,
        }
    }
}

/// One user's disagreements in a [`DisagreementReport`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct UserDisagreements {
    /// The Torn user id (never a key or its hash).
    pub user: TornUserId,
    /// Calls legacy granted and the per-user limiter refused.
    pub legacy_only: u64,
    /// Calls the per-user limiter granted and legacy refused.
    pub per_user_only: u64,
}

impl UserDisagreements {
    /// Both directions together.
    pub fn total(&self) -> u64 {
        self.legacy_only + self.per_user_only
    }
}

/// The disagreements recorded since the counts were last reset.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct DisagreementReport {
    /// Calls legacy granted and the per-user limiter refused, over all users.
    pub legacy_only: u64,
    /// Calls the per-user limiter granted and legacy refused, over all users.
    pub per_user_only: u64,
    /// When the first disagreement since the last reset was recorded (Unix milliseconds of
    /// the recording process), `None` when there is none.
    pub since_ms: Option<u64>,
    /// The users with the most disagreements, most first (ties by user id).
    pub users: Vec<UserDisagreements>,
}

impl DisagreementReport {
    /// Both directions together.
    pub fn total(&self) -> u64 {
        self.legacy_only + self.per_user_only
    }
}

/// Where disagreements are counted: Redis (every process adds to one count) or this process
/// (for the in-memory limiter and tests). Cheap to clone; clones share the store.
#[derive(Debug, Clone)]
pub struct Disagreements {
    store: Arc<Store>,
}

#[derive(Debug)]
enum Store {
    // Boxed: the Redis side is large and a process holds only one or two stores.
    Redis(Box<RedisStore>),
    Memory(Mutex<MemoryStore>),
}

#[derive(Debug, Default)]
struct MemoryStore {
    totals: [u64; 2],
    since_ms: Option<u64>,
    users: HashMap<TornUserId, [u64; 2]>,
}

/// Idle counts expire after this long: a forgotten rollout does not keep memory forever,
/// and any disagreement refreshes every key.
const IDLE_EXPIRY_MS: u64 = 30 * 24 * 3600 * 1000;

struct RedisStore {
    /// The limiter whose Redis (single node or cluster) and connections hold the counts.
    limiter: Limiter,
    totals: String,
    users: [String; 2],
    users_total: String,
}

impl std::fmt::Debug for RedisStore {
    // The client holds the URL, which may carry a password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("totals", &self.totals)
            .finish_non_exhaustive()
    }
}

impl Disagreements {
    /// Counts in the configuration's Redis (its Redis Cluster when `REDIS_CLUSTER_URLS` is
    /// set), under `<prefix>:{rollout}:disagreements`, with its timeouts. Connects on first
    /// use.
    pub fn redis(config: &RateLimitConfig) -> Result<Self> {
        Ok(Self::on(Limiter::redis(config.clone())?))
    }

    /// Counts through `limiter`'s own Redis connections.
    fn on(limiter: Limiter) -> Self {
        let config = limiter.config();
        let keys = KeyBuilder::new(config.key_prefix())
            .disagreements(Direction::ALL.map(Direction::as_str));
        Self {
            store: Arc::new(Store::Redis(Box::new(RedisStore {
                users: keys.users,
                users_total: keys.users_total,
                totals: keys.totals,
                limiter,
            }))),
        }
    }

    /// Counts in this process only.
    pub fn in_memory() -> Self {
        Self {
            store: Arc::new(Store::Memory(Mutex::new(MemoryStore::default()))),
        }
    }

    /// The store that goes with a limiter: Redis when it uses Redis, else in memory.
    pub fn for_limiter(limiter: &Limiter) -> Result<Self> {
        if limiter.backend_name() == "redis" {
            Ok(Self::on(limiter.clone()))
        } else {
            Ok(Self::in_memory())
        }
    }

    /// Adds one disagreement of `user`.
    pub async fn record(&self, user: TornUserId, direction: Direction) -> Result<()> {
        let now = unix_ms();
        match &*self.store {
            Store::Memory(m) => {
                let mut m = m.lock().unwrap_or_else(PoisonError::into_inner);
                m.totals[direction.index()] += 1;
                m.since_ms.get_or_insert(now);
                m.users.entry(user).or_default()[direction.index()] += 1;
                Ok(())
            }
            Store::Redis(r) => {
                let mut pipe = redis::pipe();
                pipe.atomic()
                    .hincr(&r.totals, direction.as_str(), 1)
                    .ignore()
                    .hset_nx(&r.totals, "since_ms", now)
                    .ignore()
                    .zincr(&r.users[direction.index()], user.get(), 1)
                    .ignore()
                    .zincr(&r.users_total, user.get(), 1)
                    .ignore();
                for key in r.keys() {
                    pipe.cmd("PEXPIRE").arg(key).arg(IDLE_EXPIRY_MS).ignore();
                }
                r.run("record disagreement", |mut c| async move {
                    pipe.exec_async(&mut c).await
                })
                .await
            }
        }
    }

    /// The totals and the `top` users with the most disagreements.
    pub async fn report(&self, top: usize) -> Result<DisagreementReport> {
        match &*self.store {
            Store::Memory(m) => {
                let m = m.lock().unwrap_or_else(PoisonError::into_inner);
                let mut users: Vec<UserDisagreements> = m
                    .users
                    .iter()
                    .map(|(user, c)| UserDisagreements {
                        user: *user,
                        legacy_only: c[0],
                        per_user_only: c[1],
                    })
                    .collect();
                users.sort_by(|a, b| b.total().cmp(&a.total()).then(a.user.cmp(&b.user)));
                users.truncate(top);
                Ok(DisagreementReport {
                    legacy_only: m.totals[0],
                    per_user_only: m.totals[1],
                    since_ms: m.since_ms,
                    users,
                })
            }
            Store::Redis(r) => r.report(top).await,
        }
    }

    /// Forgets every count: for a fresh start after a rollout step.
    pub async fn reset(&self) -> Result<()> {
        match &*self.store {
            Store::Memory(m) => {
                *m.lock().unwrap_or_else(PoisonError::into_inner) = MemoryStore::default();
                Ok(())
            }
            Store::Redis(r) => {
                let keys = r.keys();
                r.run("reset disagreements", |mut c| async move {
                    redis::cmd("DEL").arg(&keys).exec_async(&mut c).await
                })
                .await
            }
        }
    }
}

impl RedisStore {
    fn keys(&self) -> Vec<String> {
        let mut keys = vec![self.totals.clone(), self.users_total.clone()];
        keys.extend(self.users.iter().cloned());
        keys
    }

    async fn report(&self, top: usize) -> Result<DisagreementReport> {
        let totals: HashMap<String, u64> = self
            .run("read disagreements", |mut c| {
                let key = self.totals.clone();
                async move { redis::cmd("HGETALL").arg(key).query_async(&mut c).await }
            })
            .await?;
        let mut report = DisagreementReport {
            legacy_only: totals.get("legacy_only").copied().unwrap_or(0),
            per_user_only: totals.get("per_user_only").copied().unwrap_or(0),
            since_ms: totals.get("since_ms").copied(),
            users: Vec::new(),
        };
        if top == 0 {
            return Ok(report);
        }
        // Ties come back in reverse lexicographic order of the member; sorted again below.
        let ranked: Vec<(u64, u64)> = self
            .run("read disagreements", |mut c| {
                let key = self.users_total.clone();
                async move {
                    redis::cmd("ZREVRANGE")
                        .arg(key)
                        .arg(0)
                        .arg(top.saturating_sub(1))
                        .arg("WITHSCORES")
                        .query_async(&mut c)
                        .await
                }
            })
            .await?;
        if ranked.is_empty() {
            return Ok(report);
        }
        let mut pipe = redis::pipe();
        for (user, _) in &ranked {
            for key in &self.users {
                pipe.zscore(key, *user);
            }
        }
        let scores: Vec<Option<u64>> = self
            .run("read disagreements", |mut c| async move {
                pipe.query_async(&mut c).await
            })
            .await?;
        report.users = ranked
            .iter()
            .zip(scores.chunks(2))
            .map(|((user, _), s)| UserDisagreements {
                user: TornUserId::new(*user),
                legacy_only: s[0].unwrap_or(0),
                per_user_only: s.get(1).copied().flatten().unwrap_or(0),
            })
            .collect();
        report
            .users
            .sort_by(|a, b| b.total().cmp(&a.total()).then(a.user.cmp(&b.user)));
        Ok(report)
    }

    /// Runs one command (or pipeline) on the limiter's connections.
    async fn run<T, F, Fut>(&self, operation: &'static str, f: F) -> Result<T>
    where
        F: FnOnce(RedisConn) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        self.limiter
            .with_redis(operation, f)
            .await
            .unwrap_or_else(|| unreachable_memory(operation))
    }
}

/// A Redis store is only ever built on a Redis limiter.
fn unreachable_memory<T>(operation: &'static str) -> Result<T> {
    Err(Error::InvalidArgument {
        name: "disagreements",
        reason: format!("{operation}: the limiter keeps no redis"),
    })
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Keeps a failing shadow out of the way: after a failure the shadow is skipped until
/// `retry_in` has passed (so a Redis that hangs costs one timeout, not one per call), and
/// the warning is logged at most once per `warn_every`, with the count of failures since.
#[derive(Debug)]
pub(crate) struct ShadowGuard {
    retry_in: Duration,
    warn_every: Duration,
    state: Mutex<GuardState>,
}

#[derive(Debug, Default)]
struct GuardState {
    skip_until: Option<Instant>,
    last_warn: Option<Instant>,
    failures_since_warn: u64,
}

impl ShadowGuard {
    pub(crate) fn new(retry_in: Duration, warn_every: Duration) -> Self {
        Self {
            retry_in,
            warn_every,
            state: Mutex::new(GuardState::default()),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, GuardState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// True while a recent failure says the shadow should not be asked.
    pub(crate) fn skipping(&self) -> bool {
        self.state().skip_until.is_some_and(|t| Instant::now() < t)
    }

    /// The shadow answered: ask it again on every call.
    pub(crate) fn succeeded(&self) {
        self.state().skip_until = None;
    }

    /// The shadow (or the disagreement store) failed at `stage`: count it, skip the shadow
    /// for a while, and warn unless a warning went out recently.
    pub(crate) fn failed(&self, stage: &'static str, error: &dyn std::fmt::Display) {
        metrics::counter!("torn_quota_shadow_errors_total", "stage" => stage).increment(1);
        let now = Instant::now();
        let mut s = self.state();
        s.skip_until = Some(now + self.retry_in);
        s.failures_since_warn += 1;
        if s.last_warn
            .is_none_or(|t| now.duration_since(t) >= self.warn_every)
        {
            tracing::warn!(
                stage,
                error = %error,
                failures = s.failures_since_warn,
                retry_in_ms = self.retry_in.as_millis() as u64,
                "shadow limiter failed; legacy keeps enforcing, shadow skipped for a while"
            );
            s.last_warn = Some(now);
            s.failures_since_warn = 0;
        }
    }
}
