//! `torn-quota serve`: the Torn API gateway on `--listen` (or `TORN_QUOTA_LISTEN`), until
//! Ctrl-C or SIGTERM, finishing the calls in flight.

use std::net::SocketAddr;
use std::process::ExitCode;

use torn_quota::Limiter;
use torn_quota::serve::Gateway;
use torn_quota::settings::Settings;
use torn_quota::vault::Vault;

use super::CliResult;

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// The address to listen on (default 127.0.0.1:8100; port 0 picks a free one). Beyond
    /// loopback only with TORN_QUOTA_SERVE_TOKEN.
    #[arg(long, value_name = "ADDR")]
    listen: Option<SocketAddr>,
}

/// The vault, when `DATABASE_URL` or `TORN_QUOTA_ENCRYPTION_KEY` is set: batches by
/// account take its keys. It connects on first use, so the gateway starts without it.
fn vault(settings: &Settings) -> Result<Option<Vault>, torn_quota::Error> {
    if settings.database_url.is_none() && settings.torn_quota_encryption_key.is_none() {
        return Ok(None);
    }
    let config = settings.vault()?;
    Ok(Some(Vault::new(
        config.database.connect_lazy()?,
        config.keyring,
    )))
}

pub(crate) async fn run(settings: &Settings, args: Args) -> CliResult {
    let config = settings.serve(args.listen)?;
    let limits = settings.rate_limit()?;
    let torn = settings.torn_client()?;
    let limiter = Limiter::redis(limits)?;
    if let Err(e) = limiter.ping().await {
        eprintln!("warning: redis does not answer yet ({e}); calls wait for it");
    }
    let client = super::rollout::client(settings, limiter, torn)?;
    let vault = vault(settings)?;
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
    use torn_quota::settings::Settings;

    fn settings(env: &[(&str, &str)]) -> Result<Settings, torn_quota::Error> {
        Settings::from_sources(None, |n| {
            env.iter()
                .find(|(k, _)| *k == n)
                .map(|(_, v)| (*v).to_owned())
        })
    }

    #[test]
    fn reads_the_settings() {
        let s = settings(&[
            ("TORN_QUOTA_LISTEN", "127.0.0.1:9999"),
            ("TORN_QUOTA_SERVE_CACHE_MS", "0"),
        ])
        .unwrap();
        let c = s.serve(None).unwrap();
        assert_eq!(c.listen().port(), 9999);
        assert!(c.cache().is_zero());
        let flag = s.serve(Some("127.0.0.1:7777".parse().unwrap())).unwrap();
        assert_eq!(
            flag.listen().port(),
            7777,
            "--listen wins over TORN_QUOTA_LISTEN"
        );
        let bad = settings(&[("TORN_QUOTA_SERVE_MAX_WAIT_MS", "soon")]).unwrap_err();
        assert!(
            bad.to_string().contains("TORN_QUOTA_SERVE_MAX_WAIT_MS"),
            "{bad}"
        );
        let open = settings(&[("TORN_QUOTA_LISTEN", "0.0.0.0:1")]).unwrap();
        let e = open.serve(None).unwrap_err();
        assert!(e.to_string().contains("TORN_QUOTA_SERVE_TOKEN"), "{e}");
    }
}
