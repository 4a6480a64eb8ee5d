//! [`TornClientConfig`]: where Torn is, how long to wait for it, how often to retry, and
//! how the client shares quota. Validated once at start, so a bad value is a clear error
//! naming its setting, never a surprise on the first call.

use std::num::{NonZeroU32, NonZeroU64};
use std::time::Duration;

use crate::error::{Error, Result};

/// The most attempts `TORN_API_MAX_ATTEMPTS` allows.
const MAX_ATTEMPTS: u32 = 10;
/// The longest a refused key stays parked before its re-check: one day.
const MAX_KEY_RECHECK: Duration = Duration::from_secs(86_400);

/// The Torn client's configuration. Build it with [`TornClientConfig::builder`] or read it
/// with [`TornClientConfig::from_env`] (with the `settings` feature); both validate, so an instance is always usable.
///
/// | setting | default | what |
/// |---|---|---|
/// | `TORN_API_BASE_URL` | `https://api.torn.com` | Torn's address: https, or http to a loopback host only (127.0.0.0/8, ::1, localhost); v2 paths go under `/v2/` |
/// | `TORN_API_USER_AGENT` | `torn-quota/<version>` | the `User-Agent` of every request |
/// | `TORN_API_TIMEOUT_MS` | 10 000 | one HTTP exchange, from its quota's grant to the last body byte |
/// | `TORN_API_CONNECT_TIMEOUT_MS` | 3 000 | opening a connection |
/// | `TORN_API_MAX_ATTEMPTS` | 3 | attempts of a call that fails transiently (codes 0, 11, 12, 17, transport failures), 1 to 10 |
/// | `TORN_API_RETRY_MIN_DELAY_MS` | 250 | the first back-off delay (exponential, with jitter) |
/// | `TORN_API_RETRY_MAX_DELAY_MS` | 5 000 | the longest back-off delay |
/// | `TORN_API_PAUSE_MS` | 60 000 | how long codes 8 (IP block) and 9 (API disabled) pause every call |
/// | `TORN_API_OWNER_CACHE_TTL_MS` | 3 600 000 | how long a key's owner is remembered |
/// | `TORN_API_OWNER_CACHE_CAPACITY` | 100 000 | how many keys' owners are remembered |
/// | `TORN_QUOTA_SAFETY_MARGIN_MS` | 0 | added to every grant's provisional hold (the request timeout), on top of settling on Torn's answer |
/// | `TORN_QUOTA_IP_LIMIT` | 1 000 | requests per IP window, Torn's per-IP cap |
/// | `TORN_QUOTA_IP_WINDOW_MS` | 60 000 | the IP window |
/// | `TORN_QUOTA_OWNER_HOLD_MS` | 10 000 | how long a code 5 holds the owner back, in every process |
/// | `TORN_API_KEY_RECHECK_MS` | 86 400 000 | how long a key refused with code 13 or 18 is parked before one `/v2/key/info` call re-checks it (at most one day) |
/// | `TORN_QUOTA_EGRESS_ID` | unset | the public address (or a name for it) this process sends from: processes with the same id share one per-IP bucket; unset, every process shares one |
/// | `TORN_API_COMMENT` | unset | added to every call as `comment=` (Torn shows it in the owner's usage log): 1 to 10 of `A-Z a-z 0-9 - _ . ~` |
///
/// ```
/// use std::time::Duration;
/// use torn_quota::torn::TornClientConfig;
///
/// let config = TornClientConfig::builder()
///     .base_url("http://127.0.0.1:8080")
///     .max_attempts(5)
///     .retry_min_delay(Duration::from_millis(10))
///     .build()?;
/// assert_eq!(config.base_url().as_str(), "http://127.0.0.1:8080/");
/// assert_eq!(config.safety_margin(), Duration::ZERO);
/// # Ok::<(), torn_quota::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct TornClientConfig {
    base_url: url::Url,
    user_agent: String,
    request_timeout: Duration,
    connect_timeout: Duration,
    max_attempts: NonZeroU32,
    retry_min_delay: Duration,
    retry_max_delay: Duration,
    pause: Duration,
    owner_cache_ttl: Duration,
    owner_cache_capacity: NonZeroU64,
    safety_margin: Duration,
    ip_limit: NonZeroU32,
    ip_window: Duration,
    owner_hold: Duration,
    key_recheck: Duration,
    egress_id: Option<String>,
    comment: Option<String>,
}

