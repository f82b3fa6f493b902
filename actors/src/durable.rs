//! Durable before acknowledged (issue 14): what a peer is told about a change leaves the gateway
//! only after the record that makes it true is committed.
//!
//! The core marks the changes a restart must find with a `Persist` output; the responses and
//! stanzas produced by the same input tell a peer about them (the `subscribed` stanza and first
//! presence, the 200 to an initial SUBSCRIBE or to the NOTIFY that activated a dialog), and the
//! core says so (`awaits_durable`). A translator puts that input's outputs, requests included
//! so that the order on the wire stays the core's, in its [`Gate`] instead of sending them,
//! and once its handler has sent
//! its records to the store, [`Gate::seal`] queues a commit marker behind them. The store
//! writer commits the batch within `store::BatchConfig::durable_wait` (group commit: one
//! transaction for every translator waiting) and answers [`Durable`]; [`Gate::release`] then
//! hands back the held outputs in order. Outputs of an input that persisted nothing (the
//! steady stream of NOTIFYs and presences) pass at once, unless their pair still has held
//! outputs, which they must not overtake.

use crate::idhash::IdMap;
use crate::messages::{Durable, SendPresence, SendPresences, SendResponse, SendResponses};
use crate::store::StoreHandle;
use actix::Recipient;
use pua_xmpp::sip::OutRequest;
use pua_xmpp::stanza::OutPresence;
use std::collections::VecDeque;

/// An output waiting for its records to be durable.
#[derive(Debug)]
pub(crate) enum Held {
    Response(SendResponse),
    Stanza(OutPresence),
    /// A request of the machine in slot `.0` of the translator.
    Request(u32, OutRequest),
}

/// Held outputs and the commit markers they wait for. Markers are numbered per translator and
/// committed in the order sent (one store queue), so `committed` only grows.
#[derive(Default)]
pub(crate) struct Gate {
    /// The number of the last marker sent.
    sent: u64,
    /// The highest marker the store confirmed.
    committed: u64,
    /// Outputs of this handler wait for the marker `sent + 1`, not sent yet.
    due: bool,
    held: VecDeque<(u64, Held)>,
    /// The machines (by slot) with outputs held, and the marker their latest ones wait for:
    /// their later outputs queue behind (few at a time: a set-up's, for a few milliseconds).
    slots: IdMap<u32, u64>,
}

impl Gate {
    /// Whether the outputs the machine in `slot` just queued must be held, and for which
    /// marker: all of them if `awaits_durable` (the core says they tell a peer about a change
    /// it persisted), else only if earlier ones of the same machine still wait.
    pub(crate) fn hold_for(&mut self, slot: u32, awaits_durable: bool) -> Option<u64> {
        if awaits_durable {
            let t = self.ticket();
            self.slots.insert(slot, t);
            return Some(t);
        }
        let t = self.slots.get(&slot).copied()?;
        if self.passed(t) {
            self.slots.remove(&slot);
            return None;
        }
        Some(t)
    }

    /// The machine in `slot` is gone (its slot may be reused).
    pub(crate) fn forget(&mut self, slot: u32) {
        self.slots.remove(&slot);
    }

    /// The marker that outputs depending on records written by this handler wait for.
    fn ticket(&mut self) -> u64 {
        self.due = true;
        self.sent + 1
    }

    /// Whether outputs waiting for `ticket` may go now.
    pub(crate) fn passed(&self, ticket: u64) -> bool {
        ticket <= self.committed
    }

    pub(crate) fn hold(&mut self, ticket: u64, out: Held) {
        self.held.push_back((ticket, out));
    }

    /// Whether this handler took a ticket: its records must reach the store before
    /// [`Gate::seal`].
    pub(crate) fn is_due(&self) -> bool {
        self.due
    }

    /// Queues the commit marker for this handler's ticket behind the records it sent.
    pub(crate) fn seal(&mut self, store: &StoreHandle, me: &Recipient<Durable>) {
        if !std::mem::take(&mut self.due) {
            return;
        }
        self.sent += 1;
        let (ticket, me) = (self.sent, me.clone());
        store.after_commit(Box::new(move || me.do_send(Durable(ticket))));
    }

