//! The operator CLI (`torn-quota`) run as a child process against a vault database, for the
//! vault's CLI tests. Built only with the `cli` feature, like the binary.

use std::process::Stdio;

use serde_json::Value;
use tokio::io::AsyncWriteExt;

/// The operator CLI with its database, Torn and encryption key settings.
pub struct Cli {
    /// `DATABASE_URL`.
    pub database_url: String,
    /// `TORN_API_BASE_URL`: the simulator, or a dead address.
    pub torn: String,
    /// `TORN_QUOTA_ENCRYPTION_KEY`.
    pub encryption_key: String,
}

/// What one run of the CLI did.
pub struct Ran {
    /// The exit code (None when killed by a signal).
    pub code: Option<i32>,
    /// Stdout, one JSON object a line.
    pub stdout: String,
    /// Stderr: the human-readable report.
    pub stderr: String,
}

impl Ran {
    /// Each stdout line as JSON.
    pub fn json(&self) -> Vec<Value> {
        self.stdout
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect()
    }
}

impl Cli {
    /// Runs `torn-quota args` with `stdin` and `env` on top of its own settings.
    pub async fn run(&self, args: &[&str], stdin: &str, env: &[(&str, &str)]) -> Ran {
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_torn-quota"));
        cmd.args(args)
            .env("DATABASE_URL", &self.database_url)
            .env("TORN_API_BASE_URL", &self.torn)
            .env("TORN_QUOTA_ENCRYPTION_KEY", &self.encryption_key)
            .env_remove("TORN_QUOTA_CONFIG")
            .env_remove("TORN_API_KEY")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("run torn-quota");
        let mut input = child.stdin.take().unwrap();
        input.write_all(stdin.as_bytes()).await.unwrap();
        drop(input);
        let out = child.wait_with_output().await.unwrap();
        Ran {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}
