//! The one error type for real failures. A denial is not one of them: it is a
//! [`Decision::Limited`](crate::Decision::Limited) value.
//!
//! Each layer names its own failures; [`Error::kind`] gives the [`ErrorKind`] to branch
//! on, with classifiers for the usual questions. A cause from a dependency (redis-rs,
//! sqlx, reqwest, serde_json) is kept behind an opaque [`Source`], reachable only through
//! [`std::error::Error::source`], so no third-party type is part of this API. Errors are
//! `Clone`: a failure shared by several waiters reaches each with its kind and its chain.
//!
//! | Layer | Variant | [`ErrorKind`] | unavailable | retryable | deadline |
//! |---|---|---|---|---|---|
//! | settings | [`Error::Config`] | `Config` | | | |
//! | settings | [`Error::ConfigFile`] | `ConfigFile` | | | |
//! | any | [`Error::InvalidArgument`] | `InvalidArgument` | | | |
//! | limiter | [`Error::CostExceedsLimit`] | `CostExceedsLimit` | | | |
//! | limiter | [`Error::Cancelled`] | `Cancelled` | | | |
//! | limiter, gate | [`Error::Deadline`] | `Deadline` | | yes | yes |
//! | limiter, batch | [`Error::Task`] | `Task` | | | |
//! | limiter / Redis | [`Error::Unavailable`] | `RedisUnavailable` | yes | yes | |
//! | limiter / Redis | [`Error::Timeout`] | `RedisTimeout` | yes | yes | yes |
//! | limiter / Redis | [`Error::Redis`] | `Redis` | | | |
//! | Torn | [`Error::Torn`] | `Torn` | | by [code](crate::torn::TornErrorCode::class) | |
//! | Torn / HTTP | [`Error::Http`] | `Http` | | yes | |
//! | Torn / HTTP | [`Error::TornAnswer`] | `TornAnswer` | | yes | |
//! | Torn / HTTP | [`Error::Challenge`] | `Challenge` | | | |
//! | vault / PostgreSQL | `Error::Database` | `Database` | | | |
//! | vault / PostgreSQL | `Error::DatabaseConnect` | `DatabaseUnavailable` | yes | yes | |
//! | vault / crypto | [`Error::Crypto`] | `Crypto` | | | |
//!
//! The Lua scripts refuse a cost that can never be granted with an error reply whose
//! first word is the stable code `TQ_COST` followed by `cost=C limit=L reserve=R` (then
//! the human text); the limiter's store decodes every script error in one place, and that
//! reply becomes [`Error::CostExceedsLimit`].

use std::time::Duration;

mod kind;
mod source;

pub use kind::ErrorKind;
pub use source::Source;

