//! Overload control: how many NOTIFYs wait in the subscriber shards' mailboxes.
//!
//! Actor mailboxes are unbounded. When SIP NOTIFYs arrive faster than the shards translate
//! them, the queue between the registry and the shards would grow without limit (issue 7: at
//! 150,000 updates/s on 2 cores, 280 MB within 5 s). The registry counts the NOTIFYs it hands
//! to a shard, the shard counts them off once handled, and the SIP TCP readers stop reading
//! while the count is over [`LIMIT`]: the peer is slowed down by TCP flow control, memory stays
//! bounded and nothing is lost. (Over UDP the kernel drops what the socket cannot hold.)
//!
//! One count per process: it describes the process's shards, whichever connection fed them.

use std::sync::atomic::{AtomicIsize, Ordering};

/// NOTIFYs handed to shards and not yet handled. Signed, so a miscount cannot wrap into a
/// permanent pause.
static QUEUED: AtomicIsize = AtomicIsize::new(0);

/// Above this many queued NOTIFYs the TCP readers pause (about 0.15 s of work at the
/// 150,000/s target; a few tens of MB).
pub const LIMIT: isize = 20_000;

/// `n` NOTIFYs were sent to a shard.
pub fn queued(n: usize) {
    QUEUED.fetch_add(isize::try_from(n).unwrap_or(isize::MAX), Ordering::Relaxed);
}

/// A shard handled (or handed on) `n` NOTIFYs it was sent.
pub fn handled(n: usize) {
    QUEUED.fetch_sub(isize::try_from(n).unwrap_or(isize::MAX), Ordering::Relaxed);
}

/// One NOTIFY counted for as long as it is on its way to, or in, a shard: made when the
/// registry hands the NOTIFY to a shard, dropped when the shard has handled it, or with the
/// mailbox of a shard that died (issue 14: a dead shard must not leave a count that pauses
/// every SIP reader for good). Handing the NOTIFY on to the next shard moves the ticket along.
#[derive(Debug)]
pub struct Ticket(());

impl Ticket {
    #[allow(clippy::new_without_default)] // a ticket counts: made on purpose, never by default
    pub fn new() -> Ticket {
        queued(1);
        Ticket(())
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        handled(1);
    }
}

/// The NOTIFYs waiting now.
pub fn waiting() -> isize {
    QUEUED.load(Ordering::Relaxed)
}

/// Whether readers should stop taking new messages for now.
pub fn over() -> bool {
    waiting() > LIMIT
}
