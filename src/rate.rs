//! Per-key token buckets: the per-sender rate limits of instant messaging (§10.4 ◆: 10
//! messages/s with a burst of 20, per sender and direction).
//!
//! Keys are chosen by outsiders (JIDs, SIP AORs), so the table is bounded: a bucket that has
//! refilled completely says nothing a new bucket would not, and is pruned when the table is
//! full; if every bucket is still in use then, a new sender is refused until one refills.

use std::collections::HashMap;
use std::time::Instant;

/// Thousandths of a token, so refills need no floating point.
const MILLI: u64 = 1000;

#[derive(Clone, Copy, Debug)]
struct Bucket {
    milli: u64,
    at: Instant,
}

/// Token buckets of `per_sec` tokens a second and `burst` capacity, one per key.
#[derive(Clone, Debug)]
pub struct RateLimiter {
    per_sec: u64,
    burst: u64,
    max_keys: usize,
    buckets: HashMap<String, Bucket>,
}

impl RateLimiter {
    /// `per_sec == 0` turns the limit off. `burst` is at least 1 when the limit is on.
    pub fn new(per_sec: u32, burst: u32, max_keys: usize) -> RateLimiter {
        RateLimiter {
            per_sec: u64::from(per_sec),
            burst: u64::from(burst.max(1)),
            max_keys: max_keys.max(1),
            buckets: HashMap::new(),
        }
    }

    fn refilled(&self, b: Bucket, now: Instant) -> u64 {
        let ms = now.saturating_duration_since(b.at).as_millis();
        let add = u64::try_from(ms)
            .unwrap_or(u64::MAX)
            .saturating_mul(self.per_sec);
        b.milli.saturating_add(add).min(self.burst * MILLI)
    }

    /// Takes one token from `key`'s bucket; `false` when it is empty.
    pub fn allow(&mut self, key: &str, now: Instant) -> bool {
        if self.per_sec == 0 {
            return true;
        }
        let full = self.burst * MILLI;
        let current = match self.buckets.get(key) {
            Some(&b) => self.refilled(b, now),
            None => {
                if self.buckets.len() >= self.max_keys {
                    let (per_sec, at_full) = (self.per_sec, full);
                    self.buckets.retain(|_, b| {
                        let ms = now.saturating_duration_since(b.at).as_millis();
                        let add = u64::try_from(ms)
                            .unwrap_or(u64::MAX)
                            .saturating_mul(per_sec);
                        b.milli.saturating_add(add) < at_full
                    });
                    if self.buckets.len() >= self.max_keys {
                        return false;
                    }
                }
                full
            }
        };
        let ok = current >= MILLI;
        let milli = if ok { current - MILLI } else { current };
        self.buckets
            .insert(key.to_owned(), Bucket { milli, at: now });
        ok
    }

    /// Keys with a bucket (tests, metrics).
    pub fn len(&self) -> usize {
        self.buckets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn burst_then_rate() {
        let t0 = Instant::now();
        let mut r = RateLimiter::new(10, 20, 100);
        assert!((0..20).all(|_| r.allow("a", t0)));
        assert!(!r.allow("a", t0));
        assert!(r.allow("b", t0), "other keys have their own bucket");
        assert!(!r.allow("a", t0 + Duration::from_millis(99)));
        assert!(r.allow("a", t0 + Duration::from_millis(100)));
        assert!(!r.allow("a", t0 + Duration::from_millis(150)));
        // A long pause refills to the burst, not beyond.
        let later = t0 + Duration::from_secs(3600);
        assert_eq!((0..30).filter(|_| r.allow("a", later)).count(), 20);
    }

    #[test]
    fn off_and_bounded() {
        let t0 = Instant::now();
        let mut off = RateLimiter::new(0, 20, 1);
        assert!((0..100).all(|_| off.allow("a", t0)));
        assert!(off.is_empty());
        let mut r = RateLimiter::new(10, 2, 2);
        assert!(r.allow("a", t0) && r.allow("b", t0));
        assert!(!r.allow("c", t0), "table full of buckets in use");
        assert!(
            r.allow("c", t0 + Duration::from_secs(1)),
            "refilled ones are pruned"
        );
        assert_eq!(r.len(), 1);
    }
}
