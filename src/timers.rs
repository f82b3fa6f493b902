//! The numbers of §6.2: refresh points, Timer N, retry backoff. Pure functions of their inputs
//! (jitter comes from the caller's [`IdGen`]), so the state machines stay deterministic.

use crate::ids::IdGen;
use std::time::Duration;

/// RFC 3261 T1.
pub const T1: Duration = Duration::from_millis(500);
/// RFC 6665 Timer N: SUBSCRIBE sent → first NOTIFY, 64·T1.
pub const TIMER_N: Duration = Duration::from_secs(32);
/// How long an unsubscribing dialog waits for its final NOTIFY.
pub const UNSUBSCRIBE_WAIT: Duration = Duration::from_secs(32);
/// Failed attempts after which the XMPP watcher is told (§4.8 ◆).
pub const FAILURES_BEFORE_ERROR: u32 = 5;
/// Default `retry-after` for `giveup` without one (§5.2 ◆).
pub const GIVEUP_DEFAULT: Duration = Duration::from_secs(3600);

/// Time from a grant of `granted` seconds until the refresh should be sent: refresh when the
/// remaining lifetime is `clamp(granted/4, 32 s, 600 s)`, ±5 % jitter, never below 1 s.
/// 3600 → 3000 s, 600 → 450 s, 120 → 88 s (before jitter).
pub fn refresh_after(granted: u32, rng: &mut IdGen) -> Duration {
    let g = u64::from(granted) * 1000;
    let margin = (g / 4).clamp(32_000, 600_000);
    let base = g.saturating_sub(margin);
    jitter(base, 5, rng).max(Duration::from_secs(1))
}

/// `base_ms` ± `pct` %.
fn jitter(base_ms: u64, pct: u64, rng: &mut IdGen) -> Duration {
    let span = base_ms * pct / 100;
    let j = rng.below(2 * span + 1);
    Duration::from_millis(base_ms - span + j)
}

/// Retry backoff after failures: 30 s doubling to 1800 s, ±20 % jitter; a server's
/// `Retry-After` / `retry-after=` takes precedence.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Backoff {
    pub failures: u32,
}

impl Backoff {
    /// Records one failure and returns how long to wait before the next attempt.
    pub fn fail(&mut self, retry_after: Option<u32>, rng: &mut IdGen) -> Duration {
        self.failures = self.failures.saturating_add(1);
        if let Some(s) = retry_after {
            return Duration::from_secs(u64::from(s));
        }
        let exp = self.failures.saturating_sub(1).min(6);
        let base = (30_000u64 << exp).min(1_800_000);
        jitter(base, 20, rng)
    }

    pub fn reset(&mut self) {
        self.failures = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refresh_points_of_the_spec() {
        let mut rng = IdGen::new(1);
        for (granted, at) in [(3600u32, 3000u64), (600, 450), (120, 88)] {
            for _ in 0..50 {
                let d = refresh_after(granted, &mut rng).as_millis() as u64;
                let lo = at * 1000 * 95 / 100;
                let hi = at * 1000 * 105 / 100;
                assert!((lo..=hi).contains(&d), "{granted}: {d} not in {lo}..={hi}");
            }
        }
        assert_eq!(refresh_after(0, &mut rng), Duration::from_millis(1000));
    }

    #[test]
    fn backoff_doubles_to_cap_and_honours_retry_after() {
        let mut rng = IdGen::new(2);
        let mut b = Backoff::default();
        let d1 = b.fail(None, &mut rng).as_secs_f64();
        assert!((24.0..=36.0).contains(&d1), "{d1}");
        let d2 = b.fail(None, &mut rng).as_secs_f64();
        assert!((48.0..=72.0).contains(&d2), "{d2}");
        for _ in 0..10 {
            b.fail(None, &mut rng);
        }
        let cap = b.fail(None, &mut rng).as_secs_f64();
        assert!((1440.0..=2160.0).contains(&cap), "{cap}");
        assert_eq!(b.fail(Some(120), &mut rng), Duration::from_secs(120));
        assert_eq!(b.failures, 14);
    }
}
