//! Active/standby with fencing (issue 17), sans-IO: when an instance may serve, decided from
//! the answers of a shared lease row `(name, holder, fence, expires_at)` and a clock passed in.
//!
//! The database judges expiry with its own clock (`expires_at = now() + ttl` when it executes
//! an acquire or renew) and bumps the fencing number on every takeover; every write batch
//! carries the number and is refused once it is stale, so a paused old leader cannot write over
//! the new one (the store's side). This machine is the instance's side: it asks to acquire
//! (standby) or renew (active), and counts a held lease valid only until `sent + ttl - margin`,
//! where `sent` is when the request that confirmed it left. The database executed it after
//! that, so its expiry is later still: an instance whose renewals stop getting through stops
//! serving (`StepDown`) before the database would let anyone else take over, as long as the
//! two clocks' rates differ by less than `margin` per `ttl`.
//!
//! Drive it like the protocol machines: [`Lease::handle_input`] with `now`, then drain
//! [`Lease::poll_output`], and call again with [`Input::Timeout`] at [`Lease::poll_timeout`].
//! Every request carries an id; an answer to an older request (late, duplicated, reordered)
//! is ignored. `Lost` is final: the instance's in-memory state may be stale, so the shell stops
//! serving and exits, and comes back as a standby.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Timing of the lease. Takeover after the active instance dies takes at most
/// `ttl + retry_every` plus the new leader's restore.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaseConfig {
    /// How long an acquire or renew holds the lease (the database's clock).
    pub ttl: Duration,
    /// Interval between renewals while active (from one request's departure to the next).
    pub renew_every: Duration,
    /// Interval between acquire attempts while standby, and between retries after a failed
    /// request (database unreachable).
    pub retry_every: Duration,
    /// Kept off the end of a confirmed lease: clock-rate difference and scheduling slack.
    pub margin: Duration,
}

impl Default for LeaseConfig {
    /// Takeover within ~3.5 s of the active instance's death (issue 17's target: 5 s).
    fn default() -> Self {
        LeaseConfig {
            ttl: Duration::from_secs(3),
            renew_every: Duration::from_millis(1000),
            retry_every: Duration::from_millis(500),
            margin: Duration::from_millis(500),
        }
    }
}

impl LeaseConfig {
    /// The timing as configured (`store.lease_ttl_ms`, `lease_renew_ms`, `lease_retry_ms`):
    /// the margin is a sixth of the lease (the default's 500 ms of 3 s), as both what it
    /// covers, clock-rate difference and scheduling slack, grow with a longer lease less
    /// than it does but must not eat a short one.
    pub fn from_millis(ttl_ms: u64, renew_ms: u64, retry_ms: u64) -> LeaseConfig {
        let ttl = Duration::from_millis(ttl_ms);
        LeaseConfig {
            ttl,
            renew_every: Duration::from_millis(renew_ms),
            retry_every: Duration::from_millis(retry_ms),
            margin: ttl / 6,
        }
    }

    /// How long after its last confirmed request's departure an active instance stops
    /// serving if nothing more is confirmed: `ttl - margin`.
    pub fn usable(&self) -> Duration {
        self.ttl.saturating_sub(self.margin)
    }

    /// Whether the timing can keep a lease: a renewal (and one retry) must fit in what a
    /// confirmed lease is counted valid.
    pub fn check(&self) -> Result<(), String> {
        let usable = self.usable();
        if self.renew_every.is_zero() || self.retry_every.is_zero() {
            return Err("renew_every and retry_every must be positive".into());
        }
        if self.renew_every.saturating_add(self.retry_every) >= usable {
            return Err(format!(
                "renew_every ({:?}) + retry_every ({:?}) must be under ttl - margin ({:?})",
                self.renew_every, self.retry_every, usable
            ));
        }
        Ok(())
    }
}

/// Where the instance stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// Not serving; asks for the lease every `retry_every`.
    Standby,
    /// Not serving; an acquire is in flight.
    Acquiring,
    /// Serving, with this fencing number on every write.
    Active { fence: i64 },
    /// Was active (or stopped): must not serve or write any more. Final.
    Lost,
}

