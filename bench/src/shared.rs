//! State shared by the tool's threads: per-update send times and latencies (indexed by the
//! update's sequence number, lock-free), per-subscription set-up times, and event counters.

use std::sync::atomic::{
    AtomicBool, AtomicU16, AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering,
};
use std::time::Instant;

macro_rules! counters {
    ($($name:ident),* $(,)?) => {
        /// Event counters; the names are what the JSON report shows.
        #[allow(non_camel_case_types)]
        #[derive(Clone, Copy, Debug)]
        pub enum C { $($name),* }
        pub const C_NAMES: &[&str] = &[$(stringify!($name)),*];
    };
}

counters!(
    sip_rx,
    sip_tcp_rx,
    sip_tls_rx,
    sip_tls_sessions,
    sip_tx,
    sip_send_errors,
    sip_unparsed,
    sip_dropped_non_loopback,
    subscribe_rx,
    subscribe_refresh_rx,
    subscribe_retransmission_rx,
    notify_rx,
    notify_active_rx,
    notify_pending_rx,
    notify_terminated_rx,
    notify_unknown_dialog_rx,
    other_request_rx,
    response_2xx_to_notify,
    response_other_to_notify,
    response_2xx_to_subscribe,
    response_other_to_subscribe,
    stanza_rx,
    stanza_subscribed_rx,
    stanza_subscribe_rx,
    stanza_unsubscribe_rx,
    stanza_unsubscribed_rx,
    stanza_probe_rx,
    stanza_unavailable_rx,
    stanza_available_rx,
    stanza_error_rx,
    stanza_non_presence_rx,
    notify_retransmissions,
    subscribe_retransmissions,
    update_unmatched,
    update_duplicate,
    stanza_tx,
    message_rx,
    message_unmatched_rx,
    response_2xx_to_message,
    response_other_to_message,
    stanza_message_rx,
    stanza_message_error_rx,
    message_tx,
);

/// Shared between the pacer, the SIP receiver and the XMPP reader.
pub struct Shared {
    pub t0: Instant,
    pub stop: AtomicBool,
    /// Send time of update `seq` in ns since `t0`, plus one (0 = not sent).
    pub sent_at: Vec<AtomicU64>,
    /// First latency of update `seq` in µs, plus one (0 = not delivered).
    pub lat_us: Vec<AtomicU32>,
    /// How often update `seq` arrived (saturates at 255).
    pub hits: Vec<AtomicU8>,
    /// Set-up of pair `i`: request sent / confirmed, ns since `t0` plus one.
    pub setup_sent: Vec<AtomicU64>,
    pub setup_done: Vec<AtomicU64>,
    pub setup_done_count: AtomicUsize,
    /// Scenario b: a final response to SUBSCRIBE `i` arrived (stops its retransmission).
    pub answered: Vec<AtomicBool>,
    counters: Vec<AtomicU64>,
    /// Response codes to our NOTIFYs (scenario a) or SUBSCRIBEs (scenario b), by code.
    pub codes: Vec<AtomicU64>,
    /// IM, message `seq`: latency of the final response to our MESSAGE (S->X) in µs, plus
    /// one (0 = none yet). Empty outside the IM scenario.
    pub resp_us: Vec<AtomicU32>,
    /// IM, message `seq`: the final response's code (S->X), or 1 for an error stanza
    /// (X->S); 0 = none.
    pub resp_code: Vec<AtomicU16>,
    /// IM: error stanzas from the gateway by defined condition.
    pub error_conditions: std::sync::Mutex<std::collections::BTreeMap<String, u64>>,
}

fn zeroed<T: Default>(n: usize) -> Vec<T> {
    (0..n).map(|_| T::default()).collect()
}

