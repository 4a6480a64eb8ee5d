//! A TLS-only `redis-server` of one test's own (`--port 0 --tls-port P`), with certificates
//! the test makes with `openssl`: a CA that signs the server's and a client's certificate,
//! and a second, unrelated CA with a client certificate of its own (the "wrong" one).

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
        let port = free_port();
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
