//! One error for each of the callers that waited on one shared call (an owner resolution,
//! a re-check), keeping its kind and its cause.

use std::sync::Arc;

use crate::error::Error;

/// The error of a resolution that several callers waited on, for one of them: the error
/// itself (errors are `Clone`, so a shared "redis unavailable" stays one).
pub(super) fn unshare(shared: Arc<Error>) -> Error {
    Arc::unwrap_or_clone(shared)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::{ErrorKind, Source};
    use crate::torn::TornErrorCode;

    #[test]
    fn a_shared_error_keeps_its_code() {
        let shared = Arc::new(Error::Torn {
            code: TornErrorCode::INCORRECT_KEY,
            message: "Incorrect Key".into(),
        });
        let _other_waiter = Arc::clone(&shared);
        match unshare(shared) {
            Error::Torn { code, .. } => assert_eq!(code, TornErrorCode::INCORRECT_KEY),
            other => panic!("{other:?}"),
        }
    }

    /// The hand clone this replaced turned a shared "redis unavailable" into an http error.
    #[test]
    fn a_shared_redis_failure_stays_unavailable() {
        let shared = Arc::new(Error::Unavailable {
            operation: "acquire",
            source: Source::msg("connection refused"),
        });
        let _other_waiter = Arc::clone(&shared);
        let e = unshare(shared);
        assert_eq!(e.kind(), ErrorKind::RedisUnavailable);
        assert!(e.is_unavailable());
        let cause = std::error::Error::source(&e).map(ToString::to_string);
        assert_eq!(cause.as_deref(), Some("connection refused"));
    }
}
