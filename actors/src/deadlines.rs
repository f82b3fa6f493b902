//! The timer queue of a shard: every slot's next deadline, earliest first, so one armed wake-up
//! serves all the state machines of the shard (no timer per subscription).

use std::collections::BTreeSet;
use std::time::Instant;

#[derive(Default)]
pub(crate) struct Deadlines {
    queue: BTreeSet<(Instant, u32)>,
}

impl Deadlines {
    /// Moves `slot` from its current deadline `due` to `next` (either may be none) and records
    /// `next` in `due`. True if the deadline changed (the wake-up may need re-arming).
    pub(crate) fn reschedule(
        &mut self,
        slot: u32,
        due: &mut Option<Instant>,
        next: Option<Instant>,
    ) -> bool {
        if *due == next {
            return false;
        }
        if let Some(t) = std::mem::replace(due, next) {
            self.queue.remove(&(t, slot));
        }
        if let Some(t) = next {
            self.queue.insert((t, slot));
        }
        true
    }

    /// The earliest deadline, for the wake-up.
    pub(crate) fn first(&self) -> Option<Instant> {
        self.queue.first().map(|(t, _)| *t)
    }

    /// Takes the next slot whose deadline is at or before `now`; the caller clears its `due`.
    pub(crate) fn pop_due(&mut self, now: Instant) -> Option<u32> {
        match self.queue.first() {
            Some(&(t, _)) if t <= now => self.queue.pop_first().map(|(_, slot)| slot),
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
        let t0 = Instant::now();
        let at = |ms| Some(t0 + Duration::from_millis(ms));
        let mut q = Deadlines::default();
        let (mut a, mut b, mut c) = (None, None, None);
        assert!(q.reschedule(1, &mut a, at(30)));
        assert!(q.reschedule(2, &mut b, at(10)));
        assert!(q.reschedule(3, &mut c, at(20)));
        assert!(!q.reschedule(3, &mut c, at(20)));
        assert!(q.reschedule(1, &mut a, at(5)));
        assert!(q.reschedule(3, &mut c, None));
        assert_eq!((a, b, c), (at(5), at(10), None));
        assert_eq!(q.first(), at(5));
        assert_eq!(q.pop_due(t0 + Duration::from_millis(12)), Some(1));
        assert_eq!(q.pop_due(t0 + Duration::from_millis(12)), Some(2));
        assert_eq!(q.pop_due(t0 + Duration::from_millis(12)), None);
        assert_eq!(q.first(), None);
    }
}
