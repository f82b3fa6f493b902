//! Compact storage for state that lives as long as a subscription.
//!
//! A gateway holds a million pairs, each idle nearly all its life, so what a pair keeps between
//! events is memory that counts a million times (issue 7: under 0.8 KB per subscription). Each
//! owned `String` costs 24 bytes inline plus a heap block with malloc's header and rounding;
//! these types keep several strings in one block, deadlines as 32-bit offsets, and the cached
//! presence view as one byte string.

use crate::pidf::Basic;
use crate::presence::TupleView;
use crate::stanza::{Availability, Show, Status};
use std::time::{Duration, Instant};

/// `N` byte strings in one heap block: 16 bytes + 4 per string inline instead of 24 per
/// string, and one allocation (one malloc header, one rounding) instead of `N`.
#[derive(Clone, PartialEq, Eq)]
pub struct Strs<const N: usize> {
    buf: Box<[u8]>,
    /// End offset of each string in `buf`.
    ends: [u32; N],
}

impl<const N: usize> Strs<N> {
    pub fn new(parts: [&[u8]; N]) -> Strs<N> {
        let mut buf = Vec::with_capacity(parts.iter().map(|p| p.len()).sum());
        let mut ends = [0u32; N];
        for (end, p) in ends.iter_mut().zip(parts) {
            buf.extend_from_slice(p);
            // Saturates only past 4 GiB of text, which no SIP or XMPP limit lets through.
            *end = u32::try_from(buf.len()).unwrap_or(u32::MAX);
        }
        Strs {
            buf: buf.into_boxed_slice(),
            ends,
        }
    }

    pub fn get(&self, i: usize) -> &[u8] {
        let end = self.ends.get(i).map_or(0, |&e| e as usize);
        let start = match i.checked_sub(1) {
            Some(p) => self.ends.get(p).map_or(0, |&e| e as usize),
            None => 0,
        };
        self.buf.get(start..end).unwrap_or(&[])
    }

    /// String `i` as text; "" if it was not stored from a `&str`.
    pub fn str(&self, i: usize) -> &str {
        std::str::from_utf8(self.get(i)).unwrap_or("")
    }

    /// All strings, for rebuilding with one of them changed.
    pub fn parts(&self) -> [&[u8]; N] {
        std::array::from_fn(|i| self.get(i))
    }

    /// Replaces string `i` (one new block; the old one is freed). No-op if unchanged.
    pub fn set(&mut self, i: usize, value: &[u8]) {
        if self.get(i) == value {
            return;
        }
        let mut parts = self.parts();
        if let Some(p) = parts.get_mut(i) {
            *p = value;
        }
        *self = Strs::new(parts);
    }
}

impl<const N: usize> std::fmt::Debug for Strs<N> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.parts().map(String::from_utf8_lossy))
            .finish()
    }
}

const NONE: u32 = u32::MAX;

/// `N` optional deadlines as millisecond offsets from one base instant: 16 + 4·`N` bytes
/// instead of 16·`N`. A deadline is rounded up to the next millisecond, so it never fires
/// early nor more than a millisecond late. The base moves (by whole milliseconds, so the other
/// offsets stay exact) when a deadline falls before it or more than 49 days after it, so a pair
/// that lives for years keeps working.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Deadlines<const N: usize> {
    base: Option<Instant>,
    at: [u32; N],
}

impl<const N: usize> Default for Deadlines<N> {
    fn default() -> Self {
        Deadlines {
            base: None,
            at: [NONE; N],
        }
    }
}

fn ceil_ms(d: Duration) -> u64 {
    let ms = d.as_millis();
    let up = if !d.subsec_nanos().is_multiple_of(1_000_000) {
        ms + 1
    } else {
        ms
    };
    u64::try_from(up).unwrap_or(u64::MAX)
}

impl<const N: usize> Deadlines<N> {
    pub fn get(&self, i: usize) -> Option<Instant> {
        let off = *self.at.get(i)?;
        if off == NONE {
            return None;
        }
        self.base.map(|b| b + Duration::from_millis(u64::from(off)))
    }

