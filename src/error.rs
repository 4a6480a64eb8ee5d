//! The one error type for real failures. A denial is not one of them: it is a
//! [`Decision::Limited`](crate::Decision::Limited) value.

use std::time::Duration;

/// What can go wrong in torn-quota. Messages are lowercase, carry no secret, and chain
/// their source once (through [`std::error::Error::source`], not in the text).
#[derive(Debug, thiserror::Error)]
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
        source: redis::RedisError,
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
        source: redis::RedisError,
    },

    /// A waiting call was cancelled through its cancellation token.
    #[error("cancelled while waiting for quota")]
    Cancelled,

    /// Torn answered with an error code (HTTP 200, `{"error":{"code":N,"error":"text"}}`).
    /// What to do about it is [`TornErrorCode::class`](crate::torn::TornErrorCode::class).
    #[error("torn refused the request: code {}, {message}", code.get())]
    Torn {
        /// Torn's code.
        code: crate::torn::TornErrorCode,
        /// Torn's text, as it sent it.
        message: String,
    },

    /// An HTTP exchange failed (connect, timeout, a 5xx, a body that is not JSON). The
    /// source has its URL stripped: a URL may carry a key.
    #[error("http failure during {operation}")]
    Http {
        /// What the client was doing.
        operation: &'static str,
        /// The transport failure, without its URL.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
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
        source: sqlx::Error,
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
        source: sqlx::Error,
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
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl Error {
    /// True when the failure is Redis being unreachable or slow, the case the
    /// [`OnRedisDown`](crate::OnRedisDown) policy governs.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, Self::Unavailable { .. } | Self::Timeout { .. })
    }
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
