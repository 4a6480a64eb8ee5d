//! Three workers share one player's quota. Runs against Redis when REDIS_URL answers (start
//! several copies of this example to see processes share it), else in memory.
//!
//! ```sh
//! cargo run --example share_quota
//! ```

use std::num::NonZeroU32;
use std::time::Duration;

use torn_quota::{Limiter, RateLimitConfig, TornUserId};

#[tokio::main]
async fn main() -> Result<(), torn_quota::Error> {
    let config = RateLimitConfig::builder()
        .redis_url(std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into()))
        .limit(NonZeroU32::new(5).expect("5 is not zero"))
        .window(Duration::from_secs(1))
        .key_prefix("tq-example")
        .build()?;
    let redis = Limiter::redis(config.clone())?;
    let limiter = if redis.ping().await.is_ok() {
        redis
    } else {
        Limiter::in_memory(config)
    };
    println!("backend: {}", limiter.backend_name());

    let player = TornUserId::new(2_000_000);
    let mut workers = Vec::new();
    for worker in 0..3 {
        let limiter = limiter.clone();
        workers.push(tokio::spawn(async move {
            for call in 0..4 {
                let grant = limiter.acquire(player, 1).await?;
                println!(
                    "worker {worker} call {call}: granted, {} left",
                    grant.remaining()
                );
            }
            Ok::<_, torn_quota::Error>(())
        }));
    }
    for w in workers {
        w.await.expect("worker panicked")?;
    }
    Ok(())
}