    pub fn set(&mut self, i: usize, t: Option<Instant>) {
        if i >= N {
            return;
        }
        let Some(t) = t else {
            self.at[i] = NONE;
            if self.at.iter().all(|&a| a == NONE) {
                self.base = None;
            }
            return;
        };
        let Some(base) = self.base else {
            self.base = Some(t);
            self.at[i] = 0;
            return;
        };
        if t < base {
            // Move the base back by whole milliseconds: the other offsets stay exact.
            let shift = ceil_ms(base - t);
            let Some(new_base) = base.checked_sub(Duration::from_millis(shift)) else {
                self.base = Some(t);
                self.at = [NONE; N];
                self.at[i] = 0;
                return;
            };
            for a in self.at.iter_mut().filter(|a| **a != NONE) {
                *a = u64::from(*a).saturating_add(shift).min(u64::from(NONE - 1)) as u32;
            }
            self.base = Some(new_base);
            self.at[i] = ceil_ms(t - new_base).min(u64::from(NONE - 1)) as u32;
            return;
        }
        let off = ceil_ms(t - base);
        if off < u64::from(NONE) {
            self.at[i] = off as u32;
            return;
        }
        // 49 days past the base: move it forward to the earliest other deadline.
        self.at[i] = NONE;
        let m = self.at.iter().copied().filter(|&a| a != NONE).min();
        match m {
            None => {
                self.base = Some(t);
                self.at[i] = 0;
            }
            Some(m) => {
                let new_base = base + Duration::from_millis(u64::from(m));
                for a in self.at.iter_mut().filter(|a| **a != NONE) {
                    *a -= m;
                }
                self.base = Some(new_base);
                self.at[i] = ceil_ms(t - new_base).min(u64::from(NONE - 1)) as u32;
            }
        }
    }

    pub fn clear(&mut self) {
        *self = Self::default();
    }

