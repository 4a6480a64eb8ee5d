//! `cargo xtask soak`: N worker processes × M owners for T seconds against the simulator,
//! while Redis is killed and restarted and the simulator serves code 17, slow answers and
//! dropped connections. One JSON report on stdout; exit 0 when nothing was lost, nothing
//! went over the limit outside the documented window, and every worker recovered.
//!
//! The parent owns everything it breaks: a private `redis-server` on a free loopback port,
//! a private PostgreSQL cluster (initdb into a temporary directory; never the machine's
//! shared server) holding the keys in the vault, and the simulator. Workers are this program
//! again (`xtask soak --worker`), each reading its pool from the vault every round (the last pool
//! read serves while PostgreSQL is down) and running batches through the limiter with
//! `TORN_QUOTA_ON_REDIS_DOWN=local`; they report one JSON line when their time is up.
//!
//! Schedule: Redis is killed (SIGKILL) at 25 % of the run and restarted empty at 55 %;
//! PostgreSQL is stopped (`-m immediate`) at 60 % and started at 85 %.
//!
//! The documented window (docs/failover.md): Redis holds the only shared record of the
//! last window. From the moment it is lost until one window after it answers again, the
//! limiter may admit what Torn still counts, so code 5 answers there are expected (and
//! absorbed: the owner is held back and the request re-queued). Outside it there must be
//! none.

use std::collections::BTreeMap;
use std::io::{BufRead as _, Read as _, Write as _};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::num::{NonZeroU32, NonZeroUsize};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};
use torn_quota::batch::{BatchConfig, BatchHandler, BatchRequest, PoolKey};
use torn_quota::sim::{RandomFaults, SimConfig, SimKey, Simulator};
use torn_quota::torn::TornClient;
use torn_quota::vault::{AddOptions, ResolveOwner, Vault};
use torn_quota::{
    AccessLevel, ApiKey, AppUserId, KeyInfo, Limiter, OnRedisDown, RateLimitConfig, TornUserId,
};

use crate::{CliResult, emit};

/// Keys each owner has: two, so an owner's quota is shared across keys as Torn shares it.
const KEYS_PER_OWNER: u64 = 2;
/// Owner ids start here.
const FIRST_OWNER: u64 = 1000;
/// How long the workers' Redis calls may take before the limiter decides locally.
const REDIS_TIMEOUT_MS: u64 = 250;
/// How often a degraded worker tries Redis again.
const RECONNECT_MS: u64 = 200;
/// The client's safety margin (Torn counts on arrival).
const SAFETY_MARGIN_MS: u64 = 250;
/// The workers' Torn request timeout: well above the simulator's slow answers (400 ms), and
/// short enough that the hold of a call in flight (which the local fallback waits out when
/// Redis is lost) leaves most of the outage to decide in.
const REQUEST_TIMEOUT_MS: u64 = 1_500;
/// Slack for a loaded machine at the end of the documented window: process scheduling,
/// in-flight requests that were granted just before the window closed.
const WINDOW_SLACK_MS: u64 = 1_000;

#[derive(Debug, clap::Args)]
#[allow(clippy::struct_excessive_bools)]
pub(crate) struct Args {
    /// Worker processes.
    #[arg(long, default_value_t = NonZeroU32::new(4).expect("4 is not zero"))]
    workers: NonZeroU32,
    /// Key owners (two keys each).
    #[arg(long, default_value_t = NonZeroU32::new(8).expect("8 is not zero"))]
    owners: NonZeroU32,
    /// Seconds the workers keep starting batches.
    #[arg(long, default_value_t = 60)]
    duration: u64,
    /// Requests per owner per window (the simulator's and the limiter's).
    #[arg(long, default_value_t = NonZeroU32::new(20).expect("20 is not zero"))]
    limit: NonZeroU32,
    /// The rolling window, in milliseconds (short, so a run spans many windows).
    #[arg(long, default_value_t = 2_000)]
    window_ms: u64,
    /// Requests per batch a worker runs.
    #[arg(long, default_value_t = NonZeroUsize::new(30).expect("30 is not zero"))]
    batch: NonZeroUsize,
    /// Probability that the simulator answers code 17 (backend error).
    #[arg(long, default_value_t = 0.02)]
    code17: f64,
    /// Probability of a slow answer.
    #[arg(long, default_value_t = 0.02)]
    slow: f64,
    /// How long a slow answer takes, in milliseconds.
    #[arg(long, default_value_t = 400)]
    slow_ms: u64,
    /// Probability of a dropped connection.
    #[arg(long, default_value_t = 0.02)]
    drop: f64,
    /// Leave Redis running (no kill and restart).
    #[arg(long)]
    no_redis_fault: bool,
    /// Run without the vault and its private PostgreSQL (no stop and start).
    #[arg(long)]
    no_postgres_fault: bool,
    /// Where PostgreSQL's initdb and pg_ctl are (default: the newest
    /// /usr/lib/postgresql/*/bin, else PATH). Without them the workers run without the
    /// vault and the report says the PostgreSQL fault was not covered.
    #[arg(long)]
    pg_bin: Option<PathBuf>,
    /// The redis-server program to run privately.
    #[arg(long, default_value = "redis-server")]
    redis_server: PathBuf,

