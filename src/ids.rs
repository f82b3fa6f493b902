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
        let mut t = String::with_capacity(16);
        crate::text::push_hex(&mut t, self.next_u64(), 16);
        t
    }

    /// A tag with a prefix, e.g. `gw-5d1c8a…`.
    pub fn tag(&mut self, prefix: &str) -> String {
        // Exact capacity: kept for the dialog's life, no spare room per subscription.
        let mut t = String::with_capacity(prefix.len() + 12);
        t.push_str(prefix);
        crate::text::push_hex(&mut t, self.next_u64() & 0xffff_ffff_ffff, 12);
        t
    }

    /// A Call-ID `token@host`.
    pub fn call_id(&mut self, host: &str) -> String {
        let (a, b) = (self.next_u64(), self.next_u64() as u32);
        let mut c = String::with_capacity(25 + host.len());
        crate::text::push_hex(&mut c, a, 16);
        crate::text::push_hex(&mut c, u64::from(b), 8);
        c.push('@');
        c.push_str(host);
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

/// A 64-bit multiply-rotate hash (FxHash style) for fingerprints of values the gateway itself
/// produces or copies (stanza contents for duplicate suppression, the header fields a SIP
/// response copies), where SipHash's flood resistance buys nothing and costs a third of
/// `stanzas_for_pidf`. Not for table keys an attacker chooses.
#[derive(Default)]
pub struct FxHasher(u64);

impl std::hash::Hasher for FxHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            self.add(u64::from_le_bytes(w));
        }
        let mut w = [0u8; 8];
        let rest = chunks.remainder();
        if let Some(dst) = w.get_mut(..rest.len()) {
            dst.copy_from_slice(rest);
        }
        self.add(u64::from_le_bytes(w) ^ ((rest.len() as u64) << 59));
    }
    fn write_u8(&mut self, i: u8) {
        self.add(u64::from(i));
    }
    fn write_usize(&mut self, i: usize) {
        self.add(i as u64);
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

impl FxHasher {
    fn add(&mut self, w: u64) {
        self.0 = (self.0.rotate_left(5) ^ w).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}
