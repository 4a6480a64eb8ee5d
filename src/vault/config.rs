//! Settings of the vault: where PostgreSQL is, how long to wait for it, and the encryption
//! keys. Validated at start; an error names the setting and never repeats its value.

use std::num::NonZeroU32;
use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use zeroize::Zeroizing;

use crate::error::{Error, Result, Source};
use crate::vault::crypto::Keyring;

/// The query parameters of `DATABASE_URL` the PostgreSQL driver understands (besides
/// `options[NAME]`); any other is refused.
const KNOWN_PARAMETERS: &[&str] = &[
    "sslmode",
    "ssl-mode",
    "sslrootcert",
    "ssl-root-cert",
    "ssl-ca",
    "sslcert",
    "ssl-cert",
    "sslkey",
    "ssl-key",
    "statement-cache-capacity",
    "host",
    "hostaddr",
    "port",
    "dbname",
    "user",
    "password",
    "application_name",
    "options",
];

/// The query parameters whose values [`DatabaseUrl::redacted`] shows; every other value
/// (`password`, `options`, ...) prints as `***`.
const SHOWN_PARAMETERS: &[&str] = &[
    "sslmode",
    "ssl-mode",
    "sslrootcert",
    "ssl-root-cert",
    "ssl-ca",
    "sslcert",
    "ssl-cert",
    "sslkey",
    "ssl-key",
    "statement-cache-capacity",
    "host",
    "hostaddr",
    "port",
    "dbname",
    "user",
    "application_name",
];

fn is_known_parameter(name: &str) -> bool {
    KNOWN_PARAMETERS.contains(&name)
        || name
            .strip_prefix("options[")
            .is_some_and(|rest| rest.len() > 1 && rest.ends_with(']'))
}

/// A PostgreSQL URL whose `Debug` hides the password.
#[derive(Clone)]
pub struct DatabaseUrl(Zeroizing<String>);

impl DatabaseUrl {
    /// Validates a URL: `postgres://` or `postgresql://`, usable by the driver, with only
    /// parameters the driver knows in its query (`sslmode`, `sslrootcert`, `sslcert`,
    /// `sslkey`, `application_name`, `options`, `host`, `port`, `dbname`, `user`,
    /// `password`, `statement-cache-capacity`, ...). The error never repeats the URL or a value (they
    /// may carry a password).
    pub fn new(url: &str) -> Result<Self> {
        let invalid = |reason: &str| Error::Config {
            setting: "DATABASE_URL",
            reason: reason.to_owned(),
        };
        let parsed = url::Url::parse(url).map_err(|e| {
            invalid(&format!(
                "is not a URL ({e}); expected postgres://user:password@host:5432/database"
            ))
        })?;
        if !matches!(parsed.scheme(), "postgres" | "postgresql") {
            return Err(invalid("scheme must be postgres:// or postgresql://"));
        }
        // The driver logs a parameter it does not know, value and all, at WARN and then
        // ignores it: `sslpassword=` would reach the logs and protect nothing.
        for pair in parsed.query().unwrap_or_default().split('&') {
            let (raw_name, has_value) = match pair.split_once('=') {
                Some((name, _)) => (name, true),
                None => (pair, false),
            };
            if raw_name.is_empty() && !has_value {
                continue;
            }
            let name = url::form_urlencoded::parse(raw_name.as_bytes())
                .next()
                .map(|(k, _)| k.into_owned())
                .unwrap_or_default();
            if is_known_parameter(&name) {
                continue;
            }
            if name == "connect_timeout" {
                return Err(invalid(
                    "parameter connect_timeout is not supported by the driver; \
                     set TORN_QUOTA_DATABASE_ACQUIRE_TIMEOUT_MS instead",
                ));
            }
            // A name is shown only when it looks like one: `?s3cret` may be a pasted value.
            let shown = has_value
                && name.len() <= 40
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
            return Err(invalid(&if shown {
                format!(
                    "has an unknown query parameter '{name}' (its value is not shown); \
                     known: {}",
                    KNOWN_PARAMETERS.join(", ")
                )
            } else {
                format!(
                    "has a query part that is not a known parameter (not shown); known: {}",
                    KNOWN_PARAMETERS.join(", ")
                )
            }));
        }
        // The driver's own message may quote query parameters, a password among them.
        PgConnectOptions::from_str(url).map_err(|_| {
            invalid(
                "is not usable by the PostgreSQL driver: check the host, port and query parameters",
            )
        })?;
        Ok(Self(Zeroizing::new(url.to_owned())))
    }