    /// Internal: run as one worker of a soak (the parent passes the rest).
    #[arg(long, hide = true)]
    worker: bool,
    /// Internal: the worker's number.
    #[arg(long, hide = true, default_value_t = 0)]
    worker_id: u64,
    /// Internal: the keys file (`KEY OWNER` a line), never keys on the command line.
    #[arg(long, hide = true)]
    keys: Option<PathBuf>,
    /// Internal: the vault account whose keys the worker reads every round.
    #[arg(long, hide = true)]
    vault_user: Option<String>,
    /// Internal: when the worker stops starting batches, in Unix milliseconds.
    #[arg(long, hide = true, default_value_t = 0)]
    until_ms: u64,
}

pub(crate) async fn run(settings: &super::Settings, args: Args) -> CliResult {
    if args.worker {
        return worker(settings, &args).await;
    }
    if args.window_ms == 0 {
        return Err("--window-ms must be at least 1".into());
    }
    parent(args).await
}

// ---------------------------------------------------------------------------------------
// The parent: redis, the simulator, the workers, the faults, the report.

/// A redis-server of our own on a loopback port: killing it disturbs no one else.
struct PrivateRedis {
    program: PathBuf,
    port: u16,
    child: Option<Child>,
}

impl PrivateRedis {
    fn start(program: &Path) -> Result<Self, String> {
        let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .and_then(|l| l.local_addr())
            .map_err(|e| format!("cannot find a free port for redis: {e}"))?
            .port();
        let mut redis = Self {
            program: program.to_owned(),
            port,
            child: None,
        };
        redis.restart()?;
        Ok(redis)
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Starts it (again) on its port, empty, and waits until it answers PING.
    fn restart(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let child = Command::new(&self.program)
                .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
                .args(["--save", "", "--appendonly", "no"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .map_err(|e| {
                    format!(
                        "the soak runs its own redis-server, and {} cannot start: {e}",
                        self.program.display()
                    )
                })?;
            self.child = Some(child);
            let started = Instant::now();
            while started.elapsed() < Duration::from_secs(2) {
                if pong(self.port) {
                    return Ok(());
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            // The port may still be held by the old process: try again.
            self.kill();
            if Instant::now() > deadline {
                return Err(format!(
                    "private redis-server did not answer on port {}",
                    self.port
                ));
            }
        }
    }

    /// SIGKILL: the state is gone, as in a crash or a failover to an empty replica.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// True when a Redis on `port` answers PING.
fn pong(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect((Ipv4Addr::LOCALHOST, port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(200)));
    let mut buf = [0u8; 7];
    s.write_all(b"PING\r\n").is_ok() && s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
}

/// A PostgreSQL cluster of our own in a temporary directory on a loopback port: stopping it
/// disturbs no one else (the machine's shared server is never touched).
struct PrivatePostgres {
    bin: PathBuf,
    data: PathBuf,
    port: u16,
    /// initdb refuses to run as root: then every command runs as `postgres`.
    as_postgres: bool,
    running: bool,
}

impl PrivatePostgres {
    /// The directory holding initdb and pg_ctl, if there is one.
    fn find_bin(given: Option<&Path>) -> Option<PathBuf> {
        if let Some(dir) = given {
            return Some(dir.to_owned());
        }
        let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
            .into_iter()
            .flatten()
            .filter_map(Result::ok)
            .filter_map(|e| {
                let v = e.file_name().to_str()?.parse().ok()?;
                let bin = e.path().join("bin");
                bin.join("initdb").exists().then_some((v, bin))
            })
            .collect();
        versions.sort();
        versions.pop().map(|(_, bin)| bin).or_else(|| {
            // On PATH: an empty directory makes `bin.join("initdb")` plain `initdb`.
            Command::new("initdb")
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success())
                .then(PathBuf::new)
        })
    }

    fn command(&self, program: &str) -> Command {
        let path = self.bin.join(program);
        if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(path);
            c
        } else {
            Command::new(path)
        }
    }

    fn run(what: &str, mut command: Command) -> Result<(), String> {
        let out = command
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run {what}: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "{what} failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    }

    fn start(bin: PathBuf, dir: &Path) -> Result<Self, String> {
        let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .and_then(|l| l.local_addr())
            .map_err(|e| format!("cannot find a free port for postgres: {e}"))?
            .port();
        let data = dir.join("pg");
        std::fs::create_dir_all(&data)
            .map_err(|e| format!("cannot create {}: {e}", data.display()))?;
        let as_postgres = is_root();
        if as_postgres {
            let chown = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(&data)
                .status()
                .map_err(|e| format!("cannot run chown: {e}"))?;
            if !chown.success() {
                return Err(format!("chown postgres {} failed", data.display()));
            }
        }
        let mut pg = Self {
            bin,
            data,
            port,
            as_postgres,
            running: false,
        };
        let mut initdb = pg.command("initdb");
        initdb
            .arg("-D")
            .arg(&pg.data)
            .args(["-A", "trust", "-U", "soak", "--no-sync"]);
        Self::run("initdb", initdb)?;
        pg.restart()?;
        Ok(pg)
    }

    fn url(&self) -> String {
        format!("postgres://soak@127.0.0.1:{}/postgres", self.port)
    }

    fn restart(&mut self) -> Result<(), String> {
        let options = format!(
            "-p {} -c listen_addresses=127.0.0.1 -k {} -c fsync=off",
            self.port,
            self.data.display()
        );
        let mut start = self.command("pg_ctl");
        start
            .arg("-D")
            .arg(&self.data)
            .arg("-l")
            .arg(self.data.join("log"))
            .args(["-o", &options, "-w", "-t", "30", "start"]);
        Self::run("pg_ctl start", start)?;
        self.running = true;
        Ok(())
    }

    /// `-m immediate`: connections are cut, as when the server crashes.
    fn stop(&mut self) -> Result<(), String> {
        if !self.running {
            return Ok(());
        }
        let mut stop = self.command("pg_ctl");
        stop.arg("-D")
            .arg(&self.data)
            .args(["-m", "immediate", "-w", "stop"]);
        Self::run("pg_ctl stop", stop)?;
        self.running = false;
        Ok(())
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.trim_ascii() == b"0")
}

/// Knows every soak key's owner from the key itself: storing keys costs no Torn call.
struct SoakOwners;

impl ResolveOwner for SoakOwners {
    async fn resolve(&self, key: &ApiKey) -> torn_quota::Result<KeyInfo> {
        let owner =
            key.expose()[5..10]
                .parse()
                .map_err(|_| torn_quota::Error::InvalidArgument {
                    name: "key",
                    reason: "not a soak key".into(),
                })?;
        Ok(KeyInfo {
            owner: TornUserId::new(owner),
            access: AccessLevel::Full,
        })
    }
}

/// The vault's settings for the private server (a fresh encryption key per run).
fn vault_env(pg: &PrivatePostgres, encryption_key: &str) -> Vec<(&'static str, String)> {
    vec![
        ("DATABASE_URL", pg.url()),
        ("TORN_QUOTA_ENCRYPTION_KEY", encryption_key.to_owned()),
        // A stopped server must fail a read within half a second, not hang a round.
        ("TORN_QUOTA_DATABASE_ACQUIRE_TIMEOUT_MS", "500".to_owned()),
        ("TORN_QUOTA_DATABASE_MAX_CONNECTIONS", "2".to_owned()),
    ]
}

/// Starts the private server, migrates it and stores every soak key for one account.
async fn setup_vault(
    bin: PathBuf,
    dir: &Path,
    owners: &[u64],
) -> Result<(PrivatePostgres, Vec<(&'static str, String)>, AppUserId), String> {
    let pg = tokio::task::spawn_blocking({
        let dir = dir.to_owned();
        move || PrivatePostgres::start(bin, &dir)
    })
    .await
    .map_err(|e| e.to_string())??;
    let encryption_key = {
        use base64::Engine as _;
        let bytes: [u8; 32] = rand::random();
        base64::engine::general_purpose::STANDARD.encode(bytes)
    };
    let env = vault_env(&pg, &encryption_key);
    let config = super::Settings::from_sources(None, |name| {
        env.iter().find(|(n, _)| *n == name).map(|(_, v)| v.clone())
    })
    .and_then(|s| s.vault())
    .map_err(|e| e.to_string())?;
    let vault = Vault::connect(&config).await.map_err(|e| e.to_string())?;
    torn_quota::vault::migrate(vault.pool())
        .await
        .map_err(|e| e.to_string())?;
    let user = AppUserId::new(uuid::Uuid::new_v4());
    sqlx::query("INSERT INTO auth.users (id) VALUES ($1)")
        .bind(user.get())
        .execute(vault.pool())
        .await
        .map_err(|e| format!("cannot create the soak's account: {e}"))?;
    for &o in owners {
        for k in 0..KEYS_PER_OWNER {
            let key = ApiKey::new(&key_for(o, k)).map_err(|e| e.to_string())?;
            vault
                .add_key_with(user, &key, &SoakOwners, AddOptions::default())
                .await
                .map_err(|e| format!("cannot store a soak key: {e}"))?;
        }
    }
    vault.pool().close().await;
    Ok((pg, env, user))
}

fn key_for(owner: u64, k: u64) -> String {
    format!("SoakO{owner:05}K{k:05}")
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A worker as the parent sees it.
struct Worker {
    id: u64,
    child: Child,
}

#[allow(clippy::too_many_lines)]
async fn parent(args: Args) -> CliResult {
    let window = Duration::from_millis(args.window_ms);
    let duration = Duration::from_secs(args.duration);
    let mut redis = PrivateRedis::start(&args.redis_server)?;

    let owners: Vec<u64> = (0..u64::from(args.owners.get()))
        .map(|o| FIRST_OWNER + o)
        .collect();
    let sim_keys: Vec<SimKey> = owners
        .iter()
        .flat_map(|&o| {
            (0..KEYS_PER_OWNER)
                .map(move |k| SimKey::new(key_for(o, k), TornUserId::new(o), AccessLevel::Full))
        })
        .collect();
    let sim_config = SimConfig::builder()
        .limit(args.limit)
        .window(window)
        .ip_limit(NonZeroU32::new(1_000_000).expect("not zero"))
        .random_faults(RandomFaults {
            backend_error: args.code17,
            slow: args.slow,
            slow_for: Duration::from_millis(args.slow_ms),
            drop_connection: args.drop,
        })
        .build()?;
    let sim = Simulator::start(sim_keys, sim_config)
        .await
        .map_err(|e| format!("cannot start the simulator: {e}"))?;

    let dir = std::env::temp_dir().join(format!("torn-quota-soak-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let keys_file = dir.join("keys");
    let text: String = owners
        .iter()
        .flat_map(|&o| (0..KEYS_PER_OWNER).map(move |k| format!("{} {o}\n", key_for(o, k))))
        .collect();
    std::fs::write(&keys_file, text)
        .map_err(|e| format!("cannot write {}: {e}", keys_file.display()))?;

    // The vault on a private PostgreSQL, when the machine has one to run.
    let mut vault = None;
    let mut postgres_status = String::from("covered");
    if args.no_postgres_fault {
        postgres_status = "not covered: --no-postgres-fault".into();
    } else if let Some(bin) = PrivatePostgres::find_bin(args.pg_bin.as_deref()) {
        match setup_vault(bin, &dir, &owners).await {
            Ok(v) => vault = Some(v),
            Err(e) => postgres_status = format!("not covered: cannot run a private postgres: {e}"),
        }
    } else {
        postgres_status = "not covered: no initdb/pg_ctl (see --pg-bin)".into();
    }
    if vault.is_none() {
        eprintln!("soak: postgres fault {postgres_status}");
    }

    // The parent's own view of Redis: the clock gap, and the prefix the workers share.
    let prefix = format!("tq-soak-{}-{}", std::process::id(), unix_ms());
    let probe = Limiter::redis(
        RateLimitConfig::builder()
            .redis_url(redis.url())
            .key_prefix(prefix.clone())
            .build()?,
    )?;
    let clock_gap = probe.clock_gap().await.ok();

    eprintln!(
        "soak: {} workers × {} owners ({} keys) for {} s, {} per owner per {} ms; redis on port {}, \
         simulator at {}",
        args.workers,
        owners.len(),
        owners.len() as u64 * KEYS_PER_OWNER,
        args.duration,
        args.limit,
        args.window_ms,
        redis.port,
        sim.base_url(),
    );
    let started = Instant::now();
    let until_ms = unix_ms() + duration.as_millis() as u64;
    let exe = std::env::current_exe().map_err(|e| format!("cannot find this program: {e}"))?;
    let mut workers = Vec::new();
    for id in 0..u64::from(args.workers.get()) {
        let child = Command::new(&exe)
            .args(["soak", "--worker", "--worker-id", &id.to_string()])
            .arg("--keys")
            .arg(&keys_file)
            .args(["--until-ms", &until_ms.to_string()])
            .args(["--batch", &args.batch.to_string()])
            .args(
                vault
                    .as_ref()
                    .map(|(_, _, user)| vec!["--vault-user".to_owned(), user.to_string()])
                    .unwrap_or_default(),
            )
            .envs(
                vault
                    .as_ref()
                    .map(|(_, env, _)| env.clone())
                    .unwrap_or_default(),
            )
            .env_remove("TORN_QUOTA_CONFIG")
            .env("REDIS_URL", redis.url())
            .env_remove("REDIS_CLUSTER_URLS")
            .env("TORN_API_BASE_URL", sim.base_url())
            .env("TORN_QUOTA_LIMIT", args.limit.to_string())
            .env("TORN_QUOTA_WINDOW_MS", args.window_ms.to_string())
            .env("TORN_QUOTA_KEY_PREFIX", &prefix)
            .env("TORN_QUOTA_ON_REDIS_DOWN", "local")
            .env("TORN_QUOTA_WORKERS", args.workers.to_string())
            .env(
                "TORN_QUOTA_REDIS_CONNECT_TIMEOUT_MS",
                REDIS_TIMEOUT_MS.to_string(),
            )
            .env(
                "TORN_QUOTA_REDIS_COMMAND_TIMEOUT_MS",
                REDIS_TIMEOUT_MS.to_string(),
            )
            .env("TORN_QUOTA_RECONNECT_INTERVAL_MS", RECONNECT_MS.to_string())
            .env("TORN_QUOTA_SAFETY_MARGIN_MS", SAFETY_MARGIN_MS.to_string())
            .env("TORN_API_TIMEOUT_MS", REQUEST_TIMEOUT_MS.to_string())
            // The most a limit may be: far above what the soak's owners can reach.
            .env("TORN_QUOTA_IP_LIMIT", "10000")
            // The per-IP window as short as the owners': with several workers the local
            // fallback waits one window out when Redis is lost (docs/failover.md), and a
            // minute of it would cover the whole outage.
            .env("TORN_QUOTA_IP_WINDOW_MS", args.window_ms.to_string())
            // A code 5 holds the owner back for one window: Torn's window has drained by then.
            .env("TORN_QUOTA_OWNER_HOLD_MS", args.window_ms.to_string())
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "error".into()),
            )
            .stdout(Stdio::piped())
            .stdin(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start worker {id}: {e}"))?;
        workers.push(Worker { id, child });
    }

    // PostgreSQL stops at 60 % of the run and starts again at 85 %, on its own thread.
    let pg_fault = vault.take().map(|(pg, _, _)| {
        tokio::task::spawn_blocking(move || postgres_fault(pg, started, duration))
    });

    // The fault schedule: Redis dies at 25 % of the run and comes back, empty, at 55 %:
    // long enough that the local fallback, after waiting out the last shared window (one
    // window plus a request timeout), decides for a while on its own.
    let mut kill_at = None;
    let mut restart_at = None;
    let mut code5_at_kill = 0;
    let mut code5_at_restart = 0;
    let (mut kill_unix_ms, mut restart_unix_ms) = (0, 0);
    if !args.no_redis_fault {
        tokio::time::sleep(duration / 4).await;
        code5_at_kill = sim.counters().errors(5);
        kill_unix_ms = unix_ms();
        redis.kill();
        kill_at = Some(started.elapsed());
        eprintln!(
            "soak: redis killed at {:.1} s",
            started.elapsed().as_secs_f64()
        );
        tokio::time::sleep(duration * 3 / 10).await;
        code5_at_restart = sim.counters().errors(5);
        restart_unix_ms = unix_ms();
        redis.restart()?;
        restart_at = Some(started.elapsed());
        eprintln!(
            "soak: redis restarted (empty) at {:.1} s",
            started.elapsed().as_secs_f64()
        );
    }
    // The documented window closes one window (and the margins) after Redis answers again.
    let window_end = restart_at.map(|r| {
        r + window + Duration::from_millis(SAFETY_MARGIN_MS + RECONNECT_MS + WINDOW_SLACK_MS)
    });
    let mut code5_at_window_end = None;
    if let Some(end) = window_end {
        tokio::time::sleep(end.saturating_sub(started.elapsed())).await;
        code5_at_window_end = Some(sim.counters().errors(5));
    }

    // Collect the workers' reports (off the runtime: reading a pipe blocks).
    let pg_fault = match pg_fault {
        Some(task) => Some(
            task.await
                .map_err(|e| format!("the postgres fault failed: {e}"))?,
        ),
        None => None,
    };
    if let Some(f) = &pg_fault
        && let Err(e) = &f.result
    {
        postgres_status = format!("failed: {e}");
    }
    let grace = duration + Duration::from_secs(60);
    let reports = tokio::task::spawn_blocking(move || collect(workers, started, grace))
        .await
        .map_err(|e| format!("cannot collect the workers' reports: {e}"))?;
    let elapsed = started.elapsed();
    if code5_at_window_end.is_none() && window_end.is_some() {
        code5_at_window_end = Some(sim.counters().errors(5));
    }
    let counters = sim.counters();
    // What the fault cost in throughput: Torn's admissions per second before the kill,
    // while Redis was down, and after it came back (until the last admission).
    let throughput = {
        let stamps: Vec<u64> = owners
            .iter()
            .flat_map(|&o| sim.admissions(TornUserId::new(o)))
            .map(|us| us / 1000)
            .collect();
        let start_ms = until_ms.saturating_sub(duration.as_millis() as u64);
        let last_ms = stamps.iter().copied().max().unwrap_or(start_ms);
        let rate = |from: u64, to: u64| {
            let n = stamps.iter().filter(|&&t| t >= from && t < to).count();
            let secs = to.saturating_sub(from) as f64 / 1000.0;
            if secs > 0.0 {
                (n as f64 / secs * 10.0).round() / 10.0
            } else {
                0.0
            }
        };
        let mut by_second = vec![0u64; (last_ms.saturating_sub(start_ms) / 1000 + 1) as usize];
        for &t in &stamps {
            if let Some(n) = by_second.get_mut((t.saturating_sub(start_ms) / 1000) as usize) {
                *n += 1;
            }
        }
        if kill_unix_ms == 0 {
            json!({ "whole_run": rate(start_ms, last_ms + 1), "by_second": by_second })
        } else {
            json!({
                "before_kill": rate(start_ms, kill_unix_ms),
                "redis_down": rate(kill_unix_ms, restart_unix_ms),
                "after_restart": rate(restart_unix_ms, last_ms + 1),
                "by_second": by_second,
            })
        }
    };
    sim.shutdown().await;
    drop(redis);

    let sum = |name: &str| -> u64 {
        reports
            .iter()
            .filter_map(|r| r.as_ref().ok())
            .map(|r| r[name].as_u64().unwrap_or(0))
            .sum()
    };
    let crashed: Vec<String> = reports
        .iter()
        .filter_map(|r| r.as_ref().err().cloned())
        .collect();
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    for r in reports.iter().filter_map(|r| r.as_ref().ok()) {
        if let Some(m) = r["errors"].as_object() {
            for (msg, n) in m {
                *errors.entry(msg.clone()).or_default() += n.as_u64().unwrap_or(0);
            }
        }
    }
    let degraded: Vec<f64> = reports
        .iter()
        .filter_map(|r| r.as_ref().ok())
        .map(|r| r["degraded_seconds"].as_f64().unwrap_or(0.0))
        .collect();
    let recovered = reports
        .iter()
        .filter(|r| r.as_ref().is_ok_and(|r| r["recovered"] == true))
        .count();
    let requests = sum("requests");
    let lost = sum("lost");
    let code5 = counters.errors(5);
    let code5_in_window = code5_at_window_end.map_or(0, |end| end - code5_at_kill);
    let over_limit_outside = code5 - code5_in_window;
    let all_recovered = crashed.is_empty() && recovered == reports.len();
    let vault_recovered = reports
        .iter()
        .filter(|r| r.as_ref().is_ok_and(|r| r["vault_recovered"] == true))
        .count();
    let vault_ok = match &pg_fault {
        Some(f) => f.result.is_ok() && vault_recovered == reports.len(),
        None => true,
    };
    let vault_degraded: Vec<f64> = reports
        .iter()
        .filter_map(|r| r.as_ref().ok())
        .map(|r| r["vault_degraded_seconds"].as_f64().unwrap_or(0.0))
        .collect();
    let passed = lost == 0 && over_limit_outside == 0 && all_recovered && vault_ok;
    let secs = |d: Option<Duration>| d.map(|d| (d.as_secs_f64() * 10.0).round() / 10.0);
    let report = json!({
        "soak": if passed { "ok" } else { "failed" },
        "workers": args.workers.get(),
        "owners": owners.len(),
        "duration_s": secs(Some(elapsed)),
        "limit": args.limit.get(),
        "window_ms": args.window_ms,
        "requests": requests,
        "completed": sum("ok"),
        "failed": sum("failed"),
        "failed_errors": errors,
        "lost": lost,
        "crashed_workers": crashed,
        "code5_answers": code5,
        "code5_in_documented_window": code5_in_window,
        // Which hand-over they came from: Redis lost (local windows start) or Redis back.
        "code5_while_redis_down": code5_at_restart.saturating_sub(code5_at_kill),
        "code5_after_restart": code5_at_window_end.map_or(0, |end| end.saturating_sub(code5_at_restart)),
        "over_limit_outside_window": over_limit_outside,
        "degraded_seconds_total": (degraded.iter().sum::<f64>() * 100.0).round() / 100.0,
        "degraded_seconds_max": (degraded.iter().copied().fold(0.0, f64::max) * 100.0).round() / 100.0,
        "recoveries": sum("recoveries"),
        "per_worker": reports.iter().filter_map(|r| r.as_ref().ok()).map(|r| json!({
            "worker": r["worker"],
            "requests": r["requests"],
            "rounds": r["rounds"],
            "degraded_seconds": r["degraded_seconds"],
            "degraded_spells": r["degraded_spells"],
            "recovered": r["recovered"],
        })).collect::<Vec<_>>(),
        "workers_recovered": recovered,
        "redis_killed_at_s": secs(kill_at),
        "redis_restarted_at_s": secs(restart_at),
        "documented_window_end_s": secs(window_end),
        "postgres_fault": postgres_status,
        "postgres_stopped_at_s": secs(pg_fault.as_ref().and_then(|f| f.stopped_at)),
        "postgres_started_at_s": secs(pg_fault.as_ref().and_then(|f| f.started_at)),
        "vault_reads_failed": sum("vault_reads_failed"),
        "vault_degraded_seconds_max": (vault_degraded.iter().copied().fold(0.0, f64::max) * 100.0).round() / 100.0,
        "workers_vault_recovered": pg_fault.as_ref().map(|_| vault_recovered),
        "clock_gap_seconds": clock_gap,
        "admitted_per_s": throughput,
        "sim": {
            "requests": counters.requests,
            "admitted": counters.admitted,
            "ok": counters.ok,
            "code17": counters.errors(17),
            "faults_served": counters.faults_served,
            "max_in_window": counters.max_in_window,
        },
    });
    emit(&report);
    drop(pg_fault);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(if passed {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// What the PostgreSQL fault did, and when.
struct PgFault {
    /// The server, stopped when this drops (after the workers are done).
    _pg: PrivatePostgres,
    stopped_at: Option<Duration>,
    started_at: Option<Duration>,
    result: Result<(), String>,
}

/// Stops the private server at 60 % of the run and starts it at 85 %.
fn postgres_fault(mut pg: PrivatePostgres, started: Instant, duration: Duration) -> PgFault {
    let sleep_until = |at: Duration| std::thread::sleep(at.saturating_sub(started.elapsed()));
    sleep_until(duration * 3 / 5);
    if let Err(e) = pg.stop() {
        return PgFault {
            _pg: pg,
            stopped_at: None,
            started_at: None,
            result: Err(e),
        };
    }
    let stopped_at = Some(started.elapsed());
    eprintln!(
        "soak: postgres stopped at {:.1} s",
        started.elapsed().as_secs_f64()
    );
    sleep_until(duration * 17 / 20);
    let result = pg.restart();
    let started_at = result.is_ok().then(|| started.elapsed());
    if result.is_ok() {
        eprintln!(
            "soak: postgres started at {:.1} s",
            started.elapsed().as_secs_f64()
        );
    }
    PgFault {
        _pg: pg,
        stopped_at,
        started_at,
        result,
    }
}

/// Waits for every worker's report line; a worker that dies or hangs past `grace` is a
/// crash, named with what it did.
fn collect(workers: Vec<Worker>, started: Instant, grace: Duration) -> Vec<Result<Value, String>> {
    let mut readers = Vec::new();
    for mut w in workers {
        let stdout = w.child.stdout.take();
        let reader = std::thread::spawn(move || {
            let mut last = None;
            if let Some(out) = stdout {
                for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                    if let Ok(v) = serde_json::from_str::<Value>(&line) {
                        last = Some(v);
                    }
                }
            }
            last
        });
        readers.push((w, reader));
    }
    readers
        .into_iter()
        .map(|(mut w, reader)| {
            loop {
                match w.child.try_wait() {
                    Ok(Some(status)) => {
                        let report = reader.join().ok().flatten();
                        return match report {
                            Some(r) if status.success() => Ok(r),
                            Some(_) | None => Err(format!(
                                "worker {} ended ({status}) without its report",
                                w.id
                            )),
                        };
                    }
                    Ok(None) if started.elapsed() > grace => {
                        let _ = w.child.kill();
                        let _ = w.child.wait();
                        return Err(format!("worker {} hung and was killed", w.id));
                    }
                    Ok(None) => std::thread::sleep(Duration::from_millis(50)),
                    Err(e) => return Err(format!("worker {}: {e}", w.id)),
                }
            }
        })
        .collect()
}

// ---------------------------------------------------------------------------------------
// The worker.

/// `KEY OWNER` a line.
fn read_pool(path: &Path) -> Result<Vec<PoolKey>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read keys file {}: {e}", path.display()))?;
    let mut pool = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let mut parts = line.split_whitespace();
        let (Some(key), Some(owner)) = (parts.next(), parts.next()) else {
            continue;
        };
        let key = ApiKey::new(key)
            .map_err(|e| format!("keys file {} line {}: {e}", path.display(), n + 1))?;
        let owner: u64 = owner
            .parse()
            .map_err(|_| format!("keys file {} line {}: bad owner", path.display(), n + 1))?;
        // Known owners: no lookup reaches Torn outside the owners' quotas.
        pool.push(PoolKey::new(key).known(KeyInfo {
            owner: TornUserId::new(owner),
            access: AccessLevel::Full,
        }));
    }
    Ok(pool)
}

#[derive(Default)]
struct Tally {
    requests: u64,
    ok: u64,
    failed: u64,
    lost: u64,
    code5: u64,
    rounds: u64,
    errors: BTreeMap<String, u64>,
}

impl Tally {
    fn fail(&mut self, message: &str, n: u64) {
        if message.trim().is_empty() || message == "not answered" {
            // No answer, or an answer that says nothing: that request is lost.
            self.lost += n;
        } else {
            self.failed += n;
            // The first words name the failure; the rest (ids, timings) would split it.
            let reason: String = message.chars().take(80).collect();
            *self.errors.entry(reason).or_default() += n;
        }
    }
}

/// The worker's pool, read from the vault every round; while PostgreSQL is down the last
/// pool read serves, and the spell is timed.
struct VaultPool {
    vault: Vault,
    user: AppUserId,
    down: Option<Instant>,
    degraded: Duration,
    reads_failed: u64,
}

impl VaultPool {
    async fn refresh(&mut self, pool: &mut Vec<PoolKey>) -> Result<(), String> {
        match self.vault.live_keys(&[self.user]).await {
            Ok(keys) if keys.is_empty() => Err("the vault holds no soak key".into()),
            Ok(keys) => {
                *pool = keys.into_iter().map(PoolKey::from).collect();
                if let Some(since) = self.down.take() {
                    self.degraded += since.elapsed();
                }
                Ok(())
            }
            Err(e) => {
                self.reads_failed += 1;
                if self.down.is_none() {
                    tracing::warn!(error = %e, "vault unreadable: the last pool read serves");
                    self.down = Some(Instant::now());
                }
                Ok(())
            }
        }
    }

    /// True once the vault answers again (within 10 s).
    async fn recovered(&mut self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut pool = Vec::new();
        loop {
            if self.refresh(&mut pool).await.is_ok() && self.down.is_none() {
                return true;
            }
            if Instant::now() > deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn degraded(&self) -> Duration {
        self.degraded + self.down.map_or(Duration::ZERO, |s| s.elapsed())
    }
}

/// True once `limiter` decides through Redis again (within 10 s): recovery without a
/// restart.
async fn limiter_recovered(limiter: &Limiter, probe: TornUserId) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(d) = limiter.try_acquire(probe, 1).await
            && !d.is_degraded()
        {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn worker(settings: &super::Settings, args: &Args) -> CliResult {
    let keys = args.keys.as_deref().ok_or("--worker needs --keys")?;
    let mut pool = read_pool(keys)?;
    let config = settings.rate_limit()?;
    if !matches!(config.on_redis_down(), OnRedisDown::LocalFallback { .. }) {
        return Err("a soak worker runs with TORN_QUOTA_ON_REDIS_DOWN=local".into());
    }
    let limiter = Limiter::redis(config)?;
    let torn = settings.torn_client()?;
    let client = TornClient::new(limiter.clone(), torn)?;
    let mut vault = match &args.vault_user {
        Some(user) => Some(VaultPool {
            vault: Vault::connect(&settings.vault()?).await?,
            user: user.parse()?,
            down: None,
            degraded: Duration::ZERO,
            reads_failed: 0,
        }),
        None => None,
    };
    let mut tally = Tally::default();
    // Distinct paths per worker and round, so no two requests merge.
    let mut next_id = (args.worker_id + 1) * 100_000_000;
    while unix_ms() < args.until_ms {
        let requests: Vec<BatchRequest> = (0..args.batch.get())
            .map(|j| BatchRequest::new(format!("user/{}/basic", next_id + j as u64)))
            .collect();
        next_id += args.batch.get() as u64;
        let n = requests.len() as u64;
        tally.requests += n;
        tally.rounds += 1;
        if let Some(v) = vault.as_mut() {
            v.refresh(&mut pool).await?;
        }
        let handler = BatchHandler::new(client.clone(), BatchConfig::default());
        match handler.run(requests, pool.clone()).await {
            Ok(outcome) => {
                tally.code5 += outcome.stats.rate_limited;
                tally.lost += n.saturating_sub(outcome.results.len() as u64);
                for r in &outcome.results {
                    match r {
                        Ok(_) => tally.ok += 1,
                        Err(e) => tally.fail(&e.message, 1),
                    }
                }
            }
            Err(e) => tally.fail(&format!("the batch failed: {e}"), n),
        }
    }
    let recovered = limiter_recovered(&limiter, TornUserId::new(u64::MAX - args.worker_id)).await;
    let vault_recovered = match vault.as_mut() {
        Some(v) => Some(v.recovered().await),
        None => None,
    };
    let degraded = torn_quota::telemetry::degraded_time();
    emit(&json!({
        "worker": args.worker_id,
        "requests": tally.requests,
        "ok": tally.ok,
        "failed": tally.failed,
        "lost": tally.lost,
        "errors": tally.errors,
        "code5": tally.code5,
        "rounds": tally.rounds,
        "degraded_seconds": degraded.total.as_secs_f64(),
        "degraded_spells": degraded.spells,
        "recoveries": degraded.recoveries,
        "recovered": recovered,
        "clock_gap_seconds": limiter.clock_gap().await.ok(),
        "vault_reads_failed": vault.as_ref().map_or(0, |v| v.reads_failed),
        "vault_degraded_seconds": vault.as_ref().map_or(0.0, |v| v.degraded().as_secs_f64()),
        "vault_recovered": vault_recovered,
    }));
    Ok(ExitCode::SUCCESS)
}