    /// The earliest deadline.
    pub fn earliest(&self) -> Option<Instant> {
        let off = self.at.iter().copied().filter(|&a| a != NONE).min()?;
        self.base.map(|b| b + Duration::from_millis(u64::from(off)))
    }
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&u32::try_from(s.len()).unwrap_or(u32::MAX).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn byte(&mut self) -> Option<u8> {
        let (&b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(b)
    }
    fn str(&mut self) -> Option<String> {
        let len_bytes: [u8; 4] = self.0.get(..4)?.try_into().ok()?;
        let len = u32::from_le_bytes(len_bytes) as usize;
        let s = self.0.get(4..4 + len)?;
        self.0 = self.0.get(4 + len..)?;
        std::str::from_utf8(s).ok().map(str::to_owned)
    }
}

/// The cached presence view of a pair (for answering probes without SIP traffic) as bytes: a
/// handful per tuple instead of a vector of structs each owning strings. See [`unpack_view`].
pub fn pack_view(view: &[TupleView]) -> Vec<u8> {
    let mut out = Vec::with_capacity(view.iter().map(|t| 16 + t.resource.len()).sum());
    for t in view {
        out.push(match t.basic {
            Basic::Open => 0,
            Basic::Closed => 1,
            Basic::Unknown => 2,
        });
        out.push(match t.state.show {
            None => 0,
            Some(Show::Chat) => 1,
            Some(Show::Away) => 2,
            Some(Show::Xa) => 3,
            Some(Show::Dnd) => 4,
        });
        match t.state.priority {
            None => out.push(0),
            Some(p) => {
                out.push(1);
                out.push(p as u8);
            }
        }
        put_str(&mut out, &t.resource);
        out.push(u8::try_from(t.state.statuses.len()).unwrap_or(u8::MAX));
        for s in t.state.statuses.iter().take(usize::from(u8::MAX)) {
            match &s.lang {
                None => out.push(0),
                Some(l) => {
                    out.push(1);
                    put_str(&mut out, l);
                }
            }
            put_str(&mut out, &s.text);
        }
    }
    out
}

/// The view as it was packed. `None` cannot happen for bytes made by [`pack_view`]; it is
/// there so that no input, however made, can panic.
pub fn unpack_view(bytes: &[u8]) -> Option<Vec<TupleView>> {
    let mut c = Cursor(bytes);
    let mut view = Vec::new();
    while !c.0.is_empty() {
        let basic = match c.byte()? {
            0 => Basic::Open,
            1 => Basic::Closed,
            _ => Basic::Unknown,
        };
        let show = match c.byte()? {
            0 => None,
            1 => Some(Show::Chat),
            2 => Some(Show::Away),
            3 => Some(Show::Xa),
            _ => Some(Show::Dnd),
        };
        let priority = match c.byte()? {
            0 => None,
            _ => Some(c.byte()? as i8),
        };
        let resource = c.str()?;
        let n = c.byte()?;
        let mut statuses = Vec::with_capacity(usize::from(n));
        for _ in 0..n {
            let lang = match c.byte()? {
                0 => None,
                _ => Some(c.str()?),
            };
            let text = c.str()?;
            statuses.push(Status { lang, text });
        }
        view.push(TupleView {
            resource,
            state: Availability {
                show,
                statuses,
                priority,
            },
            basic,
        });
    }
    Some(view)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn strs_keep_each_part_and_replace_one() {
        let mut s = Strs::new([b"call-1@gw", b"gw-abc", b"", b"sip:p@10.0.0.1:5060"]);
        assert_eq!(s.str(0), "call-1@gw");
        assert_eq!(s.str(1), "gw-abc");
        assert_eq!(s.str(2), "");
        assert_eq!(s.str(3), "sip:p@10.0.0.1:5060");
        assert_eq!(s.get(4), b"");
        s.set(2, b"kam-7");
        assert_eq!(
            s.parts(),
            [
                &b"call-1@gw"[..],
                b"gw-abc",
                b"kam-7",
                b"sip:p@10.0.0.1:5060"
            ]
        );
        s.set(3, &[0xff]);
        assert_eq!((s.get(3), s.str(3)), (&[0xffu8][..], ""));
        s.set(3, b"sip:p@10.0.0.1:5060");
        assert_eq!(
            format!("{s:?}"),
            r#"["call-1@gw", "gw-abc", "kam-7", "sip:p@10.0.0.1:5060"]"#
        );
    }

    #[test]
    fn deadlines_round_trip_and_rebase() {
        let t0 = Instant::now();
        let mut d = Deadlines::<3>::default();
        assert_eq!(d.earliest(), None);
        d.set(0, Some(t0 + Duration::from_secs(32)));
        d.set(1, Some(t0 + Duration::from_secs(3000)));
        // Before the base: rebased, the others unchanged.
        d.set(2, Some(t0 + Duration::from_millis(1500)));
        assert_eq!(d.get(0), Some(t0 + Duration::from_secs(32)));
        assert_eq!(d.get(1), Some(t0 + Duration::from_secs(3000)));
        assert_eq!(d.get(2), Some(t0 + Duration::from_millis(1500)));
        assert_eq!(d.earliest(), Some(t0 + Duration::from_millis(1500)));
        // 49.72 days on: past a 32-bit millisecond offset from the base, which moves forward.
        let far = t0 + Duration::from_secs(4_296_000);
        d.set(0, None);
        d.set(2, None);
        d.set(0, Some(far));
        assert_eq!(d.get(0), Some(far));
        assert_eq!(d.get(1), Some(t0 + Duration::from_secs(3000)));
        d.set(1, None);
        d.set(0, None);
        assert_eq!(d, Deadlines::default());
        // Sub-millisecond parts round up: never early.
        d.set(0, Some(t0));
        d.set(1, Some(t0 + Duration::from_micros(2500)));
        assert_eq!(d.get(1), Some(t0 + Duration::from_millis(3)));
    }

    fn arb_view() -> impl Strategy<Value = Vec<TupleView>> {
        let status = (proptest::option::of("[a-z-]{0,5}"), "\\PC{0,12}")
            .prop_map(|(lang, text)| Status { lang, text });
        let tuple = (
            "\\PC{0,10}",
            proptest::option::of(0u8..4),
            proptest::collection::vec(status, 0..3),
            proptest::option::of(any::<i8>()),
            0u8..3,
        )
            .prop_map(|(resource, show, statuses, priority, basic)| TupleView {
                resource,
                state: Availability {
                    show: show.map(|s| [Show::Chat, Show::Away, Show::Xa, Show::Dnd][s as usize]),
                    statuses,
                    priority,
                },
                basic: [Basic::Open, Basic::Closed, Basic::Unknown][basic as usize],
            });
        proptest::collection::vec(tuple, 0..4)
    }

    proptest! {
        #[test]
        fn packed_view_round_trips(view in arb_view()) {
            prop_assert_eq!(unpack_view(&pack_view(&view)), Some(view));
        }

        #[test]
        fn unpacking_any_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = unpack_view(&bytes);
        }

        #[test]
        fn deadlines_are_never_early_nor_more_than_a_millisecond_late(
            offs in proptest::collection::vec(proptest::option::of(0u64..10_000_000_000), 4)
        ) {
            let t0 = Instant::now();
            let mut d = Deadlines::<4>::default();
            for (i, o) in offs.iter().enumerate() {
                d.set(i, o.map(|o| t0 + Duration::from_micros(o)));
            }
            for (i, o) in offs.iter().enumerate() {
                match (d.get(i), o) {
                    (Some(got), Some(o)) => {
                        let want = t0 + Duration::from_micros(*o);
                        prop_assert!(got >= want && got - want < Duration::from_millis(1), "{i}: {got:?} {want:?}");
                    }
                    (None, None) => {}
                    (got, o) => prop_assert!(false, "{i}: {got:?} vs {o:?}"),
                }
            }
        }
    }
}
