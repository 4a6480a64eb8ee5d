//! `torn-quota serve`: the Torn API gateway on `--listen` (or `TORN_QUOTA_LISTEN`), until
//! Ctrl-C or SIGTERM, finishing the calls in flight.

use std::net::SocketAddr;
use std::path::Path;
use std::process::ExitCode;

use torn_quota::Limiter;
use torn_quota::serve::{Gateway, ServeConfig};
use torn_quota::torn::TornClientConfig;
use torn_quota::vault::{Vault, VaultConfig};

use super::CliResult;

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// The address to listen on (default 127.0.0.1:8100; port 0 picks a free one). Beyond
    /// loopback only with TORN_QUOTA_SERVE_TOKEN.
    #[arg(long, value_name = "ADDR")]
    listen: Option<SocketAddr>,
}

/// The gateway's settings from the environment, in one place (the typed settings will
/// take them over): `TORN_QUOTA_LISTEN` (`--listen` wins), `TORN_QUOTA_SERVE_MAX_WAIT_MS`,
/// `TORN_QUOTA_SERVE_CACHE_MS`, `TORN_QUOTA_SERVE_TOKEN`.
fn serve_config(
    listen: Option<SocketAddr>,
    env: impl Fn(&str) -> Option<String>,
) -> Result<ServeConfig, torn_quota::Error> {
    let invalid =
        |setting: &'static str, reason: String| torn_quota::Error::Config { setting, reason };
    let mut b = ServeConfig::builder();
    let listen = match listen {
        Some(addr) => Some(addr),
        None => env("TORN_QUOTA_LISTEN")
            .map(|v| {
                v.trim().parse::<SocketAddr>().map_err(|_| {
                    invalid(
                        "TORN_QUOTA_LISTEN",
                        format!("must be an address such as 127.0.0.1:8100, got '{v}'"),
                    )
                })
            })
            .transpose()?,
    };
    if let Some(addr) = listen {
        b = b.listen(addr);
    }
    let millis = |setting: &'static str| -> Result<Option<u64>, torn_quota::Error> {
        env(setting)
            .map(|v| {
                v.trim().parse::<u64>().map_err(|_| {
                    invalid(
                        setting,
                        format!("must be a whole number of milliseconds, got '{v}'"),
                    )
                })
            })
            .transpose()
    };
    if let Some(ms) = millis("TORN_QUOTA_SERVE_MAX_WAIT_MS")? {
        b = b.max_wait_ms(ms);
    }
    if let Some(ms) = millis("TORN_QUOTA_SERVE_CACHE_MS")? {
        b = b.cache_ms(ms);
    }
    // Never echoed: the token is a secret.
    b.token(env("TORN_QUOTA_SERVE_TOKEN")).build()
}

/// The vault, when `DATABASE_URL` or `TORN_QUOTA_ENCRYPTION_KEY` is set: batches by
/// account take its keys. It connects on first use, so the gateway starts without it.
fn vault(file: Option<&Path>) -> Result<Option<Vault>, torn_quota::Error> {
    let env = |n: &str| std::env::var(n).ok();
    if env("DATABASE_URL").is_none() && env("TORN_QUOTA_ENCRYPTION_KEY").is_none() {
        return Ok(None);
    }
    let config = VaultConfig::from_sources(file, env)?;
    Ok(Some(Vault::new(
        config.database.connect_lazy()?,
        config.keyring,
    )))
}

pub(crate) async fn run(file: Option<&Path>, args: Args) -> CliResult {
    let config = serve_config(args.listen, |n| std::env::var(n).ok())?;
    let limits = super::load_config(file)?;
    let torn = TornClientConfig::from_sources(file, |n| std::env::var(n).ok())?;
    let limiter = Limiter::redis(limits)?;
    if let Err(e) = limiter.ping().await {
        eprintln!("warning: redis does not answer yet ({e}); calls wait for it");
    }
    let client = super::rollout::client(file, limiter, torn)?;
    let vault = vault(file)?;
    let listener = tokio::net::TcpListener::bind(config.listen())
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", config.listen()))?;
    let addr = listener.local_addr()?;
    eprintln!(
        "torn-quota gateway listening on http://{addr} (mode {}, token {})",
        client.gate().mode().as_str(),
        if config.has_token() {
            "required"
        } else {
            "off"
        }
    );
    let gateway = Gateway::with_vault(client, config, vault);
    gateway.run(listener, stop_signal()).await?;
    eprintln!("torn-quota gateway stopped");
    Ok(ExitCode::SUCCESS)
}

/// Resolves on Ctrl-C or SIGTERM (what `kill`, systemd and container runtimes send).
async fn stop_signal() {
    #[cfg(unix)]
    {
        let Ok(mut term) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        else {
            let _ = tokio::signal::ctrl_c().await;
            return;
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
    eprintln!("signal received: finishing the calls in flight");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_environment() {
        let env = |n: &str| match n {
            "TORN_QUOTA_LISTEN" => Some("127.0.0.1:9999".to_owned()),
            "TORN_QUOTA_SERVE_CACHE_MS" => Some("0".to_owned()),
            _ => None,
        };
        let c = serve_config(None, env).unwrap();
        assert_eq!(c.listen().port(), 9999);
        assert!(c.cache().is_zero());
        let bad = |n: &str| (n == "TORN_QUOTA_SERVE_MAX_WAIT_MS").then(|| "soon".to_owned());
        assert!(serve_config(None, bad).is_err());
        let open = |n: &str| (n == "TORN_QUOTA_LISTEN").then(|| "0.0.0.0:1".to_owned());
        let e = serve_config(None, open).unwrap_err();
        assert!(e.to_string().contains("TORN_QUOTA_SERVE_TOKEN"), "{e}");
    }
}
