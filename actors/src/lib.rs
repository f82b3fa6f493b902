//! The actix runtime of pua-xmpp: the actors own sockets and timers and feed the sans-IO
//! state machines of the `pua_xmpp` core. See ARCHITECTURE.md for the message flow.

pub mod backlog;
mod batch;
mod clock;
pub mod component;
pub mod config;
mod deadlines;
mod durable;
pub mod fault;
pub mod gateway;
mod gauges;
pub mod http;
pub mod idhash;
pub mod link_status;
pub mod links;
pub mod locator;
pub mod messages;
pub mod messenger;
pub mod notifier_shard;
pub mod registry;
pub mod shard;
pub mod store;
pub mod translator;
pub mod transport;
