//! The transport's RFC 3263 hooks against real loopback sockets: out-of-dialog requests go
//! to the first of the located targets (`SetTargets`), and a target that refuses or times
//! out is reported (`TargetReport`) for the locator to move it to the back.

use actix::prelude::*;
use pua_xmpp::sip::parse::parse_message;
use pua_xmpp::sip::{Destination, Method, NameAddr, OutRequest, SipMessage, SipRequest};
use pua_xmpp_actors::messages::{
    SendRequest, SetTargets, SipRequestIn, TargetOutcome, TargetReport, TransactionOutcome,
    Transport, TxnResult,
};
use pua_xmpp_actors::transport::{GetLocalAddr, SipTransport, TransportConfig};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::mpsc;

mod common;
use common::sink;

const T1_MS: u64 = 20;

async fn start() -> (Addr<SipTransport>, SocketAddr) {
    let mut cfg = TransportConfig::new("127.0.0.1:0".parse().unwrap());
    cfg.t1 = Duration::from_millis(T1_MS);
    cfg.t2 = Duration::from_millis(4 * T1_MS);
    let (rcpt, _inbound) = sink::<SipRequestIn>();
    let addr = SipTransport::bind(cfg, rcpt).await.unwrap();
    let local = addr.send(GetLocalAddr).await.unwrap();
    (addr, local)
}

async fn next<T>(rx: &mut mpsc::UnboundedReceiver<T>, ms: u64) -> Option<T> {
    tokio::time::timeout(Duration::from_millis(ms), rx.recv())
        .await
        .ok()
        .flatten()
}

async fn recv_udp(sock: &UdpSocket, ms: u64) -> Option<String> {
    let mut buf = vec![0u8; 65536];
    let (n, _) = tokio::time::timeout(Duration::from_millis(ms), sock.recv_from(&mut buf))
        .await
        .ok()?
        .ok()?;
    Some(String::from_utf8_lossy(&buf[..n]).into_owned())
}

fn na(uri: &str, tag: Option<&str>) -> NameAddr {
    NameAddr {
        display: None,
        uri: uri.to_owned(),
        tag: tag.map(str::to_owned),
    }
}

fn subscribe(call_id: &str) -> OutRequest {
    OutRequest {
        method: Method::Subscribe,
        uri: "sip:bob@sip.test".to_owned(),
        route: vec![],
        from: na("sip:alice*xmpp.test@sip-xmpp.test", Some("gwtag1")),
        to: na("sip:bob@sip.test", None),
        call_id: call_id.to_owned(),
        cseq: 1,
        contact: Some("sip:alice*xmpp.test@127.0.0.1:5080".to_owned()),
        headers: vec![("Event", "presence".to_owned())],
        content_type: None,
        body: Vec::new(),
        destination: Destination::OutboundProxy,
    }
}

fn parse_request(text: &str) -> SipRequest {
    match parse_message(text.as_bytes()) {
        Ok(SipMessage::Request(r)) => r,
        other => panic!("not a request: {other:?}\n{text}"),
    }
}

async fn refusing_addr() -> SocketAddr {
    // Bind then drop a listener: its port now refuses connections.
    TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap()
}

/// A response to `req` as a peer would write it, copying its Via.
fn answer(req: &SipRequest, status: u16) -> String {
    let mut s = format!("SIP/2.0 {status} OK\r\n");
    for v in &req.via {
        s.push_str(&format!("Via: {v}\r\n"));
    }
    s.push_str(&format!(
        "From: <{}>;tag={}\r\nTo: <{}>;tag=ps\r\nCall-ID: {}\r\nCSeq: {} {}\r\n\
         Expires: 600\r\nContent-Length: 0\r\n\r\n",
        req.from.uri,
        req.from.tag.as_deref().unwrap_or(""),
        req.to.uri,
        req.call_id,
        req.cseq,
        req.method.as_str()
    ));
    s
}

