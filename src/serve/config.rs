//! [`ServeConfig`]: the gateway's own settings, validated once at start.

use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::error::{Error, Result};

/// The address the gateway listens on by default: loopback only, so nothing outside the
/// machine reaches it without a token.
pub const DEFAULT_LISTEN: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::LOCALHOST), 8100);
/// The longest a call waits for quota by default (`X-Torn-Quota-Wait-Ms` may ask less).
pub const DEFAULT_MAX_WAIT: Duration = Duration::from_millis(30_000);
/// How long an answer is reused for the same key and path by default: Torn caches its
/// answers for about 29 s, so asking again sooner buys nothing but a spent unit.
pub const DEFAULT_CACHE: Duration = Duration::from_millis(29_000);
/// The longest wait a setting may ask: a caller's connection rarely outlives it.
const MAX_WAIT_CEILING: Duration = Duration::from_secs(600);
/// The longest answer cache a setting may ask: an hour-old answer is no longer Torn's.
const CACHE_CEILING: Duration = Duration::from_secs(3600);
/// A token shorter than this is guessable; a bearer is the only lock beyond loopback.
const MIN_TOKEN_LEN: usize = 16;

/// The gateway's settings. Build it with [`ServeConfig::builder`].
///
/// ```
/// use torn_quota::serve::ServeConfig;
///
/// let config = ServeConfig::builder()
///     .listen("127.0.0.1:8100".parse().unwrap())
///     .max_wait_ms(5_000)
///     .build()
///     .unwrap();
/// assert_eq!(config.max_wait().as_millis(), 5_000);
/// // Beyond loopback only with a token.
/// assert!(ServeConfig::builder().listen("0.0.0.0:8100".parse().unwrap()).build().is_err());
/// ```
#[derive(Clone)]
pub struct ServeConfig {
    listen: SocketAddr,
    max_wait: Duration,
    cache: Duration,
    token: Option<Token>,
}

/// The bearer token, kept only as its SHA-256: comparing digests takes the same time
/// whatever the guess, and the token itself is never held where it could be printed.
#[derive(Clone)]
pub(crate) struct Token(Zeroizing<[u8; 32]>);

impl Token {
    fn new(raw: &str) -> Self {
        Self(Zeroizing::new(Sha256::digest(raw.as_bytes()).into()))
    }

    /// True when `presented` is the token.
    pub(crate) fn matches(&self, presented: &str) -> bool {
        let other: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        // Digests of different tokens differ anywhere: fold every byte, no early exit.
        self.0
            .iter()
            .zip(other.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
    }
}

impl fmt::Debug for ServeConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServeConfig")
            .field("listen", &self.listen)
            .field("max_wait", &self.max_wait)
            .field("cache", &self.cache)
            .field("token", &self.token.as_ref().map(|_| "<set>"))
            .finish()
    }
}

impl Default for ServeConfig {
    fn default() -> Self {
        Self {
            listen: DEFAULT_LISTEN,
            max_wait: DEFAULT_MAX_WAIT,
            cache: DEFAULT_CACHE,
            token: None,
        }
    }
}

impl ServeConfig {
    /// A builder with the defaults: `127.0.0.1:8100`, 30 s wait, 29 s cache, no token.
    pub fn builder() -> ServeConfigBuilder {
        ServeConfigBuilder {
            config: Self::default(),
            token: None,
        }
    }

    /// Where the gateway listens.
    pub fn listen(&self) -> SocketAddr {
        self.listen
    }

    /// The longest a call waits for quota; `X-Torn-Quota-Wait-Ms` may ask less, never more.
    pub fn max_wait(&self) -> Duration {
        self.max_wait
    }

    /// How long an answer is reused for the same key and path (zero: never).
    pub fn cache(&self) -> Duration {
        self.cache
    }

    /// Whether a bearer token guards every route.
    pub fn has_token(&self) -> bool {
        self.token.is_some()
    }

    pub(crate) fn token(&self) -> Option<&Token> {
        self.token.as_ref()
    }
}

/// Builds a [`ServeConfig`] from plain values; [`build`](Self::build) validates them.
#[must_use]
pub struct ServeConfigBuilder {
    config: ServeConfig,
    token: Option<Zeroizing<String>>,
}