impl Default for TornClientConfig {
    /// Torn itself, its per-IP cap, and the defaults in the table above.
    fn default() -> Self {
        Self {
            base_url: url::Url::parse("https://api.torn.com").expect("a valid URL"),
            user_agent: concat!("torn-quota/", env!("CARGO_PKG_VERSION")).to_owned(),
            request_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(3),
            max_attempts: NonZeroU32::new(3).expect("3 is not zero"),
            retry_min_delay: Duration::from_millis(250),
            retry_max_delay: Duration::from_secs(5),
            pause: Duration::from_secs(60),
            owner_cache_ttl: Duration::from_secs(3600),
            owner_cache_capacity: NonZeroU64::new(100_000).expect("not zero"),
            safety_margin: Duration::ZERO,
            ip_limit: NonZeroU32::new(1000).expect("1000 is not zero"),
            ip_window: Duration::from_secs(60),
            owner_hold: Duration::from_secs(10),
            key_recheck: MAX_KEY_RECHECK,
            egress_id: None,
            comment: None,
        }
    }
}

impl TornClientConfig {
    /// A builder starting from the defaults.
    pub fn builder() -> TornClientConfigBuilder {
        let config = Self::default();
        TornClientConfigBuilder {
            max_attempts: config.max_attempts.get(),
            config,
            base_url: None,
        }
    }

    /// Torn's address, e.g. `https://api.torn.com/`. v2 paths go under `/v2/`.
    pub fn base_url(&self) -> &url::Url {
        &self.base_url
    }
    /// The `User-Agent` of every request.
    pub fn user_agent(&self) -> &str {
        &self.user_agent
    }
    /// Time allowed for one HTTP exchange.
    pub fn request_timeout(&self) -> Duration {
        self.request_timeout
    }
    /// Time allowed to open a connection.
    pub fn connect_timeout(&self) -> Duration {
        self.connect_timeout
    }
    /// Attempts of a call that fails transiently, the first included.
    pub fn max_attempts(&self) -> NonZeroU32 {
        self.max_attempts
    }
    /// The first back-off delay.
    pub fn retry_min_delay(&self) -> Duration {
        self.retry_min_delay
    }
    /// The longest back-off delay.
    pub fn retry_max_delay(&self) -> Duration {
        self.retry_max_delay
    }
    /// How long codes 8 and 9 pause every call of the client.
    pub fn pause(&self) -> Duration {
        self.pause
    }
    /// How long a key's owner is remembered.
    pub fn owner_cache_ttl(&self) -> Duration {
        self.owner_cache_ttl
    }
    /// How many keys' owners are remembered.
    pub fn owner_cache_capacity(&self) -> NonZeroU64 {
        self.owner_cache_capacity
    }
    /// The safety margin of every grant ([`Request::margin`](crate::Request::margin)).
    pub fn safety_margin(&self) -> Duration {
        self.safety_margin
    }
    /// Requests per IP window.
    pub fn ip_limit(&self) -> NonZeroU32 {
        self.ip_limit
    }
    /// The IP window.
    pub fn ip_window(&self) -> Duration {
        self.ip_window
    }
    /// How long a code 5 holds the owner back.
    pub fn owner_hold(&self) -> Duration {
        self.owner_hold
    }
    /// How long a key refused with code 13 or 18 is parked before it is re-checked.
    pub fn key_recheck(&self) -> Duration {
        self.key_recheck
    }
    /// The egress id naming this process's per-IP bucket; `None`: the one shared bucket.
    pub fn egress_id(&self) -> Option<&str> {
        self.egress_id.as_deref()
    }
    /// The `comment=` added to every call, if any.
    pub fn comment(&self) -> Option<&str> {
        self.comment.as_deref()
    }
}