/// What the shell reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Input {
    /// `poll_timeout` was reached.
    Timeout,
    /// The database's answer to request `id`: the lease is ours with `fence`.
    Held { id: u64, fence: i64 },
    /// The answer to request `id`: someone else holds the lease (acquire), or it was taken
    /// over (renew).
    NotHeld { id: u64 },
    /// Request `id` failed (database unreachable, timed out): no answer either way.
    Failed { id: u64 },
    /// The store refused a batch as fenced: another instance is active.
    Fenced,
    /// Graceful stop: give the lease up if held.
    Stop,
}

/// Why an active instance stops serving.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StepDownReason {
    /// No renewal was confirmed in time (database or network away, or this process paused).
    Expired,
    /// The database says another instance took the lease over.
    TakenOver,
    /// The store refused a write as fenced.
    Fenced,
    /// Graceful stop.
    Stopped,
}

/// What the shell must do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Output {
    /// Run the acquire statement for `ttl`; answer with `id`.
    Acquire { id: u64, ttl: Duration },
    /// Run the renew statement with `fence` for `ttl`; answer with `id`.
    Renew { id: u64, fence: i64, ttl: Duration },
    /// Start serving: set the store's fence, restore every pair from the store, connect the
    /// component and open the SIP listener.
    Activate { fence: i64 },
    /// Stop serving at once (drop the component link and SIP) and exit.
    StepDown { fence: i64, reason: StepDownReason },
    /// Give the lease up (graceful stop) so the standby need not wait for its expiry.
    Release { fence: i64 },
}

#[derive(Clone, Copy, Debug)]
struct InFlight {
    id: u64,
    sent: Instant,
}

/// The lease machine of one instance.
#[derive(Debug)]
pub struct Lease {
    cfg: LeaseConfig,
    state: State,
    in_flight: Option<InFlight>,
    /// Next request is due (standby: acquire; active: renew).
    next_at: Instant,
    /// Active: the lease counts as held before this instant.
    valid_until: Option<Instant>,
    next_id: u64,
    out: VecDeque<Output>,
}

impl Lease {
    /// A standby instance that asks for the lease at once.
    pub fn new(cfg: LeaseConfig, now: Instant) -> Lease {
        Lease {
            cfg,
            state: State::Standby,
            in_flight: None,
            next_at: now,
            valid_until: None,
            next_id: 1,
            out: VecDeque::new(),
        }
    }

    pub fn state(&self) -> State {
        self.state
    }

    /// Whether the instance may serve and write at `now`: active, and the lease confirmed
    /// beyond `now`. The shell checks it before acting on its own (timers), besides the
    /// store's fence.
    pub fn may_serve(&self, now: Instant) -> bool {
        matches!(self.state, State::Active { .. }) && self.valid_until.is_some_and(|v| now < v)
    }