impl Shared {
    /// `im_updates`: room in the IM response tables (0 outside the IM scenario).
    pub fn new(pairs: usize, updates: usize, im_updates: usize) -> Shared {
        Shared {
            t0: Instant::now(),
            stop: AtomicBool::new(false),
            sent_at: zeroed(updates),
            lat_us: zeroed(updates),
            hits: zeroed(updates),
            setup_sent: zeroed(pairs),
            setup_done: zeroed(pairs),
            setup_done_count: AtomicUsize::new(0),
            answered: zeroed(pairs),
            counters: zeroed(C_NAMES.len()),
            codes: zeroed(700),
            resp_us: zeroed(im_updates),
            resp_code: zeroed(im_updates),
            error_conditions: Default::default(),
        }
    }

    pub fn now_ns(&self) -> u64 {
        self.t0.elapsed().as_nanos() as u64
    }

    pub fn inc(&self, c: C) {
        self.add(c, 1);
    }
    pub fn add(&self, c: C, n: u64) {
        if let Some(a) = self.counters.get(c as usize) {
            a.fetch_add(n, Ordering::Relaxed);
        }
    }
    pub fn get(&self, c: C) -> u64 {
        self.counters
            .get(c as usize)
            .map_or(0, |a| a.load(Ordering::Relaxed))
    }
    pub fn counters(&self) -> Vec<u64> {
        self.counters
            .iter()
            .map(|a| a.load(Ordering::Relaxed))
            .collect()
    }