impl fmt::Debug for ServeConfigBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServeConfigBuilder")
            .field("config", &self.config)
            .field("token", &self.token.as_ref().map(|_| "<set>"))
            .finish()
    }
}

impl ServeConfigBuilder {
    /// Where to listen (`TORN_QUOTA_LISTEN`, `--listen`).
    pub fn listen(mut self, addr: SocketAddr) -> Self {
        self.config.listen = addr;
        self
    }

    /// The longest wait for quota, in ms (`TORN_QUOTA_SERVE_MAX_WAIT_MS`), at most 600000.
    pub fn max_wait_ms(mut self, ms: u64) -> Self {
        self.config.max_wait = Duration::from_millis(ms);
        self
    }

    /// How long answers are reused, in ms (`TORN_QUOTA_SERVE_CACHE_MS`); 0 turns the
    /// cache off (identical calls in flight are still merged), at most 3600000.
    pub fn cache_ms(mut self, ms: u64) -> Self {
        self.config.cache = Duration::from_millis(ms);
        self
    }

    /// The bearer token every route asks for (`TORN_QUOTA_SERVE_TOKEN`): needed to listen
    /// beyond loopback. `None` or an empty string means no token.
    pub fn token(mut self, token: Option<String>) -> Self {
        self.token = token.filter(|t| !t.is_empty()).map(Zeroizing::new);
        self
    }

    /// Validates: waits and cache within their ceilings, a token of at least 16 printable
    /// characters without spaces, and a token whenever the address is not loopback.
    pub fn build(self) -> Result<ServeConfig> {
        let mut config = self.config;
        if config.max_wait > MAX_WAIT_CEILING {
            return Err(Error::Config {
                setting: "TORN_QUOTA_SERVE_MAX_WAIT_MS",
                reason: format!(
                    "must be at most {} ms, got {} ms",
                    MAX_WAIT_CEILING.as_millis(),
                    config.max_wait.as_millis()
                ),
            });
        }
        if config.cache > CACHE_CEILING {
            return Err(Error::Config {
                setting: "TORN_QUOTA_SERVE_CACHE_MS",
                reason: format!(
                    "must be at most {} ms, got {} ms",
                    CACHE_CEILING.as_millis(),
                    config.cache.as_millis()
                ),
            });
        }
        if let Some(raw) = &self.token {
            // Never echo the token: its length is all the message says.
            if raw.len() < MIN_TOKEN_LEN || !raw.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(Error::Config {
                    setting: "TORN_QUOTA_SERVE_TOKEN",
                    reason: format!(
                        "must be at least {MIN_TOKEN_LEN} printable ascii characters without \
                         spaces, got {} characters",
                        raw.chars().count()
                    ),
                });
            }
            config.token = Some(Token::new(raw));
        }
        if !config.listen.ip().is_loopback() && config.token.is_none() {
            return Err(Error::Config {
                setting: "TORN_QUOTA_SERVE_TOKEN",
                reason: format!(
                    "is needed to listen on {}, beyond loopback: anyone who reaches the \
                     gateway spends your players' quota",
                    config.listen
                ),
            });
        }
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_matches_only_itself() {
        let t = Token::new("abcdefghijklmnop");
        assert!(t.matches("abcdefghijklmnop"));
        assert!(!t.matches("abcdefghijklmnoq"));
        assert!(!t.matches(""));
    }

    #[test]
    fn validates_values() {
        assert!(ServeConfig::builder().max_wait_ms(600_001).build().is_err());
        assert!(ServeConfig::builder().cache_ms(3_600_001).build().is_err());
        let short = ServeConfig::builder()
            .token(Some("short".into()))
            .build()
            .unwrap_err();
        assert!(!short.to_string().contains("short"), "{short}");
        let open = ServeConfig::builder()
            .listen("0.0.0.0:1".parse().unwrap())
            .token(Some("abcdefghijklmnop".into()))
            .build()
            .unwrap();
        assert!(open.has_token());
        assert!(!format!("{open:?}").contains("abcdefghijklmnop"));
    }
}
