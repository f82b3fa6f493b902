//! Tags, Call-IDs and branch values: unique across every generator of a process, and across
//! restarts, and unpredictable to anyone without the process key.
//!
//! Each generator is a *stream* (a number no other generator of the process has) and a draw
//! counter; a draw is a keyed pseudo-random permutation ([`permute`], a 4-round Feistel network
//! over SipHash-1-3) of `stream ‖ counter`. Distinct inputs give distinct outputs, so two
//! generators never produce the same value within a process (the old design stepped every
//! pair's SplitMix seed by SplitMix's own increment, so pair k+1 replayed pair k's draws shifted
//! by one: Call-IDs and tags shared between neighbouring pairs, issue 14). The key comes from
//! the OS once per process ([`install_key`], called by the runtime); a new process draws from
//! an independent permutation. No generator's stream is derived from another's state.
//!
//! The core has no ambient randomness: tests use the fixed default key and explicit streams
//! ([`IdGen::new`]), so they stay deterministic.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

/// Bits of a draw's input: stream (40) ‖ counter (24).
const COUNTER_BITS: u32 = 24;
const COUNTER_MASK: u64 = (1 << COUNTER_BITS) - 1;
const STREAM_MASK: u64 = (1 << (64 - COUNTER_BITS)) - 1;
/// Streams handed out by [`fresh_stream`] have this bit; explicit test seeds stay below it.
const FRESH_BIT: u64 = 1 << 39;
/// The low bits of a fresh stream number a machine's sub-generators ([`sub_stream`]).
const LANE_BITS: u32 = 4;

static KEY: OnceLock<(u64, u64)> = OnceLock::new();
static NEXT_STREAM: AtomicU64 = AtomicU64::new(0);

/// Sets the process key (128 bits from the OS). Only the first call counts; returns whether it
/// was this one. Before any call, generators use a fixed key (tests).
pub fn install_key(k0: u64, k1: u64) -> bool {
    KEY.set((k0, k1)).is_ok()
}

fn key() -> (u64, u64) {
    *KEY.get_or_init(|| (0x0706_0504_0302_0100, 0x0f0e_0d0c_0b0a_0908))
}

/// The keyed pseudo-random function behind everything here (SipHash-1-3 under the process
/// key); `domain` separates its uses.
pub fn prf(domain: u64, x: u64) -> u64 {
    use std::hash::Hasher;
    let (k0, k1) = key();
    let mut h = siphasher::sip::SipHasher13::new_with_keys(k0, k1);
    h.write_u64(domain);
    h.write_u64(x);
    h.finish()
}

/// A keyed permutation of `u64` (Luby-Rackoff: four Feistel rounds with [`prf`] as round
/// function). A bijection: distinct inputs never give the same output.
pub fn permute(x: u64) -> u64 {
    let (mut l, mut r) = ((x >> 32) as u32, x as u32);
    for round in 0..4u64 {
        let f = prf(round, u64::from(r)) as u32;
        (l, r) = (r, l ^ f);
    }
    (u64::from(l) << 32) | u64::from(r)
}

/// The inverse of [`permute`].
pub fn unpermute(y: u64) -> u64 {
    let (mut l, mut r) = ((y >> 32) as u32, y as u32);
    for round in (0..4u64).rev() {
        let f = prf(round, u64::from(l)) as u32;
        (l, r) = (r ^ f, l);
    }
    (u64::from(l) << 32) | u64::from(r)
}

/// A stream number no other call of this process returns (the runtime gives one to each
/// machine it creates). Its low [`LANE_BITS`] are zero, for [`sub_stream`].
pub fn fresh_stream() -> u64 {
    let n = NEXT_STREAM.fetch_add(1, Ordering::Relaxed);
    (FRESH_BIT | (n << LANE_BITS)) & STREAM_MASK
}

/// The stream of a machine's sub-generator number `lane` (1..16), distinct from the machine's
/// own stream and from every other stream of [`fresh_stream`].
pub fn sub_stream(stream: u64, lane: u64) -> u64 {
    stream ^ (lane & ((1 << LANE_BITS) - 1))
}

