//! [`SimConfig`]: the limits the simulator enforces, its latency, and its random faults.

use std::num::NonZeroU32;
use std::time::Duration;

use crate::error::{Error, Result};

/// How the simulator behaves. Build it with [`SimConfig::builder`]; the default is Torn's own
/// limits (100 per owner and 1,000 per IP, each per rolling 60 s), no latency, no faults.
///
/// ```
/// use std::num::NonZeroU32;
/// use std::time::Duration;
/// use torn_quota::sim::SimConfig;
///
/// let config = SimConfig::builder()
///     .limit(NonZeroU32::new(20).unwrap())
///     .window(Duration::from_millis(500))
///     .build()?;
/// assert_eq!(config.limit().get(), 20);
/// # Ok::<(), torn_quota::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct SimConfig {
    limit: NonZeroU32,
    window: Duration,
    ip_limit: NonZeroU32,
    ip_window: Duration,
    latency: Duration,
    latency_jitter: Duration,
    stall_share: f64,
    stall: Duration,
    random_faults: RandomFaults,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            limit: NonZeroU32::new(100).expect("100 is not zero"),
            window: Duration::from_secs(60),
            ip_limit: NonZeroU32::new(1000).expect("1000 is not zero"),
            ip_window: Duration::from_secs(60),
            latency: Duration::ZERO,
            latency_jitter: Duration::ZERO,
            stall_share: 0.0,
            stall: Duration::ZERO,
            random_faults: RandomFaults::default(),
        }
    }
}

impl SimConfig {
    /// A builder starting from the defaults.
    pub fn builder() -> SimConfigBuilder {
        SimConfigBuilder {
            config: Self::default(),
        }
    }
    /// Requests admitted per owner per [`window`](Self::window), across all their keys.
    pub fn limit(&self) -> NonZeroU32 {
        self.limit
    }
    /// The owner's rolling window.
    pub fn window(&self) -> Duration {
        self.window
    }
    /// Requests per IP per [`ip_window`](Self::ip_window).
    pub fn ip_limit(&self) -> NonZeroU32 {
        self.ip_limit
    }
    /// The IP's rolling window.
    pub fn ip_window(&self) -> Duration {
        self.ip_window
    }
    /// The time a request takes to reach the simulator's count.
    pub fn latency(&self) -> Duration {
        self.latency
    }
    /// The most random extra time added to [`latency`](Self::latency), per request.
    pub fn latency_jitter(&self) -> Duration {
        self.latency_jitter
    }
    /// The share of requests (0 to 1) that reach the count [`stall`](Self::stall) late.
    pub fn stall_share(&self) -> f64 {
        self.stall_share
    }
    /// How much later a stalled request reaches the count.
    pub fn stall(&self) -> Duration {
        self.stall
    }
    /// The random faults.
    pub fn random_faults(&self) -> RandomFaults {
        self.random_faults
    }
}

/// Faults drawn at random for each admitted request, for soak tests. At most one applies to
/// a request; a [queued](crate::sim::SimHandle::inject) fault takes precedence. The default
/// has every rate at 0.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RandomFaults {
    /// Probability of answering code 17 (backend error).
    pub backend_error: f64,
    /// Probability of answering normally after [`slow_for`](Self::slow_for).
    pub slow: f64,
    /// How long a slow answer waits.
    pub slow_for: Duration,
    /// Probability of closing the connection without a complete response.
    pub drop_connection: f64,
}

impl Default for RandomFaults {
    fn default() -> Self {
        Self {
            backend_error: 0.0,
            slow: 0.0,
            slow_for: Duration::from_secs(2),
            drop_connection: 0.0,
        }
    }
}

/// Builds a [`SimConfig`]; [`build`](Self::build) validates.
#[derive(Debug, Clone)]
#[must_use]
pub struct SimConfigBuilder {
    config: SimConfig,
}