    pub fn code(&self, code: u16) {
        if let Some(a) = self.codes.get(code as usize) {
            a.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn stopping(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    /// Records that update `seq` is being sent now. False when the table is full.
    pub fn mark_sent(&self, seq: u64) -> bool {
        match self.sent_at.get(seq as usize) {
            Some(a) => {
                a.store(self.now_ns() + 1, Ordering::Relaxed);
                true
            }
            None => false,
        }
    }

    /// Records an arrival of update `seq` (from a stanza status or a NOTIFY note).
    pub fn mark_delivered(&self, seq: u64) {
        let (Some(sent), Some(lat), Some(hits)) = (
            self.sent_at.get(seq as usize),
            self.lat_us.get(seq as usize),
            self.hits.get(seq as usize),
        ) else {
            self.inc(C::update_unmatched);
            return;
        };
        let s = sent.load(Ordering::Relaxed);
        if s == 0 {
            self.inc(C::update_unmatched);
            return;
        }
        let h = hits.load(Ordering::Relaxed);
        hits.store(h.saturating_add(1), Ordering::Relaxed);
        if h > 0 {
            self.inc(C::update_duplicate);
            return;
        }
        let us = (self.now_ns().saturating_sub(s - 1) / 1000).min(u32::MAX as u64 - 1) as u32;
        lat.store(us + 1, Ordering::Relaxed);
    }

    /// IM: the final response `code` to our MESSAGE `seq` arrived (first one counts).
    /// False when `seq` was never sent or already answered.
    pub fn mark_response(&self, seq: u64, code: u16) -> bool {
        let (Some(sent), Some(lat), Some(c)) = (
            self.sent_at.get(seq as usize),
            self.resp_us.get(seq as usize),
            self.resp_code.get(seq as usize),
        ) else {
            return false;
        };
        let s = sent.load(Ordering::Relaxed);
        if s == 0 || c.load(Ordering::Relaxed) != 0 {
            return false;
        }
        c.store(code, Ordering::Relaxed);
        let us = (self.now_ns().saturating_sub(s - 1) / 1000).min(u32::MAX as u64 - 1) as u32;
        lat.store(us + 1, Ordering::Relaxed);
        true
    }

    /// IM: an error stanza came back for our stanza `seq` (X->S).
    pub fn mark_error_stanza(&self, seq: u64) {
        if let Some(c) = self.resp_code.get(seq as usize) {
            c.store(1, Ordering::Relaxed);
        }
    }

    pub fn mark_setup_sent(&self, i: usize) {
        if let Some(a) = self.setup_sent.get(i) {
            a.store(self.now_ns() + 1, Ordering::Relaxed);
        }
    }

    /// Pair `i` is set up (first time only counts).
    pub fn mark_setup_done(&self, i: usize) -> bool {
        let Some(a) = self.setup_done.get(i) else {
            return false;
        };
        if a.load(Ordering::Relaxed) != 0 {
            return false;
        }
        a.store(self.now_ns() + 1, Ordering::Relaxed);
        self.setup_done_count.fetch_add(1, Ordering::Relaxed);
        true
    }

    pub fn mark_answered(&self, i: usize) {
        if let Some(a) = self.answered.get(i) {
            a.store(true, Ordering::Relaxed);
        }
    }

    pub fn is_answered(&self, i: usize) -> bool {
        self.answered
            .get(i)
            .is_some_and(|a| a.load(Ordering::Relaxed))
    }

    pub fn is_set_up(&self, i: usize) -> bool {
        self.setup_done
            .get(i)
            .is_some_and(|a| a.load(Ordering::Relaxed) != 0)
    }
}

/// `n<digits>` (the unique note / status of one update) to its sequence number.
pub fn seq_of(text: &str) -> Option<u64> {
    text.trim().strip_prefix('n')?.parse().ok()
}

/// The number at the start of an IM body or id: `n<digits>` (body) or `x<digits>` (our
/// stanza ids), the digits ending at the first other byte. Reads bytes, so a 4 KB body is
/// neither copied nor decoded.
pub fn seq_prefix(text: &[u8], lead: u8) -> Option<u64> {
    let rest = text.strip_prefix(&[lead])?;
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    if digits == 0 || digits > 19 {
        return None;
    }
    let mut n = 0u64;
    for &d in rest.get(..digits)? {
        n = n * 10 + u64::from(d - b'0');
    }
    Some(n)
}

/// Index `i` of an address `prefix i suffix` (e.g. `p17*sip.bench@sip.bench.local`).
pub fn index_of(addr: &str, prefix: &str, suffix: &str) -> Option<usize> {
    addr.strip_prefix(prefix)?
        .strip_suffix(suffix)?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_once_then_duplicates() {
        let s = Shared::new(1, 4, 0);
        assert!(s.mark_sent(2));
        assert!(!s.mark_sent(4));
        s.mark_delivered(2);
        s.mark_delivered(2);
        s.mark_delivered(3);
        assert_eq!(s.hits[2].load(Ordering::Relaxed), 2);
        assert_ne!(s.lat_us[2].load(Ordering::Relaxed), 0);
        assert_eq!(s.get(C::update_duplicate), 1);
        assert_eq!(s.get(C::update_unmatched), 1);
    }

    #[test]
    fn first_final_response_counts() {
        let s = Shared::new(1, 4, 4);
        assert!(!s.mark_response(1, 202), "never sent");
        assert!(s.mark_sent(1));
        assert!(s.mark_response(1, 202));
        assert!(!s.mark_response(1, 500), "already answered");
        assert_eq!(s.resp_code[1].load(Ordering::Relaxed), 202);
        assert_ne!(s.resp_us[1].load(Ordering::Relaxed), 0);
        assert!(!s.mark_response(9, 200), "outside the table");
        s.mark_error_stanza(2);
        assert_eq!(s.resp_code[2].load(Ordering::Relaxed), 1);
    }

    #[test]
    fn parses_indexes_and_sequence_numbers() {
        assert_eq!(
            index_of(
                "p17*sip.bench@sip.bench.local",
                "p",
                "*sip.bench@sip.bench.local"
            ),
            Some(17)
        );
        assert_eq!(index_of("q17*sip.bench@x", "p", "*sip.bench@x"), None);
        assert_eq!(seq_of("n123"), Some(123));
        assert_eq!(seq_of("init"), None);
        assert_eq!(seq_prefix(b"n42 xxxx", b'n'), Some(42));
        assert_eq!(seq_prefix(b"n7", b'n'), Some(7));
        assert_eq!(seq_prefix(b"x9", b'x'), Some(9));
        assert_eq!(seq_prefix(b"x9", b'n'), None);
        assert_eq!(seq_prefix(b"n xx", b'n'), None);
        assert_eq!(seq_prefix(b"n99999999999999999999", b'n'), None);
        assert_eq!(seq_prefix(b"", b'n'), None);
    }
}
