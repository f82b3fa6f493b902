//! # pua-xmpp protocol core
//!
//! Everything the gateway knows about SIP and XMPP presence, with no sockets, no clocks and
//! no actors. Like `str0m` and `quinn-proto`, every state machine here is driven by
//! `handle_input(input, now)` and drained by `poll_output()`; time is a value passed in, so
//! the tests run faster than real time and every rule is a unit test.
//!
//! The path of one presence update (see `ARCHITECTURE.md`):
//! SIP bytes → [`sip::framing`] → [`sip::parse`] → [`subscriber`] (dialog rules) →
//! [`pidf`] (body) → [`presence`] (PIDF ⇄ XMPP mapping) → [`stanza`] (typed stanzas) → XMPP.
//! And back: stanza → [`presence`] aggregate → [`pidf`] → [`notifier`] / [`publisher`] → SIP.
//!
//! Instant messages (RFC 7572 page mode): `<message/>` ([`message`]) ⇄ MESSAGE through [`im`],
//! with the content rules in [`im_content`] and the per-sender limits of [`rate`].

pub mod address;
pub mod error_map;
pub mod ids;
pub mod im;
pub mod im_content;
pub mod lease;
pub mod locate;
pub mod message;
pub mod notifier;
pub mod packed;
pub mod pidf;
pub mod presence;
pub mod pua;
pub mod publisher;
pub mod rate;
pub mod sip;
pub mod stanza;
pub mod subscriber;
pub mod text;
pub mod timers;
pub mod winfo;
pub mod xml;

#[cfg(test)]
mod fuzz_regressions;
