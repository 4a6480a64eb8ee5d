//! Torn's JSON: the error envelope, `/v2/key/info`, `/v2/user/basic`.

use serde_json::Value;

use crate::error::{Error, Result, Source};
use crate::identity::{AccessLevel, TornUserId};
use crate::torn::TornErrorCode;

/// Torn's error in an answer, if it is one: `{"error":{"code":N,"error":"text"}}`.
pub(super) fn torn_error(body: &Value) -> Option<(TornErrorCode, String)> {
    let error = body.get("error")?;
    let code = error
        .get("code")
        .and_then(Value::as_u64)
        .and_then(|c| u16::try_from(c).ok())
        // A body without a usable code is an unknown error, which Torn numbers 0.
        .map_or(TornErrorCode::new(0), TornErrorCode::new);
    let message = error
        .get("error")
        .and_then(Value::as_str)
        .map_or_else(|| code.text().to_owned(), str::to_owned);
    Some((code, message))
}

/// `{"info":{"user":{"id":N},"access":{"level":L}}}`: the access level, and the owner when
/// the answer names one (Torn's answer does not always carry `info.user.id`).
pub(super) fn parse_key_info(body: &Value) -> Result<(Option<TornUserId>, AccessLevel)> {
    let owner = body
        .pointer("/info/user/id")
        .and_then(Value::as_u64)
        .filter(|&id| id > 0)
        .map(TornUserId::new);
    let access = body
        .pointer("/info/access/level")
        .and_then(Value::as_u64)
        .and_then(|l| u8::try_from(l).ok())
        .and_then(AccessLevel::from_number)
        .ok_or_else(|| Error::TornAnswer {
            operation: "torn key info",
            source: Source::msg("the answer has no known info.access.level"),
        })?;
    Ok((owner, access))
}

/// `{"profile":{"id":N,...}}` from `/v2/user/basic`: the key's owner.
pub(super) fn parse_profile_id(body: &Value) -> Result<TornUserId> {
    body.pointer("/profile/id")
        .and_then(Value::as_u64)
        .filter(|&id| id > 0)
        .map(TornUserId::new)
        .ok_or_else(|| Error::TornAnswer {
            operation: "torn user basic",
            source: Source::msg("the answer has no profile.id"),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn torn_errors_and_key_info_parse() {
        let body = serde_json::json!({"error": {"code": 17, "error": "Backend error"}});
        let (code, message) = torn_error(&body).unwrap();
        assert_eq!((code.get(), message.as_str()), (17, "Backend error"));
        let (code, _) = torn_error(&serde_json::json!({"error": {}})).unwrap();
        assert_eq!(code.get(), 0);
        assert!(torn_error(&serde_json::json!({"profile": {}})).is_none());

        let info = serde_json::json!({"info": {"user": {"id": 4}, "access": {"level": 3}}});
        let (owner, access) = parse_key_info(&info).unwrap();
        assert_eq!(owner, Some(TornUserId::new(4)));
        assert_eq!(access, AccessLevel::Limited);
        assert!(parse_key_info(&serde_json::json!({"info": {"user": {"id": 4}}})).is_err());
        let no_user = serde_json::json!({"info": {"access": {"level": 1}}});
        assert_eq!(
            parse_key_info(&no_user).unwrap(),
            (None, AccessLevel::Public)
        );
        let me = serde_json::json!({"profile": {"id": 7, "name": "x"}});
        assert_eq!(parse_profile_id(&me).unwrap(), TornUserId::new(7));
        assert!(parse_profile_id(&serde_json::json!({"profile": {"id": 0}})).is_err());
    }
}
