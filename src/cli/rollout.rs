//! `torn-quota rollout`: what the shadow found (report, reset), where a user is routed, and
//! the legacy table's cleanup; plus the router every deciding command builds.

use std::process::ExitCode;

use serde_json::json;
use torn_quota::rollout::{
    Disagreements, RolloutLimiter, Route, effective_percent, needs_legacy, rollout_bucket,
};
use torn_quota::{Limiter, RateLimitConfig, TornUserId};

use super::{CliResult, Settings, emit, user_id};

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    #[command(subcommand)]
    command: RolloutCommand,
}

#[derive(Debug, clap::Subcommand)]
enum RolloutCommand {
    /// Disagreements counted in shadow mode by every process: totals by direction and the
    /// users most affected. JSON on stdout, a table on stderr.
    Report(ReportArgs),
    /// Forgets the disagreement counts, for a fresh start after a rollout step.
    Reset,
    /// Where a user's decisions go under the configured mode and percentage.
    Route(RouteArgs),
    /// Deletes legacy rate-limit rows older than the legacy window, once (workers do it
    /// periodically; this is for cron or by hand).
    #[cfg(feature = "legacy")]
    Cleanup,
}

#[derive(Debug, clap::Args)]
struct ReportArgs {
    /// How many of the most affected users to list.
    #[arg(long, default_value_t = 10)]
    top: usize,
}

#[derive(Debug, clap::Args)]
struct RouteArgs {
    /// The Torn user id.
    #[arg(long, value_parser = user_id)]
    user: TornUserId,
}

/// The router for the configuration: the per-user limiter in Redis and, when the mode or the
/// percentage may route anyone to legacy, the legacy limiter on `DATABASE_URL`. Neither
/// connects before its first decision, so a call that only one of them decides never needs
/// the other to answer.
pub(crate) fn open(
    settings: &Settings,
    config: RateLimitConfig,
) -> Result<RolloutLimiter, Box<dyn std::error::Error + Send + Sync>> {
    Ok(open_on(settings, Limiter::redis(config)?)?)
}

/// A Torn client whose every call takes its quota through the gate the configuration's
/// mode and percentage choose (the legacy limiter on `DATABASE_URL` when they route anyone
/// to it), over `limiter`.
pub(crate) fn client(
    settings: &Settings,
    limiter: Limiter,
    torn: torn_quota::torn::TornClientConfig,
) -> Result<torn_quota::torn::TornClient, torn_quota::Error> {
    let rollout = open_on(settings, limiter.clone())?;
    let gate = torn_quota::gate::QuotaGate::builder(limiter.clone(), &torn)
        .rollout(rollout)
        .build()?;
    torn_quota::torn::TornClient::builder(limiter, torn)
        .gate(gate)
        .build()
}

/// The router for `limiter`'s configuration, as [`open`] builds it.
fn open_on(settings: &Settings, limiter: Limiter) -> Result<RolloutLimiter, torn_quota::Error> {
    let config = limiter.config().clone();
    let needs = needs_legacy(config.mode(), config.rollout_percent());
    #[cfg(feature = "legacy")]
    let legacy = if needs {
        let db = settings.database().map_err(|e| {
            match e {
                // Say why a per-user deployment suddenly wants a database.
                torn_quota::Error::Config { setting, reason } => torn_quota::Error::Config {
                    setting,
                    reason: format!(
                        "{reason} (TORN_QUOTA_MODE={} at {} % on per-user routes users to \
                         the legacy limiter, which keeps its rows in PostgreSQL)",
                        config.mode().as_str(),
                        effective_percent(config.mode(), config.rollout_percent())
                    ),
                },
                other => other,
            }
        })?;
        let pool = db.connect_lazy()?;
        Some(torn_quota::rollout::LegacyLimiter::from_config(
            pool, &config,
        ))
    } else {
        None
    };
    #[cfg(not(feature = "legacy"))]
    let _ = (needs, settings);
    let builder = RolloutLimiter::builder(limiter);
    #[cfg(feature = "legacy")]
    let builder = match legacy {
        Some(l) => builder.legacy(l),
        None => builder,
    };
    builder.build()
}

pub(crate) async fn run(settings: &Settings, args: Args) -> CliResult {
    let config = settings.rate_limit()?;
    match args.command {
        RolloutCommand::Report(a) => report(&config, a.top).await,
        RolloutCommand::Reset => {
            Disagreements::redis(&config)?.reset().await?;
            eprintln!("disagreement counts reset");
            emit(&json!({ "reset": true }));
            Ok(ExitCode::SUCCESS)
        }
        RolloutCommand::Route(a) => {
            let route = Route::of(a.user, config.mode(), config.rollout_percent());
            emit(&json!({
                "user": a.user.get(),
                "mode": config.mode().as_str(),
                "percent": effective_percent(
                    config.mode(),
                    config.rollout_percent()
                ),
                "bucket": rollout_bucket(a.user),
                "route": route.as_str(),
                "enforced_by": route.enforced_by().as_str(),
            }));
            Ok(ExitCode::SUCCESS)
        }
        #[cfg(feature = "legacy")]
        RolloutCommand::Cleanup => {
            let pool = settings
                .database()?
                .statement_timeout(None)
                .connect()
                .await?;
            let legacy = torn_quota::rollout::LegacyLimiter::from_config(pool, &config);
            let deleted = legacy.cleanup_once().await?;
            eprintln!(
                "deleted {deleted} legacy rows older than {} ms",
                legacy.window().as_millis()
            );
            emit(&json!({ "deleted": deleted }));
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn report(config: &RateLimitConfig, top: usize) -> CliResult {
    let report = Disagreements::redis(config)?.report(top).await?;
    let percent = effective_percent(config.mode(), config.rollout_percent());
    eprintln!(
        "mode {} at {percent} % on per-user; disagreements: {} legacy-only (legacy granted, \
         per-user refused), {} per-user-only (per-user granted, legacy refused)",
        config.mode().as_str(),
        report.legacy_only,
        report.per_user_only,
    );
    if !report.users.is_empty() {
        eprintln!(
            "{:>12} {:>12} {:>14} {:>8}",
            "user", "legacy_only", "per_user_only", "total"
        );
        for u in &report.users {
            eprintln!(
                "{:>12} {:>12} {:>14} {:>8}",
                u.user,
                u.legacy_only,
                u.per_user_only,
                u.total()
            );
        }
    }
    emit(&json!({
        "mode": config.mode().as_str(),
        "percent": percent,
        "legacy_only": report.legacy_only,
        "per_user_only": report.per_user_only,
        "total": report.total(),
        "since_ms": report.since_ms,
        "users": report.users.iter().map(|u| json!({
            "user": u.user.get(),
            "legacy_only": u.legacy_only,
            "per_user_only": u.per_user_only,
            "total": u.total(),
        })).collect::<Vec<_>>(),
    }));
    Ok(ExitCode::SUCCESS)
}
