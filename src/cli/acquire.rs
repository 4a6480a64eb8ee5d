//! `torn-quota acquire`: one decision, as JSON, with the exit code saying granted or not.

use std::process::ExitCode;
use std::time::Duration;

use serde_json::json;
use torn_quota::{Decision, Error, Limiter, Mode, RateLimitConfig, Request, TornUserId, Wait};

use super::{CliResult, emit, user_id};

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// The Torn user id (the key's owner) whose quota pays.
    #[arg(long, value_parser = user_id)]
    user: TornUserId,
    /// The key's SHA-256 (64 lowercase hex characters), for the legacy per-key limiter.
    #[arg(long, value_parser = key_hash)]
    key_hash: Option<String>,
    /// Units asked for.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    cost: u32,
    /// Wait until granted instead of answering at once.
    #[arg(long)]
    wait: bool,
    /// With --wait: give up after this many milliseconds (exit 1).
    #[arg(long, requires = "wait")]
    timeout_ms: Option<u64>,
}

fn key_hash(raw: &str) -> Result<String, String> {
    if raw.len() == 64 && raw.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        Ok(raw.to_owned())
    } else {
        Err("expected the key's SHA-256 as 64 lowercase hex characters".into())
    }
}

pub(crate) async fn run(config: RateLimitConfig, args: Args) -> CliResult {
    if config.mode() != Mode::PerUser {
        return Err(Error::Config {
            setting: "TORN_QUOTA_MODE",
            reason: format!(
                "'{}' needs the legacy limiter, which is not part of this build yet; use per-user",
                config.mode().as_str()
            ),
        }
        .into());
    }
    let _ = args.key_hash; // Only the legacy limiter buckets by key.
    let limiter = Limiter::redis(config)?;
    let request = Request::new(args.cost);
    let decision = if args.wait {
        let mut wait = Wait::forever();
        if let Some(ms) = args.timeout_ms {
            wait = wait.at_most(Duration::from_millis(ms));
        }
        limiter.acquire_with(args.user, &request, &wait).await?
    } else {
        limiter.try_acquire_with(args.user, &request).await?
    };
    emit(&json!({
        "granted": decision.is_granted(),
        "remaining": decision.remaining(),
        "retry_after_ms": decision.retry_after().as_millis() as u64,
        "enforced_by": Mode::PerUser.as_str(),
        "degraded": decision.is_degraded(),
    }));
    Ok(match decision {
        Decision::Granted(_) => ExitCode::SUCCESS,
        _ => ExitCode::from(1),
    })
}
