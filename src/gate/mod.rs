//! The quota gate: the one place every Torn call takes its quota.
//!
//! A call to Torn spends three quotas at once: its owner's (100 per rolling minute across
//! all their keys, decided by whichever limiter `TORN_QUOTA_MODE` and
//! `TORN_QUOTA_ROLLOUT_PERCENT` choose), the sending address's (1,000 per minute, one bucket
//! per [egress id](crate::torn::TornClientConfigBuilder::egress_id)), and, for pooled batch
//! work, the owner's [share](Shares). [`QuotaGate`] takes them together as one [`Ticket`]
//! and ends the ticket one of two ways:
//!
//! | what happened to the call | the caller | the units |
//! |---|---|---|
//! | never sent (bad path, connection refused, a pause began, a refusal of another quota) | [`give_back`](QuotaGate::give_back) | every unit goes back: an IP refusal charges the owner nothing |
//! | Torn answered (data or any Torn error, code 5 included) | [`settle`](QuotaGate::settle) | each counts for one window from the answer |
//! | no answer (timeout, connection cut after sending) | drops the ticket | each keeps its provisional record |
//!
//! A unit is recorded provisionally when taken: it counts for the request timeout (plus the
//! optional `TORN_QUOTA_SAFETY_MARGIN_MS`) plus one window, the longest Torn may still
//! count the call. Settling shortens that to one window after the answer. A request on a
//! ticket is given only what is left of its timeout from the grant
//! ([`Ticket::deadline`]), not the whole timeout from its send, so however late it leaves
//! or reaches Torn, its unit still counts when Torn counts it, and no delay becomes a code
//! 5; a unit costs one window plus the real round trip.
//!
//! [`TornClient`](crate::torn::TornClient), the [batch handler](crate::batch), owner
//! resolution and the CLI take quota only here; nothing else derives windows or margins.
//!
//! ```no_run
//! # async fn run() -> Result<(), torn_quota::Error> {
//! use torn_quota::gate::QuotaGate;
//! use torn_quota::torn::TornClientConfig;
//! use torn_quota::{KeyHash, Limiter, RateLimitConfig, TornUserId, Wait};
//!
//! let config = TornClientConfig::from_env()?;
//! let gate = QuotaGate::builder(Limiter::redis(RateLimitConfig::from_env()?)?, &config).build()?;
//! let hash = KeyHash::of("AbCdEfGh12345678");
//! let ticket = gate.take(Some(TornUserId::new(4)), &hash, &Wait::forever()).await?;
//! // ... send the request; when Torn answers:
//! gate.settle(ticket).await;
//! # Ok(()) }
//! ```

mod access;
mod shares;

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use tokio::time::Instant;

use crate::error::{Error, Result};
use crate::identity::{KeyHash, TornUserId};
use crate::limiter::{Grant, KeyBuilder, Limiter, Mode, Priority, Request, Wait};
use crate::rollout::{EnforcedBy, OwnerQuota, RolloutDecision, RolloutLimiter, needs_legacy};
use crate::torn::TornClientConfig;

pub use access::AccessNeeds;
pub use shares::Shares;

/// The one bucket of an IP limiter: every request of a process leaves from its egress.
const IP_BUCKET: TornUserId = TornUserId::new(0);

/// The quota gate. Cheap to clone; clones share everything. See the
/// [module documentation](self).
#[derive(Debug, Clone)]
pub struct QuotaGate {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    owners: Arc<dyn OwnerQuota>,
    /// The per-user store: settles, refunds, records and memos go here.
    limiter: Limiter,
    ip: Limiter,
    /// How long a unit counts before its window starts, while the call may be in flight.
    hold: Duration,
    /// The part of `hold` a request may take: each ticket's deadline is its grant plus this.
    request_timeout: Duration,
    mode: Mode,
}

/// Builds a [`QuotaGate`]; [`build`](Self::build) checks every part the mode needs.
#[derive(Debug)]
#[must_use]
pub struct QuotaGateBuilder {
    limiter: Limiter,
    request_timeout: Duration,
    margin: Duration,
    ip_limit: NonZeroU32,
    ip_window: Duration,
    egress_id: Option<String>,
    owners: Option<Arc<dyn OwnerQuota>>,
    ip: Option<Limiter>,
}