#[actix_rt::test]
async fn a_refused_request_is_sent_again_to_the_next_target_and_the_refusal_reported() {
    let (gw, local) = start().await;
    let refused = refusing_addr().await;
    let live = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let live_addr = live.local_addr().unwrap();
    let (reports_to, mut reports) = sink::<TargetReport>();
    let (reply_to, mut outcomes) = sink::<TransactionOutcome>();
    gw.do_send(SetTargets {
        targets: vec![(refused, Transport::Tcp), (live_addr, Transport::Udp)],
        report_to: Some(reports_to),
    });
    gw.do_send(SendRequest {
        req: subscribe("c1"),
        key: 1,
        reply_to,
        transport: None,
    });
    // The first target refuses (TCP connect): reported, and no outcome for the TU yet.
    let rep = next(&mut reports, 2000).await.expect("report");
    assert_eq!((rep.addr, rep.outcome), (refused, TargetOutcome::Refused));
    // RFC 3263 §4.3: the same request as a new transaction (new branch) to the next
    // target, over that target's transport.
    let text = recv_udp(&live, 2000)
        .await
        .expect("request at the next target");
    let req = parse_request(&text);
    assert_eq!((req.call_id.as_str(), req.cseq), ("c1", 1));
    assert!(req.via[0].starts_with("SIP/2.0/UDP "), "{:?}", req.via);
    assert!(next(&mut outcomes, 50).await.is_none());
    live.send_to(answer(&req, 200).as_bytes(), local)
        .await
        .unwrap();
    let out = next(&mut outcomes, 2000).await.expect("outcome");
    assert_eq!(out.key, 1);
    match out.result {
        TxnResult::Response(r) => assert_eq!(r.status, 200),
        other => panic!("{other:?}"),
    }
    // The live target was not first: its answer is reported (it may have been blacklisted).
    let rep = next(&mut reports, 1000).await.expect("report");
    assert_eq!(
        (rep.addr, rep.outcome),
        (live_addr, TargetOutcome::Answered)
    );
}

#[actix_rt::test]
async fn with_every_target_tried_the_failure_reaches_the_tu() {
    let (gw, _) = start().await;
    let refused = refusing_addr().await;
    let silent = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let silent_addr = silent.local_addr().unwrap();
    let (reports_to, mut reports) = sink::<TargetReport>();
    let (reply_to, mut outcomes) = sink::<TransactionOutcome>();
    gw.do_send(SetTargets {
        targets: vec![(silent_addr, Transport::Udp), (refused, Transport::Tcp)],
        report_to: Some(reports_to),
    });
    gw.do_send(SendRequest {
        req: subscribe("c2"),
        key: 2,
        reply_to,
        transport: None,
    });
    let text = recv_udp(&silent, 2000)
        .await
        .expect("request at the first target");
    assert_eq!(parse_request(&text).call_id, "c2");
    // Unanswered: Timer F (64*T1); the timeout is reported and the request goes to the
    // second target, which refuses; then the TU gets the last failure.
    let rep = next(&mut reports, 64 * T1_MS + 2000).await.expect("report");
    assert_eq!(
        (rep.addr, rep.outcome),
        (silent_addr, TargetOutcome::Timeout)
    );
    let rep = next(&mut reports, 2000).await.expect("report");
    assert_eq!((rep.addr, rep.outcome), (refused, TargetOutcome::Refused));
    let out = next(&mut outcomes, 2000).await.expect("outcome");
    assert_eq!(out.key, 2);
    assert!(
        matches!(out.result, TxnResult::TransportError(_)),
        "{:?}",
        out.result
    );
    assert!(next(&mut outcomes, 100).await.is_none());
}

#[actix_rt::test]
async fn in_dialog_requests_are_not_failed_over() {
    let (gw, _) = start().await;
    let refused = refusing_addr().await;
    let live = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let (reports_to, mut reports) = sink::<TargetReport>();
    let (reply_to, mut outcomes) = sink::<TransactionOutcome>();
    gw.do_send(SetTargets {
        targets: vec![
            (refused, Transport::Tcp),
            (live.local_addr().unwrap(), Transport::Udp),
        ],
        report_to: Some(reports_to),
    });
    let mut req = subscribe("c3");
    req.destination = Destination::InDialog;
    req.uri = format!("sip:{refused};transport=tcp");
    gw.do_send(SendRequest {
        req,
        key: 3,
        reply_to,
        transport: None,
    });
    let out = next(&mut outcomes, 2000).await.expect("outcome");
    assert!(
        matches!(out.result, TxnResult::TransportError(_)),
        "{:?}",
        out.result
    );
    // Its remote target is one of the located servers: the refusal is still reported.
    let rep = next(&mut reports, 1000).await.expect("report");
    assert_eq!((rep.addr, rep.outcome), (refused, TargetOutcome::Refused));
    assert!(
        recv_udp(&live, 200).await.is_none(),
        "no failover in dialog"
    );
}

#[actix_rt::test]
async fn located_name_with_no_target_fails_requests_clearly() {
    let (gw, _) = start().await;
    let (reports_to, _reports) = sink::<TargetReport>();
    let (reply_to, mut outcomes) = sink::<TransactionOutcome>();
    gw.do_send(SetTargets {
        targets: vec![],
        report_to: Some(reports_to),
    });
    gw.do_send(SendRequest {
        req: subscribe("c3"),
        key: 3,
        reply_to,
        transport: None,
    });
    match next(&mut outcomes, 2000).await.expect("outcome").result {
        TxnResult::TransportError(e) => assert!(e.contains("no target located"), "{e}"),
        other => panic!("{other:?}"),
    }
}
