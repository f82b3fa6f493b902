//! What several integration tests share: an actor that forwards every message it gets to a
//! channel, so a test can stand in for the registry (or any recipient) and read what the
//! actor under test sent.

use actix::prelude::*;
use tokio::sync::mpsc;

struct Sink<M: Send>(mpsc::UnboundedSender<M>);

impl<M: Send + Unpin + 'static> Actor for Sink<M> {
    type Context = Context<Self>;
}

impl<M> Handler<M> for Sink<M>
where
    M: Message<Result = ()> + Send + Unpin + 'static,
{
    type Result = ();
    fn handle(&mut self, msg: M, _: &mut Context<Self>) {
        let _ = self.0.send(msg);
    }
}

/// A recipient of `M` and the channel its messages arrive on.
pub fn sink<M>() -> (Recipient<M>, mpsc::UnboundedReceiver<M>)
where
    M: Message<Result = ()> + Send + Unpin + 'static,
{
    let (tx, rx) = mpsc::unbounded_channel();
    (Sink(tx).start().recipient(), rx)
}
