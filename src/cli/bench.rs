//! `torn-quota bench`: decisions per second against Redis, and in the same run the rate of a
//! no-op `EVALSHA` at the same concurrency over the same number of connections, so the
//! figure reads as a ratio that survives a noisy machine.

use std::num::NonZeroU32;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use rand::Rng;
use redis::aio::MultiplexedConnection;
use serde_json::json;
use torn_quota::{Limiter, RateLimitConfig, TornUserId};

use super::{CliResult, emit};

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Distinct users the decisions spread over.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
    users: u64,
    /// Decisions in flight at once.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    concurrency: u64,
    /// Decisions to time (each of the limiter and the baseline).
    #[arg(long, default_value_t = 500_000, value_parser = clap::value_parser!(u64).range(1..))]
    decisions: u64,
}

const NOOP: &str = "return {1, 0, 0}";

pub(crate) async fn run(base: RateLimitConfig, args: Args) -> CliResult {
    let prefix = format!(
        "tq-bench-{}-{}",
        std::process::id(),
        rand::rng().random::<u32>()
    );
    let config = RateLimitConfig::builder()
        .redis_url(base.redis_url())
        .limit(base.limit())
        .window(base.window())
        .connections(base.connections())
        .command_timeout(Duration::from_secs(5))
        .key_prefix(prefix.clone())
        .build()?;
    let limiter = Limiter::redis(config.clone())?;
    limiter
        .ping()
        .await
        .map_err(|e| format!("bench needs Redis at {} ({e})", config.redis_url_redacted()))?;
    let client = redis::Client::open(config.redis_url())?;
    let mut conns = Vec::new();
    for _ in 0..config.connections().get() {
        conns.push(client.get_multiplexed_async_connection().await?);
    }
    let noop = redis::Script::new(NOOP);
    noop.prepare_invoke().load_async(&mut conns[0]).await?;

    eprintln!(
        "{} decisions over {} users, {} in flight, {} connections, limit {} per {} ms",
        args.decisions,
        args.users,
        args.concurrency,
        conns.len(),
        config.limit(),
        config.window_ms()
    );
    // Warm both paths (script cache, connections, allocator) before timing.
    let warm = args.decisions.min(20_000);
    drive(&args, warm, "warm-up", limiter_call(&limiter, args.users)).await?;
    drive(&args, warm, "warm-up", noop_call(&conns, &noop, &prefix)).await?;

    let baseline = drive(
        &args,
        args.decisions,
        "no-op EVALSHA",
        noop_call(&conns, &noop, &prefix),
    )
    .await?;
    let decisions = drive(
        &args,
        args.decisions,
        "acquire",
        limiter_call(&limiter, args.users),
    )
    .await?;
    let ratio = decisions / baseline;
    eprintln!(
        "acquire: {decisions:.0} decisions/s; no-op EVALSHA: {baseline:.0} calls/s; ratio {ratio:.3}"
    );

    let memory = bytes_for_full_bucket(&config, &mut conns[0]).await?;
    eprintln!("redis memory for a user holding 100 grants: {memory} bytes");
    let idle_left = idle_keys_left(&config, &mut conns[0]).await?;
    eprintln!("keys left by a user idle for one window: {idle_left}");
    cleanup(&mut conns[0], &format!("{prefix}:*")).await?;

    emit(&json!({
        "users": args.users,
        "concurrency": args.concurrency,
        "decisions": args.decisions,
        "noop_evalsha_per_sec": baseline.round(),
        "ratio_to_noop": (ratio * 1000.0).round() / 1000.0,
        "bytes_per_user_100_grants": memory,
        "idle_keys_left": idle_left,
        "decisions_per_sec": decisions.round(),
    }));
    Ok(ExitCode::SUCCESS)
}

type CallFuture = std::pin::Pin<Box<dyn Future<Output = Result<(), String>> + Send>>;

fn limiter_call(limiter: &Limiter, users: u64) -> impl Fn() -> CallFuture + Send + Sync + 'static {
    let limiter = limiter.clone();
    move || {
        let limiter = limiter.clone();
        let user = TornUserId::new(rand::rng().random_range(0..users));
        Box::pin(async move {
            limiter
                .try_acquire(user, 1)
                .await
                .map(drop)
                .map_err(|e| e.to_string())
        })
    }
}

