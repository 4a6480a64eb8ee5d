//! Every Redis key name is built here and nowhere else.
//!
//! A user's keys share one `{hash tag}` so that each script touches a single Redis Cluster
//! slot: `<prefix>:{u<torn user id>}:<part>`.

use crate::limiter::TornUserId;

/// Builds the Redis keys of one deployment (one key prefix).
///
/// ```
/// use torn_quota::{KeyBuilder, TornUserId};
///
/// let keys = KeyBuilder::new("tq").bucket(TornUserId::new(4));
/// assert_eq!(keys.state, "tq:{u4}:log");
/// assert_eq!(keys.limit, "tq:{u4}:limit");
/// assert_eq!(keys.penalty, "tq:{u4}:penalty");
/// ```
#[derive(Debug, Clone)]
pub struct KeyBuilder {
    prefix: String,
}

/// The keys of one user's bucket, in the order `acquire.lua` takes them.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct BucketKeys {
    /// The grant log (`KEYS[1]`).
    pub state: String,
    /// The run-time limit override (`KEYS[2]`).
    pub limit: String,
    /// The penalty mark (`KEYS[3]`).
    pub penalty: String,
}

impl KeyBuilder {
    /// A builder for keys under `prefix` (validated by
    /// [`RateLimitConfig`](crate::RateLimitConfig): no braces).
    pub fn new(prefix: impl Into<String>) -> Self {
        Self {
            prefix: prefix.into(),
        }
    }

    /// The keys of `user`'s bucket.
    pub fn bucket(&self, user: TornUserId) -> BucketKeys {
        let base = self.base(user);
        BucketKeys {
            state: format!("{base}:log"),
            limit: format!("{base}:limit"),
            penalty: format!("{base}:penalty"),
        }
    }

    /// The idempotency record of one call id of `user` (`acquire.lua` `KEYS[4]`).
    pub fn idempotency(&self, user: TornUserId, id: &str) -> String {
        format!("{}:idem:{id}", self.base(user))
    }

    /// A value shared through [`Limiter::remember`](crate::Limiter::remember), such as the
    /// owner of a key hash: `<prefix>:memo:<name>`.
    pub fn memo(&self, name: &str) -> String {
        format!("{}:memo:{name}", self.prefix)
    }

    /// A pattern matching every key under this prefix (for SCAN in benchmarks and tests).
    pub fn pattern(&self) -> String {
        format!("{}:*", self.prefix)
    }

    fn base(&self, user: TornUserId) -> String {
        format!("{}:{{u{}}}", self.prefix, user.get())
    }
}
