//! `torn-quota bench`: decisions per second against Redis, and in the same run the rate of a
//! no-op `EVALSHA` at the same concurrency over the same number of connections, so the
//! figure reads as a ratio that survives a noisy machine.
//!
//! `--scale` sweeps the number of users (1 000, 100 000, 1 000 000 by default) and reports the
//! ratio of the rate at the most users to the rate at the fewest (flat is the goal), and the
//! Redis memory held by 100 000 active users. `--cluster` runs the same decisions against
//! the Redis Cluster at `REDIS_CLUSTER_URLS` and the single Redis at `REDIS_URL`, and
//! reports both rates.

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
    /// Decisions to time (each of the limiter and the baseline; in --scale and --cluster, at
    /// each point).
    #[arg(long, default_value_t = 500_000, value_parser = clap::value_parser!(u64).range(1..))]
    decisions: u64,
    /// Sweep the user count (see --scale-users) instead of the single run; with --cluster,
    /// on the cluster.
    #[arg(long)]
    scale: bool,
    /// The user counts of --scale.
    #[arg(long, value_delimiter = ',', default_values_t = [1_000_u64, 100_000, 1_000_000])]
    scale_users: Vec<u64>,
    /// Compare the Redis Cluster at REDIS_CLUSTER_URLS with the single Redis at REDIS_URL.
    #[arg(long)]
    cluster: bool,
}

const NOOP: &str = "return {1, 0, 0}";

pub(crate) async fn run(base: RateLimitConfig, args: Args) -> CliResult {
    if args.cluster && base.redis_cluster_urls().is_empty() {
        return Err("--cluster needs REDIS_CLUSTER_URLS (comma-separated node URLs)".into());
    }
    if args.scale {
        return run_scale(base, args).await;
    }
    if args.cluster {
        return run_cluster(base, args).await;
    }
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

/// A limiter for a bench run under a fresh prefix: on the cluster when `cluster`, else on
/// the single Redis.
async fn bench_limiter(
    base: &RateLimitConfig,
    cluster: bool,
    limit: NonZeroU32,
) -> Result<Limiter, Box<dyn std::error::Error + Send + Sync>> {
    let prefix = format!(
        "tq-bench-{}-{}",
        std::process::id(),
        rand::rng().random::<u32>()
    );
    let mut b = RateLimitConfig::builder()
        .redis_url(base.redis_url())
        .limit(limit)
        .window(base.window())
        .connections(base.connections())
        .command_timeout(Duration::from_secs(5))
        .key_prefix(prefix);
    if cluster {
        b = b.redis_cluster_urls(base.redis_cluster_urls());
    }
    let limiter = Limiter::redis(b.build()?)?;
    limiter.ping().await.map_err(|e| {
        format!(
            "bench needs Redis at {} ({e})",
            limiter.config().redis_target_redacted()
        )
    })?;
    Ok(limiter)
}

/// Decisions per second over `users` users, after a warm-up over the same users.
async fn rate_at(limiter: &Limiter, args: &Args, users: u64, label: &str) -> Result<f64, String> {
    let warm = args.decisions.min(20_000);
    drive(args, warm, "warm-up", limiter_call(limiter, users)).await?;
    drive(args, args.decisions, label, limiter_call(limiter, users)).await
}

/// `--scale`: the rate at each user count, the ratio of the rate at the most users to the
/// rate at the fewest, and (on a single Redis) the memory of 100 000 active users.
async fn run_scale(base: RateLimitConfig, args: Args) -> CliResult {
    let mut counts = args.scale_users.clone();
    counts.sort_unstable();
    counts.dedup();
    if counts.first() == Some(&0) || counts.is_empty() {
        return Err("--scale-users takes user counts >= 1".into());
    }
    // Every decision a grant, whatever the user count: with Torn's 100 a minute, 1 000
    // users would be refused most of the time (a refusal writes nothing, so it is cheaper)
    // and the sweep would compare different work, not different key counts. The most a
    // limit may be is enough while each user gets at most that many decisions.
    let limit = NonZeroU32::new(torn_quota::limiter::MAX_UNITS).expect("not zero");
    eprintln!(
        "{} decisions at each of {counts:?} users (best of 2 rounds), {} in flight, {} \
         connections, on {}, every decision a grant",
        args.decisions,
        args.concurrency,
        base.connections(),
        if args.cluster {
            "the cluster"
        } else {
            "the single Redis"
        }
    );
    // Memory first, on a keyspace this run has not grown yet.
    let memory = if args.cluster {
        None
    } else {
        let active = 100_000;
        let (bytes, per_user) = memory_of_active_users(&base, &args, active).await?;
        eprintln!(
            "redis memory for {active} active users (1 grant each): {:.1} MiB, {per_user:.0} bytes a user",
            bytes as f64 / 1_048_576.0
        );
        let mut conn = single_conn(&base).await?;
        let full = bytes_for_full_bucket(&base, &mut conn).await?;
        eprintln!(
            "  at 100 grants each: {full} bytes a user, {:.1} MiB for {active}",
            (full * active) as f64 / 1_048_576.0
        );
        Some([
            ("active_users", json!(active)),
            ("redis_bytes_active_users_1_grant", json!(bytes)),
            (
                "redis_bytes_per_active_user_1_grant",
                json!(per_user.round()),
            ),
            ("redis_bytes_per_user_100_grants", json!(full)),
        ])
    };
    let mut best = vec![0.0_f64; counts.len()];
    for _round in 0..2 {
        for (i, &users) in counts.iter().enumerate() {
            // Each count on its own keys: a fresh prefix, the previous one's keys removed.
            let limiter = bench_limiter(&base, args.cluster, limit).await?;
            let rate = rate_at(&limiter, &args, users, &format!("{users} users")).await?;
            best[i] = best[i].max(rate);
            if !args.cluster {
                let mut conn = single_conn(&base).await?;
                cleanup(&mut conn, &limiter.keys().pattern()).await?;
            }
        }
    }
    let mut rates = serde_json::Map::new();
    for (users, rate) in counts.iter().zip(&best) {
        eprintln!("{users:>9} users: {rate:.0} decisions/s");
        rates.insert(users.to_string(), json!(rate.round()));
    }
    let (first, last) = (best[0], best[best.len() - 1]);
    let ratio = last / first;
    eprintln!(
        "rate at {} users / rate at {} users = {ratio:.3}",
        counts[counts.len() - 1],
        counts[0]
    );
    let mut out = json!({
        "users": counts,
        "concurrency": args.concurrency,
        "decisions": args.decisions,
        "backend": if args.cluster { "redis-cluster" } else { "redis" },
        "decisions_per_sec_by_users": rates,
        "scale_ratio": (ratio * 1000.0).round() / 1000.0,
    });
    if let Some(m) = memory {
        for (k, v) in m {
            out[k] = v;
        }
    }
    out["decisions_per_sec"] = json!(last.round());
    emit(&out);
    Ok(ExitCode::SUCCESS)
}

/// `INFO memory`'s `used_memory` before and after `active` users take one unit each (then
/// their keys are removed): the total, and per user.
async fn memory_of_active_users(
    base: &RateLimitConfig,
    args: &Args,
    active: u64,
) -> Result<(u64, f64), Box<dyn std::error::Error + Send + Sync>> {
    let limiter = bench_limiter(base, false, base.limit()).await?;
    let mut conn = single_conn(base).await?;
    let before = used_memory(&mut conn).await?;
    // Each call a new user, so every call makes a bucket.
    let next = Arc::new(AtomicU64::new(0));
    let call = call_with(&limiter, move || {
        TornUserId::new(next.fetch_add(1, Ordering::Relaxed))
    });
    drive(args, active, "active users", call).await?;
    let after = used_memory(&mut conn).await?;
    let keys = scan(&mut conn, &limiter.keys().pattern()).await?.len() as u64;
    cleanup(&mut conn, &limiter.keys().pattern()).await?;
    if keys < active {
        return Err(format!("expected {active} bucket keys, found {keys}").into());
    }
    let bytes = after.saturating_sub(before);
    Ok((bytes, bytes as f64 / active as f64))
}

async fn used_memory(conn: &mut MultiplexedConnection) -> redis::RedisResult<u64> {
    let info: String = redis::cmd("INFO").arg("memory").query_async(conn).await?;
    Ok(info
        .lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0))
}

