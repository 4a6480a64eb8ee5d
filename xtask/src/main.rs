//! `cargo xtask`: developer tasks for torn-quota that the product does not ship. The soak
//! starts private Redis and PostgreSQL servers and kills them under load; that harness
//! belongs beside the crate, not in the operator CLI. JSON goes to stdout, one object per
//! line; human text to stderr.

// The soak's parent future nests the vault, the batch handler and the simulator deeply
// enough to pass the default layout depth (128).
#![recursion_limit = "256"]

mod soak;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use torn_quota::settings::Settings;

/// Developer tasks for torn-quota.
#[derive(Debug, Parser)]
#[command(name = "xtask", about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Workers × owners for a while against the simulator, with Redis killed and restarted,
    /// PostgreSQL stopped and started, and Torn's faults served; JSON report. Exit 0 when
    /// nothing was lost, no limit broken and every worker recovered.
    Soak(soak::Args),
}

/// What a task returns: its exit code, or an error for exit code 2.
type CliResult = Result<ExitCode, Box<dyn std::error::Error + Send + Sync>>;

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Soak(args) => {
                // Read once, as the operator CLI does: the environment over TORN_QUOTA_CONFIG.
                let settings = Settings::from_env()?;
                soak::run(&settings, args).await
            }
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            let mut source = e.source();
            while let Some(cause) = source {
                eprintln!("  caused by: {cause}");
                source = cause.source();
            }
            ExitCode::from(2)
        }
    }
}

/// Warnings and worse on stderr unless RUST_LOG says otherwise.
fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// Writes one JSON object as a line on stdout.
fn emit(value: &serde_json::Value) {
    println!("{value}");
}
