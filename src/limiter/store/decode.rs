//! Reading the scripts' replies and mapping their errors.

use redis::{ErrorKind, RedisError, ServerErrorKind, Value};

use crate::error::{Error, Result, Source};
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
    let (code, detail) = msg.split_once(' ').unwrap_or((&msg, ""));
    script_failure(
        operation,
        code,
        detail,
        RedisError::from((
            ErrorKind::Server(ServerErrorKind::ResponseError),
            "script error",
            msg.strip_prefix("ERR ").unwrap_or(&msg).to_owned(),
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
    let code = e.code().unwrap_or_default().to_owned();
    let detail = e.detail().unwrap_or_default().to_owned();
    script_failure(operation, &code, &detail, e)
}

/// The stable code first in a script's refusal of a cost that can never be granted:
/// `TQ_COST cost=C limit=L reserve=R: <human text>` (see lua/acquire.lua, "errors").
const COST_CODE: &str = "TQ_COST";

/// Every script error, whether Redis returned it as the reply or as an entry of a batch
/// reply, decoded here: `code` is its first word, `detail` the rest.
fn script_failure(operation: &'static str, code: &str, detail: &str, e: RedisError) -> Error {
    if code == COST_CODE
        && let Some((cost, limit, reserve)) = cost_fields(detail)
    {
        return Error::CostExceedsLimit {
            cost,
            limit: limit.saturating_sub(reserve),
        };
    }
    Error::Redis {
        operation,
        source: Source::new(e),
    }
}

/// `cost=C limit=L reserve=R` from the front of a `TQ_COST` detail.
fn cost_fields(detail: &str) -> Option<(u32, u32, u32)> {
    let fields = detail.split(':').next()?;
    let (mut cost, mut limit, mut reserve) = (None, None, None);
    for field in fields.split_whitespace() {
        match field.split_once('=') {
            Some(("cost", v)) => cost = v.parse().ok(),
            Some(("limit", v)) => limit = v.parse().ok(),
            Some(("reserve", v)) => reserve = v.parse().ok(),
            _ => {}
        }
    }
    Some((cost?, limit?, reserve?))
}

pub(super) fn unexpected(operation: &'static str, reply: &[i64]) -> Error {
    unexpected_msg(operation, &format!("{reply:?}"))
}

pub(super) fn unexpected_msg(operation: &'static str, detail: &str) -> Error {
    Error::Redis {
        operation,
        source: Source::new(RedisError::from((
            ErrorKind::UnexpectedReturnType,
            "unexpected script reply",
            detail.to_owned(),
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// acquire.lua's refusal, as acquire_many.lua passes it on in a batch entry.
    #[test]
    fn a_cost_entry_decodes_to_cost_exceeds_limit() {
        let msg = b"TQ_COST cost=9 limit=5 reserve=2: acquire: cost 9 exceeds the limit 5 \
                    (reserve 2): it can never be granted";
        match entry_error("acquire", msg) {
            Error::CostExceedsLimit { cost: 9, limit: 3 } => {}
            other => panic!("{other:?}"),
        }
    }

    /// Any other script error stays a Redis refusal, with its text in the chain.
    #[test]
    fn another_entry_stays_a_redis_error() {
        let e = entry_error("settle", b"ERR settle: the state at KEYS[1] is not a log");
        assert!(matches!(e, Error::Redis { .. }), "{e:?}");
        let cause = std::error::Error::source(&e).unwrap().to_string();
        assert!(cause.contains("not a log"), "{cause}");
    }
}