/// Builds a [`TornClientConfig`]; [`build`](Self::build) validates.
#[derive(Debug, Clone)]
#[must_use]
pub struct TornClientConfigBuilder {
    config: TornClientConfig,
    /// Kept raw until `build`, which parses it and names the setting when it is wrong.
    base_url: Option<String>,
    /// Kept raw so that `build` reports a zero with the setting's name.
    max_attempts: u32,
}

impl TornClientConfigBuilder {
    /// Torn's address (default `https://api.torn.com`): `https://`, or `http://` to a
    /// loopback host only (keys travel in the header); a host, no credentials, query or
    /// fragment. A path is kept (for a proxy that serves Torn under
    /// one); v2 paths go under `<base>/v2/`.
    pub fn base_url(mut self, url: impl Into<String>) -> Self {
        self.base_url = Some(url.into());
        self
    }
    /// The `User-Agent` of every request (default `torn-quota/<version>`).
    pub fn user_agent(mut self, agent: impl Into<String>) -> Self {
        self.config.user_agent = agent.into();
        self
    }
    /// Time allowed for one HTTP exchange, counted from the grant of its quota: the units
    /// are held that long (plus the safety margin) before their window (default 10 s).
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.config.request_timeout = timeout;
        self
    }
    /// Time allowed to open a connection (default 3 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.config.connect_timeout = timeout;
        self
    }
    /// Attempts of a call that fails transiently, the first included (default 3; 1 turns
    /// retries off; at most 10). Each attempt takes its own unit of the owner's quota.
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = attempts;
        self
    }
    /// The first back-off delay (default 250 ms); each next one doubles, with jitter.
    pub fn retry_min_delay(mut self, delay: Duration) -> Self {
        self.config.retry_min_delay = delay;
        self
    }
    /// The longest back-off delay (default 5 s).
    pub fn retry_max_delay(mut self, delay: Duration) -> Self {
        self.config.retry_max_delay = delay;
        self
    }
    /// How long codes 8 (IP block) and 9 (API disabled) pause every call (default 60 s).
    pub fn pause(mut self, pause: Duration) -> Self {
        self.config.pause = pause;
        self
    }
    /// How long a key's owner is remembered (default 1 h).
    pub fn owner_cache_ttl(mut self, ttl: Duration) -> Self {
        self.config.owner_cache_ttl = ttl;
        self
    }
    /// How many keys' owners are remembered (default 100 000).
    pub fn owner_cache_capacity(mut self, capacity: NonZeroU64) -> Self {
        self.config.owner_cache_capacity = capacity;
        self
    }
    /// An extra margin on every grant's provisional hold (default 0). A grant counts from
    /// when it is taken until one window after Torn's answer (settled), or for the request
    /// timeout plus this margin plus a window when no answer comes: network delay cannot
    /// become a code 5, so a margin is rarely needed.
    pub fn safety_margin(mut self, margin: Duration) -> Self {
        self.config.safety_margin = margin;
        self
    }
    /// Requests per IP window (default 1 000).
    pub fn ip_limit(mut self, limit: NonZeroU32) -> Self {
        self.config.ip_limit = limit;
        self
    }
    /// The IP window (default 60 s).
    pub fn ip_window(mut self, window: Duration) -> Self {
        self.config.ip_window = window;
        self
    }
    /// How long a code 5 holds the owner back in every process (default 10 s).
    pub fn owner_hold(mut self, hold: Duration) -> Self {
        self.config.owner_hold = hold;
        self
    }
    /// How long a key refused with code 13 (owner inactive) or 18 (paused) is parked before
    /// one `/v2/key/info` call re-checks it (default 24 h; 1 ms to 1 day). Torn gives no
    /// time at which such a key comes back, and a day keeps the re-checks rare.
    pub fn key_recheck(mut self, after: Duration) -> Self {
        self.config.key_recheck = after;
        self
    }
    /// The public address (or a name for it) this process sends from (default unset: one
    /// per-IP bucket for every process on the Redis). Processes with the same id share one
    /// bucket; different ids get their own. 1 to 64 of `A-Z a-z 0-9 . : _ -`.
    pub fn egress_id(mut self, id: impl Into<String>) -> Self {
        self.config.egress_id = Some(id.into());
        self
    }
    /// Adds `comment=<comment>` to every call (default none): Torn shows it in the key
    /// owner's usage log, its first ten characters. 1 to 10 of `A-Z a-z 0-9 - _ . ~`.
    pub fn comment(mut self, comment: impl Into<String>) -> Self {
        self.config.comment = Some(comment.into());
        self
    }

    /// Validates and returns the configuration.
    pub fn build(self) -> Result<TornClientConfig> {
        let mut c = self.config;
        if let Some(raw) = self.base_url {
            c.base_url = parse_base_url(raw.trim())?;
        }
        c.max_attempts = NonZeroU32::new(self.max_attempts).ok_or_else(|| {
            invalid(
                "TORN_API_MAX_ATTEMPTS",
                "must be at least 1 (1 turns retries off)".into(),
            )
        })?;
        // Each attempt may spend a unit of the owner's quota and keeps the caller waiting;
        // past a few, Torn is down rather than flaky.
        if c.max_attempts.get() > MAX_ATTEMPTS {
            return Err(invalid(
                "TORN_API_MAX_ATTEMPTS",
                format!("must be at most {MAX_ATTEMPTS}, got {}", c.max_attempts),
            ));
        }
        if c.user_agent.trim().is_empty()
            || !c
                .user_agent
                .bytes()
                .all(|b| b == b' ' || b.is_ascii_graphic())
        {
            return Err(invalid(
                "TORN_API_USER_AGENT",
                "must be non-empty printable ASCII".into(),
            ));
        }
        for (name, d) in [
            ("TORN_API_TIMEOUT_MS", c.request_timeout),
            ("TORN_API_CONNECT_TIMEOUT_MS", c.connect_timeout),
            ("TORN_API_RETRY_MIN_DELAY_MS", c.retry_min_delay),
            ("TORN_API_RETRY_MAX_DELAY_MS", c.retry_max_delay),
            ("TORN_API_PAUSE_MS", c.pause),
            ("TORN_API_OWNER_CACHE_TTL_MS", c.owner_cache_ttl),
            ("TORN_QUOTA_IP_WINDOW_MS", c.ip_window),
            ("TORN_QUOTA_OWNER_HOLD_MS", c.owner_hold),
            ("TORN_API_KEY_RECHECK_MS", c.key_recheck),
        ] {
            if d < Duration::from_millis(1) {
                return Err(invalid(name, "must be at least 1 millisecond".into()));
            }
        }
        if c.key_recheck > MAX_KEY_RECHECK {
            return Err(invalid(
                "TORN_API_KEY_RECHECK_MS",
                format!(
                    "must be at most one day ({} ms), got {} ms",
                    MAX_KEY_RECHECK.as_millis(),
                    c.key_recheck.as_millis()
                ),
            ));
        }
        if let Some(id) = &c.egress_id {
            let ok = (1..=64).contains(&id.len())
                && id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b':' | b'_' | b'-'));
            if !ok {
                return Err(invalid(
                    "TORN_QUOTA_EGRESS_ID",
                    format!(
                        "must be 1 to 64 of A-Z a-z 0-9 . : _ - (an address or a name), got {} \
                         characters",
                        id.len()
                    ),
                ));
            }
        }
        if let Some(comment) = &c.comment {
            let ok = (1..=10).contains(&comment.len())
                && comment
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~'));
            if !ok {
                return Err(invalid(
                    "TORN_API_COMMENT",
                    format!(
                        "must be 1 to 10 of A-Z a-z 0-9 - _ . ~ (Torn shows ten characters), \
                         got {} characters",
                        comment.len()
                    ),
                ));
            }
        }
        if c.retry_max_delay < c.retry_min_delay {
            return Err(invalid(
                "TORN_API_RETRY_MAX_DELAY_MS",
                format!(
                    "must not be below TORN_API_RETRY_MIN_DELAY_MS ({} ms), got {} ms",
                    c.retry_min_delay.as_millis(),
                    c.retry_max_delay.as_millis()
                ),
            ));
        }
        Ok(c)
    }
}

