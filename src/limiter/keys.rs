//! Every Redis key name is built here and nowhere else.
//!
//! A user's keys share one `{hash tag}` so that each script touches a single Redis Cluster
//! slot: `<prefix>:{u<torn user id>}:<part>`. `<prefix>` is the limiter's key prefix
//! (`TORN_QUOTA_KEY_PREFIX`, no braces); a sibling limiter (the per-IP bucket, pooled
//! shares, shadow mode) runs under `<prefix>:<name>` ([`KeyBuilder::sibling_prefix`]).
//!
//! | key | type | written by | what |
//! |---|---|---|---|
//! | `<p>:{u<id>}:log` | string | acquire, settle, record, refund (Lua) | the grant log: 6-byte stamps + trailer ([`BucketKeys::state`]) |
//! | `<p>:{u<id>}:limit` | string | `set_user_limit` | a per-user limit override ([`BucketKeys::limit`]) |
//! | `<p>:{u<id>}:penalty` | string | penalize.lua | the penalty mark: Redis ms it ends ([`BucketKeys::penalty`]) |
//! | `<p>:{u<id>}:idem:<call id>` | string | acquire.lua | one call id's decision ([`KeyBuilder::idempotency`]) |
//! | `<p>:{u<id>}:restored` | set | restore.lua | grant ids written back after Redis lost the log ([`KeyBuilder::restored`]) |
//! | `<p>:epoch` | string | the Redis backend | this Redis's state epoch: a new value means it lost state ([`KeyBuilder::epoch`]) |
//! | `<p>:memo:<name>` | string | `Limiter::remember` | a shared memo ([`KeyBuilder::memo`]), named: |
//! | `<p>:memo:owner:<key hash>` | string | the Torn client | a key's owner and access level ([`KeyBuilder::owner_memo_name`]) |
//! | `<p>:memo:access:<selection>` | string | the quota gate | a selection's access need ([`KeyBuilder::access_memo_name`]) |
//! | `<p>:ip[:<egress id>]:{u0}:log` ... | | the per-IP sibling | one bucket per egress IP ([`KeyBuilder::ip_sibling`]) |
//! | `<p>:share:{u<id>}:...` | | pooled shares sibling | each pooled owner's share |
//! | `<p>:shadow:{u<id>}:...` | | shadow-mode sibling | the per-user limiter shadowing legacy |
//! | `<p>:{rollout}:disagreements` | hash | shadow mode | disagreement totals ([`DisagreementKeys`]) |
//! | `<p>:{rollout}:disagreements:users:<direction>` | hash | shadow mode | per-user counts in one direction |
//! | `<p>:{rollout}:disagreements:users:total` | hash | shadow mode | per-user counts, both directions |
//!
//! The legacy limiter and the key vault keep their state in PostgreSQL, not Redis.

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
///
/// let b = KeyBuilder::new("tq");
/// assert_eq!(b.sibling_prefix(&KeyBuilder::ip_sibling(Some("eu1"))), "tq:ip:eu1");
/// assert_eq!(b.memo(&KeyBuilder::owner_memo_name("ab12")), "tq:memo:owner:ab12");
/// assert_eq!(b.memo(&KeyBuilder::access_memo_name("user")), "tq:memo:access:user");
/// let d = b.disagreements(["legacy_only"]);
/// assert_eq!(d.totals, "tq:{rollout}:disagreements");
/// assert_eq!(d.users, ["tq:{rollout}:disagreements:users:legacy_only"]);
/// assert_eq!(d.users_total, "tq:{rollout}:disagreements:users:total");
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

/// Shadow mode's disagreement counters (see [`KeyBuilder::disagreements`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct DisagreementKeys<const N: usize> {
    /// Totals by direction.
    pub totals: String,
    /// Per-user counts, one key per direction.
    pub users: [String; N],
    /// Per-user counts, both directions.
    pub users_total: String,
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

    /// The ids of `user`'s grants that `restore.lua` wrote back (its `KEYS[2]`).
    pub fn restored(&self, user: TornUserId) -> String {
        format!("{}:restored", self.base(user))
    }

    /// The state epoch of this prefix: a random value set once, without expiry, and read
    /// back after a connection failure. Missing or changed, it says Redis lost its state.
    pub fn epoch(&self) -> String {
        format!("{}:epoch", self.prefix)
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

    /// The key prefix of a sibling limiter `name` under this one: `<prefix>:<name>`.
    pub fn sibling_prefix(&self, name: &str) -> String {
        format!("{}:{name}", self.prefix)
    }

    /// The sibling name of the per-IP bucket: `ip`, or `ip:<egress id>` when several
    /// egress IPs share one Redis.
    pub fn ip_sibling(egress_id: Option<&str>) -> String {
        match egress_id {
            Some(id) => format!("ip:{id}"),
            None => "ip".to_owned(),
        }
    }

    /// The memo name (see [`memo`](Self::memo)) of a key's owner, by the key's hash.
    pub fn owner_memo_name(key_hash: &str) -> String {
        format!("owner:{key_hash}")
    }

    /// The memo name (see [`memo`](Self::memo)) of the lease a process holds while it asks
    /// Torn for a key's owner, so that other processes wait for its answer instead of
    /// sending a second uncounted lookup. A [`Lease`](crate::limiter::Lease): its value is
    /// the holder's random token, and only that holder deletes it (`lua/release.lua`).
    pub fn owner_lookup_name(key_hash: &str) -> String {
        format!("owner-lookup:{key_hash}")
    }

    /// The memo name (see [`memo`](Self::memo)) of the claim on a key nobody knows yet:
    /// the one process holding it sends the key to Torn, the others wait for its answer.
    /// A [`Lease`](crate::limiter::Lease), like [`owner_lookup_name`](Self::owner_lookup_name).
    pub fn first_send_memo_name(key_hash: &str) -> String {
        format!("sending:{key_hash}")
    }

    /// The memo name (see [`memo`](Self::memo)) of a selection's access need.
    pub fn access_memo_name(selection: &str) -> String {
        format!("access:{selection}")
    }

    /// Shadow mode's disagreement counters, one key per direction name in `directions`.
    /// One hash tag for every key: a Redis Cluster keeps them in one slot, so the MULTI
    /// that records a disagreement stays legal there.
    pub fn disagreements<const N: usize>(&self, directions: [&str; N]) -> DisagreementKeys<N> {
        let totals = format!("{}:{{rollout}}:disagreements", self.prefix);
        DisagreementKeys {
            users: directions.map(|d| format!("{totals}:users:{d}")),
            users_total: format!("{totals}:users:total"),
            totals,
        }
    }

    fn base(&self, user: TornUserId) -> String {
        format!("{}:{{u{}}}", self.prefix, user.get())
    }
}
