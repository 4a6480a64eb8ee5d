//! Shadow reports: disagreements adding up across stores and ranking the users most
//! affected, and the rollout through the operator CLI (acquire in each mode, report, route,
//! reset, cleanup).
//!
//! Every test has a database of its own (dropped at the end) and a Redis key prefix of its
//! own, so tests run in parallel. PostgreSQL: `TORN_QUOTA_TEST_DATABASE_URL`, default
//! `postgres://postgres@127.0.0.1:5432/test` (a role that may create databases).

// Everything here runs the legacy limiter.
#![cfg(feature = "legacy")]

mod common;

use common::pg::TestDb;
use common::rollout::key_hash;
#[cfg(feature = "cli")]
use common::rollout::{cli, last_json};
use torn_quota::TornUserId;
use torn_quota::rollout::{Direction, Disagreements, rollout_bucket};

// ---------------------------------------------------------------------------------------
// Disagreements across processes
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn disagreements_add_up_across_stores_and_rank_the_users_most_affected() {
    let config = common::config("report", 100, 60_000).build().unwrap();
    let (one, two) = (
        Disagreements::redis(&config).unwrap(),
        Disagreements::redis(&config).unwrap(),
    );
    for (store, user, direction, n) in [
        (&one, 10, Direction::LegacyOnly, 3),
        (&two, 10, Direction::PerUserOnly, 2),
        (&two, 11, Direction::LegacyOnly, 7),
        (&one, 12, Direction::PerUserOnly, 1),
    ] {
        for _ in 0..n {
            store
                .record(TornUserId::new(user), direction)
                .await
                .unwrap();
        }
    }
    let report = one.report(2).await.unwrap();
    assert_eq!(
        (report.legacy_only, report.per_user_only, report.total()),
        (10, 3, 13)
    );
    let users: Vec<(u64, u64, u64)> = report
        .users
        .iter()
        .map(|u| (u.user.get(), u.legacy_only, u.per_user_only))
        .collect();
    assert_eq!(users, [(11, 7, 0), (10, 3, 2)]);
    two.reset().await.unwrap();
    let empty = one.report(10).await.unwrap();
    assert_eq!(empty.total(), 0);
    assert!(empty.users.is_empty() && empty.since_ms.is_none());
}

// ---------------------------------------------------------------------------------------
// The CLI
// ---------------------------------------------------------------------------------------

#[cfg(feature = "cli")]
#[tokio::test]
async fn cli_acquire_in_each_mode() {
    let db = TestDb::migrated("rollout").await;
    let prefix = common::unique_prefix("cli-rollout");
    let key = key_hash("cli");
    let legacy2 = [("TORN_QUOTA_LEGACY_LIMIT", "2")];
    let run = |env: &[(&str, &str)], args: &[&str]| {
        let mut all = legacy2.to_vec();
        all.extend_from_slice(env);
        cli(&prefix, &db.url, &all).args(args).output().unwrap()
    };
    let acquire = ["acquire", "--user", "5", "--key-hash", key.as_str()];

    let out = run(&[("TORN_QUOTA_MODE", "legacy")], &acquire);
    assert_eq!(out.status.code(), Some(0));
    let v = last_json(&out);
    assert_eq!(v["enforced_by"], "legacy");
    assert_eq!(v["granted"], true);
    assert_eq!(v["remaining"], 1);
    assert!(v.get("shadow").is_none(), "{v}");

    // Shadow: legacy's second slot, then a refusal the shadow disagrees with.
    let shadow = [("TORN_QUOTA_MODE", "shadow"), ("RUST_LOG", "info")];
    let out = run(&shadow, &acquire);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        last_json(&out)["shadow"],
        serde_json::json!({"granted": true, "agree": true})
    );
    let out = run(&shadow, &acquire);
    assert_eq!(out.status.code(), Some(1), "legacy refuses: 2 per key");
    let v = last_json(&out);
    assert_eq!(v["enforced_by"], "legacy");
    assert_eq!(v["granted"], false);
    assert!(v["retry_after_ms"].as_u64().unwrap() > 0);
    assert_eq!(
        v["shadow"],
        serde_json::json!({"granted": true, "agree": false})
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("shadow disagreement"), "{stderr}");
    assert!(stderr.contains("user=5"), "{stderr}");
    assert!(
        !stderr.contains(key.as_str()),
        "the key hash never shows: {stderr}"
    );

    // Per-user: no database needed at all.
    let out = cli(&prefix, "", &[])
        .env_remove("DATABASE_URL")
        .args(["acquire", "--user", "5"])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v = last_json(&out);
    assert_eq!(v["enforced_by"], "per-user");
    assert!(v.get("shadow").is_none());

    // Per-user at 0 %: everyone stays on legacy (which refuses: the key's 2 are taken).
    let out = run(&[("TORN_QUOTA_ROLLOUT_PERCENT", "0")], &acquire);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(last_json(&out)["enforced_by"], "legacy");

    // Legacy without a key hash, or without a database: exit 2, naming what is missing.
    let out = run(
        &[("TORN_QUOTA_MODE", "legacy")],
        &["acquire", "--user", "5"],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("key_hash"));
    let out = cli(&prefix, "", &[("TORN_QUOTA_MODE", "legacy")])
        .env_remove("DATABASE_URL")
        .args(acquire)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("DATABASE_URL") && stderr.contains("TORN_QUOTA_MODE"),
        "{stderr}"
    );
}

#[cfg(feature = "cli")]
#[tokio::test]
async fn cli_rollout_report_route_reset_and_cleanup() {
    let db = TestDb::migrated("rollout").await;
    let prefix = common::unique_prefix("cli-report");
    let key = key_hash("cli-report");
    let run = |env: &[(&str, &str)], args: &[&str]| {
        let mut all = vec![("TORN_QUOTA_LEGACY_LIMIT", "1")];
        all.extend_from_slice(env);
        cli(&prefix, &db.url, &all).args(args).output().unwrap()
    };
    // Legacy takes its one slot, then refuses twice; the shadow grants all three.
    for code in [0, 1, 1] {
        let out = run(
            &[("TORN_QUOTA_MODE", "shadow")],
            &["acquire", "--user", "5", "--key-hash", key.as_str()],
        );
        assert_eq!(out.status.code(), Some(code));
    }

    let out = run(&[], &["rollout", "report"]);
    assert_eq!(out.status.code(), Some(0));
    let v = last_json(&out);
    assert_eq!(
        (v["legacy_only"].as_u64(), v["per_user_only"].as_u64()),
        (Some(0), Some(2))
    );
    assert_eq!(
        v["users"],
        serde_json::json!([{"user": 5, "legacy_only": 0, "per_user_only": 2, "total": 2}])
    );

    let out = run(
        &[
            ("TORN_QUOTA_MODE", "shadow"),
            ("TORN_QUOTA_ROLLOUT_PERCENT", "40"),
        ],
        &["rollout", "route", "--user", "1234"],
    );
    let v = last_json(&out);
    assert_eq!(
        v["bucket"],
        u64::from(rollout_bucket(TornUserId::new(1234)))
    );
    assert_eq!(v["route"], "legacy+shadow", "bucket 92 is above 40");

    assert_eq!(run(&[], &["rollout", "reset"]).status.code(), Some(0));
    assert_eq!(last_json(&run(&[], &["rollout", "report"]))["total"], 0);

    let out = run(&[], &["rollout", "cleanup"]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        last_json(&out)["deleted"],
        0,
        "every row is within the window"
    );
}
