//! Reading the scripts' replies and mapping their errors.

use redis::{ErrorKind, RedisError, ServerErrorKind, Value};

use crate::error::{Error, Result};
use crate::limiter::backend::RawDecision;

/// Reads acquire.lua's reply (with its time).
pub(super) fn decision(reply: &[i64]) -> Result<RawDecision> {
    match reply[..] {
        [granted, remaining, retry, at] => Ok(RawDecision {
            granted: granted == 1,
            remaining: remaining as u32,
            retry_after_ms: retry as u64,
            at_ms: at as u64,
        }),
        _ => Err(unexpected("acquire", reply)),
    }
}

/// Reads one entry of settle.lua's reply: records restamped, or an error message.
pub(super) fn settle_entry(entry: Value) -> Result<u32> {
    match entry {
        Value::Int(n) => Ok(n.clamp(0, i64::from(u32::MAX)) as u32),
        Value::BulkString(bytes) => Err(entry_error("settle", &bytes)),
        other => Err(unexpected_msg("settle", &format!("{other:?}"))),
    }
}

/// A script's error message returned as a string entry of a batch reply.
fn entry_error(operation: &'static str, bytes: &[u8]) -> Error {
    let msg = String::from_utf8_lossy(bytes);
    let detail = msg.strip_prefix("ERR ").unwrap_or(&msg).to_owned();
    script_error(
        operation,
        RedisError::from((
            ErrorKind::Server(ServerErrorKind::ResponseError),
            "script error",
            detail,
        )),
    )
}

/// Reads one entry of acquire_many.lua's reply: a decision, or acquire.lua's error message.
pub(super) fn entry_decision(entry: Value) -> Result<RawDecision> {
    match entry {
        Value::Array(items) => {
            let ints: Vec<i64> = items
                .into_iter()
                .map(|v| match v {
                    Value::Int(i) => i,
                    _ => -1,
                })
                .collect();
            decision(&ints)
        }
        Value::BulkString(bytes) => Err(entry_error("acquire", &bytes)),
        other => Err(unexpected_msg("acquire", &format!("{other:?}"))),
    }
}

/// Maps a script's error reply. The scripts' messages name the argument and carry no key.
pub(super) fn script_error(operation: &'static str, e: RedisError) -> Error {
    let detail = e.detail().unwrap_or_default();
    if let Some(rest) = detail.strip_prefix("acquire: cost ") {
        // "acquire: cost C exceeds the limit L (reserve R): ..."
        let nums: Vec<u32> = rest
            .split(|c: char| !c.is_ascii_digit())
            .filter_map(|s| s.parse().ok())
            .collect();
        if let [cost, limit, reserve, ..] = nums[..] {
            return Error::CostExceedsLimit {
                cost,
                limit: limit.saturating_sub(reserve),
            };
        }
    }
    Error::Redis {
        operation,
        source: e,
    }
}

/// The same failure for each caller of a failed batch (the error type is not `Clone`: some
/// variants hold boxed sources, which a batch call never produces).
pub(super) fn duplicate(e: &Error) -> Error {
    match e {
        Error::Unavailable { operation, source } => Error::Unavailable {
            operation,
            source: source.clone(),
        },
        Error::Redis { operation, source } => Error::Redis {
            operation,
            source: source.clone(),
        },
        Error::Timeout { operation, timeout } => Error::Timeout {
            operation,
            timeout: *timeout,
        },
        other => unexpected_msg("acquire", &other.to_string()),
    }
}

pub(super) fn unexpected(operation: &'static str, reply: &[i64]) -> Error {
    unexpected_msg(operation, &format!("{reply:?}"))
}

pub(super) fn unexpected_msg(operation: &'static str, detail: &str) -> Error {
    Error::Redis {
        operation,
        source: RedisError::from((
            ErrorKind::UnexpectedReturnType,
            "unexpected script reply",
            detail.to_owned(),
        )),
    }
}
