//! `torn-quota demo`: several workers race for one user's quota on a short window, and the
//! limit holds. Uses Redis when it answers (each worker with its own connection pool, as
//! separate processes would), else the in-memory backend, and says which.

use std::num::NonZeroU32;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;
use tokio::time::Instant;
use torn_quota::{Decision, Limiter, RateLimitConfig, Request, TornUserId, Wait};

use super::{CliResult, emit};

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Workers racing for the one user's quota.
    #[arg(long, default_value_t = 6, value_parser = clap::value_parser!(u32).range(1..=256))]
    workers: u32,
    /// Units per window.
    #[arg(long, default_value_t = NonZeroU32::new(20).expect("20 is not zero"))]
    limit: NonZeroU32,
    /// Window length in milliseconds.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(50..))]
    window_ms: u64,
    /// How many windows to run.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=60))]
    windows: u64,
}

pub(crate) async fn run(file: Option<&Path>, args: Args) -> CliResult {
    let base = super::load_config(file)?;
    let config = RateLimitConfig::builder()
        .redis_url(base.redis_url())
        .limit(args.limit)
        .window(Duration::from_millis(args.window_ms))
        .key_prefix(format!("tq-demo-{}", std::process::id()))
        .connect_timeout(Duration::from_millis(300))
        .connections(std::num::NonZeroUsize::MIN)
        .build()?;
    let user = TornUserId::new(1);
    let probe = Limiter::redis(config.clone())?;
    let on_redis = probe.ping().await.is_ok();
    let limiters: Vec<Limiter> = if on_redis {
        eprintln!(
            "backend: redis at {} ({} workers, each with its own connection pool)",
            config.redis_url_redacted(),
            args.workers
        );
        (0..args.workers)
            .map(|_| Limiter::redis(config.clone()))
            .collect::<Result<_, _>>()?
    } else {
        eprintln!(
            "backend: in-memory (redis at {} did not answer; start it to see workers share \
             one count through redis)",
            config.redis_url_redacted()
        );
        let shared = Limiter::in_memory(config.clone());
        vec![shared; args.workers as usize]
    };
    eprintln!(
        "{} workers race for user {user}'s quota: {} per {} ms, for {} windows",
        args.workers, args.limit, args.window_ms, args.windows
    );

    let run_for = Duration::from_millis(args.window_ms * args.windows);
    let start = Instant::now();
    let end = start + run_for;
    let bar = ProgressBar::new(run_for.as_millis() as u64).with_style(
        ProgressStyle::with_template("{spinner} [{bar:40}] {msg}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(usize, u64)>();
    let mut tasks = tokio::task::JoinSet::new();
    for (worker, limiter) in limiters.into_iter().enumerate() {
        let tx = tx.clone();
        tasks.spawn(async move {
            let wait = Wait::forever().until(end);
            loop {
                match limiter.acquire_with(user, &Request::new(1), &wait).await? {
                    Decision::Granted(g) => {
                        let _ = tx.send((worker, g.granted_at_ms()));
                    }
                    _ => return Ok::<_, torn_quota::Error>(()),
                }
            }
        });
    }
    drop(tx);
    let mut grants: Vec<(usize, u64)> = Vec::new();
    let mut ticker = tokio::time::interval(Duration::from_millis(50));
    loop {
        tokio::select! {
            got = rx.recv() => match got {
                Some(g) => grants.push(g),
                None => break,
            },
            _ = ticker.tick() => {
                bar.set_position(start.elapsed().as_millis().min(run_for.as_millis()) as u64);
                bar.set_message(format!("{} granted", grants.len()));
            }
        }
    }
    while let Some(joined) = tasks.join_next().await {
        joined??;
    }
    bar.finish_and_clear();

    Ok(summarize(&args, on_redis, &grants))
}

/// Prints the summary on stderr and as JSON; exit 1 if the limit broke.
fn summarize(args: &Args, on_redis: bool, grants: &[(usize, u64)]) -> ExitCode {
    let times: Vec<u64> = grants.iter().map(|g| g.1).collect();
    let busiest = torn_quota::busiest_window(&times, args.window_ms) as u64;
    let ideal = u64::from(args.limit.get()) * args.windows;
    let mut per_worker = vec![0u64; args.workers as usize];
    for (w, _) in grants {
        per_worker[*w] += 1;
    }
    let held = busiest <= u64::from(args.limit.get());
    eprintln!(
        "granted {} of an ideal {ideal} ({} per window × {} windows)",
        times.len(),
        args.limit,
        args.windows
    );
    eprintln!("per worker: {per_worker:?}");
    eprintln!(
        "busiest trailing {} ms window: {busiest} of {} allowed: {}",
        args.window_ms,
        args.limit,
        if held { "limit held" } else { "LIMIT BROKEN" }
    );
    emit(&json!({
        "backend": if on_redis { "redis" } else { "memory" },
        "workers": args.workers,
        "limit": args.limit.get(),
        "window_ms": args.window_ms,
        "granted": times.len(),
        "ideal": ideal,
        "busiest_window": busiest,
        "limit_held": held,
    }));
    if held {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}
