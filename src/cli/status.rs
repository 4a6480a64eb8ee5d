//! `torn-quota status` and `torn-quota set-limit`: read a bucket, change a user's limit.

use std::num::NonZeroU32;
use std::process::ExitCode;

use serde_json::json;
use torn_quota::{Limiter, RateLimitConfig, TornUserId};

use super::{CliResult, emit, user_id};

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// The Torn user id.
    #[arg(long, value_parser = user_id)]
    user: TornUserId,
}

#[derive(Debug, clap::Args)]
pub(crate) struct SetLimitArgs {
    /// The Torn user id.
    #[arg(long, value_parser = user_id)]
    user: TornUserId,
    /// The new limit per window.
    #[arg(long, conflicts_with = "clear", required_unless_present = "clear")]
    limit: Option<NonZeroU32>,
    /// Remove the run-time override: the configured limit applies again.
    #[arg(long)]
    clear: bool,
}

pub(crate) async fn run(config: RateLimitConfig, args: Args) -> CliResult {
    let limiter = Limiter::redis(config)?;
    let s = limiter.status(args.user).await?;
    emit(&json!({
        "used": s.used,
        "limit": s.limit,
        "remaining": s.remaining,
        "reset_after_ms": s.reset_after.as_millis() as u64,
        "penalty_ms": s.penalty.as_millis() as u64,
        "degraded": s.degraded,
    }));
    Ok(ExitCode::SUCCESS)
}

pub(crate) async fn set_limit(config: RateLimitConfig, args: SetLimitArgs) -> CliResult {
    let limiter = Limiter::redis(config)?;
    limiter.set_user_limit(args.user, args.limit).await?;
    let s = limiter.status(args.user).await?;
    eprintln!(
        "user {}: limit {} per window, for every process",
        args.user, s.limit
    );
    emit(
        &json!({ "user": args.user.get(), "limit": s.limit, "override": args.limit.map(NonZeroU32::get) }),
    );
    Ok(ExitCode::SUCCESS)
}