fn noop_call(
    conns: &[MultiplexedConnection],
    script: &redis::Script,
    prefix: &str,
) -> impl Fn() -> CallFuture + Send + Sync + 'static {
    let conns = conns.to_vec();
    let script = script.clone();
    let key = format!("{prefix}:{{u0}}:log");
    let next = AtomicU64::new(0);
    move || {
        let mut conn = conns[next.fetch_add(1, Ordering::Relaxed) as usize % conns.len()].clone();
        let script = script.clone();
        let key = key.clone();
        Box::pin(async move {
            script
                .key(&key)
                .arg(100)
                .arg(60_000)
                .arg(1)
                .invoke_async::<Vec<i64>>(&mut conn)
                .await
                .map(drop)
                .map_err(|e| e.to_string())
        })
    }
}

/// Runs `total` calls with `args.concurrency` in flight; returns calls per second.
async fn drive<F>(args: &Args, total: u64, label: &str, call: F) -> Result<f64, String>
where
    F: Fn() -> CallFuture + Send + Sync + 'static,
{
    let call = Arc::new(call);
    let issued = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let bar = ProgressBar::new(total).with_style(
        ProgressStyle::with_template("{msg:>14} [{bar:40}] {pos}/{len} {per_sec}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.set_message(label.to_owned());
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..args.concurrency.min(total) {
        let (call, issued, done, bar) = (call.clone(), issued.clone(), done.clone(), bar.clone());
        tasks.spawn(async move {
            while issued.fetch_add(1, Ordering::Relaxed) < total {
                call().await?;
                if done.fetch_add(1, Ordering::Relaxed) % 4096 == 0 {
                    bar.set_position(done.load(Ordering::Relaxed));
                }
            }
            Ok::<(), String>(())
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.map_err(|e| e.to_string())??;
    }
    let rate = total as f64 / started.elapsed().as_secs_f64();
    bar.finish_and_clear();
    eprintln!(
        "{label:>14}: {total} in {:.2?} = {rate:.0}/s",
        started.elapsed()
    );
    Ok(rate)
}

/// `MEMORY USAGE` of every key of a user who holds 100 grants.
async fn bytes_for_full_bucket(
    config: &RateLimitConfig,
    conn: &mut MultiplexedConnection,
) -> Result<u64, Box<dyn std::error::Error + Send + Sync>> {
    let full = RateLimitConfig::builder()
        .redis_url(config.redis_url())
        .key_prefix(format!("{}-mem", config.key_prefix()))
        .limit(NonZeroU32::new(100).expect("100 is not zero"))
        .window(Duration::from_secs(60))
        .build()?;
    let limiter = Limiter::redis(full)?;
    let user = TornUserId::new(424_242);
    for _ in 0..100 {
        limiter.try_acquire(user, 1).await?;
    }
    let keys = limiter.keys();
    let bucket = keys.bucket(user);
    let mut total = 0;
    for key in [&bucket.state, &bucket.limit, &bucket.penalty] {
        let bytes: Option<u64> = redis::cmd("MEMORY")
            .arg("USAGE")
            .arg(key)
            .arg("SAMPLES")
            .arg(0)
            .query_async(conn)
            .await?;
        total += bytes.unwrap_or(0);
    }
    cleanup(conn, &keys.pattern()).await?;
    Ok(total)
}

/// Keys left by a user who was granted units and then stayed idle for one window.
async fn idle_keys_left(
    config: &RateLimitConfig,
    conn: &mut MultiplexedConnection,
) -> Result<u64, Box<dyn std::error::Error + Send + Sync>> {
    let window = Duration::from_millis(200);
    let short = RateLimitConfig::builder()
        .redis_url(config.redis_url())
        .key_prefix(format!("{}-idle", config.key_prefix()))
        .limit(NonZeroU32::new(100).expect("100 is not zero"))
        .window(window)
        .build()?;
    let limiter = Limiter::redis(short)?;
    for user in 0..10 {
        limiter.try_acquire(TornUserId::new(user), 3).await?;
    }
    tokio::time::sleep(window + Duration::from_millis(20)).await;
    Ok(scan(conn, &limiter.keys().pattern()).await?.len() as u64)
}

async fn scan(conn: &mut MultiplexedConnection, pattern: &str) -> redis::RedisResult<Vec<String>> {
    let mut found = Vec::new();
    let mut cursor: u64 = 0;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(1000)
            .query_async(conn)
            .await?;
        found.extend(keys);
        if next == 0 {
            return Ok(found);
        }
        cursor = next;
    }
}

async fn cleanup(conn: &mut MultiplexedConnection, pattern: &str) -> redis::RedisResult<()> {
    for chunk in scan(conn, pattern).await?.chunks(500) {
        redis::cmd("UNLINK").arg(chunk).exec_async(conn).await?;
    }
    Ok(())
}
