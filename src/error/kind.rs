//! [`ErrorKind`]: what failed, as a small `Copy` value to branch on, with the classifiers
//! callers ask most (is the backend down, is it worth retrying, did time run out).

/// What kind of failure an [`Error`](super::Error) is: one per variant, grouped by layer
/// (see the table in [`crate::error`]). New kinds may be added, so match with a `_` arm and
/// prefer the classifiers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// Settings: a setting failed validation.
    Config,
    /// Settings: a configuration file could not be read.
    ConfigFile,
    /// Any layer: a call got an argument it can never accept.
    InvalidArgument,
    /// Limiter: the cost can never be granted under the limit in force.
    CostExceedsLimit,
    /// Limiter: a waiting call was cancelled through its token.
    Cancelled,
    /// Limiter, gate: quota would not be free before the call's deadline.
    Deadline,
    /// Limiter: a background task (a batch worker) panicked or was aborted.
    Task,
    /// Redis: could not be reached.
    RedisUnavailable,
    /// Redis: did not answer within the command timeout.
    RedisTimeout,
    /// Redis: answered with an error that is not about connectivity.
    Redis,
    /// Torn: answered with one of its error codes.
    Torn,
    /// Torn: the HTTP exchange failed (connect, timeout, a status that is not 200).
    Http,
    /// Torn: the answer is not the JSON Torn sends.
    TornAnswer,
    /// Torn: Cloudflare answered with a challenge.
    Challenge,
    /// Vault: PostgreSQL failed or refused a statement.
    Database,
    /// Vault: PostgreSQL could not be reached, or refused the connection.
    DatabaseUnavailable,
    /// Vault: a key could not be encrypted or decrypted.
    Crypto,
}

impl ErrorKind {
    /// Every kind, for tables and tests.
    pub const ALL: [Self; 17] = [
        Self::Config,
        Self::ConfigFile,
        Self::InvalidArgument,
        Self::CostExceedsLimit,
        Self::Cancelled,
        Self::Deadline,
        Self::Task,
        Self::RedisUnavailable,
        Self::RedisTimeout,
        Self::Redis,
        Self::Torn,
        Self::Http,
        Self::TornAnswer,
        Self::Challenge,
        Self::Database,
        Self::DatabaseUnavailable,
        Self::Crypto,
    ];

    /// True when a backend (Redis or PostgreSQL) could not be reached or did not answer
    /// in time. For Redis, the case the [`OnRedisDown`](crate::OnRedisDown) policy governs.
    pub fn is_unavailable(self) -> bool {
        matches!(
            self,
            Self::RedisUnavailable | Self::RedisTimeout | Self::DatabaseUnavailable
        )
    }

    /// True when the same call, made again later unchanged, may succeed: a backend that was
    /// down, a transport failure or garbled answer, or quota that was not free in time.
    /// A Torn error code is not judged here: see
    /// [`TornErrorCode::class`](crate::torn::TornErrorCode::class).
    pub fn is_retryable(self) -> bool {
        self.is_unavailable() || matches!(self, Self::Http | Self::TornAnswer | Self::Deadline)
    }

    /// True when time ran out: the call's own deadline, or Redis's command timeout.
    pub fn is_deadline(self) -> bool {
        matches!(self, Self::Deadline | Self::RedisTimeout)
    }
}