    /// The whole URL, password included: for connecting only.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The URL with the password and every query value but a few harmless ones
    /// (`sslmode`, `application_name`, host, port, certificate paths, ...) replaced by
    /// `***`: the form to print or log.
    pub fn redacted(&self) -> String {
        match url::Url::parse(&self.0) {
            Ok(mut u) => {
                if u.password().is_some() {
                    let _ = u.set_password(Some("***"));
                }
                let pairs: Vec<(String, String)> = u
                    .query_pairs()
                    .map(|(k, v)| {
                        let v = if SHOWN_PARAMETERS.contains(&&*k) {
                            v.into_owned()
                        } else {
                            "***".into()
                        };
                        (k.into_owned(), v)
                    })
                    .collect();
                if !pairs.is_empty() {
                    u.query_pairs_mut().clear().extend_pairs(pairs);
                }
                u.to_string()
            }
            Err(_) => "<invalid url>".to_owned(),
        }
    }
}

impl std::fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.redacted())
    }
}

/// How the vault reaches PostgreSQL.
///
/// ```
/// use std::time::Duration;
/// use torn_quota::vault::DatabaseConfig;
///
/// let config = DatabaseConfig::new("postgres://app:s3cret@db.internal/tool")?
///     .acquire_timeout(Duration::from_secs(2));
/// assert!(!format!("{config:?}").contains("s3cret"));
/// # Ok::<(), torn_quota::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct DatabaseConfig {
    url: DatabaseUrl,
    max_connections: NonZeroU32,
    acquire_timeout: Duration,
    statement_timeout: Option<Duration>,
}

impl DatabaseConfig {
    /// Defaults: 10 connections, 5 s to get one (connecting included), 30 s per statement.
    pub fn new(url: &str) -> Result<Self> {
        Ok(Self {
            url: DatabaseUrl::new(url)?,
            max_connections: NonZeroU32::new(10).unwrap_or(NonZeroU32::MIN),
            acquire_timeout: Duration::from_secs(5),
            statement_timeout: Some(Duration::from_secs(30)),
        })
    }

    /// At most this many connections.
    #[must_use]
    pub fn max_connections(mut self, n: NonZeroU32) -> Self {
        self.max_connections = n;
        self
    }

    /// How long a call waits for a connection, opening one included, before it fails.
    #[must_use]
    pub fn acquire_timeout(mut self, timeout: Duration) -> Self {
        self.acquire_timeout = timeout;
        self
    }

    /// How long PostgreSQL lets one statement run; `None` for no limit (migrations that
    /// backfill a large table want that).
    #[must_use]
    pub fn statement_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.statement_timeout = timeout;
        self
    }

    /// The URL, printable.
    pub fn url(&self) -> &DatabaseUrl {
        &self.url
    }

    /// Opens a pool and one connection now, so that a wrong URL or an unreachable server is
    /// an error at start rather than at the first key lookup.
    pub async fn connect(&self) -> Result<PgPool> {
        let options = self.connect_options()?;
        let target = match options.get_socket() {
            Some(socket) => socket.display().to_string(),
            None => format!("{}:{}", options.get_host(), options.get_port()),
        };
        let pool = self
            .pool_options()
            .connect_with(options)
            .await
            .map_err(|source| Error::DatabaseConnect {
                target,
                // The pool retries a refused connection until the deadline, then reports
                // only that it waited: say what that means.
                source: Source::new(match source {
                    sqlx::Error::PoolTimedOut => sqlx::Error::Io(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!(
                            "no connection within {} ms: the server refused, is unreachable \
                             or did not answer",
                            self.acquire_timeout.as_millis()
                        ),
                    )),
                    other => other,
                }),
            })?;
        Ok(pool)
    }

    /// A pool that connects on first use.
    pub fn connect_lazy(&self) -> Result<PgPool> {
        Ok(self
            .pool_options()
            .connect_lazy_with(self.connect_options()?))
    }

    fn connect_options(&self) -> Result<PgConnectOptions> {
        let options = PgConnectOptions::from_str(self.url.expose()).map_err(|_| Error::Config {
            setting: "DATABASE_URL",
            reason: "is not usable by the PostgreSQL driver".into(),
        })?;
        // An application_name in the URL is the operator's choice; else say who we are.
        let named = url::Url::parse(self.url.expose())
            .is_ok_and(|u| u.query_pairs().any(|(k, _)| k == "application_name"));
        Ok(if named {
            options
        } else {
            options.application_name("torn-quota")
        })
    }

    fn pool_options(&self) -> PgPoolOptions {
        let statement_timeout = self.statement_timeout;
        PgPoolOptions::new()
            .max_connections(self.max_connections.get())
            .acquire_timeout(self.acquire_timeout)
            // A SET after connecting works behind poolers that drop startup options.
            .after_connect(move |conn, _meta| {
                Box::pin(async move {
                    if let Some(t) = statement_timeout {
                        sqlx::query(&format!("SET statement_timeout = {}", t.as_millis()))
                            .execute(conn)
                            .await?;
                    }
                    Ok(())
                })
            })
    }
}

