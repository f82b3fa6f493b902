//! pua-xmpp-bench: to be written.
fn main() {}