impl QuotaGateBuilder {
    /// The router between the legacy and the per-user limiter (from
    /// [`RolloutLimiter::builder`]), for modes other than plain per-user. Its per-user
    /// limiter becomes the gate's.
    pub fn rollout(mut self, rollout: RolloutLimiter) -> Self {
        self.limiter = rollout.per_user().clone();
        self.owners = Some(Arc::new(rollout));
        self
    }

    /// Any [`OwnerQuota`] to decide owners' units (say a bare
    /// [`LegacyLimiter`](crate::rollout::LegacyLimiter)); settles, refunds and the owner
    /// memo still use the gate's per-user limiter.
    pub fn owner_quota(mut self, owners: Arc<dyn OwnerQuota>) -> Self {
        self.owners = Some(owners);
        self
    }

    /// The per-IP limiter, instead of the per-user limiter's sibling `ip` (or `ip:<egress
    /// id>`) at the configured IP limit and window. Its bucket 0 is the one used.
    pub fn ip_limiter(mut self, ip: Limiter) -> Self {
        self.ip = Some(ip);
        self
    }

    /// Checks the parts and builds. Fails when the mode routes users to legacy and no
    /// router with a legacy limiter was given (naming `DATABASE_URL`), or when the
    /// request timeout, the margin and the window overflow together.
    pub fn build(self) -> Result<QuotaGate> {
        let config = self.limiter.config();
        let mode = config.mode();
        let hold = self
            .request_timeout
            .checked_add(self.margin)
            .filter(|h| h.checked_add(config.window()).is_some())
            .ok_or_else(|| Error::Config {
                setting: "TORN_QUOTA_SAFETY_MARGIN_MS",
                reason: "the request timeout, this margin and the window overflow together".into(),
            })?;
        let owners: Arc<dyn OwnerQuota> = match self.owners {
            Some(o) => o,
            None if needs_legacy(mode, config.rollout_percent()) || mode == Mode::Shadow => {
                // Names DATABASE_URL when the mode needs the legacy limiter.
                Arc::new(RolloutLimiter::builder(self.limiter.clone()).build()?)
            }
            None => Arc::new(self.limiter.clone()),
        };
        #[allow(clippy::single_match_else)]
        let ip = match self.ip {
            Some(ip) => ip,
            None => {
                let name = KeyBuilder::ip_sibling(self.egress_id.as_deref());
                self.limiter.sibling(&name, self.ip_limit, self.ip_window)?
            }
        };
        Ok(QuotaGate {
            inner: Arc::new(Inner {
                owners,
                limiter: self.limiter,
                ip,
                hold,
                request_timeout: self.request_timeout,
                mode,
            }),
        })
    }
}

/// The units one call (or one batch chunk) holds: the owner's, the IP's and the share's.
/// End it with [`QuotaGate::settle`] when Torn answered or [`QuotaGate::give_back`] when
/// nothing was sent; dropped, its units keep their provisional records.
///
/// Its units are held for the [hold](QuotaGate::hold) from their grant, not from the send:
/// a request sent on it must be over by its [`deadline`](Self::deadline), or Torn may count
/// it after the records stopped holding it.
#[derive(Debug)]
#[must_use = "settle it when Torn answers, give it back when the call is never sent"]
pub struct Ticket {
    units: u32,
    owner: Option<Grant>,
    ip: Option<Grant>,
    share: Option<(Limiter, Grant)>,
    enforced_by: Option<EnforcedBy>,
    deadline: Instant,
}

