//! [`TornUserId`]: the identity Torn limits.

/// A Torn player id: the identity Torn limits, so the identity every bucket is keyed by.
/// Two keys of one player share one bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TornUserId(u64);

impl TornUserId {
    /// Wraps a Torn player id.
    pub const fn new(id: u64) -> Self {
        Self(id)
    }
    /// The raw id.
    pub const fn get(self) -> u64 {
        self.0
    }
}

impl std::fmt::Display for TornUserId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::str::FromStr for TornUserId {
    type Err = std::num::ParseIntError;
    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        s.parse().map(Self)
    }
}
