//! What the rollout tests share: key hashes as the legacy limiter receives them, the two
//! limiters and the router over them, legacy rows, and the operator CLI with a clean
//! environment.

use std::num::NonZeroU32;
#[cfg(feature = "cli")]
use std::process::{Command, Output};
use std::time::Duration;

use rand::Rng;
#[cfg(feature = "cli")]
use serde_json::Value;
use sqlx::PgPool;
use torn_quota::KeyHash;
use torn_quota::rollout::{LegacyLimiter, RolloutDecision, RolloutLimiter};
use torn_quota::{Limiter, Mode, Request, TornUserId};

use super::pg::TestDb;

/// A key hash no other test uses (a real SHA-256, as the legacy limiter receives them).
pub fn key_hash(label: &str) -> String {
    let salt: u64 = rand::rng().random();
    KeyHash::of(&format!("{label}-{salt}")).as_str().to_owned()
}

/// The legacy limiter on the test database: 50 per key per minute, as in production.
pub fn legacy(db: &TestDb) -> LegacyLimiter {
    LegacyLimiter::new(
        db.pool.clone(),
        NonZeroU32::new(50).unwrap(),
        Duration::from_secs(60),
    )
}

/// The per-user limiter in the test Redis: Torn's 100 per minute, under a fresh prefix.
pub fn per_user(name: &str, mode: Mode) -> Limiter {
    super::redis_url();
    Limiter::redis(super::config(name, 100, 60_000).mode(mode).build().unwrap()).unwrap()
}

/// The router over the per-user limiter in `mode` and the legacy limiter.
pub fn router(db: &TestDb, name: &str, mode: Mode) -> RolloutLimiter {
    RolloutLimiter::builder(per_user(name, mode))
        .legacy(legacy(db))
        .build()
        .unwrap()
}

/// The legacy rows recorded for `hash`.
pub async fn rows_of(pool: &PgPool, hash: &str) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM sentinel_rate_limit_requests WHERE api_key_hash = $1")
        .bind(hash)
        .fetch_one(pool)
        .await
        .unwrap()
}

/// Calls `user` with `keys` in turn, `calls` times, one unit each.
pub async fn round_robin(
    r: &RolloutLimiter,
    user: TornUserId,
    keys: &[String],
    calls: usize,
) -> Vec<RolloutDecision> {
    let mut out = Vec::with_capacity(calls);
    for i in 0..calls {
        let key = &keys[i % keys.len()];
        out.push(
            r.try_acquire(user, Some(key), &Request::new(1))
                .await
                .unwrap(),
        );
    }
    out
}

/// How many of `decisions` were granted.
pub fn granted(decisions: &[RolloutDecision]) -> usize {
    decisions.iter().filter(|d| d.is_granted()).count()
}

/// The binary with a clean environment: the test Redis under `prefix`, the test database.
#[cfg(feature = "cli")]
pub fn cli(prefix: &str, database_url: &str, env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_torn-quota"));
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("REDIS_URL", super::redis_url())
        .env("TORN_QUOTA_KEY_PREFIX", prefix)
        .env("DATABASE_URL", database_url)
        // Plain log lines, so that the tests can read them.
        .env("NO_COLOR", "1");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

/// The last stdout line of a CLI run, as JSON.
#[cfg(feature = "cli")]
pub fn last_json(out: &Output) -> Value {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().last().unwrap_or_else(|| {
        panic!(
            "no JSON on stdout; stderr: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    serde_json::from_str(line).unwrap()
}