impl Ticket {
    /// Units held in each quota (one per request).
    pub fn units(&self) -> u32 {
        self.units
    }
    /// Units the owner's bucket had left right after this ticket (per-user grants only).
    pub fn owner_remaining(&self) -> Option<u32> {
        self.owner.as_ref().map(Grant::remaining)
    }
    /// Which limiter decided the owner's units; `None` while the owner is unknown.
    pub fn enforced_by(&self) -> Option<EnforcedBy> {
        self.enforced_by
    }
    /// The grant plus the request timeout: the latest a request on this ticket may still
    /// be reaching Torn. Taken from a moment before the first of its units was asked for,
    /// so never later than what the earliest record holds.
    pub fn deadline(&self) -> Instant {
        self.deadline
    }
    /// The time left before the [`deadline`](Self::deadline), zero once it passed: the
    /// most a request sent now may be given.
    pub fn time_left(&self) -> Duration {
        self.deadline.saturating_duration_since(Instant::now())
    }
}

/// Whether a request reached Torn, which decides what becomes of its ticket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reach {
    /// Never sent (refused before sending, connection refused): give the units back.
    NotSent,
    /// Torn answered: settle.
    Answered,
    /// Sent, no answer (timeout, connection cut): the provisional records stay.
    Unknown,
}

/// What a refused quota says, inside [`QuotaGate::try_take`].
enum Refusal {
    /// Fewer units are free now: ask again for these.
    Fewer(u32),
    /// None are: wait this long.
    Wait(Duration),
}

#[derive(Clone, Copy)]
enum Stage {
    Owner,
    Share,
    Ip,
}

impl QuotaGate {
    /// A builder over the per-user limiter with the client configuration's timeout,
    /// safety margin, IP limit, IP window and egress id.
    pub fn builder(limiter: Limiter, config: &TornClientConfig) -> QuotaGateBuilder {
        QuotaGateBuilder {
            limiter,
            request_timeout: config.request_timeout(),
            margin: config.safety_margin(),
            ip_limit: config.ip_limit(),
            ip_window: config.ip_window(),
            egress_id: config.egress_id().map(str::to_owned),
            owners: None,
            ip: None,
        }
    }

    /// The per-user limiter (the owners' buckets and the shared memo).
    pub fn limiter(&self) -> &Limiter {
        &self.inner.limiter
    }

    /// The per-IP limiter of this process's egress.
    pub fn ip_limiter(&self) -> &Limiter {
        &self.inner.ip
    }

    /// The mode the gate was built for.
    pub fn mode(&self) -> Mode {
        self.inner.mode
    }

    /// The owners' window.
    pub fn window(&self) -> Duration {
        self.inner.limiter.config().window()
    }

    /// `user`'s configured limit per window.
    pub fn limit_for(&self, user: TornUserId) -> NonZeroU32 {
        self.inner.limiter.config().limit_for(user)
    }

    /// How long a unit counts while its call may be in flight: the request timeout plus
    /// the safety margin.
    pub fn hold(&self) -> Duration {
        self.inner.hold
    }

    /// The per-IP bucket now (the one every call of this egress shares); consumes nothing.
    pub async fn ip_status(&self) -> Result<crate::limiter::Status> {
        self.inner.ip.status(IP_BUCKET).await
    }

    /// True when `user`'s units are counted per key (legacy enforces): ask per key then.
    pub fn per_key(&self, user: TornUserId) -> bool {
        self.inner.owners.per_key(user)
    }

