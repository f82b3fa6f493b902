//! Overload control (issue 7): while the subscriber shards have more than `backlog::LIMIT`
//! NOTIFYs waiting, the SIP TCP readers leave new bytes in the socket; once the shards catch
//! up, reading resumes and nothing was lost. Its own test binary: the count is process-wide.

use actix::prelude::*;
use pua_xmpp_actors::backlog;
use pua_xmpp_actors::messages::SipRequestIn;
use pua_xmpp_actors::transport::{GetLocalAddr, SipTransport, TransportConfig};
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::mpsc;

struct Sink(mpsc::UnboundedSender<SipRequestIn>);

impl Actor for Sink {
    type Context = Context<Self>;
}

impl Handler<SipRequestIn> for Sink {
    type Result = ();
    fn handle(&mut self, msg: SipRequestIn, _: &mut Context<Self>) {
        let _ = self.0.send(msg);
    }
}

fn subscribe(call_id: &str) -> String {
    format!(
        "SUBSCRIBE sip:romeo*example.net@gw.example.com SIP/2.0\r\n\
         Via: SIP/2.0/TCP 127.0.0.1:5070;branch=z9hG4bK-{call_id}\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:juliet@example.com>;tag=jf1\r\n\
         To: <sip:romeo*example.net@gw.example.com>\r\n\
         Call-ID: {call_id}\r\n\
         CSeq: 7 SUBSCRIBE\r\n\
         Contact: <sip:juliet@127.0.0.1:5070>\r\n\
         Event: presence\r\n\
         Expires: 600\r\n\
         Content-Length: 0\r\n\r\n"
    )
}

#[actix_rt::test]
async fn tcp_reads_pause_while_the_shards_are_behind_and_resume_without_loss() {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let sink = Sink(tx).start().recipient();
    let cfg = TransportConfig::new("127.0.0.1:0".parse().expect("addr"));
    let transport = SipTransport::bind(cfg, sink).await.expect("bind");
    let local = transport.send(GetLocalAddr).await.expect("local addr");

    // Unpaused: a request is read and handed on.
    let mut s = TcpStream::connect(local).await.expect("connect");
    s.write_all(subscribe("before").as_bytes())
        .await
        .expect("write");
    let got = tokio::time::timeout(Duration::from_secs(2), rx.recv())
        .await
        .expect("read while not behind")
        .expect("request");
    assert_eq!(got.req.call_id, "before");

    // The shards fall behind: the next requests stay in the socket.
    let behind = usize::try_from(backlog::LIMIT).expect("limit") + 1;
    backlog::queued(behind);
    assert!(backlog::over());
    s.write_all(format!("{}{}", subscribe("during-1"), subscribe("during-2")).as_bytes())
        .await
        .expect("write");
    assert!(
        tokio::time::timeout(Duration::from_millis(300), rx.recv())
            .await
            .is_err(),
        "a request was read while the shards were behind"
    );

    // They catch up: both requests arrive, in order.
    backlog::handled(behind);
    assert!(!backlog::over());
    for want in ["during-1", "during-2"] {
        let got = tokio::time::timeout(Duration::from_secs(2), rx.recv())
            .await
            .expect("read after catching up")
            .expect("request");
        assert_eq!(got.req.call_id, want);
    }
    assert_eq!(backlog::waiting(), 0);
}
