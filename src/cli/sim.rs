//! `torn-quota sim`: the Torn API simulator on loopback, until Ctrl-C.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use serde_json::json;
use torn_quota::RateLimitConfig;
use torn_quota::sim::{SimConfig, Simulator, parse_keys_file};

use super::{CliResult, emit};

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// The port on 127.0.0.1; 0 picks a free one (the URL is printed either way).
    #[arg(long)]
    port: u16,
    /// The keys it knows: one a line, `KEY OWNER_ID ACCESS_LEVEL [STATE]`, STATE one of ok,
    /// paused, inactive, jail. Any other key answers code 2.
    #[arg(long)]
    keys: PathBuf,
    /// Every request reaches the count this many milliseconds after it arrives.
    #[arg(long, default_value_t = 0)]
    latency_ms: u64,
    /// The share of requests (0 to 1) that reach the count --stall-ms late: a hostile
    /// network between the client and Torn.
    #[arg(long, default_value_t = 0.0)]
    stall_share: f64,
    /// How late a stalled request reaches the count.
    #[arg(long, default_value_t = 400)]
    stall_ms: u64,
}

pub(crate) async fn run(config: RateLimitConfig, args: Args) -> CliResult {
    let text = std::fs::read_to_string(&args.keys)
        .map_err(|e| format!("cannot read keys file {}: {e}", args.keys.display()))?;
    let keys = parse_keys_file(&text)?;
    let owners: BTreeSet<_> = keys.iter().map(|k| k.owner).collect();
    let key_count = keys.len();
    let sim_config = SimConfig::builder()
        .limit(config.limit())
        .window(config.window())
        .latency(Duration::from_millis(args.latency_ms))
        .stalls(args.stall_share, Duration::from_millis(args.stall_ms))
        .build()?;
    let sim = Simulator::start_on(args.port, keys, sim_config)
        .await
        .map_err(|e| format!("cannot listen on 127.0.0.1:{}: {e}", args.port))?;
    eprintln!(
        "torn api simulator at {}: {key_count} keys of {} owners, {} requests per owner per {} ms; \
         ctrl-c stops it",
        sim.base_url(),
        owners.len(),
        config.limit(),
        config.window_ms(),
    );
    emit(&json!({ "base_url": sim.base_url() }));
    stopped()
        .await
        .map_err(|e| format!("cannot wait for ctrl-c: {e}"))?;
    let counters = sim.counters();
    sim.shutdown().await;
    eprintln!(
        "stopped after {} requests ({} admitted, {} code 5)",
        counters.requests,
        counters.admitted,
        counters.errors(5)
    );
    emit(&serde_json::to_value(&counters)?);
    Ok(ExitCode::SUCCESS)
}

/// Resolves when the operator asks the simulator to stop.
///
/// Resolves on Ctrl-C or SIGTERM (what `kill` and service managers send), so both end with
/// the counters line.
async fn stopped() -> std::io::Result<()> {
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            r = tokio::signal::ctrl_c() => r,
            _ = term.recv() => Ok(()),
        }
    }
    #[cfg(not(unix))]
    tokio::signal::ctrl_c().await
}