fn parse_base_url(raw: &str) -> Result<url::Url> {
    const SETTING: &str = "TORN_API_BASE_URL";
    let url = url::Url::parse(raw).map_err(|e| {
        invalid(
            SETTING,
            format!("not a URL ({e}); expected e.g. https://api.torn.com"),
        )
    })?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(invalid(
            SETTING,
            format!(
                "scheme must be http:// or https://, got '{}://'",
                url.scheme()
            ),
        ));
    }
    let Some(host) = url.host() else {
        return Err(invalid(SETTING, "has no host".into()));
    };
    // Every request carries a key in its Authorization header: in clear only to this
    // machine (the simulator, a local gateway), never across a network.
    let loopback = match host {
        url::Host::Domain(name) => name.eq_ignore_ascii_case("localhost"),
        url::Host::Ipv4(ip) => ip.is_loopback(),
        url::Host::Ipv6(ip) => ip.is_loopback(),
    };
    if url.scheme() == "http" && !loopback {
        return Err(invalid(
            SETTING,
            "http:// sends keys in clear: use https://, or http:// to a loopback host \
             (127.0.0.1, ::1, localhost) only"
                .into(),
        ));
    }
    // Credentials in the URL would travel to every log line that prints it.
    if !url.username().is_empty() || url.password().is_some() {
        return Err(invalid(SETTING, "must not carry credentials".into()));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(invalid(
            SETTING,
            "must not have a query or a fragment".into(),
        ));
    }
    Ok(url)
}

