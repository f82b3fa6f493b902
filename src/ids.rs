//! Tags, Call-IDs and branch values.
//!
//! The core has no ambient randomness: a generator is seeded by the caller (the runtime seeds it
//! from the OS, tests from a constant), so every test is deterministic.

/// A small, fast, seeded generator (SplitMix64) for protocol identifiers. Identifiers only
/// need to be unique and hard to guess across restarts, not cryptographically strong.
#[derive(Clone, Debug)]
pub struct IdGen {
    state: u64,
}

impl IdGen {
    pub fn new(seed: u64) -> IdGen {
        IdGen { state: seed }
    }

    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A 16-hex-digit token.
    pub fn token(&mut self) -> String {
        format!("{:016x}", self.next_u64())
    }

    /// A tag with a prefix, e.g. `gw-5d1c8a…`.
    pub fn tag(&mut self, prefix: &str) -> String {
        let mut t = format!("{prefix}{:012x}", self.next_u64() & 0xffff_ffff_ffff);
        t.shrink_to_fit(); // kept for the dialog's life: no spare capacity per subscription
        t
    }

    /// A Call-ID `token@host`.
    pub fn call_id(&mut self, host: &str) -> String {
        let mut c = format!(
            "{:016x}{:08x}@{host}",
            self.next_u64(),
            self.next_u64() as u32
        );
        c.shrink_to_fit();
        c
    }

    /// A value in `[0, n)` (for jitter).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next_u64() % n
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_and_distinct() {
        let mut a = IdGen::new(7);
        let mut b = IdGen::new(7);
        assert_eq!(a.token(), b.token());
        assert_ne!(a.token(), a.token());
        assert!(a.call_id("gw").ends_with("@gw"));
        assert!(a.tag("gw-").starts_with("gw-"));
    }
}