/// Everything a [`Vault`](crate::vault::Vault) needs: the database and the encryption keys.
#[derive(Debug, Clone)]
pub struct VaultConfig {
    /// Where PostgreSQL is.
    pub database: DatabaseConfig,
    /// The encryption keys.
    pub keyring: Keyring,
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(feature = "settings")]
    use crate::settings::test_env::env;
    #[cfg(feature = "settings")]
    use std::path::Path;

    /// The database configuration the one [`Settings`](crate::settings::Settings) reader
    /// makes of `file` and `env`.
    #[cfg(feature = "settings")]
    fn database(
        file: Option<&Path>,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<DatabaseConfig> {
        crate::settings::Settings::from_sources(file, env)?.database()
    }

    /// As [`database`], the whole vault's.
    #[cfg(feature = "settings")]
    fn vault(file: Option<&Path>, env: impl Fn(&str) -> Option<String>) -> Result<VaultConfig> {
        crate::settings::Settings::from_sources(file, env)?.vault()
    }

    fn setting(err: Error) -> (&'static str, String) {
        match err {
            Error::Config { setting, reason } => (setting, reason),
            other => panic!("expected a config error, got {other:?}"),
        }
    }

    #[test]
    #[cfg(feature = "settings")]
    fn database_url_is_required_and_never_echoed() {
        let (name, _) = setting(database(None, env(&[])).unwrap_err());
        assert_eq!(name, "DATABASE_URL");
        for bad in [
            "mysql://u:hunter2pass@h/db",
            "not a url hunter2pass",
            "postgres://u:hunter2pass@h:notaport/db",
            "postgres://u:hunter2pass@h/db?sslmode=hunter2pass",
        ] {
            let (name, reason) =
                setting(database(None, env(&[("DATABASE_URL", bad)])).unwrap_err());
            assert_eq!(name, "DATABASE_URL", "{bad}");
            assert!(!reason.contains("hunter2pass"), "{reason}");
        }
    }

    #[test]
    fn the_password_never_shows() {
        let c = DatabaseConfig::new("postgres://app:hunter2pass@db:5432/x?password=hunter2pass")
            .unwrap();
        assert!(!format!("{c:?}").contains("hunter2pass"), "{c:?}");
        assert!(!c.url().redacted().contains("hunter2pass"));
        assert!(
            c.url()
                .redacted()
                .starts_with("postgres://app:***@db:5432/x")
        );
    }

    #[test]
    fn unknown_query_parameters_are_refused_by_name_never_by_value() {
        for (url, name) in [
            ("postgres://h/db?sslpassword=hunter2pass", "sslpassword"),
            (
                "postgres://h/db?sslmode=require&passwd=hunter2pass",
                "passwd",
            ),
            ("postgres://h/db?connect_timeout=5", "connect_timeout"),
        ] {
            let (setting, reason) = setting(DatabaseUrl::new(url).map(|_| ()).unwrap_err());
            assert_eq!(setting, "DATABASE_URL");
            assert!(reason.contains(name), "{url}: {reason}");
            assert!(!reason.contains("hunter2pass"), "{reason}");
        }
        let (_, reason) = setting(
            DatabaseUrl::new("postgres://h/db?hunter2pass")
                .map(|_| ())
                .unwrap_err(),
        );
        assert!(!reason.contains("hunter2pass"), "{reason}");
    }

    #[test]
    fn every_query_value_but_the_allow_list_is_masked() {
        let url = DatabaseUrl::new(
            "postgres://app:hunter2pass@db:5432/x?sslmode=verify-full&application_name=bot\
             &password=hunter2pass&options=-c%20search_path%3Dhunter2pass\
             &sslrootcert=/etc/ca.pem",
        )
        .unwrap();
        let shown = url.redacted();
        assert!(!shown.contains("hunter2pass"), "{shown}");
        for kept in [
            "sslmode=verify-full",
            "application_name=bot",
            "sslrootcert=%2Fetc%2Fca.pem",
        ] {
            assert!(shown.contains(kept), "{kept}: {shown}");
        }
        for masked in ["password=***", "options=***"] {
            assert!(shown.contains(masked), "{masked}: {shown}");
        }
    }

    #[test]
    #[cfg(feature = "settings")]
    fn numeric_settings_are_validated() {
        let url = ("DATABASE_URL", "postgres://localhost/db");
        for name in [
            "TORN_QUOTA_DATABASE_MAX_CONNECTIONS",
            "TORN_QUOTA_DATABASE_ACQUIRE_TIMEOUT_MS",
        ] {
            let (got, _) = setting(database(None, env(&[url, (name, "0")])).unwrap_err());
            assert_eq!(got, name);
        }
        let c = database(
            None,
            env(&[url, ("TORN_QUOTA_DATABASE_STATEMENT_TIMEOUT_MS", "0")]),
        )
        .unwrap();
        assert_eq!(c.statement_timeout, None);
    }

    #[test]
    #[cfg(feature = "settings")]
    fn the_vault_needs_the_encryption_key() {
        let (name, _) =
            setting(vault(None, env(&[("DATABASE_URL", "postgres://localhost/db")])).unwrap_err());
        assert_eq!(name, crate::vault::ENCRYPTION_KEY_SETTING);
    }
}
