//! Criterion benches: one decision in memory, one through Redis, and in the same run the
//! baseline every Redis figure should be read against: a raw EVALSHA of a no-op script.
//! `cargo bench` needs Redis at REDIS_URL (default 127.0.0.1:6379).

use std::hint::black_box;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use torn_quota::{Limiter, RateLimitConfig, TornUserId};

fn config(prefix: &str) -> RateLimitConfig {
    RateLimitConfig::builder()
        .redis_url(std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into()))
        .key_prefix(format!("tq-criterion-{prefix}-{}", std::process::id()))
        .limit(NonZeroU32::new(100).unwrap())
        .window(Duration::from_secs(60))
        .build()
        .unwrap()
}

fn decisions(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let next = AtomicU64::new(0);
    // Spread over many users so most decisions are grants on short logs, as in production.
    let user = || TornUserId::new(next.fetch_add(1, Ordering::Relaxed) % 100_000);

    let memory = Limiter::in_memory(config("mem"));
    c.bench_function("decision/memory", |b| {
        b.to_async(&rt)
            .iter(|| async { black_box(memory.try_acquire(user(), 1).await.unwrap()) });
    });

    let redis = Limiter::redis(config("redis")).unwrap();
    rt.block_on(redis.ping())
        .expect("the Redis benches need Redis at REDIS_URL (default 127.0.0.1:6379)");
    c.bench_function("decision/redis", |b| {
        b.to_async(&rt)
            .iter(|| async { black_box(redis.try_acquire(user(), 1).await.unwrap()) });
    });

    let client = redis::Client::open(redis.config().redis_url()).unwrap();
    let conn = rt
        .block_on(client.get_multiplexed_async_connection())
        .unwrap();
    let noop = redis::Script::new("return {1, 0, 0}");
    let key = redis.keys().bucket(TornUserId::new(0)).state;
    c.bench_function("baseline/redis_noop_evalsha", |b| {
        b.to_async(&rt).iter(|| async {
            let mut conn = conn.clone();
            let reply: Vec<i64> = noop
                .key(&key)
                .arg(100)
                .arg(60_000)
                .arg(1)
                .invoke_async(&mut conn)
                .await
                .unwrap();
            black_box(reply)
        });
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = decisions
}
criterion_main!(benches);