impl SimConfigBuilder {
    /// Requests admitted per owner per window, across all their keys (default 100).
    pub fn limit(mut self, limit: NonZeroU32) -> Self {
        self.config.limit = limit;
        self
    }
    /// The owner's rolling window (default 60 s; at least 1 ms).
    pub fn window(mut self, window: Duration) -> Self {
        self.config.window = window;
        self
    }
    /// Requests per IP per IP window (default 1,000).
    pub fn ip_limit(mut self, limit: NonZeroU32) -> Self {
        self.config.ip_limit = limit;
        self
    }
    /// The IP's rolling window (default 60 s; at least 1 ms).
    pub fn ip_window(mut self, window: Duration) -> Self {
        self.config.ip_window = window;
        self
    }
    /// How long a request takes to reach the count (default 0). Torn counts a request when it
    /// arrives, so this is the gap between a client's decision to send and Torn's count.
    pub fn latency(mut self, latency: Duration) -> Self {
        self.config.latency = latency;
        self
    }
    /// A random extra latency, uniform in `0..=jitter`, per request (default 0). Jitter lets
    /// requests arrive in another order than they were sent, as on a real network.
    pub fn latency_jitter(mut self, jitter: Duration) -> Self {
        self.config.latency_jitter = jitter;
        self
    }
    /// Stalls on the way in (default none): each request, with probability `share`, reaches
    /// the count `stall` later than the others, on top of the latency. A hostile network:
    /// a grant taken long before Torn counts it must still not become a code 5.
    pub fn stalls(mut self, share: f64, stall: Duration) -> Self {
        self.config.stall_share = share;
        self.config.stall = stall;
        self
    }
    /// Random faults per admitted request (default none).
    pub fn random_faults(mut self, faults: RandomFaults) -> Self {
        self.config.random_faults = faults;
        self
    }

    /// Validates and returns the configuration.
    pub fn build(self) -> Result<SimConfig> {
        let c = self.config;
        for (name, window) in [("window", c.window), ("ip_window", c.ip_window)] {
            if window < Duration::from_millis(1) {
                return Err(invalid(name, "must be at least 1 millisecond".into()));
            }
        }
        if !(0.0..=1.0).contains(&c.stall_share) {
            return Err(invalid(
                "stall_share",
                format!("a share is between 0 and 1, got {}", c.stall_share),
            ));
        }
        let f = c.random_faults;
        for (name, p) in [
            ("random_faults.backend_error", f.backend_error),
            ("random_faults.slow", f.slow),
            ("random_faults.drop_connection", f.drop_connection),
        ] {
            if !(0.0..=1.0).contains(&p) {
                return Err(invalid(
                    name,
                    format!("a probability is between 0 and 1, got {p}"),
                ));
            }
        }
        let total = f.backend_error + f.slow + f.drop_connection;
        if total > 1.0 {
            return Err(invalid(
                "random_faults",
                format!(
                    "at most one fault applies to a request, so the rates add up to at most 1, got {total}"
                ),
            ));
        }
        Ok(c)
    }
}

fn invalid(name: &'static str, reason: String) -> Error {
    Error::InvalidArgument { name, reason }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_torns_limits() {
        let c = SimConfig::builder().build().unwrap();
        assert_eq!(c, SimConfig::default());
        assert_eq!(
            (c.limit().get(), c.window()),
            (100, Duration::from_secs(60))
        );
        assert_eq!(
            (c.ip_limit().get(), c.ip_window()),
            (1000, Duration::from_secs(60))
        );
    }

    #[test]
    fn bad_values_are_refused_by_name() {
        let e = SimConfig::builder()
            .window(Duration::ZERO)
            .build()
            .unwrap_err();
        assert!(e.to_string().contains("window"), "{e}");
        let e = SimConfig::builder()
            .random_faults(RandomFaults {
                slow: f64::NAN,
                ..RandomFaults::default()
            })
            .build()
            .unwrap_err();
        assert!(e.to_string().contains("random_faults.slow"), "{e}");
        let e = SimConfig::builder()
            .random_faults(RandomFaults {
                backend_error: 0.6,
                drop_connection: 0.6,
                ..RandomFaults::default()
            })
            .build()
            .unwrap_err();
        assert!(e.to_string().contains("add up"), "{e}");
        let e = SimConfig::builder()
            .stalls(1.5, Duration::from_millis(5))
            .build()
            .unwrap_err();
        assert!(e.to_string().contains("stall_share"), "{e}");
    }
}
