//! Command-line parsing and dispatch. Each command lives in its own file.

mod acquire;
mod batch;
mod bench;
mod demo;
mod rollout;
mod serve;
mod sim;
mod status;
mod vault;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use torn_quota::TornUserId;
pub(crate) use torn_quota::settings::Settings;

/// Share each Torn player's API quota exactly across every process of a tool.
#[derive(Debug, Parser)]
#[command(name = "torn-quota", version, about)]
struct Cli {
    /// A TOML file of settings (keys are the environment names); the environment wins.
    #[arg(long, global = true, env = "TORN_QUOTA_CONFIG")]
    config: Option<PathBuf>,

    /// Serves Prometheus metrics on this address (`/metrics`), e.g. 127.0.0.1:9100. Needs a
    /// build with the `prometheus` feature.
    #[arg(long, global = true, value_name = "ADDR")]
    metrics_addr: Option<std::net::SocketAddr>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Several workers race for one user's quota; the limit holds (Redis if it answers,
    /// else in memory).
    Demo(demo::Args),
    /// One decision for a Torn user id. Exit 0 granted, 1 refused, 2 error.
    Acquire(acquire::Args),
    /// The bucket of a Torn user id now, without consuming anything.
    Status(status::Args),
    /// Set or clear one user's limit at run time, for every process at once.
    SetLimit(status::SetLimitArgs),
    /// Decisions per second against Redis, beside a no-op EVALSHA at the same concurrency.
    Bench(bench::Args),
    /// Runs every request of --input over the keys of --keys at the owners' full quota;
    /// JSON Lines in input order to --output. Exit 0 all ok, 1 some failed, 2 error.
    Batch(batch::Args),
    /// Runs the Torn API simulator on loopback until Ctrl-C, then prints what it served.
    Sim(sim::Args),
    /// Applies the embedded PostgreSQL migrations to DATABASE_URL (a second run is a no-op).
    Migrate(vault::MigrateArgs),
    /// The key vault: add (key on stdin), list (masked), remove, primary, rotate.
    Keys(vault::KeysArgs),
    /// Stores the key in TORN_API_KEY for an account and gives that account the legacy
    /// rate-limit rows of its hash.
    ImportLegacy(vault::ImportLegacyArgs),
    /// The move from the legacy per-key limiter: shadow disagreements (report, reset), a
    /// user's route, the legacy table's cleanup.
    Rollout(rollout::Args),
    /// The Torn API gateway: apps set TORN_API_BASE_URL to it and every call counts on
    /// its owner's exact quota; until Ctrl-C or SIGTERM.
    Serve(serve::Args),
}

/// Parses arguments, runs the command, and maps failures to exit code 2 with the error
/// chain on stderr.
pub(crate) fn main() -> ExitCode {
    let cli = Cli::parse();
    // The demo tells its own story (dropped keys, the summary); its warnings would repeat
    // it in log form. RUST_LOG still wins.
    init_tracing(if matches!(cli.command, Command::Demo(_)) {
        "error"
    } else {
        "warn"
    });
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let result = runtime.block_on(async {
        // Read once, here: every command takes its configurations from this one value.
        let settings = Settings::load(cli.config.as_deref())?;
        start_metrics(cli.metrics_addr, &settings)?;
        match cli.command {
            Command::Demo(args) => demo::run(&settings, args).await,
            Command::Acquire(args) => acquire::run(&settings, settings.rate_limit()?, args).await,
            Command::Rollout(args) => rollout::run(&settings, args).await,
            Command::Serve(args) => serve::run(&settings, args).await,
            Command::Status(args) => status::run(settings.rate_limit()?, args).await,
            Command::SetLimit(args) => status::set_limit(settings.rate_limit()?, args).await,
            Command::Bench(args) => bench::run(settings.rate_limit()?, args).await,
            Command::Batch(args) => batch::run(&settings, args).await,
            Command::Sim(args) => sim::run(settings.rate_limit()?, args).await,
            Command::Migrate(args) => vault::run_migrate(&settings, args).await,
            Command::Keys(args) => vault::run_keys(&settings, args).await,
            Command::ImportLegacy(args) => vault::run_import_legacy(&settings, args).await,
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            report(&*e);
            ExitCode::from(2)
        }
    }
}

pub(crate) type CliResult = Result<ExitCode, Box<dyn std::error::Error + Send + Sync>>;

/// Starts the Prometheus exporter when `--metrics-addr` is given, with a task that keeps
/// the clock-gap gauge fresh against the configured Redis.
#[cfg(feature = "prometheus")]
fn start_metrics(
    addr: Option<std::net::SocketAddr>,
    settings: &Settings,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let Some(addr) = addr else { return Ok(()) };
    torn_quota::telemetry::install_prometheus(addr)?;
    eprintln!("metrics on http://{addr}/metrics");
    // Without a usable Redis configuration the gauge stays unset; the command itself says
    // what is wrong with the configuration.
    if let Ok(limiter) = settings.rate_limit().and_then(torn_quota::Limiter::redis) {
        limiter.watch_clock_gap(std::time::Duration::from_secs(30));
    }
    Ok(())
}

/// Without the `prometheus` feature, `--metrics-addr` is refused rather than ignored.
#[cfg(not(feature = "prometheus"))]
fn start_metrics(
    addr: Option<std::net::SocketAddr>,
    _settings: &Settings,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    match addr {
        None => Ok(()),
        Some(_) => Err(
            "--metrics-addr needs a build with the `prometheus` feature \
             (cargo build --features prometheus)"
                .into(),
        ),
    }
}

/// Prints an error and its causes, one per line, on stderr.
fn report(e: &(dyn std::error::Error + 'static)) {
    for (i, line) in chain_lines(e).iter().enumerate() {
        if i == 0 {
            eprintln!("error: {line}");
        } else {
            eprintln!("  caused by: {line}");
        }
    }
}

/// An error and its causes, each once. Some errors (Redis's, I/O wrappers) already show
/// their source in their own text and return it as `source()` too: a cause whose text the
/// line before already holds adds nothing and is skipped.
fn chain_lines(e: &(dyn std::error::Error + 'static)) -> Vec<String> {
    let mut lines = vec![e.to_string()];
    let mut source = e.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        let last = lines.last().expect("the error itself is the first line");
        if !text.is_empty() && !last.contains(&text) {
            lines.push(text);
        }
        source = cause.source();
    }
    lines
}

fn init_tracing(default: &str) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// Parses a Torn user id argument. Torn numbers players from 1: a 0 is a mistake (an unset
/// variable, say), and would name a bucket no player has.
pub(crate) fn user_id(raw: &str) -> Result<TornUserId, String> {
    match raw.trim().parse::<u64>() {
        Ok(id) if id >= 1 => Ok(TornUserId::new(id)),
        _ => Err(format!(
            "'{raw}' is not a Torn user id (a positive integer)"
        )),
    }
}

/// Writes one JSON object as a line on stdout.
pub(crate) fn emit(value: &serde_json::Value) {
    println!("{value}");
}
