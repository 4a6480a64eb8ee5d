//! The shapes both backends speak: one call's arguments and the scripts' raw replies.

/// One `acquire` call, as `lua/acquire.lua` takes it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ask<'a> {
    pub(crate) limit: u32,
    pub(crate) window_ms: u64,
    pub(crate) cost: u32,
    pub(crate) reserve: u32,
    /// How long a grant stays provisional (acquire.lua's `ARGV[6]`): its records are
    /// stamped decision time + `hold_ms`. 0 for a plain grant.
    pub(crate) hold_ms: u64,
    pub(crate) idempotency_id: Option<&'a str>,
}

/// `acquire.lua`'s reply, with the decision's time (its `ARGV[5] = "1"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RawDecision {
    pub(crate) granted: bool,
    pub(crate) remaining: u32,
    pub(crate) retry_after_ms: u64,
    pub(crate) at_ms: u64,
}

/// `status.lua`'s reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RawStatus {
    pub(crate) used: u32,
    pub(crate) limit: u32,
    pub(crate) remaining: u32,
    pub(crate) reset_after_ms: u64,
    pub(crate) penalty_ms: u64,
}