fn invalid(setting: &'static str, reason: String) -> Error {
    Error::Config { setting, reason }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(feature = "settings")]
    use crate::settings::test_env::env;

    /// The configuration the one [`Settings`](crate::settings::Settings) reader makes of
    /// `file` and `env`, as the binary reads it.
    #[cfg(feature = "settings")]
    fn from_sources(
        file: Option<&std::path::Path>,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<TornClientConfig> {
        crate::settings::Settings::from_sources(file, env)?.torn_client()
    }

    fn setting_of(err: &Error) -> &'static str {
        match err {
            Error::Config { setting, .. } => setting,
            other => panic!("expected a config error, got {other:?}"),
        }
    }

    #[test]
    #[cfg(feature = "settings")]
    fn defaults_follow_the_design() {
        let c = from_sources(None, env(&[])).unwrap();
        assert_eq!(c.base_url().as_str(), "https://api.torn.com/");
        assert_eq!(
            c.user_agent(),
            format!("torn-quota/{}", env!("CARGO_PKG_VERSION"))
        );
        assert_eq!(c.max_attempts().get(), 3);
        assert_eq!(c.safety_margin(), Duration::ZERO);
        assert_eq!((c.egress_id(), c.comment()), (None, None));
        assert_eq!(c.ip_limit().get(), 1000);
        assert_eq!(c.ip_window(), Duration::from_secs(60));
        assert_eq!(c.owner_cache_ttl(), Duration::from_secs(3600));
        assert_eq!(c.pause(), Duration::from_secs(60));
        assert_eq!(c.owner_hold(), Duration::from_secs(10));
    }

    #[test]
    #[cfg(feature = "settings")]
    fn every_setting_is_read() {
        let c = from_sources(
            None,
            env(&[
                ("TORN_API_BASE_URL", " http://127.0.0.1:9/torn "),
                ("TORN_API_USER_AGENT", "my-bot/2"),
                ("TORN_API_TIMEOUT_MS", "1500"),
                ("TORN_API_CONNECT_TIMEOUT_MS", "700"),
                ("TORN_API_MAX_ATTEMPTS", "1"),
                ("TORN_API_RETRY_MIN_DELAY_MS", "5"),
                ("TORN_API_RETRY_MAX_DELAY_MS", "50"),
                ("TORN_API_PAUSE_MS", "300"),
                ("TORN_API_OWNER_CACHE_TTL_MS", "400"),
                ("TORN_API_OWNER_CACHE_CAPACITY", "10"),
                ("TORN_QUOTA_SAFETY_MARGIN_MS", "0"),
                ("TORN_QUOTA_IP_LIMIT", "30"),
                ("TORN_QUOTA_IP_WINDOW_MS", "1000"),
                ("TORN_QUOTA_OWNER_HOLD_MS", "2000"),
                ("TORN_QUOTA_EGRESS_ID", "203.0.113.7"),
                ("TORN_API_COMMENT", "tq-bot"),
            ]),
        )
        .unwrap();
        assert_eq!(c.base_url().as_str(), "http://127.0.0.1:9/torn");
        assert_eq!(c.user_agent(), "my-bot/2");
        assert_eq!(c.request_timeout(), Duration::from_millis(1500));
        assert_eq!(c.connect_timeout(), Duration::from_millis(700));
        assert_eq!(c.max_attempts().get(), 1);
        assert_eq!(c.retry_min_delay(), Duration::from_millis(5));
        assert_eq!(c.retry_max_delay(), Duration::from_millis(50));
        assert_eq!(c.pause(), Duration::from_millis(300));
        assert_eq!(c.owner_cache_ttl(), Duration::from_millis(400));
        assert_eq!(c.owner_cache_capacity().get(), 10);
        assert_eq!(c.safety_margin(), Duration::ZERO);
        assert_eq!(c.ip_limit().get(), 30);
        assert_eq!(c.ip_window(), Duration::from_secs(1));
        assert_eq!(c.owner_hold(), Duration::from_secs(2));
        assert_eq!(c.egress_id(), Some("203.0.113.7"));
        assert_eq!(c.comment(), Some("tq-bot"));
    }

    #[test]
    #[cfg(feature = "settings")]
    fn bad_values_name_their_setting() {
        for (name, value) in [
            ("TORN_API_BASE_URL", "api.torn.com"),
            ("TORN_API_BASE_URL", "ftp://api.torn.com"),
            ("TORN_API_BASE_URL", "https://user:pw@api.torn.com"),
            ("TORN_API_BASE_URL", "https://api.torn.com/?key=x"),
            // Plain http would carry every key in clear across the network.
            ("TORN_API_BASE_URL", "http://api.torn.com"),
            ("TORN_API_BASE_URL", "http://10.0.0.5:8080"),
            ("TORN_API_BASE_URL", "http://127.0.0.1.example.com"),
            ("TORN_API_MAX_ATTEMPTS", "11"),
            ("TORN_API_MAX_ATTEMPTS", "4294967295"),
            ("TORN_API_USER_AGENT", " "),
            ("TORN_API_USER_AGENT", "bot\n2"),
            ("TORN_API_TIMEOUT_MS", "0"),
            ("TORN_API_CONNECT_TIMEOUT_MS", "soon"),
            ("TORN_API_MAX_ATTEMPTS", "0"),
            ("TORN_API_MAX_ATTEMPTS", "-1"),
            ("TORN_API_RETRY_MIN_DELAY_MS", "0"),
            ("TORN_API_PAUSE_MS", "0"),
            ("TORN_API_OWNER_CACHE_TTL_MS", "0"),
            ("TORN_API_OWNER_CACHE_CAPACITY", "0"),
            ("TORN_QUOTA_SAFETY_MARGIN_MS", "-5"),
            ("TORN_QUOTA_IP_LIMIT", "0"),
            ("TORN_QUOTA_IP_WINDOW_MS", "0"),
            ("TORN_QUOTA_OWNER_HOLD_MS", "x"),
            ("TORN_QUOTA_EGRESS_ID", "a b"),
            ("TORN_QUOTA_EGRESS_ID", "{slot}"),
            ("TORN_API_COMMENT", "far-too-long"),
            ("TORN_API_COMMENT", "a&b=c"),
        ] {
            let err = from_sources(None, env(&[(name, value)])).unwrap_err();
            assert_eq!(setting_of(&err), name, "{name}={value}: {err}");
            let shown = err.to_string();
            assert!(shown.contains(name), "{shown}");
            assert!(!shown.contains("pw@"), "credentials echoed: {shown}");
        }
        let err = TornClientConfig::builder()
            .retry_min_delay(Duration::from_millis(100))
            .retry_max_delay(Duration::from_millis(10))
            .build()
            .unwrap_err();
        assert_eq!(setting_of(&err), "TORN_API_RETRY_MAX_DELAY_MS");
        let err = TornClientConfig::builder()
            .max_attempts(0)
            .build()
            .unwrap_err();
        assert_eq!(setting_of(&err), "TORN_API_MAX_ATTEMPTS");
    }

    #[test]
    fn plain_http_is_for_loopback_only_and_attempts_stop_at_ten() {
        for url in [
            "http://127.0.0.1:8080",
            "http://127.9.9.9",
            "http://localhost:9",
            "http://[::1]:8100",
            "https://api.torn.com",
            "https://10.0.0.5",
        ] {
            let c = TornClientConfig::builder().base_url(url).build();
            assert!(c.is_ok(), "{url}: {c:?}");
        }
        let err = TornClientConfig::builder()
            .base_url("http://api.torn.com")
            .build()
            .unwrap_err();
        assert!(err.to_string().contains("https"), "{err}");
        let c = TornClientConfig::builder()
            .max_attempts(10)
            .build()
            .unwrap();
        assert_eq!(c.max_attempts().get(), 10);
        let err = TornClientConfig::builder()
            .max_attempts(11)
            .build()
            .unwrap_err();
        assert_eq!(setting_of(&err), "TORN_API_MAX_ATTEMPTS");
        assert!(err.to_string().contains("10"), "{err}");
    }

    #[test]
    #[cfg(feature = "settings")]
    fn the_file_is_shared_with_the_other_settings_and_env_wins() {
        let dir = std::env::temp_dir().join(format!("tq-torn-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("torn.toml");
        std::fs::write(
            &path,
            "TORN_QUOTA_LIMIT = 80\nDATABASE_URL = \"postgres://x@y/z\"\n\
             TORN_API_MAX_ATTEMPTS = 4\nTORN_API_PAUSE_MS = 900\n",
        )
        .unwrap();
        let c = from_sources(Some(&path), env(&[("TORN_API_PAUSE_MS", "100")])).unwrap();
        assert_eq!(c.max_attempts().get(), 4);
        assert_eq!(c.pause(), Duration::from_millis(100));

        std::fs::write(&path, "TORN_API_MAX_ATEMPTS = 4\n").unwrap();
        let err = from_sources(Some(&path), env(&[])).unwrap_err();
        let source = std::error::Error::source(&err).unwrap().to_string();
        assert!(source.contains("TORN_API_MAX_ATEMPTS"), "{source}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    #[cfg(feature = "settings")]
    fn the_key_recheck_defaults_to_a_day_and_is_bounded_by_one() {
        let c = from_sources(None, env(&[])).unwrap();
        assert_eq!(c.key_recheck(), Duration::from_secs(86_400));
        let c = from_sources(None, env(&[("TORN_API_KEY_RECHECK_MS", "500")])).unwrap();
        assert_eq!(c.key_recheck(), Duration::from_millis(500));
        for bad in ["0", "86400001", "soon"] {
            let err = from_sources(None, env(&[("TORN_API_KEY_RECHECK_MS", bad)])).unwrap_err();
            assert_eq!(setting_of(&err), "TORN_API_KEY_RECHECK_MS", "{bad}");
        }
    }
}
