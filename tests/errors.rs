//! The public error's contract (issue 13): every cause is the crate's opaque `Source`, and a
//! script's refusal of a cost decodes to `CostExceedsLimit` with its numbers, on real Redis.

mod common;

use std::num::NonZeroU32;

use torn_quota::error::{ErrorKind, Source};
use torn_quota::{Error, KeyBuilder, Request, TornUserId, lua};

/// Compiles only while every variant with a cause holds the crate's own `Source`: a field
/// of redis-rs's, sqlx's or reqwest's type here would be a type error.
#[allow(dead_code)]
fn every_cause_is_a_source(e: &Error) -> Option<&Source> {
    match e {
        Error::ConfigFile { source, .. }
        | Error::Task { source, .. }
        | Error::Unavailable { source, .. }
        | Error::Redis { source, .. }
        | Error::Http { source, .. }
        | Error::TornAnswer { source, .. } => Some(source),
        #[cfg(any(feature = "vault", feature = "legacy"))]
        Error::Database { source, .. } | Error::DatabaseConnect { source, .. } => Some(source),
        _ => None,
    }
}

/// The script's refusal starts with the stable code and its fields, then the human text.
#[tokio::test]
async fn the_cost_refusal_has_a_stable_prefix() {
    let mut c = common::redis_conn().await;
    let keys = KeyBuilder::new(common::unique_prefix("err-prefix")).bucket(TornUserId::new(9));
    let mut cmd = redis::cmd("EVAL");
    cmd.arg(lua::ACQUIRE)
        .arg(1)
        .arg(keys.state.as_str())
        .arg(&["5", "1000", "5", "2"]);
    let err = cmd.query_async::<redis::Value>(&mut c).await.unwrap_err();
    assert_eq!(err.code(), Some("TQ_COST"), "{err}");
    let detail = err.detail().unwrap_or_default();
    assert!(detail.starts_with("cost=5 limit=5 reserve=2: "), "{detail}");
    assert!(detail.contains("cost 5 exceeds the limit 5"), "{detail}");
}

/// Through the Redis limiter: an override lowers the limit under the cost, so only the
/// script can tell, and its reply decodes to the numbers it refused with.
#[tokio::test]
async fn a_script_cost_refusal_decodes_to_cost_exceeds_limit() {
    common::redis_conn().await;
    let config = common::config("err-cost", 10, 5_000)
        .low_priority_reserve(1)
        .build()
        .unwrap();
    let limiter = torn_quota::Limiter::redis(config).unwrap();
    let user = TornUserId::new(31);
    limiter
        .set_user_limit(user, NonZeroU32::new(4))
        .await
        .unwrap();
    let err = limiter
        .try_acquire_with(user, &Request::new(4).priority(torn_quota::Priority::Low))
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::CostExceedsLimit { cost: 4, limit: 3 }),
        "{err:?}"
    );
    assert_eq!(err.kind(), ErrorKind::CostExceedsLimit);
    assert!(!err.is_retryable());
    assert_eq!(limiter.status(user).await.unwrap().used, 0);
}