    /// The fencing number while active.
    pub fn fence(&self) -> Option<i64> {
        match self.state {
            State::Active { fence } => Some(fence),
            _ => None,
        }
    }

    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    /// When to call with [`Input::Timeout`]: the next request, or the end of the lease.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.state {
            State::Lost => None,
            State::Active { .. } => {
                let next = if self.in_flight.is_some() {
                    None
                } else {
                    Some(self.next_at)
                };
                match (next, self.valid_until) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                }
            }
            // An acquire in flight waits for its answer, which the shell always gives
            // (`Failed` on a timeout); the retry clock restarts then.
            State::Standby | State::Acquiring => {
                if self.in_flight.is_some() {
                    None
                } else {
                    Some(self.next_at)
                }
            }
        }
    }

    pub fn handle_input(&mut self, input: Input, now: Instant) {
        match input {
            Input::Timeout => self.on_timeout(now),
            Input::Held { id, fence } => {
                if let Some(sent) = self.answer(id) {
                    self.on_held(fence, sent, now);
                }
            }
            Input::NotHeld { id } => {
                if self.answer(id).is_some() {
                    match self.state {
                        State::Active { fence } => self.step_down(fence, StepDownReason::TakenOver),
                        State::Standby | State::Acquiring => {
                            self.state = State::Standby;
                            self.next_at = after(now, self.cfg.retry_every);
                        }
                        State::Lost => {}
                    }
                }
            }
            Input::Failed { id } => {
                if self.answer(id).is_some() {
                    if self.state == State::Acquiring {
                        self.state = State::Standby;
                    }
                    self.next_at = after(now, self.cfg.retry_every);
                    // An active instance keeps serving until `valid_until`, retrying.
                    self.on_timeout(now);
                }
            }
            Input::Fenced => {
                if let State::Active { fence } = self.state {
                    self.step_down(fence, StepDownReason::Fenced);
                }
            }
            Input::Stop => {
                match self.state {
                    State::Active { fence } => {
                        self.out.push_back(Output::StepDown {
                            fence,
                            reason: StepDownReason::Stopped,
                        });
                        self.out.push_back(Output::Release { fence });
                    }
                    State::Standby | State::Acquiring | State::Lost => {}
                }
                self.state = State::Lost;
                self.in_flight = None;
                self.valid_until = None;
            }
        }
    }

    /// Takes the answer to `id` off the in-flight slot: its departure, or `None` for an
    /// answer to anything else (stale, duplicate) or after the machine ended.
    fn answer(&mut self, id: u64) -> Option<Instant> {
        if self.state == State::Lost {
            return None;
        }
        match self.in_flight {
            Some(f) if f.id == id => {
                self.in_flight = None;
                Some(f.sent)
            }
            _ => None,
        }
    }

    fn on_held(&mut self, fence: i64, sent: Instant, now: Instant) {
        let until = after(sent, self.cfg.ttl.saturating_sub(self.cfg.margin));
        match self.state {
            State::Active { fence: ours } if ours == fence => {
                if self.valid_until.is_none_or(|v| until > v) {
                    self.valid_until = Some(until);
                }
                self.next_at = after(sent, self.cfg.renew_every);
                self.on_timeout(now);
            }
            // The database answered a renew with another number: not the lease we served with.
            State::Active { fence: ours } => self.step_down(ours, StepDownReason::TakenOver),
            State::Standby | State::Acquiring => {
                if now >= until {
                    // Confirmed too late to use (this process or the answer was held up):
                    // serving now could overlap a taker-over. Ask again; a re-acquire by the
                    // same holder gets a new number.
                    self.state = State::Standby;
                    self.next_at = now;
                    self.on_timeout(now);
                    return;
                }
                self.state = State::Active { fence };
                self.valid_until = Some(until);
                self.next_at = after(sent, self.cfg.renew_every);
                self.out.push_back(Output::Activate { fence });
                self.on_timeout(now);
            }
            State::Lost => {}
        }
    }

    fn on_timeout(&mut self, now: Instant) {
        match self.state {
            State::Lost => {}
            State::Active { fence } => {
                if self.valid_until.is_none_or(|v| now >= v) {
                    self.step_down(fence, StepDownReason::Expired);
                    return;
                }
                if self.in_flight.is_none() && now >= self.next_at {
                    let id = self.send(now);
                    self.out.push_back(Output::Renew {
                        id,
                        fence,
                        ttl: self.cfg.ttl,
                    });
                }
            }
            State::Standby | State::Acquiring => {
                if self.in_flight.is_none() && now >= self.next_at {
                    let id = self.send(now);
                    self.state = State::Acquiring;
                    self.out.push_back(Output::Acquire {
                        id,
                        ttl: self.cfg.ttl,
                    });
                }
            }
        }
    }

    fn send(&mut self, now: Instant) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        self.in_flight = Some(InFlight { id, sent: now });
        id
    }

    fn step_down(&mut self, fence: i64, reason: StepDownReason) {
        self.state = State::Lost;
        self.in_flight = None;
        self.valid_until = None;
        self.out.push_back(Output::StepDown { fence, reason });
    }
}

/// `t + d`, or `t` itself if the sum is beyond what `Instant` holds (never panics; a lease
/// then counts as ending at once, the safe side).
fn after(t: Instant, d: Duration) -> Instant {
    t.checked_add(d).unwrap_or(t)
}

#[cfg(test)]
#[path = "lease_tests.rs"]
mod tests;