/// What can go wrong in torn-quota. Messages are lowercase, carry no secret, and chain
/// their source once (through [`std::error::Error::source`], not in the text).
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A setting failed validation at start. `setting` is its environment name.
    #[error("invalid setting {setting}: {reason}")]
    Config {
        /// The environment name of the setting, e.g. `TORN_QUOTA_LIMIT`.
        setting: &'static str,
        /// What is wrong with it.
        reason: String,
    },

    /// A call got an argument it can never accept.
    #[error("invalid argument {name}: {reason}")]
    InvalidArgument {
        /// The argument's name.
        name: &'static str,
        /// What is wrong with it.
        reason: String,
    },

    /// The call asks for more units than the bucket can ever hold, so waiting would never
    /// end. Governor calls this `InsufficientCapacity`.
    #[error("cost {cost} can never be granted: the limit in force is {limit}")]
    CostExceedsLimit {
        /// Units asked for.
        cost: u32,
        /// The limit in force (after any reserve), when known.
        limit: u32,
    },

    /// Redis could not be reached or did not answer in time, and the failure policy is to
    /// fail fast.
    #[error("redis unavailable during {operation}")]
    Unavailable {
        /// What the limiter was doing.
        operation: &'static str,
        /// The underlying failure.
        #[source]
        source: Source,
    },

    /// A Redis call took longer than the configured command timeout.
    #[error("redis did not answer {operation} within {timeout:?}")]
    Timeout {
        /// What the limiter was doing.
        operation: &'static str,
        /// The configured timeout.
        timeout: Duration,
    },

    /// Redis answered with an error that is not about connectivity (a script error, a
    /// wrong type at a key).
    #[error("redis refused {operation}")]
    Redis {
        /// What the limiter was doing.
        operation: &'static str,
        /// Redis's reply.
        #[source]
        source: Source,
    },

    /// A waiting call was cancelled through its cancellation token.
    #[error("cancelled while waiting for quota")]
    Cancelled,

    /// Quota would not be free before the call's deadline (see
    /// [`Wait::until`](crate::Wait::until)), so the call ends rather than wait past it.
    #[error("quota is not free before the call's deadline")]
    Deadline,

    /// A task the crate ran in the background (a batch worker) panicked or was aborted.
    #[error("a background task of {operation} failed")]
    Task {
        /// What the task was doing.
        operation: &'static str,
        /// The join failure (a panic's message, or the abort).
        #[source]
        source: Source,
    },

    /// Torn answered with an error code (HTTP 200, `{"error":{"code":N,"error":"text"}}`).
    /// What to do about it is [`TornErrorCode::class`](crate::torn::TornErrorCode::class).
    #[error("torn refused the request: code {}, {message}", code.get())]
    Torn {
        /// Torn's code.
        code: crate::torn::TornErrorCode,
        /// Torn's text, as it sent it.
        message: String,
    },

    /// An HTTP exchange failed (connect, timeout, a 5xx, a 429). The source has its URL
    /// stripped: a URL may carry a key.
    #[error("http failure during {operation}")]
    Http {
        /// What the client was doing.
        operation: &'static str,
        /// The transport failure, without its URL.
        #[source]
        source: Source,
    },

    /// Torn's answer is not the JSON Torn sends: not JSON at all, or JSON without the
    /// fields every such answer has.
    #[error("torn's answer to {operation} is not what torn sends")]
    TornAnswer {
        /// What the client was doing.
        operation: &'static str,
        /// What is wrong with the answer (never the answer itself: it may be long).
        #[source]
        source: Source,
    },

    /// Cloudflare, in front of Torn, answered with a challenge (HTTP 403 with
    /// `cf-mitigated: challenge`) instead of passing the request on: often a default or
    /// missing `User-Agent`. Not retried: a challenge asks for a person (or another
    /// `TORN_API_USER_AGENT`), and sending more only prolongs it.
    #[error(
        "cloudflare challenged {operation} (http 403, cf-mitigated: challenge); \
         not retried: check TORN_API_USER_AGENT"
    )]
    Challenge {
        /// What the client was doing.
        operation: &'static str,
    },

    /// PostgreSQL failed or refused a statement.
    #[cfg(any(feature = "vault", feature = "legacy"))]
    #[error("database failure during {operation}")]
    Database {
        /// What the vault was doing.
        operation: &'static str,
        /// The driver's error.
        #[source]
        source: Source,
    },

    /// PostgreSQL could not be reached, or refused the connection. `target` is its
    /// `host:port` (or socket path), never the password.
    #[cfg(any(feature = "vault", feature = "legacy"))]
    #[error("cannot connect to PostgreSQL at {target}")]
    DatabaseConnect {
        /// `host:port`, or the Unix socket's path.
        target: String,
        /// The driver's error.
        #[source]
        source: Source,
    },

    /// A stored key could not be decrypted or encrypted. The reason says which check failed
    /// and never carries key material.
    #[error("key vault crypto failure: {reason}")]
    Crypto {
        /// Which check failed (wrong key, tampered ciphertext, unknown key id, ...).
        reason: String,
    },

    /// A configuration file could not be read.
    #[error("cannot read configuration file {path}")]
    ConfigFile {
        /// The file's path.
        path: String,
        /// The I/O or parse failure.
        #[source]
        source: Source,
    },
}

impl Error {
    /// What kind of failure this is.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::Config { .. } => ErrorKind::Config,
            Self::ConfigFile { .. } => ErrorKind::ConfigFile,
            Self::InvalidArgument { .. } => ErrorKind::InvalidArgument,
            Self::CostExceedsLimit { .. } => ErrorKind::CostExceedsLimit,
            Self::Cancelled => ErrorKind::Cancelled,
            Self::Deadline => ErrorKind::Deadline,
            Self::Task { .. } => ErrorKind::Task,
            Self::Unavailable { .. } => ErrorKind::RedisUnavailable,
            Self::Timeout { .. } => ErrorKind::RedisTimeout,
            Self::Redis { .. } => ErrorKind::Redis,
            Self::Torn { .. } => ErrorKind::Torn,
            Self::Http { .. } => ErrorKind::Http,
            Self::TornAnswer { .. } => ErrorKind::TornAnswer,
            Self::Challenge { .. } => ErrorKind::Challenge,
            #[cfg(any(feature = "vault", feature = "legacy"))]
            Self::Database { .. } => ErrorKind::Database,
            #[cfg(any(feature = "vault", feature = "legacy"))]
            Self::DatabaseConnect { .. } => ErrorKind::DatabaseUnavailable,
            Self::Crypto { .. } => ErrorKind::Crypto,
        }
    }

    /// True when Redis or PostgreSQL could not be reached or did not answer in time (see
    /// [`ErrorKind::is_unavailable`]). For the limiter's errors, the case the
    /// [`OnRedisDown`](crate::OnRedisDown) policy governs.
    pub fn is_unavailable(&self) -> bool {
        self.kind().is_unavailable()
    }

    /// True when the same call, made again later, may succeed. For a Torn error code,
    /// when its [class](crate::torn::TornErrorCode::class) says to retry.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Torn { code, .. } => code.class() == crate::torn::ErrorClass::Retry,
            other => other.kind().is_retryable(),
        }
    }

    /// True when time ran out (see [`ErrorKind::is_deadline`]).
    pub fn is_deadline(&self) -> bool {
        self.kind().is_deadline()
    }
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests;