    /// One unit of each quota for a call with `key` on behalf of `owner` (`None` while
    /// the owner is unknown: only the IP's unit), waiting as long as `wait` allows
    /// ([`Error::Deadline`] when quota is not free before its deadline,
    /// [`Error::Cancelled`] when its token is cancelled). The one wait loop of every Torn
    /// call.
    pub async fn take(
        &self,
        owner: Option<TornUserId>,
        key: &KeyHash,
        wait: &Wait,
    ) -> Result<Ticket> {
        let mut outage: Option<(Instant, backon::ExponentialBackoff)> = None;
        loop {
            if wait.is_cancelled() {
                return Err(Error::Cancelled);
            }
            let taken = self
                .try_take(owner, Some(key), 1, wait.priority_of(), None)
                .await;
            let retry_after = match taken {
                Ok(Ok(ticket)) => {
                    if let Some((since, _)) = outage {
                        crate::telemetry::outage_wait(since.elapsed());
                        tracing::warn!(
                            waited_ms = since.elapsed().as_millis() as u64,
                            "quota store answers again: the call goes ahead"
                        );
                    }
                    return Ok(ticket);
                }
                Ok(Err(retry_after)) => retry_after,
                // Redis unreachable (a restart, a failover): wait it out with back-off, up
                // to the call's deadline (one window without one), rather than failing.
                Err(e) if e.is_unavailable() => {
                    let (since, delays) = outage.get_or_insert_with(|| {
                        tracing::warn!(error = %e, "quota store unreachable: waiting it out");
                        (Instant::now(), outage_backoff())
                    });
                    let delay = delays.next().unwrap_or(OUTAGE_MAX_DELAY);
                    let at = Instant::now() + delay;
                    if wait.too_late(at) || at.duration_since(*since) > self.window() {
                        crate::telemetry::outage_wait(since.elapsed());
                        return Err(e);
                    }
                    tokio::time::sleep_until(at).await;
                    continue;
                }
                Err(e) => return Err(e),
            };
            // A provisional unit blocking now counts for the whole request timeout only
            // until its call is answered, then one window from there: look again after a
            // window at most.
            let retry_after = retry_after.min(self.window());
            let wake = Instant::now() + retry_after + jitter(retry_after);
            if wait.too_late(Instant::now() + retry_after) {
                tracing::debug!(
                    owner = owner.map(TornUserId::get),
                    "quota is not free before the call's deadline"
                );
                return Err(Error::Deadline);
            }
            tokio::time::sleep_until(wake).await;
        }
    }

