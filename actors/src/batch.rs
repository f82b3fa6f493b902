//! Batch vectors: a handler fills one and hands it whole to the next actor (one message per
//! batch instead of one per item).
//!
//! A vector grown from nothing to n items costs about log2(n) reallocations, each copying all
//! it holds: at 60,000 set-ups/s that was ~2 % of the gateway's instructions (callgrind). The
//! next batch of a loop is likely about as large as the last, so it starts with that room.

/// Largest room kept for the next batch, in items: a rare burst does not pin its memory.
const MAX_ROOM: usize = 4096;

/// Takes the filled batch, leaving an empty one with room for as many items.
pub(crate) fn take_sized<T>(v: &mut Vec<T>) -> Vec<T> {
    let room = v.len().min(MAX_ROOM);
    std::mem::replace(v, Vec::with_capacity(room))
}

/// One list per shard for `n` items spread over the shards by hash: each with room for its
/// fair share and some slack, so that most never grow. A lone item gets no room in advance
/// (only one list will hold it).
pub(crate) fn shard_lists<T>(shards: usize, n: usize) -> Vec<Vec<T>> {
    let each = if n <= 1 {
        0
    } else {
        (n / shards.max(1) + n / 8 + 1).min(MAX_ROOM)
    };
    (0..shards).map(|_| Vec::with_capacity(each)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn take_sized_leaves_room_for_a_batch_as_large() {
        let mut v: Vec<u32> = (0..100).collect();
        let taken = take_sized(&mut v);
        assert_eq!(taken, (0..100).collect::<Vec<_>>());
        assert!(v.is_empty());
        assert!(v.capacity() >= 100);
        let mut big: Vec<u8> = vec![0; MAX_ROOM * 2];
        take_sized(&mut big);
        assert!(big.capacity() < MAX_ROOM * 2);
    }

    #[test]
    fn shard_lists_have_a_fair_share_of_room() {
        let lists: Vec<Vec<u64>> = shard_lists(2, 1000);
        assert_eq!(lists.len(), 2);
        assert!(lists.iter().all(|l| l.is_empty() && l.capacity() >= 626));
        let lone: Vec<Vec<u64>> = shard_lists(3, 1);
        assert!(lone.iter().all(|l| l.capacity() == 0));
        assert!(shard_lists::<u8>(0, 10).is_empty());
    }
}
