//! The actors' clock: wall time (RPID timestamps, stored lease ends) and the one armed wake-up
//! each actor keeps at the earliest deadline of its machines.

use actix::prelude::*;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

pub(crate) fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Keeps a single wake-up armed at the earliest deadline of the machines.
#[derive(Default)]
pub(crate) struct Wakeup {
    at: Option<Instant>,
    handle: Option<SpawnHandle>,
}

impl Wakeup {
    /// Called first by the fire function: the armed timer is spent.
    pub(crate) fn fired(&mut self) {
        self.at = None;
        self.handle = None;
    }

    pub(crate) fn arm<A>(
        &mut self,
        next: Option<Instant>,
        ctx: &mut Context<A>,
        fire: fn(&mut A, &mut Context<A>),
    ) where
        A: Actor<Context = Context<A>>,
    {
        if next == self.at {
            return;
        }
        if let Some(h) = self.handle.take() {
            ctx.cancel_future(h);
        }
        self.at = next;
        if let Some(t) = next {
            let delay = t.saturating_duration_since(Instant::now());
            self.handle = Some(ctx.run_later(delay, fire));
        }
    }
}
