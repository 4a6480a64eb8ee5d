//! What the legacy limiter's advisory lock costs: one decision with and without it (grants,
//! which commit a row, and refusals, which write nothing), and 16 callers on one key. Moved
//! out of the rollout tests, where it timed itself; its guarantee (the locked path never
//! over-admits) stays a test in tests/rollout_legacy.rs, and is asserted here as well.
//!
//! `cargo bench --bench legacy_lock` needs PostgreSQL at `TORN_QUOTA_TEST_DATABASE_URL`
//! (default `postgres://postgres@127.0.0.1:5432/test`, a role that may create databases);
//! it runs in a database of its own, dropped at the end.

use std::hint::black_box;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use torn_quota::KeyHash;
use torn_quota::rollout::LegacyLimiter;

#[allow(dead_code, unreachable_pub)]
#[path = "../tests/common/pg.rs"]
mod pg;

/// The production limit: 50 per key per minute.
const LIMIT: u32 = 50;

/// A key hash no earlier iteration used (a real SHA-256, as the legacy limiter receives them).
fn fresh_key(label: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    KeyHash::of(&format!("bench-{label}-{}-{n}", std::process::id()))
        .as_str()
        .to_owned()
}

fn legacy_lock(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let db = rt.block_on(pg::TestDb::migrated("bench_legacy_lock"));
    let locked = LegacyLimiter::new(
        db.pool.clone(),
        NonZeroU32::new(LIMIT).unwrap(),
        Duration::from_secs(60),
    );
    let sides = [
        ("with lock", locked.clone()),
        ("without lock", locked.without_lock()),
    ];
    // Warm the pool and the plan caches.
    rt.block_on(async {
        for (_, l) in &sides {
            for _ in 0..20 {
                l.try_acquire(&fresh_key("warm"), 1).await.unwrap();
            }
        }
    });

    let mut group = c.benchmark_group("legacy decision");
    group.sample_size(20);
    for (name, l) in &sides {
        // Grants: a fresh key every 50, so every call is granted and commits a row.
        group.bench_function(format!("grant {name}"), |b| {
            b.to_async(&rt).iter_custom(|iters| async move {
                let mut key = fresh_key("grant");
                let mut took = Duration::ZERO;
                for i in 0..iters {
                    if i > 0 && i % u64::from(LIMIT) == 0 {
                        key = fresh_key("grant");
                    }
                    let started = Instant::now();
                    let d = l.try_acquire(black_box(&key), 1).await.unwrap();
                    took += started.elapsed();
                    assert!(d.granted);
                }
                took
            });
        });
        // Refusals: one full key, so every call is refused and writes nothing.
        let full = fresh_key("full");
        rt.block_on(async {
            for _ in 0..LIMIT {
                assert!(l.try_acquire(&full, 1).await.unwrap().granted);
            }
        });
        group.bench_function(format!("refusal {name}"), |b| {
            b.to_async(&rt).iter(|| async {
                let d = l.try_acquire(black_box(&full), 1).await.unwrap();
                assert!(!d.granted);
            });
        });
        // 16 callers, 10 calls each, on one fresh key: 160 decisions per iteration.
        group.bench_function(format!("16 callers x 10 on one key {name}"), |b| {
            b.to_async(&rt).iter(|| async {
                let key = fresh_key("contended");
                let tasks: Vec<_> = (0..16)
                    .map(|_| {
                        let (l, key) = (l.clone(), key.clone());
                        tokio::spawn(async move {
                            let mut n = 0;
                            for _ in 0..10 {
                                n += u32::from(l.try_acquire(&key, 1).await.unwrap().granted);
                            }
                            n
                        })
                    })
                    .collect();
                let mut granted = 0;
                for t in tasks {
                    granted += t.await.unwrap();
                }
                if *name == "with lock" {
                    assert_eq!(granted, LIMIT, "the locked path over-admitted");
                }
            });
        });
    }
    group.finish();
    drop(sides);
    drop(db);
}

criterion_group!(benches, legacy_lock);
criterion_main!(benches);
