//! The limiter, the client and the batch handler on a real Redis Cluster.
//!
//! The file starts its own 3-primary cluster once, with the machine's `redis-server` on free
//! loopback ports (`--cluster-enabled yes`, then `redis-cli --cluster create`), data in a
//! temporary directory, no persistence. Each server runs under a small shell watchdog that
//! kills it, and removes the directory, as soon as this test process is gone (even after a
//! panic or an abort) or after five minutes at most. Without `redis-server` and `redis-cli`
//! the tests fail loudly: they are never skipped.

mod common;

use common::metrics::Recorded;
use common::redis_server::wait_for_ping;

use std::net::TcpListener;
use std::num::{NonZeroU32, NonZeroUsize};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use torn_quota::batch::{BatchConfig, BatchHandler, BatchRequest};
use torn_quota::sim::{SimConfig, SimKey, Simulator};
use torn_quota::torn::{TornClient, TornClientConfig};
use torn_quota::{
    AccessLevel, ApiKey, Decision, Limiter, RateLimitConfig, Request, TornUserId, Wait,
};

/// The cluster's nodes: their ports and which slot ranges each serves.
struct Cluster {
    ports: Vec<u16>,
    /// The watchdog shells (see the module docs); they outlive this process by moments.
    _watchdogs: Vec<Child>,
    /// (first slot, last slot, port of the primary)
    slots: Vec<(u16, u16, u16)>,
}

impl Cluster {
    fn urls(&self) -> Vec<String> {
        self.ports
            .iter()
            .map(|p| format!("redis://127.0.0.1:{p}"))
            .collect()
    }

    /// The port of the node that holds `key`.
    fn node_of(&self, key: &str) -> u16 {
        let slot: u16 = node_query(self.ports[0], &["CLUSTER", "KEYSLOT", key]);
        let Some((_, _, port)) = self
            .slots
            .iter()
            .find(|(lo, hi, _)| (*lo..=*hi).contains(&slot))
        else {
            panic!("no node serves slot {slot}")
        };
        *port
    }

    /// One Torn user id per node, whose bucket (hash tag `{u<id>}`) that node holds,
    /// starting the search at `from`.
    fn users_on_each_node(&self, from: u64) -> Vec<TornUserId> {
        let mut found: Vec<(u16, u64)> = Vec::new();
        for id in from.. {
            let port = self.node_of(&format!("{{u{id}}}"));
            if !found.iter().any(|(p, _)| *p == port) {
                found.push((port, id));
            }
            if found.len() == self.ports.len() {
                break;
            }
        }
        found
            .into_iter()
            .map(|(_, id)| TornUserId::new(id))
            .collect()
    }
}

fn node_query<T: redis::FromRedisValue>(port: u16, args: &[&str]) -> T {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}")).unwrap();
    let mut conn = client.get_connection().unwrap();
    let mut cmd = redis::cmd(args[0]);
    for a in &args[1..] {
        cmd.arg(*a);
    }
    cmd.query(&mut conn)
        .unwrap_or_else(|e| panic!("{args:?} on node {port}: {e}"))
}

/// A loopback port that is free, with its cluster bus port (+10000) free too.
fn free_port_pair() -> u16 {
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        if port < 55_000 && TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            return port;
        }
    }
}

fn cluster() -> &'static Cluster {
    static CLUSTER: OnceLock<Cluster> = OnceLock::new();
    // This process's metrics recorder: the tests read what the Redis backend reports.
    Recorded::global();
    CLUSTER.get_or_init(start_cluster)
}

/// `torn_quota_redis_noscript_reloads_total` as recorded in this process.
fn reloads() -> u64 {
    Recorded::global().counter_total("torn_quota_redis_noscript_reloads_total")
}

/// How many `torn_quota_redis_seconds` samples `operation` recorded, each a sane latency.
fn timed(operation: &str) -> u64 {
    let samples = Recorded::global().histogram("torn_quota_redis_seconds", "operation", operation);
    for value in &samples {
        assert!((0.0..60.0).contains(value), "a latency of {value} s");
    }
    samples.len() as u64
}

