//! [`LinkStatus`]: whether the XEP-0114 link is up, for logs, `GET /health` and the registry
//! (which probes XMPP presentities again after a reconnect).

use crate::messages::{ComponentStatus, GetLinkStatus, StopLinkStatus};
use actix::prelude::*;

/// Tracks whether the component link is up (for logs and `GET /health`). Stopped first at
/// shutdown, so `/health` answers 503 "shutting down" from then on.
pub struct LinkStatus {
    pub online: bool,
    /// Also told every change, to probe XMPP presentities again after a reconnect.
    pub registry: Option<Recipient<ComponentStatus>>,
}

impl Handler<StopLinkStatus> for LinkStatus {
    type Result = ();
    fn handle(&mut self, _: StopLinkStatus, ctx: &mut Context<Self>) {
        ctx.stop();
    }
}

impl Actor for LinkStatus {
    type Context = Context<Self>;
}

impl Handler<GetLinkStatus> for LinkStatus {
    type Result = bool;
    fn handle(&mut self, _: GetLinkStatus, _: &mut Context<Self>) -> bool {
        self.online
    }
}

impl Handler<ComponentStatus> for LinkStatus {
    type Result = ();
    fn handle(&mut self, msg: ComponentStatus, _: &mut Context<Self>) {
        if msg.online != self.online {
            tracing::info!(online = msg.online, "XMPP component link");
            metrics::gauge!("pua_xmpp_component_up").set(if msg.online { 1.0 } else { 0.0 });
        }
        if let Some(registry) = &self.registry {
            registry.do_send(msg);
        }
        self.online = msg.online;
    }
}