async fn single_conn(
    base: &RateLimitConfig,
) -> Result<MultiplexedConnection, Box<dyn std::error::Error + Send + Sync>> {
    let client = redis::Client::open(base.redis_url())?;
    Ok(client.get_multiplexed_async_connection().await?)
}

/// `--cluster`: the same decisions against the single Redis and against the cluster.
async fn run_cluster(base: RateLimitConfig, args: Args) -> CliResult {
    let single = bench_limiter(&base, false, base.limit()).await?;
    let cluster = bench_limiter(&base, true, base.limit()).await?;
    eprintln!(
        "{} decisions over {} users, {} in flight, {} connections: {} against {}",
        args.decisions,
        args.users,
        args.concurrency,
        base.connections(),
        single.config().redis_target_redacted(),
        cluster.config().redis_target_redacted()
    );
    let single_rate = rate_at(&single, &args, args.users, "single").await?;
    let cluster_rate = rate_at(&cluster, &args, args.users, "cluster").await?;
    let mut conn = single_conn(&base).await?;
    cleanup(&mut conn, &single.keys().pattern()).await?;
    let ratio = cluster_rate / single_rate;
    eprintln!(
        "single: {single_rate:.0} decisions/s; cluster: {cluster_rate:.0} decisions/s; ratio {ratio:.3}"
    );
    emit(&json!({
        "users": args.users,
        "concurrency": args.concurrency,
        "decisions": args.decisions,
        "single_decisions_per_sec": single_rate.round(),
        "cluster_decisions_per_sec": cluster_rate.round(),
        "cluster_to_single": (ratio * 1000.0).round() / 1000.0,
        "decisions_per_sec": cluster_rate.round(),
    }));
    Ok(ExitCode::SUCCESS)
}

type CallFuture = std::pin::Pin<Box<dyn Future<Output = Result<(), String>> + Send>>;

/// One unit for a user drawn at random among `users`.
fn limiter_call(limiter: &Limiter, users: u64) -> impl Fn() -> CallFuture + Send + Sync + 'static {
    call_with(limiter, move || {
        TornUserId::new(rand::rng().random_range(0..users))
    })
}

/// One unit for the user `user` picks, per call.
fn call_with(
    limiter: &Limiter,
    user: impl Fn() -> TornUserId + Send + Sync + 'static,
) -> impl Fn() -> CallFuture + Send + Sync + 'static {
    let limiter = limiter.clone();
    move || {
        let limiter = limiter.clone();
        let user = user();
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
