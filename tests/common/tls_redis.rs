//! A TLS-only `redis-server` of one test's own (`--port 0 --tls-port P`), or a TLS-only
//! Redis Cluster of three, with certificates the test makes with `openssl`: a CA that signs
//! the server's and a client's certificate, and a second, unrelated CA with a client
//! certificate of its own (the "wrong" one).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::redis_server::free_port;

/// The PEM files of one test, in a directory removed on drop.
pub struct Certs {
    pub dir: PathBuf,
}

impl Certs {
    /// A trusted CA, a server certificate for 127.0.0.1 signed by it, a client certificate
    /// signed by it, and a rogue CA with its own client certificate.
    pub fn make() -> Self {
        let dir = std::env::temp_dir().join(format!(
            "tq-tls-{}-{}",
            std::process::id(),
            rand::random::<u64>()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let certs = Self { dir };
        certs.ca("ca");
        certs.ca("rogue-ca");
        certs.leaf("server", "ca", "subjectAltName=IP:127.0.0.1,DNS:localhost");
        certs.leaf("client", "ca", "extendedKeyUsage=clientAuth");
        certs.leaf("rogue-client", "rogue-ca", "extendedKeyUsage=clientAuth");
        certs
    }

    /// `NAME.crt` (or `.key`) in the directory.
    pub fn path(&self, file: &str) -> PathBuf {
        self.dir.join(file)
    }

    fn ca(&self, name: &str) {
        openssl(
            &self.dir,
            &[
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "2",
                "-subj",
                &format!("/CN=torn-quota test {name}"),
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.crt"),
            ],
        );
    }

    fn leaf(&self, name: &str, ca: &str, ext: &str) {
        openssl(
            &self.dir,
            &[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-subj",
                &format!("/CN={name}"),
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.csr"),
            ],
        );
        std::fs::write(
            self.dir.join(format!("{name}.ext")),
            format!("basicConstraints=CA:FALSE\n{ext}\n"),
        )
        .unwrap();
        openssl(
            &self.dir,
            &[
                "x509",
                "-req",
                "-in",
                &format!("{name}.csr"),
                "-days",
                "2",
                "-CA",
                &format!("{ca}.crt"),
                "-CAkey",
                &format!("{ca}.key"),
                "-CAcreateserial",
                "-extfile",
                &format!("{name}.ext"),
                "-out",
                &format!("{name}.crt"),
            ],
        );
    }
}

impl Drop for Certs {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("these tests make certificates with openssl ({e})"));
    assert!(
        out.status.success(),
        "openssl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A `redis-server` that speaks TLS only, killed on drop.
pub struct TlsRedis {
    pub port: u16,
    child: Child,
}

impl TlsRedis {
    /// Serves the `server` certificate; with `auth_clients`, demands a client certificate
    /// signed by the test's CA (`--tls-auth-clients yes`).
    pub fn start(certs: &Certs, auth_clients: bool) -> Self {
        Self::start_with(certs, auth_clients, free_port(), &[])
    }

    /// As [`start`](Self::start), on `port`, with `extra` arguments for `redis-server`.
    fn start_with(certs: &Certs, auth_clients: bool, port: u16, extra: &[String]) -> Self {
        let path = |f: &str| certs.path(f).to_str().unwrap().to_owned();
        let child = Command::new("redis-server")
            .args([
                "--port",
                "0",
                "--tls-port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
            ])
            .args(["--tls-cert-file", &path("server.crt")])
            .args(["--tls-key-file", &path("server.key")])
            .args(["--tls-ca-cert-file", &path("ca.crt")])
            .args([
                "--tls-auth-clients",
                if auth_clients { "yes" } else { "no" },
            ])
            .args(["--save", "", "--appendonly", "no"])
            .args(extra)
            .stdout(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("these tests start their own redis-server ({e})"));
        // Listening is enough: every test then speaks TLS to it through the limiter.
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "tls redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Self { port, child }
    }

    /// `rediss://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("rediss://127.0.0.1:{}", self.port)
    }
}

impl Drop for TlsRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Certs {
    /// A TLS connection to the server on `port` as the test's own client: it trusts the CA
    /// and presents the client certificate (a server that asks for none ignores it).
    pub fn connect(&self, port: u16) -> redis::Connection {
        let read = |f: &str| std::fs::read(self.path(f)).unwrap();
        let certs = redis::TlsCertificates {
            client_tls: Some(redis::ClientTlsConfig {
                client_cert: read("client.crt"),
                client_key: read("client.key"),
            }),
            root_cert: Some(read("ca.crt")),
        };
        redis::Client::build_with_tls(format!("rediss://127.0.0.1:{port}"), certs)
            .unwrap()
            .get_connection_with_timeout(Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("tls connection to port {port}: {e}"))
    }
}

/// `args` as one command on `conn`; panics, naming the command, if Redis refuses it.
pub fn query<T: redis::FromRedisValue>(conn: &mut redis::Connection, args: &[&str]) -> T {
    let mut cmd = redis::cmd(args[0]);
    for a in &args[1..] {
        cmd.arg(*a);
    }
    cmd.query(conn).unwrap_or_else(|e| panic!("{args:?}: {e}"))
}

/// Three TLS-only primaries that make one Redis Cluster, the cluster bus over TLS too
/// (`--tls-cluster yes`), each serving the `server` certificate of the test's CA; killed on
/// drop. Slots are split in three contiguous ranges, one per node.
pub struct TlsCluster {
    nodes: Vec<TlsRedis>,
    /// A connection to each node, in the order of `nodes`, for the test's own checks.
    conns: Vec<redis::Connection>,
}

/// The slot ranges of the three nodes, in order.
const RANGES: [(u16, u16); 3] = [(0, 5460), (5461, 10922), (10923, 16383)];

impl TlsCluster {
    /// Starts the nodes (with `auth_clients`, each demands a client certificate of the
    /// test's CA, from the limiter and from the other nodes alike), gives each its slots,
    /// introduces them with `CLUSTER MEET`, and returns once every node reports
    /// `cluster_state:ok` with all three known and all slots served.
    pub fn start(certs: &Certs, auth_clients: bool) -> Self {
        let mut ports: Vec<u16> = Vec::new();
        // A client port and a bus port per node, all distinct.
        while ports.len() < 2 * RANGES.len() {
            let port = free_port();
            if !ports.contains(&port) {
                ports.push(port);
            }
        }
        let (ports, buses) = ports.split_at(RANGES.len());
        let nodes: Vec<TlsRedis> = ports
            .iter()
            .zip(buses)
            .map(|(&port, &bus)| {
                let conf = certs.path(&format!("nodes-{port}.conf"));
                let extra = [
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    conf.to_str().unwrap(),
                    "--cluster-port",
                    &bus.to_string(),
                    "--cluster-node-timeout",
                    "5000",
                    "--tls-cluster",
                    "yes",
                    "--tls-replication",
                    "yes",
                ]
                .map(str::to_owned);
                TlsRedis::start_with(certs, auth_clients, port, &extra)
            })
            .collect();
        let mut conns: Vec<redis::Connection> = ports.iter().map(|p| certs.connect(*p)).collect();
        for (i, (conn, (lo, hi))) in conns.iter_mut().zip(RANGES).enumerate() {
            // Distinct epochs up front, as `redis-cli --cluster create` sets them, so the
            // nodes need not resolve a collision before they agree.
            let epoch = (i + 1).to_string();
            query::<()>(conn, &["CLUSTER", "SET-CONFIG-EPOCH", &epoch]);
            query::<()>(
                conn,
                &["CLUSTER", "ADDSLOTSRANGE", &lo.to_string(), &hi.to_string()],
            );
        }
        let (first, bus) = (ports[0].to_string(), buses[0].to_string());
        for conn in &mut conns[1..] {
            query::<()>(conn, &["CLUSTER", "MEET", "127.0.0.1", &first, &bus]);
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        for conn in &mut conns {
            loop {
                let info: String = query(conn, &["CLUSTER", "INFO"]);
                if info.contains("cluster_state:ok")
                    && info.contains("cluster_known_nodes:3")
                    && info.contains("cluster_slots_ok:16384")
                {
                    break;
                }
                assert!(Instant::now() < deadline, "tls cluster not ready: {info}");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        Self { nodes, conns }
    }

    /// `rediss://127.0.0.1:PORT` of the first node: the one seed a test gives the limiter.
    pub fn seed_url(&self) -> String {
        self.nodes[0].url()
    }

    /// How many nodes the cluster has.
    pub fn node_count(&self) -> usize {
        self.nodes.len()
    }

    /// The index of the node that serves `key`'s slot.
    pub fn node_of(&mut self, key: &str) -> usize {
        let slot: u16 = query(&mut self.conns[0], &["CLUSTER", "KEYSLOT", key]);
        RANGES
            .iter()
            .position(|(lo, hi)| (*lo..=*hi).contains(&slot))
            .expect("every slot is in a range")
    }

    /// A connection to node `i`, for the test's own checks.
    pub fn conn(&mut self, i: usize) -> &mut redis::Connection {
        &mut self.conns[i]
    }
}
