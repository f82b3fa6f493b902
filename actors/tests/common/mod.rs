//! What several integration tests share: an actor that forwards every message it gets to a
//! channel, so a test can stand in for the registry (or any recipient) and read what the
//! actor under test sent; configuration files and environments for `Config::load_with_env`.
// Each test binary uses only some of these.
#![allow(dead_code)]

use actix::prelude::*;
use std::path::PathBuf;
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

/// `(name, value)` pairs as [`Config::load_with_env`] takes the environment.
///
/// [`Config::load_with_env`]: pua_xmpp_actors::config::Config::load_with_env
pub fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Writes `body` to `name` in this test binary's directory under the target's tmp dir.
pub fn file(name: &str, body: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(env!("CARGO_CRATE_NAME"));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(name);
    std::fs::write(&p, body).unwrap();
    p
}
