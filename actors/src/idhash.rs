//! Hashing for map keys that need no SipHash: ids the gateway hands out itself (transaction,
//! connection, pending-request ids) and fingerprints that are already keyed SipHash outputs
//! ([`crate::transport::txn::TxnKey`], the shards' watcher keys). An outsider chooses none of
//! these bits, so no one can aim collisions at them; hashing them again with SipHash cost
//! ~2,000 instructions per subscription set-up (callgrind).
//!
//! One multiply spreads sequential ids over the high bits hashbrown uses for its control
//! bytes; the low bits (the bucket index) stay distinct for distinct ids.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// A `HashMap` keyed by our own ids or fingerprints.
pub type IdMap<K, V> = HashMap<K, V, BuildHasherDefault<IdHasher>>;

/// Folds the key's integers with a multiply; see the module doc for when it is safe.
#[derive(Default, Clone, Copy)]
pub struct IdHasher(u64);

const K: u64 = 0x9E37_79B9_7F4A_7C15;

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Not used by the key types above (they hash as integers); kept correct anyway.
        for chunk in bytes.chunks(8) {
            let mut b = [0u8; 8];
            if let Some(dst) = b.get_mut(..chunk.len()) {
                dst.copy_from_slice(chunk);
            }
            self.write_u64(u64::from_le_bytes(b));
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(26) ^ n).wrapping_mul(K);
    }

    fn write_usize(&mut self, n: usize) {
        self.write_u64(n as u64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::hash::BuildHasher;

    #[test]
    fn sequential_ids_differ_in_the_control_bits() {
        let b = BuildHasherDefault::<IdHasher>::default();
        let tops: std::collections::HashSet<u64> =
            (0u64..1000).map(|i| b.hash_one(i) >> 57).collect();
        // hashbrown's 7-bit tags: sequential ids must not all share one.
        assert!(tops.len() > 100, "{}", tops.len());
        let lows: std::collections::HashSet<u64> =
            (0u64..1024).map(|i| b.hash_one(i) & 1023).collect();
        assert_eq!(lows.len(), 1024);
    }

    #[test]
    fn a_map_keyed_by_pairs_finds_every_key() {
        let mut m: IdMap<(u64, u64), u32> = IdMap::default();
        for i in 0..10_000u32 {
            m.insert((u64::from(i), u64::from(i) * 7), i);
        }
        for i in 0..10_000u32 {
            assert_eq!(m.get(&(u64::from(i), u64::from(i) * 7)), Some(&i));
        }
        assert_eq!(m.len(), 10_000);
    }
}
