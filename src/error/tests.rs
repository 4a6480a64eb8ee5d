//! The kind of every variant and what its classifiers say, as the module doc's table has
//! it; and a clone keeping both.

use std::fmt;
use std::time::Duration;

use super::{Error, ErrorKind, Source};
use crate::torn::TornErrorCode;

fn src() -> Source {
    Source::msg("cause")
}

/// One error of each variant, with (kind, unavailable, retryable, deadline).
// A table, one row a variant: long, not complex.
#[allow(clippy::too_many_lines)]
fn table() -> Vec<(Error, ErrorKind, bool, bool, bool)> {
    let operation = "op";
    // Only the vault and legacy rows are added later, by feature.
    #[cfg_attr(not(any(feature = "vault", feature = "legacy")), allow(unused_mut))]
    let mut rows = vec![
        (
            Error::Config {
                setting: "TORN_QUOTA_LIMIT",
                reason: "zero".into(),
            },
            ErrorKind::Config,
            false,
            false,
            false,
        ),
        (
            Error::ConfigFile {
                path: "q.toml".into(),
                source: src(),
            },
            ErrorKind::ConfigFile,
            false,
            false,
            false,
        ),
        (
            Error::InvalidArgument {
                name: "cost",
                reason: "zero".into(),
            },
            ErrorKind::InvalidArgument,
            false,
            false,
            false,
        ),
        (
            Error::CostExceedsLimit { cost: 6, limit: 5 },
            ErrorKind::CostExceedsLimit,
            false,
            false,
            false,
        ),
        (Error::Cancelled, ErrorKind::Cancelled, false, false, false),
        (Error::Deadline, ErrorKind::Deadline, false, true, true),
        (
            Error::Task {
                operation,
                source: src(),
            },
            ErrorKind::Task,
            false,
            false,
            false,
        ),
        (
            Error::Unavailable {
                operation,
                source: src(),
            },
            ErrorKind::RedisUnavailable,
            true,
            true,
            false,
        ),
        (
            Error::Timeout {
                operation,
                timeout: Duration::from_millis(5),
            },
            ErrorKind::RedisTimeout,
            true,
            true,
            true,
        ),
        (
            Error::Redis {
                operation,
                source: src(),
            },
            ErrorKind::Redis,
            false,
            false,
            false,
        ),
        (
            Error::Torn {
                code: TornErrorCode::INCORRECT_KEY,
                message: "Incorrect key".into(),
            },
            ErrorKind::Torn,
            false,
            false,
            false,
        ),
        (
            Error::Http {
                operation,
                source: src(),
            },
            ErrorKind::Http,
            false,
            true,
            false,
        ),
        (
            Error::TornAnswer {
                operation,
                source: src(),
            },
            ErrorKind::TornAnswer,
            false,
            true,
            false,
        ),
        (
            Error::Challenge { operation },
            ErrorKind::Challenge,
            false,
            false,
            false,
        ),
        (
            Error::Crypto {
                reason: "tampered".into(),
            },
            ErrorKind::Crypto,
            false,
            false,
            false,
        ),
    ];
    #[cfg(any(feature = "vault", feature = "legacy"))]
    rows.extend([
        (
            Error::Database {
                operation,
                source: src(),
            },
            ErrorKind::Database,
            false,
            false,
            false,
        ),
        (
            Error::DatabaseConnect {
                target: "127.0.0.1:5432".into(),
                source: src(),
            },
            ErrorKind::DatabaseUnavailable,
            true,
            true,
            false,
        ),
    ]);
    rows
}

#[test]
fn every_variant_has_its_kind_and_classifiers() {
    for (e, kind, unavailable, retryable, deadline) in table() {
        assert_eq!(e.kind(), kind, "{e:?}");
        assert_eq!(e.is_unavailable(), unavailable, "{e:?}");
        assert_eq!(e.is_retryable(), retryable, "{e:?}");
        assert_eq!(e.is_deadline(), deadline, "{e:?}");
        // The kind's own classifiers agree (a Torn code is judged only by the error).
        assert_eq!(kind.is_unavailable(), unavailable, "{kind:?}");
        assert_eq!(kind.is_retryable(), retryable, "{kind:?}");
        assert_eq!(kind.is_deadline(), deadline, "{kind:?}");
    }
}

#[cfg(any(feature = "vault", feature = "legacy"))]
#[test]
fn every_kind_is_in_the_table() {
    let kinds: Vec<ErrorKind> = table().iter().map(|r| r.1).collect();
    for kind in ErrorKind::ALL {
        assert!(kinds.contains(&kind), "{kind:?} has no row");
    }
    assert_eq!(kinds.len(), ErrorKind::ALL.len());
}

#[test]
fn a_torn_code_that_asks_for_a_retry_is_retryable() {
    let retry = TornErrorCode::known()
        .find(|c| c.class() == crate::torn::ErrorClass::Retry)
        .unwrap();
    let e = Error::Torn {
        code: retry,
        message: "Too many requests".into(),
    };
    assert!(e.is_retryable());
    assert!(!e.kind().is_retryable(), "the kind alone cannot tell");
}

/// A cause with a cause of its own.
#[derive(Debug)]
struct Outer(std::io::Error);

impl fmt::Display for Outer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("outer failure")
    }
}

impl std::error::Error for Outer {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.0)
    }
}

fn chain(e: &Error) -> Vec<String> {
    let mut out = vec![e.to_string()];
    let mut next = std::error::Error::source(e);
    while let Some(cause) = next {
        out.push(cause.to_string());
        next = cause.source();
    }
    out
}

#[test]
fn a_clone_keeps_its_kind_and_its_chain() {
    let e = Error::Unavailable {
        operation: "acquire",
        source: Source::new(Outer(std::io::Error::other("connection refused"))),
    };
    let copy = e.clone();
    assert_eq!(copy.kind(), ErrorKind::RedisUnavailable);
    assert_eq!(
        chain(&copy),
        [
            "redis unavailable during acquire",
            "outer failure",
            "connection refused"
        ]
    );
    assert_eq!(chain(&copy), chain(&e));
}