    /// Marker `ticket` is committed: the outputs it held, in the order they were held. An
    /// output held for a later marker keeps the ones behind it waiting (order per peer).
    pub(crate) fn release(&mut self, ticket: u64) -> impl Iterator<Item = Held> + '_ {
        self.committed = self.committed.max(ticket);
        let committed = self.committed;
        self.slots.retain(|_, t| *t > committed);
        let n = self
            .held
            .iter()
            .take_while(|(t, _)| *t <= self.committed)
            .count();
        if self.held.capacity() > 1024 && self.held.len() == n {
            self.held.shrink_to(1024);
        }
        self.held.drain(..n).map(|(_, h)| h)
    }

    /// Outputs held now.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.held.len()
    }
}

/// Sends released outputs: responses to the transport, stanzas to the component, as one
/// message each when there are several; requests through `request` (the translator's own
/// bookkeeping), each after the responses released before it.
pub(crate) fn send_released(
    released: Vec<Held>,
    links: &crate::links::Links,
    mut request: impl FnMut(u32, OutRequest),
) {
    let (mut rs, mut ss) = (Vec::new(), Vec::new());
    for h in released {
        match h {
            Held::Response(r) => rs.push(r),
            Held::Stanza(s) => ss.push(s),
            Held::Request(slot, req) => {
                send_responses(&mut rs, &links.responses, &links.response_batches);
                request(slot, req);
            }
        }
    }
    send_responses(&mut rs, &links.responses, &links.response_batches);
    let (stanzas, stanza_batches) = (&links.stanzas, &links.stanza_batches);
    match ss.len() {
        0 => {}
        1 => ss
            .into_iter()
            .for_each(|s| stanzas.do_send(SendPresence(s))),
        _ => stanza_batches.do_send(SendPresences(ss)),
    }
}

fn send_responses(
    rs: &mut Vec<SendResponse>,
    responses: &Recipient<SendResponse>,
    response_batches: &Recipient<SendResponses>,
) {
    match rs.len() {
        0 => {}
        1 => rs.drain(..).for_each(|r| responses.do_send(r)),
        _ => response_batches.do_send(SendResponses(std::mem::take(rs))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pua_xmpp::stanza::{Jid, PresenceType};

    fn stanza(n: u32) -> Held {
        let from: Jid = format!("s{n}@gw").parse().expect("jid");
        let to: Jid = "x@xmpp".parse().expect("jid");
        Held::Stanza(OutPresence::new(from, to, PresenceType::Available))
    }

    fn names(v: Vec<Held>) -> Vec<String> {
        v.into_iter()
            .map(|h| match h {
                Held::Stanza(s) => s.from.to_string(),
                Held::Response(r) => r.txn.to_string(),
                Held::Request(_, r) => r.call_id,
            })
            .collect()
    }

    #[test]
    fn outputs_wait_for_their_marker_and_leave_in_order() {
        let mut g = Gate::default();
        let t1 = g.ticket();
        assert_eq!(t1, 1);
        assert!(!g.passed(t1));
        g.hold(t1, stanza(1));
        g.hold(t1, stanza(2));
        // sealed (marker 1 sent); the next handler holds for marker 2
        g.sent += 1;
        g.due = false;
        let t2 = g.ticket();
        assert_eq!(t2, 2);
        g.hold(t2, stanza(3));
        g.hold(t1, stanza(4)); // a pair still held at 1, behind 3: waits for 2 as well
        assert!(names(g.release(0).collect()).is_empty());
        assert_eq!(names(g.release(1).collect()), ["s1@gw", "s2@gw"]);
        assert!(g.passed(t1) && !g.passed(t2));
        assert_eq!(g.len(), 2);
        assert_eq!(names(g.release(2).collect()), ["s3@gw", "s4@gw"]);
        // a late, smaller confirmation does not move the mark back
        assert!(names(g.release(1).collect()).is_empty());
        assert!(g.passed(2));
    }

    #[test]
    fn a_machine_with_held_outputs_holds_its_later_ones_until_they_pass() {
        let mut g = Gate::default();
        assert_eq!(g.hold_for(7, false), None, "nothing held: pass at once");
        assert_eq!(g.hold_for(7, true), Some(1));
        assert_eq!(g.hold_for(8, false), None, "another machine is not held");
        g.sent = 1;
        g.due = false;
        assert_eq!(g.hold_for(7, false), Some(1), "behind its held outputs");
        let _ = g.release(1).count();
        assert_eq!(g.hold_for(7, false), None, "its marker passed");
        assert_eq!(g.hold_for(9, true), Some(2));
        g.forget(9);
        assert_eq!(
            g.hold_for(9, false),
            None,
            "a slot reused by another machine"
        );
    }
}
