//! The timer queue of a shard: every slot's next deadline, earliest first, so one armed wake-up
//! serves all the state machines of the shard (no timer per subscription).
//!
//! Deadlines are kept as whole milliseconds since the queue was made (rounded up: never early),
//! 16 bytes per queued slot and 8 in the slot itself instead of 24 and 16: a million pairs.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

/// A slot's deadline as the queue knows it; [`Due::NONE`] when it has none.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Due(u64);

impl Due {
    pub(crate) const NONE: Due = Due(u64::MAX);
}

pub(crate) struct Deadlines {
    epoch: Instant,
    queue: BTreeSet<(u64, u32)>,
}

impl Default for Deadlines {
    fn default() -> Self {
        Deadlines {
            epoch: Instant::now(),
            queue: BTreeSet::new(),
        }
    }
}

impl Deadlines {
    fn ms(&self, t: Instant) -> u64 {
        let d = t.saturating_duration_since(self.epoch);
        let ms = d.as_millis() + u128::from(!d.subsec_nanos().is_multiple_of(1_000_000));
        u64::try_from(ms).unwrap_or(u64::MAX - 1).min(u64::MAX - 1)
    }

    fn instant(&self, ms: u64) -> Instant {
        self.epoch + Duration::from_millis(ms)
    }

    /// Moves `slot` from its current deadline `due` to `next` (either may be none) and records
    /// `next` in `due`. True if the deadline changed (the wake-up may need re-arming).
    pub(crate) fn reschedule(&mut self, slot: u32, due: &mut Due, next: Option<Instant>) -> bool {
        let next = next.map_or(Due::NONE, |t| Due(self.ms(t)));
        if *due == next {
            return false;
        }
        let old = std::mem::replace(due, next);
        if old != Due::NONE {
            self.queue.remove(&(old.0, slot));
        }
        if next != Due::NONE {
            self.queue.insert((next.0, slot));
        }
        true
    }

    /// Like [`Deadlines::reschedule`], but only ever moves a queued deadline earlier: a later
    /// one (or none) leaves the queued entry in place, and the slot then wakes once early, has
    /// nothing due, and is queued at its real deadline. Every NOTIFY that carries `expires`
    /// pushes a pair's refresh out; this makes that free instead of a queue remove + insert.
    /// A slot that is removed must use [`Deadlines::reschedule`] with `None`.
    pub(crate) fn advance(&mut self, slot: u32, due: &mut Due, next: Option<Instant>) -> bool {
        if *due != Due::NONE && next.is_none_or(|t| self.ms(t) >= due.0) {
            return false;
        }
        self.reschedule(slot, due, next)
    }

    /// The earliest deadline, for the wake-up.
    pub(crate) fn first(&self) -> Option<Instant> {
        self.queue.first().map(|&(t, _)| self.instant(t))
    }

    /// Takes the next slot whose deadline is at or before `now`; the caller sets its `due` to
    /// [`Due::NONE`].
    pub(crate) fn pop_due(&mut self, now: Instant) -> Option<u32> {
        match self.queue.first() {
            Some(&(t, _)) if self.instant(t) <= now => self.queue.pop_first().map(|(_, slot)| slot),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn slots_come_due_in_deadline_order_and_a_rescheduled_one_only_once() {
        let mut q = Deadlines::default();
        let t0 = q.epoch;
        let at = |ms| Some(t0 + Duration::from_millis(ms));
        let (mut a, mut b, mut c) = (Due::NONE, Due::NONE, Due::NONE);
        assert!(q.reschedule(1, &mut a, at(30)));
        assert!(q.reschedule(2, &mut b, at(10)));
        assert!(q.reschedule(3, &mut c, at(20)));
        assert!(!q.reschedule(3, &mut c, at(20)));
        assert!(q.reschedule(1, &mut a, at(5)));
        assert!(q.reschedule(3, &mut c, None));
        assert_eq!((a, b, c), (Due(5), Due(10), Due::NONE));
        assert_eq!(q.first(), at(5));
        assert_eq!(q.pop_due(t0 + Duration::from_millis(12)), Some(1));
        assert_eq!(q.pop_due(t0 + Duration::from_millis(12)), Some(2));
        assert_eq!(q.pop_due(t0 + Duration::from_millis(12)), None);
        assert_eq!(q.first(), None);
        // Rounded up to the next millisecond: never early.
        let mut d = Due::NONE;
        q.reschedule(4, &mut d, Some(t0 + Duration::from_micros(2500)));
        assert_eq!(d, Due(3));
        assert_eq!(q.pop_due(t0 + Duration::from_micros(2900)), None);
        assert_eq!(q.pop_due(t0 + Duration::from_millis(3)), Some(4));
    }

    #[test]
    fn advance_only_moves_a_deadline_earlier() {
        let mut q = Deadlines::default();
        let t0 = q.epoch;
        let at = |ms| Some(t0 + Duration::from_millis(ms));
        let mut a = Due::NONE;
        assert!(q.advance(1, &mut a, at(100)));
        assert!(!q.advance(1, &mut a, at(3000)));
        assert!(!q.advance(1, &mut a, None));
        assert_eq!((a, q.first()), (Due(100), at(100)));
        assert!(q.advance(1, &mut a, at(40)));
        assert_eq!((a, q.first()), (Due(40), at(40)));
        assert_eq!(q.pop_due(t0 + Duration::from_millis(40)), Some(1));
        assert_eq!(q.first(), None);
    }
}
