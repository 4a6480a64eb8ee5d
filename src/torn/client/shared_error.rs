//! One error for each of the callers that waited on one shared call (an owner resolution,
//! a re-check), keeping its code and its cause.

use std::fmt;
use std::sync::Arc;

use crate::error::Error;

/// An error shared by the callers that waited on one owner resolution, as a source: it
/// shows the shared error's cause.
#[derive(Debug)]
pub(super) struct SharedCause(Arc<Error>);

impl fmt::Display for SharedCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match std::error::Error::source(&*self.0) {
            Some(cause) => fmt::Display::fmt(cause, f),
            None => fmt::Display::fmt(&self.0, f),
        }
    }
}

impl std::error::Error for SharedCause {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        std::error::Error::source(&*self.0).and_then(std::error::Error::source)
    }
}

/// The error of a resolution that several callers waited on, for one of them.
pub(super) fn unshare(shared: Arc<Error>) -> Error {
    let shared = match Arc::try_unwrap(shared) {
        Ok(error) => return error,
        Err(shared) => shared,
    };
    match &*shared {
        Error::Torn { code, message } => Error::Torn {
            code: *code,
            message: message.clone(),
        },
        Error::Cancelled => Error::Cancelled,
        Error::Challenge { operation } => Error::Challenge { operation },
        Error::InvalidArgument { name, reason } => Error::InvalidArgument {
            name,
            reason: reason.clone(),
        },
        Error::Config { setting, reason } => Error::Config {
            setting,
            reason: reason.clone(),
        },
        Error::CostExceedsLimit { cost, limit } => Error::CostExceedsLimit {
            cost: *cost,
            limit: *limit,
        },
        Error::Timeout { operation, timeout } => Error::Timeout {
            operation,
            timeout: *timeout,
        },
        Error::Http { operation, .. } => Error::Http {
            operation,
            source: Box::new(SharedCause(Arc::clone(&shared))),
        },
        _ => Error::Http {
            operation: "torn key info",
            source: Box::new(SharedCause(Arc::clone(&shared))),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
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
}