fn start_cluster() -> Cluster {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    for tool in ["redis-server", "redis-cli"] {
        let found = Command::new(tool)
            .arg("--version")
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        assert!(
            found,
            "these tests start their own Redis Cluster with `{tool}`, which is not on PATH: \
             install Redis (apt-get install redis-server) and run them again"
        );
    }
    let dir: PathBuf = std::env::temp_dir().join(format!(
        "tq-cluster-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let mut ports = Vec::new();
    let mut watchdogs = Vec::new();
    for _ in 0..3 {
        let port = free_port_pair();
        watchdogs.push(start_node(port, &dir));
        ports.push(port);
    }
    for port in &ports {
        wait_for_node(*port, &dir);
    }
    create_cluster(&ports);
    let slots = slot_map(ports[0]);
    Cluster {
        ports,
        _watchdogs: watchdogs,
        slots,
    }
}

/// Starts one node under its watchdog: the shell runs the server, and kills it when this
/// process is gone, when the server died, or after 300 s; then removes the data directory.
fn start_node(port: u16, dir: &std::path::Path) -> Child {
    let me = std::process::id();
    let node_dir = dir.join(port.to_string());
    std::fs::create_dir_all(&node_dir).unwrap();
    let script = format!(
        "redis-server --port {port} --bind 127.0.0.1 --cluster-enabled yes \
             --cluster-config-file nodes.conf --cluster-node-timeout 5000 --dir '{nd}' \
             --save '' --appendonly no --daemonize no --loglevel warning >'{nd}/log' 2>&1 &
             r=$!
             end=$(( $(date +%s) + 300 ))
             while kill -0 {me} 2>/dev/null && kill -0 $r 2>/dev/null \
                   && [ $(date +%s) -lt $end ]; do sleep 0.2; done
             kill $r 2>/dev/null; wait $r 2>/dev/null; rm -rf '{dir}'",
        nd = node_dir.display(),
        dir = dir.display(),
    );
    Command::new("sh")
        .args(["-c", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("sh starts")
}

fn wait_for_node(port: u16, dir: &std::path::Path) {
    wait_for_ping(
        port,
        &format!(
            "cluster node on port {port} did not start (log in {})",
            dir.display()
        ),
    );
}

/// `redis-cli --cluster create` over the nodes, then waits until every node sees all
/// three and all slots served.
fn create_cluster(ports: &[u16]) {
    let mut create = Command::new("redis-cli");
    create.arg("--cluster").arg("create");
    for port in ports {
        create.arg(format!("127.0.0.1:{port}"));
    }
    let out = create
        .args(["--cluster-replicas", "0", "--cluster-yes"])
        .output()
        .expect("redis-cli runs");
    assert!(
        out.status.success(),
        "redis-cli --cluster create failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // Every node sees the whole cluster, all slots served.
    let deadline = Instant::now() + Duration::from_secs(20);
    for port in ports {
        loop {
            let info: String = node_query(*port, &["CLUSTER", "INFO"]);
            if info.contains("cluster_state:ok")
                && info.contains("cluster_known_nodes:3")
                && info.contains("cluster_slots_ok:16384")
            {
                break;
            }
            assert!(Instant::now() < deadline, "cluster not ready: {info}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// (first slot, last slot, primary's port) of every slot range, as `port` sees them.
fn slot_map(port: u16) -> Vec<(u16, u16, u16)> {
    let raw: Vec<redis::Value> = node_query(port, &["CLUSTER", "SLOTS"]);
    raw.into_iter()
        .map(|range| {
            let redis::Value::Array(parts) = range else {
                panic!("CLUSTER SLOTS: {range:?}")
            };
            let int = |v: &redis::Value| match v {
                redis::Value::Int(i) => *i,
                other => panic!("CLUSTER SLOTS: {other:?}"),
            };
            let redis::Value::Array(primary) = &parts[2] else {
                panic!("CLUSTER SLOTS: {parts:?}")
            };
            (
                int(&parts[0]) as u16,
                int(&parts[1]) as u16,
                int(&primary[1]) as u16,
            )
        })
        .collect()
}

/// A limiter configuration on the test cluster, under a fresh key prefix.
fn config(name: &str, limit: u32, window_ms: u64) -> RateLimitConfig {
    let c = cluster();
    common::config(name, limit, window_ms)
        // Nothing listens here: a call that went to the single Redis would fail.
        .redis_url("redis://127.0.0.1:1")
        .redis_cluster_urls(c.urls())
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_on_different_nodes_each_get_exactly_their_limit() {
    let c = cluster();
    let users = c.users_on_each_node(1_000);
    assert_eq!(users.len(), 3);
    let l = Limiter::redis(config("cluster-exact", 10, 300)).unwrap();
    assert!(l.config().is_redis_cluster());
    l.ping().await.unwrap();
    let end = tokio::time::Instant::now() + Duration::from_millis(1_200);
    let mut tasks = tokio::task::JoinSet::new();
    for &user in &users {
        for _ in 0..8 {
            let l = l.clone();
            tasks.spawn(async move {
                let mut times = Vec::new();
                let wait = Wait::forever().until(end);
                while let Decision::Granted(g) =
                    l.acquire_with(user, &Request::new(1), &wait).await.unwrap()
                {
                    times.push(g.granted_at_ms());
                }
                (user, times)
            });
        }
    }
    let mut by_user: Vec<(TornUserId, Vec<u64>)> = users.iter().map(|u| (*u, vec![])).collect();
    while let Some(t) = tasks.join_next().await {
        let (user, times) = t.unwrap();
        let entry = by_user.iter_mut().find(|(u, _)| *u == user).unwrap();
        entry.1.extend(times);
    }
    for (user, times) in &by_user {
        assert_eq!(
            torn_quota::oracle::busiest_window(times, 300),
            10,
            "user {user:?} on node {}",
            c.node_of(&format!("{{u{}}}", user.get()))
        );
        // 4 windows in 1.2 s: the limit is used, not wasted.
        assert!(times.len() >= 38, "user {user:?} granted {}", times.len());
    }
}

#[cfg(feature = "settings")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cluster_urls_from_the_environment_switch_to_the_cluster() {
    let c = cluster();
    let urls = c.urls().join(",");
    let prefix = common::unique_prefix("cluster-env");
    let config = torn_quota::settings::Settings::from_sources(None, |name| match name {
        "REDIS_CLUSTER_URLS" => Some(urls.clone()),
        // Nothing listens here: the cluster must win over REDIS_URL.
        "REDIS_URL" => Some("redis://127.0.0.1:1".to_owned()),
        "TORN_QUOTA_KEY_PREFIX" => Some(prefix.clone()),
        "TORN_QUOTA_LIMIT" => Some("3".to_owned()),
        _ => None,
    })
    .and_then(|s| s.rate_limit())
    .unwrap();
    assert!(config.is_redis_cluster());
    let l = Limiter::redis(config).unwrap();
    assert_eq!(l.backend_name(), "redis");
    l.ping().await.unwrap();
    let user = c.users_on_each_node(6_000)[2];
    let mut granted = 0;
    for _ in 0..5 {
        if matches!(l.try_acquire(user, 1).await.unwrap(), Decision::Granted(_)) {
            granted += 1;
        }
    }
    assert_eq!(granted, 3);
    // The bucket lives on the node that owns its slot.
    let state = l.keys().bucket(user).state;
    let port = c.node_of(&state);
    let exists: u32 = node_query(port, &["EXISTS", &state]);
    assert_eq!(exists, 1, "{state} on node {port}");
    l.remember("probe", "value", Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(l.recall("probe").await.unwrap().as_deref(), Some("value"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_over_many_slots_is_decided_exactly() {
    // Simultaneous calls for users on every node, some with idempotency ids: the
    // dispatcher coalesces them, and must split each batch by slot.
    let c = cluster();
    let mut users = c.users_on_each_node(2_000);
    users.extend(c.users_on_each_node(3_000));
    let l = Limiter::redis(config("cluster-burst", 10, 60_000)).unwrap();
    let calls = (0..300).map(|i| {
        let l = l.clone();
        let user = users[i % users.len()];
        async move {
            let request = if i % 3 == 0 {
                Request::new(1).idempotency_id(format!("call-{i}"))
            } else {
                Request::new(1)
            };
            (user, l.try_acquire_with(user, &request).await.unwrap())
        }
    });
    let decisions = common::join_all(calls).await;
    assert_eq!(decisions.len(), 300);
    for user in &users {
        let granted = decisions
            .iter()
            .filter(|(u, d)| u == user && matches!(d, Decision::Granted(_)))
            .count();
        assert_eq!(granted, 10, "user {user:?}");
        let status = l.status(*user).await.unwrap();
        assert_eq!(status.used, 10, "user {user:?}: {status:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn script_flush_on_every_node_mid_run_is_invisible_to_callers() {
    let c = cluster();
    let users = c.users_on_each_node(4_000);
    let l = Limiter::redis(config("cluster-flush", 5, 200)).unwrap();
    let end = tokio::time::Instant::now() + Duration::from_millis(1_200);
    let mut tasks = tokio::task::JoinSet::new();
    for &user in &users {
        for _ in 0..4 {
            let l = l.clone();
            tasks.spawn(async move {
                let mut times = Vec::new();
                let wait = Wait::forever().until(end);
                loop {
                    // Every error is the test's failure: a flush must never reach a caller.
                    match l.acquire_with(user, &Request::new(1), &wait).await {
                        Ok(Decision::Granted(g)) => times.push(g.granted_at_ms()),
                        Ok(_) => return Ok::<_, torn_quota::Error>((user, times)),
                        Err(e) => return Err(e),
                    }
                    l.status(user).await?;
                }
            });
        }
    }
    let ports = c.ports.clone();
    let flusher = tokio::task::spawn_blocking(move || {
        for _ in 0..3 {
            std::thread::sleep(Duration::from_millis(300));
            for port in &ports {
                let ok: String = node_query(*port, &["SCRIPT", "FLUSH"]);
                assert_eq!(ok, "OK");
            }
        }
    });
    let mut by_user: Vec<(TornUserId, Vec<u64>)> = users.iter().map(|u| (*u, vec![])).collect();
    while let Some(t) = tasks.join_next().await {
        let (user, times) = t.unwrap().expect("no error reaches a caller");
        by_user
            .iter_mut()
            .find(|(u, _)| *u == user)
            .unwrap()
            .1
            .extend(times);
    }
    flusher.await.unwrap();
    for (user, times) in &by_user {
        assert_eq!(
            torn_quota::oracle::busiest_window(times, 200),
            5,
            "user {user:?}"
        );
        assert!(times.len() >= 25, "user {user:?} granted {}", times.len());
    }
    // The scripts were loaded again on every node after the last flush.
    let hashes = [
        redis::Script::new(torn_quota::lua::ACQUIRE)
            .get_hash()
            .to_owned(),
        redis::Script::new(&torn_quota::lua::acquire_many_source())
            .get_hash()
            .to_owned(),
        redis::Script::new(torn_quota::lua::STATUS)
            .get_hash()
            .to_owned(),
    ];
    for port in &c.ports {
        let loaded: Vec<bool> = node_query(
            *port,
            &["SCRIPT", "EXISTS", &hashes[0], &hashes[1], &hashes[2]],
        );
        assert!(
            loaded[2] && (loaded[0] || loaded[1]),
            "node {port} has no reloaded script: {loaded:?}"
        );
    }
    // The other scripts reload too, and each reload is counted.
    for &user in &users {
        let before = reloads();
        flush_scripts(c);
        l.penalize(user, Duration::from_millis(50)).await.unwrap();
        let after_penalize = reloads();
        assert!(
            after_penalize > before,
            "penalize.lua's reload was not counted"
        );
        flush_scripts(c);
        let status = l.status(user).await.unwrap();
        assert!(status.remaining == 0, "penalized: {status:?}");
        assert!(
            reloads() > after_penalize,
            "status.lua's reload was not counted"
        );
    }
    for operation in ["acquire", "status", "penalize"] {
        assert!(
            timed(operation) > 0,
            "no torn_quota_redis_seconds for {operation}"
        );
    }
}

/// `SCRIPT FLUSH` on every node.
fn flush_scripts(c: &Cluster) {
    for port in &c.ports {
        let _: String = node_query(*port, &["SCRIPT", "FLUSH"]);
    }
}

const BATCH_LIMIT: u32 = 10;
const BATCH_WINDOW: Duration = Duration::from_millis(500);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_over_two_owners_on_the_cluster() {
    let c = cluster();
    let owners = c.users_on_each_node(5_000);
    let (a, b) = (owners[0], owners[1]);
    let key_a = SimKey::new(
        format!("Owner{:05}Key001", a.get() % 100_000),
        a,
        AccessLevel::Full,
    );
    let key_b = SimKey::new(
        format!("Owner{:05}Key001", b.get() % 100_000),
        b,
        AccessLevel::Full,
    );
    let sim = Simulator::start(
        vec![key_a.clone(), key_b.clone()],
        SimConfig::builder()
            .limit(NonZeroU32::new(BATCH_LIMIT).unwrap())
            .window(BATCH_WINDOW)
            .build()
            .unwrap(),
    )
    .await
    .unwrap();
    let limiter = Limiter::redis(config(
        "cluster-batch",
        BATCH_LIMIT,
        BATCH_WINDOW.as_millis() as u64,
    ))
    .unwrap();
    let client_config = TornClientConfig::builder()
        .base_url(sim.base_url())
        .safety_margin(Duration::from_millis(40))
        .retry_min_delay(Duration::from_millis(5))
        .owner_hold(Duration::from_millis(100))
        .build()
        .unwrap();
    // The per-IP limiter on the cluster too (a sibling of the owners' limiter).
    let ip = limiter
        .sibling("ip", client_config.ip_limit(), client_config.ip_window())
        .unwrap();
    let client = TornClient::builder(limiter, client_config)
        .ip_limiter(ip)
        .build()
        .unwrap();
    let handler = BatchHandler::new(
        client,
        BatchConfig::default().concurrency(NonZeroUsize::new(16).unwrap()),
    );
    // Two owners, two windows' worth each.
    let n = 4 * u64::from(BATCH_LIMIT);
    let requests: Vec<BatchRequest> = (600..600 + n)
        .map(|id| BatchRequest::new(format!("user/{id}/basic")))
        .collect();
    let keys = vec![
        ApiKey::new(&key_a.key).unwrap(),
        ApiKey::new(&key_b.key).unwrap(),
    ];
    let outcome = handler.run(requests, keys).await.unwrap();
    assert_eq!(outcome.results.len() as u64, n);
    for (i, r) in outcome.results.iter().enumerate() {
        let data = r
            .as_ref()
            .unwrap_or_else(|e| panic!("request {i} failed: {e}"));
        assert_eq!(
            data["profile"]["id"],
            600 + i as u64,
            "result {i} out of order"
        );
    }
    let counters = sim.counters();
    assert_eq!(counters.errors(5), 0, "code-5 answers: {counters:?}");
    assert!(
        counters.max_in_window <= BATCH_LIMIT,
        "Torn counted {} in a window",
        counters.max_in_window
    );
    assert_eq!(outcome.stats.owners.len(), 2);
}
