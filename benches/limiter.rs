//! Criterion benches: one decision in memory, one through Redis, one Torn call's quota
//! through Redis (owner and per-IP units taken provisionally, then both settled), and in
//! the same run the baseline every Redis figure should be read against: a raw EVALSHA of
//! a no-op script. Before them it prints the Redis script calls (round trips) one Torn
//! call's quota costs, one call at a time and many at once.
//! `cargo bench` needs Redis at REDIS_URL (default 127.0.0.1:6379).

use std::collections::HashMap;
use std::hint::black_box;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use metrics::{Counter, Gauge, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit};
use torn_quota::{Limiter, RateLimitConfig, Request, TornUserId};

/// Counts Redis calls per operation: every call the limiter sends records its latency in
/// `torn_quota_redis_seconds{operation}`, once.
#[derive(Default, Clone)]
struct CallCounts(Arc<Mutex<HashMap<String, u64>>>);

struct OneOperation(String, CallCounts);

impl metrics::HistogramFn for OneOperation {
    fn record(&self, _: f64) {
        *self.1.0.lock().unwrap().entry(self.0.clone()).or_default() += 1;
    }
}

impl Recorder for CallCounts {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn register_counter(&self, _: &Key, _: &Metadata<'_>) -> Counter {
        Counter::noop()
    }
    fn register_gauge(&self, _: &Key, _: &Metadata<'_>) -> Gauge {
        Gauge::noop()
    }
    fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> Histogram {
        match key.labels().find(|l| l.key() == "operation") {
            Some(op) if key.name() == "torn_quota_redis_seconds" => {
                Histogram::from_arc(Arc::new(OneOperation(op.value().to_owned(), self.clone())))
            }
            _ => Histogram::noop(),
        }
    }
}

impl CallCounts {
    fn take(&self) -> HashMap<String, u64> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
}

/// One Torn call's quota as the gate takes it: the owner's and the per-IP unit together,
/// provisionally, then both settled together once "Torn answered".
async fn torn_call_quota(owner: &Limiter, ip: &Limiter, user: TornUserId) {
    let req = Request::new(1).in_flight(Duration::from_secs(10));
    let (a, b) = tokio::join!(
        owner.try_acquire_with(user, &req),
        ip.try_acquire_with(TornUserId::new(0), &req)
    );
    let (a, b) = (a.unwrap().into_grant(), b.unwrap().into_grant());
    let settle = |l: &Limiter, g| {
        let l = l.clone();
        async move {
            if let Some(g) = g {
                l.settle(g).await.unwrap();
            }
        }
    };
    tokio::join!(settle(owner, a), settle(ip, b));
}

/// Prints the script calls per Torn call: one at a time, and 64 at once.
fn round_trips(rt: &tokio::runtime::Runtime, counts: &CallCounts, owner: &Limiter, ip: &Limiter) {
    let next = AtomicU64::new(1_000_000);
    let user = || TornUserId::new(next.fetch_add(1, Ordering::Relaxed));
    for (label, in_flight, calls) in [
        ("one at a time", 1_u32, 2_000_u32),
        ("64 at once", 64, 20_000),
    ] {
        counts.take();
        rt.block_on(async {
            for _ in 0..calls / in_flight {
                let round = (0..in_flight).map(|_| torn_call_quota(owner, ip, user()));
                futures_join_all(round).await;
            }
        });
        let c = counts.take();
        let per = |op: &str| c.get(op).copied().unwrap_or(0) as f64 / f64::from(calls);
        println!(
            "round trips per Torn call ({label}, {calls} calls; owner + IP unit, acquire + \
             settle = 4 script calls uncoalesced): {:.2} acquire + {:.2} settle = {:.2}",
            per("acquire"),
            per("settle"),
            per("acquire") + per("settle"),
        );
    }
}

/// Polls the futures together on one task, so their calls reach the limiter in one burst.
async fn futures_join_all<F: Future<Output = ()>>(futures: impl Iterator<Item = F>) {
    let mut pending: Vec<_> = futures.map(|f| Some(Box::pin(f))).collect();
    std::future::poll_fn(|cx| {
        for slot in &mut pending {
            if slot
                .as_mut()
                .is_some_and(|f| f.as_mut().poll(cx).is_ready())
            {
                *slot = None;
            }
        }
        if pending.iter().all(Option::is_none) {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await;
}

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
    let counts = CallCounts::default();
    metrics::set_global_recorder(counts.clone()).expect("the bench's own recorder");
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

    // The same decisions without the journal of grants (issue 15): its cost on the healthy
    // path is the gap between the two, against the no-op EVALSHA below.
    let unjournaled = Limiter::redis(
        RateLimitConfig::builder()
            .redis_url(redis.config().redis_url())
            .key_prefix(format!("tq-criterion-nojournal-{}", std::process::id()))
            .limit(NonZeroU32::new(100).unwrap())
            .window(Duration::from_secs(60))
            .journal(false)
            .build()
            .unwrap(),
    )
    .unwrap();
    c.bench_function("decision/redis (no journal)", |b| {
        b.to_async(&rt)
            .iter(|| async { black_box(unjournaled.try_acquire(user(), 1).await.unwrap()) });
    });

    let ip = redis
        .sibling(
            "ip",
            NonZeroU32::new(10_000).unwrap(),
            Duration::from_millis(50),
        )
        .unwrap();
    round_trips(&rt, &counts, &redis, &ip);
    c.bench_function(
        "torn_call_quota/redis (2 provisional grants + 2 settles)",
        |b| {
            b.to_async(&rt)
                .iter(|| async { torn_call_quota(&redis, &ip, user()).await });
        },
    );

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
