//! `torn-quota batch`: every request of `--input` over the keys of `--keys`, JSON Lines in
//! input order to `--output`, progress on stderr.

use std::io::Write as _;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;
use torn_quota::batch::{BatchConfig, BatchHandler, BatchOutcome, BatchRequest};
use torn_quota::torn::{ApiKey, TornClientConfig};
use torn_quota::{Limiter, RateLimitConfig};

use super::{CliResult, emit};

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// The keys to use: one a line (blank lines and `#` comments are skipped).
    #[arg(long)]
    keys: PathBuf,
    /// The requests: one Torn v2 path a line, e.g. `user/4/basic` (blank lines and `#`
    /// comments are skipped; `index` counts the requests from 0).
    #[arg(long)]
    input: PathBuf,
    /// Where the results go: one JSON object a line, in input order.
    #[arg(long)]
    output: PathBuf,
    /// Requests in flight at once.
    #[arg(long, default_value_t = NonZeroUsize::new(32).expect("32 is not zero"))]
    concurrency: NonZeroUsize,
}

pub(crate) async fn run(file: Option<&Path>, args: Args) -> CliResult {
    let config = super::load_config(file)?;
    let torn = TornClientConfig::from_sources(file, |n| std::env::var(n).ok())?;
    let keys = read_keys(&args.keys)?;
    let requests = read_requests(&args.input)?;
    // Fail before any request rather than after the batch.
    let mut out = std::fs::File::create(&args.output)
        .map_err(|e| format!("cannot create {}: {e}", args.output.display()))?;

    let limiter = limiter(config).await?;
    let client = super::rollout::client(file, limiter, torn)?;
    let bar = ProgressBar::new(requests.len() as u64).with_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} {msg} ({eta} left)")
            .expect("valid template")
            .progress_chars("=> "),
    );
    let progress = bar.clone();
    let cancel = tokio_util::sync::CancellationToken::new();
    let on_signal = cancel.clone();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            on_signal.cancel();
        }
    });
    let handler = BatchHandler::new(client, BatchConfig::default().concurrency(args.concurrency))
        .cancel_on(cancel)
        .on_progress(move |p| {
            progress.set_position(p.done as u64);
            if p.failed > 0 {
                progress.set_message(format!("{} failed", p.failed));
            }
        });
    let outcome = handler.run(requests, keys).await?;
    bar.finish_and_clear();
    write_results(&mut out, &outcome)
        .map_err(|e| format!("cannot write {}: {e}", args.output.display()))?;
    summarize(&outcome);
    Ok(if outcome.stats.failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// The configured Redis; the batch refuses to run without it unless the configuration
/// allows deciding locally.
async fn limiter(
    config: RateLimitConfig,
) -> Result<Limiter, Box<dyn std::error::Error + Send + Sync>> {
    let limiter = Limiter::redis(config.clone())?;
    if let Err(e) = limiter.ping().await {
        if matches!(config.on_redis_down(), torn_quota::OnRedisDown::FailFast) {
            return Err(format!(
                "redis at {} does not answer ({e}); owners' quotas are shared through it \
                 (set TORN_QUOTA_ON_REDIS_DOWN=local to run on a local share)",
                config.redis_target_redacted()
            )
            .into());
        }
        eprintln!("warning: redis does not answer; deciding locally on a share of each quota");
    }
    Ok(limiter)
}

/// One key a line. A malformed line is named by its number, never echoed.
pub(crate) fn read_keys(path: &Path) -> Result<Vec<ApiKey>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read keys file {}: {e}", path.display()))?;
    let mut keys = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let key = ApiKey::new(line)
            .map_err(|e| format!("keys file {} line {}: {e}", path.display(), n + 1))?;
        keys.push(key);
    }
    if keys.is_empty() {
        return Err(format!("keys file {} holds no key", path.display()));
    }
    Ok(keys)
}

/// One Torn v2 path a line.
fn read_requests(path: &Path) -> Result<Vec<BatchRequest>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read input {}: {e}", path.display()))?;
    let mut requests = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if line.contains("key=") {
            return Err(format!(
                "input {} line {}: a request must not carry a key (keys come from --keys)",
                path.display(),
                n + 1
            ));
        }
        let path_only = line.trim_start_matches('/');
        let path_only = path_only.strip_prefix("v2/").unwrap_or(path_only);
        requests.push(BatchRequest::new(path_only));
    }
    Ok(requests)
}

pub(crate) fn write_results(
    out: &mut impl std::io::Write,
    outcome: &BatchOutcome,
) -> std::io::Result<()> {
    let mut w = std::io::BufWriter::new(out);
    for (index, result) in outcome.results.iter().enumerate() {
        let line = match result {
            Ok(data) => json!({ "index": index, "ok": true, "data": data }),
            Err(e) => json!({
                "index": index,
                "ok": false,
                "error": { "code": e.code, "message": e.message },
            }),
        };
        serde_json::to_writer(&mut w, &line)?;
        w.write_all(b"\n")?;
    }
    w.flush()
}

/// The summary: a table on stderr, one JSON line on stdout.
pub(crate) fn summarize(outcome: &BatchOutcome) {
    let s = &outcome.stats;
    eprintln!(
        "{} requests ({} distinct) in {:.1} s: {} ok, {} failed; {} sent, {} code-5 answers, \
         {} keys dropped; quota used {:.1} %",
        s.requests,
        s.fetches,
        s.duration.as_secs_f64(),
        s.succeeded,
        s.failed,
        s.sent,
        s.rate_limited,
        s.keys_dropped,
        s.quota_used * 100.0
    );
    eprintln!("  owner        keys  granted     sent  errored  code 5");
    for (owner, o) in &s.owners {
        eprintln!(
            "  {owner:<10} {:>6} {:>8} {:>8} {:>8} {:>7}",
            o.keys, o.granted, o.sent, o.errored, o.rate_limited
        );
    }
    emit(&serde_json::to_value(s).unwrap_or_default());
}