    /// Up to `want` units of each quota now, without waiting: fewer when fewer are free
    /// in every quota, or the wait when none are. With `shares`, the owner's share for
    /// pooled work is taken too. `key` is needed whenever legacy decides for `owner`.
    ///
    /// # Panics
    ///
    /// Never: the owner's quota is asked only when there is an owner.
    pub async fn try_take(
        &self,
        owner: Option<TornUserId>,
        key: Option<&KeyHash>,
        want: u32,
        priority: Priority,
        shares: Option<&Shares>,
    ) -> Result<std::result::Result<Ticket, Duration>> {
        let share = shares.and_then(|s| owner.filter(|o| s.has(*o)).map(|o| (s, o)));
        // The quota that shrinks the ask most often goes first, so that asking again for
        // fewer gives nothing back; legacy writes rows it cannot take back, so it goes last.
        let order: &[Stage] = match owner {
            Some(o) if self.per_key(o) => &[Stage::Ip, Stage::Share, Stage::Owner],
            Some(_) => &[Stage::Owner, Stage::Share, Stage::Ip],
            None => &[Stage::Ip],
        };
        let mut want = want.max(1);
        'ask: loop {
            let mut ticket = self.empty_ticket(want);
            for (i, stage) in order.iter().enumerate() {
                let refused = match stage {
                    Stage::Owner => {
                        let user = owner.expect("the owner stage runs only with an owner");
                        let decision = self.decide_owner(user, key, want, priority).await;
                        match decision {
                            Ok(d) if d.is_granted() => {
                                ticket.enforced_by = Some(d.enforced_by());
                                ticket.owner = d.into_grant();
                                None
                            }
                            Ok(d) => Some(refusal(d.remaining(), want, d.retry_after())),
                            Err(Error::CostExceedsLimit { limit, .. }) if limit > 0 => {
                                // A limit lowered below the chunk at run time: ask for what fits.
                                Some(Refusal::Fewer(limit.min(want - 1).max(1)))
                            }
                            Err(e) => {
                                self.give_back(ticket).await;
                                return Err(e);
                            }
                        }
                    }
                    Stage::Share => match share {
                        None => None,
                        Some((s, user)) => {
                            match Box::pin(s.try_take(user, want, self.inner.hold)).await {
                                Ok(Ok(g)) => {
                                    ticket.share = Some((s.limiter().clone(), g));
                                    None
                                }
                                Ok(Err((remaining, wait))) => Some(refusal(remaining, want, wait)),
                                Err(e) => {
                                    self.give_back(ticket).await;
                                    return Err(e);
                                }
                            }
                        }
                    },
                    Stage::Ip => {
                        let request = Request::new(want).in_flight(self.inner.hold);
                        match Box::pin(self.inner.ip.try_acquire_with(IP_BUCKET, &request)).await {
                            Ok(d) => match d.retry_after() {
                                _ if d.is_granted() => {
                                    ticket.ip = d.into_grant();
                                    None
                                }
                                wait => Some(refusal(d.remaining(), want, wait)),
                            },
                            Err(e) => {
                                self.give_back(ticket).await;
                                return Err(e);
                            }
                        }
                    }
                };
                match refused {
                    None => {}
                    Some(Refusal::Fewer(n)) if n < want => {
                        if i > 0 {
                            tracing::trace!(want, n, "a later quota has fewer units: asking again");
                        }
                        self.give_back(ticket).await;
                        want = n;
                        continue 'ask;
                    }
                    Some(Refusal::Fewer(_)) => {
                        self.give_back(ticket).await;
                        return Ok(Err(Duration::from_millis(1)));
                    }
                    Some(Refusal::Wait(wait)) => {
                        if i > 0 {
                            tracing::debug!(
                                owner = owner.map(TornUserId::get),
                                wait_ms = wait.as_millis() as u64,
                                "a quota is full: the units taken before it go back"
                            );
                        }
                        self.give_back(ticket).await;
                        return Ok(Err(wait));
                    }
                }
            }
            return Ok(Ok(ticket));
        }
    }

    /// Up to `want` tickets of one unit each, asked in one burst (the store coalesces
    /// them into few round trips), so that each request's units are settled on its own
    /// answer: a slow answer holds back only its own unit. The wait when none is free.
    pub async fn try_take_each(
        &self,
        owner: Option<TornUserId>,
        key: Option<&KeyHash>,
        want: u32,
        priority: Priority,
        shares: Option<&Shares>,
    ) -> Result<std::result::Result<Vec<Ticket>, Duration>> {
        let asks = (0..want.max(1)).map(|_| self.try_take(owner, key, 1, priority, shares));
        let mut tickets = Vec::new();
        let mut wait: Option<Duration> = None;
        let mut error = None;
        for result in join_all(asks).await {
            match result {
                Ok(Ok(t)) => tickets.push(t),
                Ok(Err(w)) => wait = Some(wait.map_or(w, |v| v.min(w))),
                Err(e) => error = Some(e),
            }
        }
        if let Some(e) = error {
            for t in tickets {
                self.give_back(t).await;
            }
            return Err(e);
        }
        if tickets.is_empty() {
            return Ok(Err(wait.unwrap_or(Duration::from_millis(1))));
        }
        Ok(Ok(tickets))
    }

    /// A ticket of `units` with no grant yet, its deadline counted from now: before the
    /// first stage's script runs, so no later than any of its grants (each record holds
    /// from its own Redis time, which comes after).
    fn empty_ticket(&self, units: u32) -> Ticket {
        Ticket {
            units,
            owner: None,
            ip: None,
            share: None,
            enforced_by: None,
            deadline: deadline_after(Instant::now(), self.inner.request_timeout),
        }
    }

    async fn decide_owner(
        &self,
        user: TornUserId,
        key: Option<&KeyHash>,
        want: u32,
        priority: Priority,
    ) -> Result<RolloutDecision> {
        let request = Request::new(want)
            .in_flight(self.inner.hold)
            .priority(priority);
        self.inner
            .owners
            .decide(user, key.map(KeyHash::as_str), &request)
            .await
    }

    /// Gives every unit of a ticket back: its call was never sent. (Legacy units cannot
    /// be given back; the old limiter had no refunds.)
    pub async fn give_back(&self, ticket: Ticket) {
        let i = &self.inner;
        let (a, b, c) = tokio::join!(
            refund(&i.limiter, ticket.owner),
            refund(&i.ip, ticket.ip),
            refund_pair(ticket.share),
        );
        for e in [a, b, c].into_iter().flatten() {
            tracing::debug!(error = %e, "cannot give back a unit that was never sent");
        }
    }

    /// Torn answered the ticket's call (whatever it said): each unit now counts for one
    /// window from this moment. A failure is harmless: the provisional record stays.
    pub async fn settle(&self, ticket: Ticket) {
        let i = &self.inner;
        let (a, b, c) = tokio::join!(
            settle(&i.limiter, ticket.owner),
            settle(&i.ip, ticket.ip),
            settle_pair(ticket.share),
        );
        for e in [a, b, c].into_iter().flatten() {
            tracing::debug!(error = %e, "cannot settle a unit; its provisional record stays");
        }
    }

    /// Records one unit on `owner` for certain, even when the bucket is full: a call that
    /// reached Torn before its owner was known (the key-info lookup), which Torn counted.
    pub async fn record_lookup(&self, owner: TornUserId) {
        if let Err(e) = self.inner.limiter.record(owner, 1).await {
            tracing::debug!(
                owner = owner.get(),
                error = %e,
                "cannot count the key-info call on the owner's bucket"
            );
        }
    }

    /// A share pool for a batch: each listed owner's share of their quota for pooled work,
    /// as an override that expires on its own (refreshed while the batch runs).
    pub async fn shares(&self, caps: &[(TornUserId, NonZeroU32)]) -> Result<Shares> {
        Shares::open(&self.inner.limiter, caps).await
    }

    /// The per-(section, selection) access needs every process learns from code 16.
    pub fn access_needs(&self) -> AccessNeeds {
        AccessNeeds::new(self.inner.limiter.clone())
    }
}

