//! `torn-quota demo`: a batch over several owners' keys against the embedded Torn API
//! simulator, on a short window. One owner has three keys (still one quota), one key is
//! paused by its owner, one is not a key Torn knows. Uses Redis when it answers, else the
//! in-memory backend, and says which.

use std::num::{NonZeroU32, NonZeroUsize};
use std::process::ExitCode;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use rand::Rng;
use rand::distr::Alphanumeric;
use serde_json::json;
use torn_quota::batch::{BatchConfig, BatchHandler, BatchRequest, BatchStats};
use torn_quota::sim::{KeyState, SimConfig, SimCounters, SimKey, Simulator};
use torn_quota::torn::{TornClient, TornClientConfig};
use torn_quota::{AccessLevel, ApiKey, Limiter, RateLimitConfig, TornUserId};

use super::{CliResult, Settings, emit};

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Requests in the batch.
    #[arg(long, default_value_t = 240, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    requests: u32,
    /// Requests per owner per window (Torn's is 100 per minute; short here to see it work).
    #[arg(long, default_value_t = NonZeroU32::new(20).expect("20 is not zero"))]
    limit: NonZeroU32,
    /// Window length in milliseconds.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(100..))]
    window_ms: u64,
    /// An extra safety margin in milliseconds (default 0: grants are settled on the
    /// simulator's answer, so delay between our grant and its count never becomes a code 5).
    #[arg(long)]
    margin_ms: Option<u64>,
}

fn random_key() -> String {
    rand::rng()
        .sample_iter(&Alphanumeric)
        .take(ApiKey::LEN)
        .map(char::from)
        .collect()
}

/// Three owners. Ayla has three keys (one quota); Bo's second key is paused; the last key
/// is one Torn does not know (code 2).
fn demo_keys() -> Result<(Vec<SimKey>, Vec<ApiKey>), torn_quota::Error> {
    let (ayla, bo, cy) = (
        TornUserId::new(1_001),
        TornUserId::new(1_002),
        TornUserId::new(1_003),
    );
    let known = vec![
        SimKey::new(random_key(), ayla, AccessLevel::Full),
        SimKey::new(random_key(), ayla, AccessLevel::Full),
        SimKey::new(random_key(), ayla, AccessLevel::Minimal),
        SimKey::new(random_key(), bo, AccessLevel::Limited),
        SimKey::new(random_key(), bo, AccessLevel::Limited).with_state(KeyState::Paused),
        SimKey::new(random_key(), cy, AccessLevel::Public),
    ];
    let mut pool: Vec<ApiKey> = known
        .iter()
        .map(|k| ApiKey::new(&k.key))
        .collect::<Result<_, _>>()?;
    pool.push(ApiKey::new(&random_key())?); // Torn does not know it: code 2
    Ok((known, pool))
}

/// Redis when it answers, else in memory; says which.
async fn pick_limiter(config: RateLimitConfig) -> Result<Limiter, torn_quota::Error> {
    let limiter = Limiter::redis(config.clone())?;
    if limiter.ping().await.is_ok() {
        eprintln!("backend: redis at {}", config.redis_target_redacted());
        return Ok(limiter);
    }
    eprintln!(
        "backend: in-memory (redis at {} did not answer; start it to share quotas across \
         processes)",
        config.redis_target_redacted()
    );
    Ok(Limiter::in_memory(config))
}

pub(crate) async fn run(settings: &Settings, args: Args) -> CliResult {
    let base = settings.rate_limit()?;
    let window = Duration::from_millis(args.window_ms);

    let (known, pool) = demo_keys()?;
    let sim = Simulator::start(
        known,
        SimConfig::builder()
            .limit(args.limit)
            .window(window)
            .build()?,
    )
    .await?;

    let config = RateLimitConfig::builder()
        .redis_url(base.redis_url())
        .limit(args.limit)
        .window(window)
        .key_prefix(format!(
            "tq-demo-{}-{}",
            std::process::id(),
            rand::rng().random::<u32>()
        ))
        .connect_timeout(Duration::from_millis(300))
        .build()?;
    let limiter = pick_limiter(config).await?;
    // Grants settle on the simulator's answer, so no margin is needed unless asked for.
    let margin = Duration::from_millis(args.margin_ms.unwrap_or(0));
    let client = TornClient::new(
        limiter,
        TornClientConfig::builder()
            .base_url(sim.base_url())
            .safety_margin(margin)
            .retry_min_delay(Duration::from_millis(20))
            .build()?,
    )?;

    // Most requests any key serves; every tenth needs limited access (battle stats).
    let requests: Vec<BatchRequest> = (0..args.requests)
        .map(|i| {
            let id = 2_000_000 + u64::from(i);
            if i % 10 == 9 {
                BatchRequest::new(format!("user/{id}/battlestats")).min_access(AccessLevel::Limited)
            } else {
                BatchRequest::new(format!("user/{id}/basic"))
            }
        })
        .collect();
    let owners = 3_u32;
    let ideal = Duration::from_secs_f64(
        f64::from(args.requests) / f64::from(owners * args.limit.get()) * window.as_secs_f64(),
    );
    eprintln!(
        "{} requests over {} keys of {owners} owners (one key paused, one unknown to Torn); \
         {} per owner per {} ms, so about {:.1} s at full quota",
        args.requests,
        pool.len(),
        args.limit,
        args.window_ms,
        ideal.as_secs_f64()
    );

    let bar = ProgressBar::new(u64::from(args.requests)).with_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} {msg}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    let progress = bar.clone();
    let handler = BatchHandler::new(
        client,
        BatchConfig::default().concurrency(NonZeroUsize::new(16).unwrap_or(NonZeroUsize::MIN)),
    )
    .on_progress(move |p| progress.set_position(p.done as u64));
    let outcome = handler.run(requests, pool).await?;
    bar.finish_and_clear();

    let counters = sim.counters();
    report(&outcome.stats, &counters, ideal, args.limit);
    sim.shutdown().await;
    let s = &outcome.stats;
    Ok(if s.failed == 0 && counters.errors(5) == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// The summary table on stderr and one JSON line on stdout.
fn report(s: &BatchStats, counters: &SimCounters, ideal: Duration, limit: NonZeroU32) {
    eprintln!();
    eprintln!(
        "  requests          {} ({} ok, {} failed)",
        s.requests, s.succeeded, s.failed
    );
    eprintln!(
        "  owners, keys      {} owners; 7 keys, {} dropped (paused, unknown)",
        s.owners.len(),
        s.keys_dropped
    );
    eprintln!(
        "  duration          {:.2} s (ideal at full quota {:.2} s)",
        s.duration.as_secs_f64(),
        ideal.as_secs_f64()
    );
    eprintln!(
        "  quota used        {:.1} % of owners x limit per window",
        s.quota_used * 100.0
    );
    eprintln!(
        "  code-5 answers    {} (Torn's rate-limit error)",
        counters.errors(5)
    );
    eprintln!(
        "  busiest window    {} of {} for any owner, as Torn counted",
        counters.max_in_window, limit
    );
    emit(&json!({
        "requests": s.requests,
        "succeeded": s.succeeded,
        "failed": s.failed,
        "owners": s.owners.len(),
        "keys_dropped": s.keys_dropped,
        "duration_ms": s.duration.as_millis() as u64,
        "ideal_ms": ideal.as_millis() as u64,
        "quota_used": s.quota_used,
        "code5_answers": counters.errors(5),
        "max_in_window": counters.max_in_window,
        "limit": limit.get(),
    }));
}
