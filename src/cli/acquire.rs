//! `torn-quota acquire`: one decision under the configured mode, as JSON, with the exit
//! code saying granted or not.

use std::process::ExitCode;
use std::time::Duration;

use serde_json::json;
use torn_quota::rollout::Shadow;
use torn_quota::{RateLimitConfig, Request, TornUserId};

use super::{CliResult, Settings, emit, user_id};

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// The Torn user id (the key's owner) whose quota pays.
    #[arg(long, value_parser = user_id)]
    user: TornUserId,
    /// The key's SHA-256 (64 lowercase hex characters): the legacy limiter counts per key,
    /// so it is required whenever legacy decides for this user.
    #[arg(long, value_parser = key_hash)]
    key_hash: Option<String>,
    /// Units asked for.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    cost: u32,
    /// Wait until granted instead of answering at once.
    #[arg(long)]
    wait: bool,
    /// With --wait: give up after this many milliseconds (exit 1), counted from the
    /// command's start: the deadline bounds the whole call, slow Redis answers included.
    #[arg(long, requires = "wait")]
    timeout_ms: Option<u64>,
}

fn key_hash(raw: &str) -> Result<String, String> {
    if raw.len() == 64 && raw.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        Ok(raw.to_owned())
    } else {
        // Never echo the value: a key passed here by mistake must not reach a log.
        Err("expected the key's SHA-256 as 64 lowercase hex characters".into())
    }
}

pub(crate) async fn run(settings: &Settings, config: RateLimitConfig, args: Args) -> CliResult {
    let deadline = args
        .timeout_ms
        .map(|ms| tokio::time::Instant::now() + Duration::from_millis(ms));
    let rollout = super::rollout::open(settings, config)?;
    let request = Request::new(args.cost);
    let key = args.key_hash.as_deref();
    let decision = if args.wait {
        let waiting = rollout.acquire_until(args.user, key, &request, deadline);
        match deadline {
            None => waiting.await?,
            // The wait between tries stops at the deadline, but a try itself (Redis slow
            // or frozen, each command within its own timeout) may run past it: bound
            // the whole call.
            Some(d) => match tokio::time::timeout_at(d, waiting).await {
                Ok(decision) => decision?,
                Err(_) => return Ok(timed_out(args.timeout_ms.unwrap_or_default())),
            },
        }
    } else {
        rollout.try_acquire(args.user, key, &request).await?
    };
    let mut out = json!({
        "granted": decision.is_granted(),
        "remaining": decision.remaining(),
        "retry_after_ms": decision.retry_after().as_millis() as u64,
        "enforced_by": decision.enforced_by().as_str(),
        "degraded": decision.is_degraded(),
    });
    match decision.shadow() {
        Some(Shadow::Decided { granted, agree }) => {
            out["shadow"] = json!({ "granted": granted, "agree": agree });
        }
        Some(_) => {
            out["shadow"] = json!({ "granted": null, "agree": null, "error": "unavailable" });
        }
        None => {}
    }
    emit(&out);
    Ok(if decision.is_granted() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// No decision before the deadline: not granted (exit 1), nothing known about the bucket.
fn timed_out(timeout_ms: u64) -> ExitCode {
    eprintln!("no decision within --timeout-ms {timeout_ms}: not granted");
    emit(&json!({
        "granted": false,
        "remaining": null,
        "retry_after_ms": null,
        "enforced_by": null,
        "timed_out": true,
    }));
    ExitCode::from(1)
}