/// Polls every future together on this task, so that they reach the store in one burst.
async fn join_all<F: std::future::Future>(futures: impl Iterator<Item = F>) -> Vec<F::Output> {
    let mut pending: Vec<_> = futures.map(|f| Some(Box::pin(f))).collect();
    let mut results: Vec<Option<F::Output>> = pending.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        for (slot, result) in pending.iter_mut().zip(results.iter_mut()) {
            if let Some(f) = slot
                && let std::task::Poll::Ready(v) = f.as_mut().poll(cx)
            {
                *result = Some(v);
                *slot = None;
            }
        }
        if pending.iter().all(Option::is_none) {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await;
    results.into_iter().flatten().collect()
}

/// `at + timeout`, or a year on when that overflows (a timeout nobody meant literally).
fn deadline_after(at: Instant, timeout: Duration) -> Instant {
    at.checked_add(timeout)
        .unwrap_or_else(|| at + Duration::from_secs(365 * 24 * 3600))
}

fn refusal(remaining: u32, want: u32, wait: Duration) -> Refusal {
    if remaining > 0 && remaining < want {
        Refusal::Fewer(remaining)
    } else {
        Refusal::Wait(wait)
    }
}

async fn refund(limiter: &Limiter, grant: Option<Grant>) -> Option<Error> {
    Box::pin(limiter.refund(grant?)).await.err()
}

async fn settle(limiter: &Limiter, grant: Option<Grant>) -> Option<Error> {
    Box::pin(limiter.settle(grant?)).await.err()
}

async fn refund_pair(share: Option<(Limiter, Grant)>) -> Option<Error> {
    let (limiter, grant) = share?;
    Box::pin(limiter.refund(grant)).await.err()
}

async fn settle_pair(share: Option<(Limiter, Grant)>) -> Option<Error> {
    let (limiter, grant) = share?;
    Box::pin(limiter.settle(grant)).await.err()
}

/// Up to 5 % of the wait, at most 20 ms: enough to spread waiters, small enough to keep the
/// quota in use.
/// The longest pause between two tries of an unreachable Redis.
const OUTAGE_MAX_DELAY: Duration = Duration::from_secs(2);

/// Pauses between tries of an unreachable Redis: 50 ms doubling to 2 s, with jitter so
/// that the processes that lost it do not all come back in step.
fn outage_backoff() -> backon::ExponentialBackoff {
    use backon::BackoffBuilder;
    backon::ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(50))
        .with_max_delay(OUTAGE_MAX_DELAY)
        .with_jitter()
        .without_max_times()
        .build()
}

fn jitter(wait: Duration) -> Duration {
    let cap = (wait.as_micros() as u64 / 20).clamp(1, 20_000);
    Duration::from_micros(rand::rng().random_range(0..=cap))
}