/// One generator: a stream and how many values it has drawn. 8 bytes (a million pairs hold
/// one each).
#[derive(Clone, Debug)]
pub struct IdGen {
    /// stream ‖ counter: the input of the next draw.
    next: u64,
}

impl IdGen {
    /// The generator of stream `seed` (the low 40 bits count). Two generators of different
    /// streams never draw the same value; the runtime passes [`fresh_stream`], tests a constant.
    pub fn new(seed: u64) -> IdGen {
        IdGen {
            next: (seed & STREAM_MASK) << COUNTER_BITS,
        }
    }

    pub fn next_u64(&mut self) -> u64 {
        let input = self.next;
        self.next += 1;
        if self.next & COUNTER_MASK == 0 {
            // 16 million draws: go on in a stream nobody has used.
            *self = IdGen::new(fresh_stream());
        }
        permute(input)
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

    /// A Call-ID `token@host`: one whole draw (unique in the process) and 32 more keyed bits.
    pub fn call_id(&mut self, host: &str) -> String {
        let input = self.next;
        let a = self.next_u64();
        let b = prf(u64::MAX, input) as u32;
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
    use proptest::prelude::*;
    use std::collections::HashSet;

    #[test]
    fn deterministic_and_distinct() {
        let mut a = IdGen::new(7);
        let mut b = IdGen::new(7);
        assert_eq!(a.token(), b.token());
        assert_ne!(a.token(), a.token());
        assert!(a.call_id("gw").ends_with("@gw"));
        assert!(a.tag("gw-").starts_with("gw-"));
    }

    #[test]
    fn permute_is_inverted_by_unpermute() {
        for x in [0, 1, 2, u64::MAX, 0x1234_5678_9abc_def0] {
            assert_eq!(unpermute(permute(x)), x);
        }
        assert_ne!(permute(0), 0);
    }

    /// Issue 14: the old generator of pair k+1 replayed pair k's draws shifted by one.
    #[test]
    fn neighbouring_streams_share_no_draw() {
        let mut seen = HashSet::new();
        for stream in 0..64u64 {
            let mut g = IdGen::new(stream);
            for _ in 0..64 {
                assert!(seen.insert(g.next_u64()), "a draw repeated");
            }
        }
        let fresh: Vec<u64> = (0..3).map(|_| fresh_stream()).collect();
        assert!(fresh.windows(2).all(|w| w[0] != w[1]));
        assert!(fresh.iter().all(|&s| s & FRESH_BIT != 0 && s & 0xf == 0));
        assert_ne!(sub_stream(fresh[0], 1), fresh[0]);
        assert_ne!(sub_stream(fresh[0], 1), fresh[1]);
    }

    #[test]
    fn a_stream_that_runs_out_moves_to_a_fresh_one() {
        let mut g = IdGen::new(5);
        g.next = (5 << COUNTER_BITS) | (COUNTER_MASK - 1);
        let _ = g.next_u64();
        let _ = g.next_u64();
        assert!(g.next >> COUNTER_BITS & FRESH_BIT != 0);
        assert_eq!(g.next & COUNTER_MASK, 0);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// Many generators (random, possibly adjacent streams) x many draws: no Call-ID, tag
        /// input or draw repeats, whichever streams are chosen.
        #[test]
        fn no_duplicate_across_generators(
            base in 0u64..(1 << 39),
            gaps in proptest::collection::vec(1u64..4, 50..200),
            draws in 20usize..200,
        ) {
            let mut seen = HashSet::new();
            let mut calls = HashSet::new();
            let mut stream = base;
            for gap in gaps {
                stream = (stream + gap) & STREAM_MASK;
                let mut g = IdGen::new(stream);
                for i in 0..draws {
                    if i % 8 == 0 {
                        prop_assert!(calls.insert(g.call_id("h")), "Call-ID repeated");
                    } else {
                        prop_assert!(seen.insert(g.next_u64()), "draw repeated");
                    }
                }
            }
        }

        #[test]
        fn permutation_round_trips(x in any::<u64>()) {
            prop_assert_eq!(unpermute(permute(x)), x);
        }
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
