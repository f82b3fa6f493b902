//! SIP transport actor against scripted SIP peers on real loopback sockets (RFC 3261 §17
//! non-INVITE transactions, §18 transport).

use actix::prelude::*;
use pua_xmpp::sip::encode::encode_response;
use pua_xmpp::sip::parse::parse_message;
use pua_xmpp::sip::{
    Destination, Method, NameAddr, OutRequest, OutResponse, SipMessage, SipRequest,
};
use pua_xmpp_actors::messages::{
    SendRequest, SendResponse, SipRequestIn, Source, TransactionOutcome, Transport, TxnResult,
};
use pua_xmpp_actors::transport::{
    ConnInfo, GetConnections, GetLocalAddr, GetStats, SipTransport, TransportConfig,
};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::mpsc;

// ---- harness ------------------------------------------------------------------------------

/// Forwards every message it gets into a channel the test reads.
mod common;
use common::sink;

const T1_MS: u64 = 20;

fn config() -> TransportConfig {
    let mut cfg = TransportConfig::new("127.0.0.1:0".parse().unwrap());
    cfg.t1 = Duration::from_millis(T1_MS);
    cfg.t2 = Duration::from_millis(4 * T1_MS);
    cfg.t4 = Duration::from_millis(5 * T1_MS);
    cfg
}

struct Gw {
    addr: Addr<SipTransport>,
    local: SocketAddr,
    inbound: mpsc::UnboundedReceiver<SipRequestIn>,
}

async fn start(cfg: TransportConfig) -> Gw {
    let (rcpt, inbound) = sink::<SipRequestIn>();
    let addr = SipTransport::bind(cfg, rcpt).await.unwrap();
    let local = addr.send(GetLocalAddr).await.unwrap();
    Gw {
        addr,
        local,
        inbound,
    }
}

async fn next<T>(rx: &mut mpsc::UnboundedReceiver<T>, ms: u64) -> Option<T> {
    tokio::time::timeout(Duration::from_millis(ms), rx.recv())
        .await
        .ok()
        .flatten()
}

async fn recv_udp(sock: &UdpSocket, ms: u64) -> Option<(String, SocketAddr)> {
    let mut buf = vec![0u8; 65536];
    let (n, from) = tokio::time::timeout(Duration::from_millis(ms), sock.recv_from(&mut buf))
        .await
        .ok()?
        .ok()?;
    Some((String::from_utf8_lossy(&buf[..n]).into_owned(), from))
}

/// Reads one SIP message (headers + Content-Length body) from a TCP stream.
async fn read_tcp_message(s: &mut TcpStream, pending: &mut Vec<u8>) -> Option<String> {
    loop {
        if let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&pending[..end]).into_owned();
            let cl: usize = head
                .lines()
                .find_map(|l| {
                    let (n, v) = l.split_once(':')?;
                    n.trim()
                        .eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse().ok())?
                })
                .unwrap_or(0);
            if pending.len() >= end + 4 + cl {
                let msg: Vec<u8> = pending.drain(..end + 4 + cl).collect();
                return Some(String::from_utf8_lossy(&msg).into_owned());
            }
        }
        let mut buf = [0u8; 4096];
        let n = tokio::time::timeout(Duration::from_millis(2000), s.read(&mut buf))
            .await
            .ok()?
            .ok()?;
        if n == 0 {
            return None;
        }
        pending.extend_from_slice(&buf[..n]);
    }
}

fn subscribe_text(branch: &str, call_id: &str, sent_by: &str) -> String {
    format!(
        "SUBSCRIBE sip:romeo*example.net@gw.example.com SIP/2.0\r\n\
         Via: SIP/2.0/UDP {sent_by};branch={branch}\r\n\
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

fn na(uri: &str, tag: Option<&str>) -> NameAddr {
    NameAddr {
        display: None,
        uri: uri.to_owned(),
        tag: tag.map(str::to_owned),
    }
}

fn out_subscribe(destination: Destination, uri: &str, route: Vec<String>) -> OutRequest {
    OutRequest {
        method: Method::Subscribe,
        uri: uri.to_owned(),
        route,
        from: na("sip:romeo*example.net@gw.example.com", Some("gwtag1")),
        to: na("sip:juliet@example.com", None),
        call_id: "out-call-1".to_owned(),
        cseq: 1,
        contact: Some("sip:romeo*example.net@127.0.0.1:5080".to_owned()),
        headers: vec![
            ("Event", "presence".to_owned()),
            ("Expires", "600".to_owned()),
        ],
        content_type: None,
        body: Vec::new(),
        destination,
    }
}

fn parse_request(text: &str) -> SipRequest {
    match parse_message(text.as_bytes()) {
        Ok(SipMessage::Request(r)) => r,
        other => panic!("not a request: {other:?}\n{text}"),
    }
}

/// A response to `req` as a peer would write it, copying its Via.
fn answer(req: &SipRequest, status: u16, reason: &str, to_tag: &str) -> String {
    let mut s = format!("SIP/2.0 {status} {reason}\r\n");
    for v in &req.via {
        s.push_str(&format!("Via: {v}\r\n"));
    }
    s.push_str(&format!(
        "From: <{}>;tag={}\r\nTo: <{}>;tag={to_tag}\r\nCall-ID: {}\r\nCSeq: {} {}\r\n\
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

// ---- (a) inbound UDP server transaction -----------------------------------------------------

#[actix_rt::test]
async fn inbound_udp_subscribe_is_delivered_answered_and_retransmissions_absorbed() {
    let mut gw = start(config()).await;
    let peer = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let peer_addr = peer.local_addr().unwrap();
    let req_text = subscribe_text("z9hG4bKa1", "call-a@example.com", "127.0.0.1:5070");
    peer.send_to(req_text.as_bytes(), gw.local).await.unwrap();

    let got = next(&mut gw.inbound, 2000)
        .await
        .expect("request delivered");
    assert_eq!(got.req.method, Method::Subscribe);
    assert_eq!(got.req.uri, "sip:romeo*example.net@gw.example.com");
    assert_eq!(
        got.req.via,
        vec!["SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bKa1".to_owned()]
    );
    assert_eq!(got.req.from, na("sip:juliet@example.com", Some("jf1")));
    assert_eq!(got.req.to, na("sip:romeo*example.net@gw.example.com", None));
    assert_eq!(got.req.call_id, "call-a@example.com");
    assert_eq!(got.req.cseq, 7);
    assert_eq!(got.req.cseq_method, Method::Subscribe);
    assert_eq!(
        got.source,
        Source {
            transport: Transport::Udp,
            peer: peer_addr,
            conn_id: None
        }
    );

    // A retransmission before the gateway answered is absorbed.
    peer.send_to(req_text.as_bytes(), gw.local).await.unwrap();
    assert!(next(&mut gw.inbound, 150).await.is_none());
    assert!(
        recv_udp(&peer, 50).await.is_none(),
        "no 100 Trying for non-INVITE"
    );

    let resp = OutResponse::to_request(&got.req, 202, Some("gwtag")).with_header("Expires", "600");
    let mut expected = Vec::new();
    encode_response(&resp, &mut expected);
    let expected = String::from_utf8(expected).unwrap();
    assert!(expected.starts_with("SIP/2.0 202 Accepted\r\n"));
    gw.addr.do_send(SendResponse { txn: got.txn, resp });
    let (text, from) = recv_udp(&peer, 2000).await.expect("response");
    assert_eq!(text, expected, "the response goes out exactly as encoded");
    assert_eq!(from, gw.local, "sent from the listening socket");

    // A retransmission after the final response: the same response is replayed.
    peer.send_to(req_text.as_bytes(), gw.local).await.unwrap();
    let (replayed, _) = recv_udp(&peer, 2000).await.expect("replayed response");
    assert_eq!(replayed, expected);
    assert!(next(&mut gw.inbound, 100).await.is_none(), "delivered once");

    // A new transaction (new branch) is a new request.
    let req2 = subscribe_text("z9hG4bKa2", "call-a@example.com", "127.0.0.1:5070");
    peer.send_to(req2.as_bytes(), gw.local).await.unwrap();
    let got2 = next(&mut gw.inbound, 2000).await.expect("second request");
    assert_ne!(got2.txn, got.txn);
}

#[actix_rt::test]
async fn udp_server_transaction_is_dropped_after_timer_j() {
    let mut gw = start(config()).await;
    let peer = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let req_text = subscribe_text("z9hG4bKj1", "call-j@example.com", "127.0.0.1:5070");
    peer.send_to(req_text.as_bytes(), gw.local).await.unwrap();
    let got = next(&mut gw.inbound, 2000).await.unwrap();
    gw.addr.do_send(SendResponse {
        txn: got.txn,
        resp: OutResponse::to_request(&got.req, 200, Some("t")),
    });
    recv_udp(&peer, 2000).await.expect("response");
    let stats = gw.addr.send(GetStats).await.unwrap();
    assert_eq!(stats.server_txns, 1);
    // Timer J = 64*T1.
    tokio::time::sleep(Duration::from_millis(64 * T1_MS + 200)).await;
    let stats = gw.addr.send(GetStats).await.unwrap();
    assert_eq!(stats.server_txns, 0);
    // A response for the expired transaction is dropped (logged), not sent.
    gw.addr.do_send(SendResponse {
        txn: got.txn,
        resp: OutResponse::to_request(&got.req, 200, Some("t")),
    });
    assert!(recv_udp(&peer, 100).await.is_none());
}

#[actix_rt::test]
async fn unanswered_server_transaction_is_dropped_after_64_t1() {
    let mut gw = start(config()).await;
    let peer = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let req_text = subscribe_text("z9hG4bKu1", "call-u@example.com", "127.0.0.1:5070");
    peer.send_to(req_text.as_bytes(), gw.local).await.unwrap();
    let got = next(&mut gw.inbound, 2000).await.unwrap();
    assert_eq!(gw.addr.send(GetStats).await.unwrap().server_txns, 1);
    tokio::time::sleep(Duration::from_millis(64 * T1_MS + 200)).await;
    assert_eq!(gw.addr.send(GetStats).await.unwrap().server_txns, 0);
    // The same request again is then a new transaction.
    peer.send_to(req_text.as_bytes(), gw.local).await.unwrap();
    let again = next(&mut gw.inbound, 2000).await.expect("delivered again");
    assert_ne!(again.txn, got.txn);
}

// ---- (b) outbound UDP client transaction ----------------------------------------------------

#[actix_rt::test]
async fn outbound_udp_request_gets_branch_and_final_response_reaches_reply_to() {
    let peer = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut cfg = config();
    cfg.outbound_proxy = Some(peer.local_addr().unwrap());
    let gw = start(cfg).await;
    let (reply_to, mut outcomes) = sink::<TransactionOutcome>();
    gw.addr.do_send(SendRequest {
        req: out_subscribe(Destination::OutboundProxy, "sip:juliet@example.com", vec![]),
        key: 41,
        reply_to,
        transport: None,
    });
    let (text, from) = recv_udp(&peer, 2000).await.expect("request");
    assert_eq!(from, gw.local, "requests leave from the listening socket");
    let req = parse_request(&text);
    assert_eq!(req.via.len(), 1);
    let via_prefix = format!("SIP/2.0/UDP {};branch=z9hG4bK", gw.local);
    assert!(req.via[0].starts_with(&via_prefix), "{}", req.via[0]);
    assert!(req.via[0].ends_with(";rport"), "{}", req.via[0]);
    assert_eq!(req.call_id, "out-call-1");
    assert_eq!(req.method, Method::Subscribe);

    // 100 Trying is swallowed, 200 reported once, a retransmitted 200 ignored.
    peer.send_to(answer(&req, 100, "Trying", "x").as_bytes(), gw.local)
        .await
        .unwrap();
    assert!(next(&mut outcomes, 100).await.is_none());
    let ok = answer(&req, 200, "OK", "ps-tag-9");
    peer.send_to(ok.as_bytes(), gw.local).await.unwrap();
    let out = next(&mut outcomes, 2000).await.expect("outcome");
    assert_eq!(out.key, 41);
    match out.result {
        TxnResult::Response(r) => {
            assert_eq!(r.status, 200);
            assert_eq!(r.to.tag.as_deref(), Some("ps-tag-9"));
            assert_eq!(r.call_id, "out-call-1");
        }
        other => panic!("expected a response, got {other:?}"),
    }
    peer.send_to(ok.as_bytes(), gw.local).await.unwrap();
    assert!(next(&mut outcomes, 150).await.is_none());
    // No retransmission after the final response.
    while recv_udp(&peer, 10).await.is_some() {}
    assert!(recv_udp(&peer, 6 * T1_MS).await.is_none());
}

#[actix_rt::test]
async fn response_with_other_method_or_foreign_branch_is_ignored() {
    let peer = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut cfg = config();
    cfg.outbound_proxy = Some(peer.local_addr().unwrap());
    let gw = start(cfg).await;
    let (reply_to, mut outcomes) = sink::<TransactionOutcome>();
    gw.addr.do_send(SendRequest {
        req: out_subscribe(Destination::OutboundProxy, "sip:juliet@example.com", vec![]),
        key: 5,
        reply_to,
        transport: None,
    });
    let (text, _) = recv_udp(&peer, 2000).await.unwrap();
    let req = parse_request(&text);
    let wrong_method = answer(&req, 200, "OK", "t").replace("CSeq: 1 SUBSCRIBE", "CSeq: 1 NOTIFY");
    peer.send_to(wrong_method.as_bytes(), gw.local)
        .await
        .unwrap();
    let foreign = answer(&req, 200, "OK", "t").replace(";branch=z9hG4bK", ";branch=z9hG4bKx");
    peer.send_to(foreign.as_bytes(), gw.local).await.unwrap();
    assert!(next(&mut outcomes, 200).await.is_none());
}

// ---- (c) retransmissions and Timer F --------------------------------------------------------

#[actix_rt::test]
async fn unanswered_udp_request_is_retransmitted_with_timer_e_and_times_out_at_timer_f() {
    let peer = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut cfg = config();
    cfg.outbound_proxy = Some(peer.local_addr().unwrap());
    let gw = start(cfg).await;
    let (reply_to, mut outcomes) = sink::<TransactionOutcome>();
    let sent_at = Instant::now();
    gw.addr.do_send(SendRequest {
        req: out_subscribe(Destination::OutboundProxy, "sip:juliet@example.com", vec![]),
        key: 7,
        reply_to,
        transport: None,
    });
    let mut arrivals = Vec::new();
    let mut first = None;
    while arrivals.len() < 5 {
        let (text, _) = recv_udp(&peer, 2000).await.expect("(re)transmission");
        arrivals.push(Instant::now());
        match &first {
            None => first = Some(text),
            Some(f) => assert_eq!(&text, f, "retransmissions are identical"),
        }
    }
    let gaps: Vec<u64> = arrivals
        .windows(2)
        .map(|w| (w[1] - w[0]).as_millis() as u64)
        .collect();
    // T1, 2*T1, 4*T1 = T2, then capped at T2.
    let nominal = [T1_MS, 2 * T1_MS, 4 * T1_MS, 4 * T1_MS];
    for (gap, nom) in gaps.iter().zip(nominal) {
        assert!(
            *gap + 5 >= nom && *gap <= nom + 60,
            "gaps {gaps:?}, expected about {nominal:?}"
        );
    }
    let out = next(&mut outcomes, 64 * T1_MS + 2000)
        .await
        .expect("timeout outcome");
    let elapsed = sent_at.elapsed().as_millis() as u64;
    assert_eq!(out.key, 7);
    assert!(matches!(out.result, TxnResult::Timeout), "{:?}", out.result);
    assert!(
        (64 * T1_MS..64 * T1_MS + 500).contains(&elapsed),
        "timed out after {elapsed} ms"
    );
    // Retransmissions stop with the transaction.
    while recv_udp(&peer, 5).await.is_some() {}
    assert!(recv_udp(&peer, 8 * T1_MS).await.is_none());
    assert_eq!(gw.addr.send(GetStats).await.unwrap().client_txns, 0);
}

#[actix_rt::test]
async fn provisional_response_slows_retransmissions_to_t2() {
    let peer = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut cfg = config();
    cfg.outbound_proxy = Some(peer.local_addr().unwrap());
    let gw = start(cfg).await;
    let (reply_to, _outcomes) = sink::<TransactionOutcome>();
    gw.addr.do_send(SendRequest {
        req: out_subscribe(Destination::OutboundProxy, "sip:juliet@example.com", vec![]),
        key: 8,
        reply_to,
        transport: None,
    });
    let (text, _) = recv_udp(&peer, 2000).await.unwrap();
    let req = parse_request(&text);
    peer.send_to(answer(&req, 100, "Trying", "x").as_bytes(), gw.local)
        .await
        .unwrap();
    let t0 = Instant::now();
    let _ = recv_udp(&peer, 2000)
        .await
        .expect("retransmission in Proceeding");
    let gap = t0.elapsed().as_millis() as u64;
    assert!(
        gap + 5 >= 4 * T1_MS,
        "retransmitted after {gap} ms, expected T2"
    );
}

// ---- (d) TCP ---------------------------------------------------------------------------------

#[actix_rt::test]
async fn tcp_inbound_framing_two_in_one_write_and_one_split_in_three() {
    let mut gw = start(config()).await;
    let mut s = TcpStream::connect(gw.local).await.unwrap();
    let my_addr = s.local_addr().unwrap();
    let r1 = subscribe_text("z9hG4bKt1", "tcp-1", "127.0.0.1:5070").replace("/UDP", "/TCP");
    let r2 = subscribe_text("z9hG4bKt2", "tcp-2", "127.0.0.1:5070").replace("/UDP", "/TCP");
    let r3 = subscribe_text("z9hG4bKt3", "tcp-3", "127.0.0.1:5070").replace("/UDP", "/TCP");
    s.write_all(format!("{r1}{r2}").as_bytes()).await.unwrap();
    let b = r3.as_bytes();
    for part in [&b[..10], &b[10..120], &b[120..]] {
        s.write_all(part).await.unwrap();
        s.flush().await.unwrap();
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    let mut got = Vec::new();
    for _ in 0..3 {
        got.push(next(&mut gw.inbound, 2000).await.expect("request over TCP"));
    }
    let ids: Vec<&str> = got.iter().map(|g| g.req.call_id.as_str()).collect();
    assert_eq!(ids, ["tcp-1", "tcp-2", "tcp-3"]);
    for g in &got {
        assert_eq!(g.source.transport, Transport::Tcp);
        assert_eq!(g.source.peer, my_addr);
        assert!(g.source.conn_id.is_some());
    }
    // The response goes back on the same connection.
    let resp = OutResponse::to_request(&got[1].req, 200, Some("gt"));
    let mut expected = Vec::new();
    encode_response(&resp, &mut expected);
    gw.addr.do_send(SendResponse {
        txn: got[1].txn,
        resp,
    });
    let mut pending = Vec::new();
    let text = read_tcp_message(&mut s, &mut pending)
        .await
        .expect("response");
    assert_eq!(text.as_bytes(), expected.as_slice());

    // TCP has no Timer J: the answered transaction is gone at once, the two others remain.
    assert_eq!(gw.addr.send(GetStats).await.unwrap().server_txns, 2);

    let conns = gw.addr.send(GetConnections).await.unwrap();
    assert_eq!(
        conns,
        vec![ConnInfo {
            conn_id: got[0].source.conn_id.unwrap(),
            peer: my_addr,
            transport: Transport::Tcp,
            outbound: false,
            nodelay: true,
        }]
    );
}

/// Issue 7: with a batch recipient, the requests of one TCP read reach the registry as ONE
/// `SipRequestsIn`, in order; a lone request still comes as a plain `SipRequestIn`.
#[actix_rt::test]
async fn tcp_requests_of_one_read_are_handed_over_as_one_batch() {
    let (single, mut singles) = sink::<SipRequestIn>();
    let (batch, mut batches) = sink::<pua_xmpp_actors::messages::SipRequestsIn>();
    let addr = SipTransport::bind_batched(config(), single, Some(batch))
        .await
        .unwrap();
    let local = addr.send(GetLocalAddr).await.unwrap();
    let mut s = TcpStream::connect(local).await.unwrap();
    let texts: Vec<String> = (1..=3)
        .map(|i| {
            subscribe_text(
                &format!("z9hG4bKb{i}"),
                &format!("batch-{i}"),
                "127.0.0.1:5070",
            )
            .replace("/UDP", "/TCP")
        })
        .collect();
    s.write_all(texts.concat().as_bytes()).await.unwrap();
    let got = next(&mut batches, 2000).await.expect("one batch");
    let ids: Vec<&str> = got.0.iter().map(|g| g.req.call_id.as_str()).collect();
    assert_eq!(ids, ["batch-1", "batch-2", "batch-3"]);
    assert!(
        next(&mut singles, 150).await.is_none(),
        "nothing sent one by one"
    );
    let lone = subscribe_text("z9hG4bKb4", "batch-4", "127.0.0.1:5070").replace("/UDP", "/TCP");
    s.write_all(lone.as_bytes()).await.unwrap();
    let one = next(&mut singles, 2000).await.expect("a lone request");
    assert_eq!(one.req.call_id, "batch-4");
    assert!(next(&mut batches, 150).await.is_none());
}

#[actix_rt::test]
async fn tcp_framing_error_closes_the_connection_and_serving_continues() {
    let mut gw = start(config()).await;
    let mut s = TcpStream::connect(gw.local).await.unwrap();
    // No Content-Length on a stream: the message cannot be framed.
    let bad =
        subscribe_text("z9hG4bKb1", "bad", "127.0.0.1:5070").replace("Content-Length: 0\r\n", "");
    s.write_all(bad.as_bytes()).await.unwrap();
    let mut pending = Vec::new();
    // Whatever is written back (a 400 if the framer could answer), the connection ends.
    while read_tcp_message(&mut s, &mut pending).await.is_some() {}
    assert!(next(&mut gw.inbound, 100).await.is_none());
    let mut s2 = TcpStream::connect(gw.local).await.unwrap();
    let good = subscribe_text("z9hG4bKb2", "good", "127.0.0.1:5070");
    s2.write_all(good.as_bytes()).await.unwrap();
    let got = next(&mut gw.inbound, 2000).await.expect("still serving");
    assert_eq!(got.req.call_id, "good");
}

#[actix_rt::test]
async fn tcp_outbound_connection_has_nodelay_is_reused_and_carries_the_response() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut cfg = config();
    cfg.outbound_proxy = Some(listener.local_addr().unwrap());
    cfg.request_transport = Transport::Tcp;
    let gw = start(cfg).await;
    let (reply_to, mut outcomes) = sink::<TransactionOutcome>();
    gw.addr.do_send(SendRequest {
        req: out_subscribe(Destination::OutboundProxy, "sip:juliet@example.com", vec![]),
        key: 1,
        reply_to: reply_to.clone(),
        transport: None,
    });
    let (mut s, _) = tokio::time::timeout(Duration::from_secs(2), listener.accept())
        .await
        .unwrap()
        .unwrap();
    let mut pending = Vec::new();
    let text = read_tcp_message(&mut s, &mut pending)
        .await
        .expect("request");
    let req = parse_request(&text);
    let via_prefix = format!("SIP/2.0/TCP {};branch=z9hG4bK", gw.local);
    assert!(req.via[0].starts_with(&via_prefix), "{}", req.via[0]);
    s.write_all(answer(&req, 200, "OK", "tt").as_bytes())
        .await
        .unwrap();
    let out = next(&mut outcomes, 2000).await.expect("outcome");
    assert_eq!(out.key, 1);
    match out.result {
        TxnResult::Response(r) => assert_eq!((r.status, r.to.tag.as_deref()), (200, Some("tt"))),
        other => panic!("{other:?}"),
    }

    // A second request reuses the connection.
    let mut second = out_subscribe(Destination::OutboundProxy, "sip:juliet@example.com", vec![]);
    second.cseq = 2;
    gw.addr.do_send(SendRequest {
        req: second,
        key: 2,
        reply_to,
        transport: None,
    });
    let text = read_tcp_message(&mut s, &mut pending)
        .await
        .expect("second request");
    assert_eq!(parse_request(&text).cseq, 2);
    assert!(
        tokio::time::timeout(Duration::from_millis(100), listener.accept())
            .await
            .is_err(),
        "no second connection"
    );
    let conns = gw.addr.send(GetConnections).await.unwrap();
    assert_eq!(conns.len(), 1);
    assert_eq!(conns[0].peer, listener.local_addr().unwrap());
    assert!(conns[0].outbound);
    assert!(conns[0].nodelay);

    // TCP: no retransmission; the connection closing fails the open transaction.
    drop(s);
    let out = next(&mut outcomes, 2000)
        .await
        .expect("outcome after close");
    assert_eq!(out.key, 2);
    assert!(
        matches!(out.result, TxnResult::TransportError(_)),
        "{:?}",
        out.result
    );
}

#[actix_rt::test]
async fn tcp_connect_failure_is_a_transport_error() {
    // Bind then drop a listener: its port now refuses connections.
    let port = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let mut cfg = config();
    cfg.outbound_proxy = Some(port);
    cfg.request_transport = Transport::Tcp;
    let gw = start(cfg).await;
    let (reply_to, mut outcomes) = sink::<TransactionOutcome>();
    gw.addr.do_send(SendRequest {
        req: out_subscribe(Destination::OutboundProxy, "sip:juliet@example.com", vec![]),
        key: 3,
        reply_to,
        transport: None,
    });
    let out = next(&mut outcomes, 2000).await.expect("outcome");
    assert_eq!(out.key, 3);
    assert!(
        matches!(out.result, TxnResult::TransportError(_)),
        "{:?}",
        out.result
    );
}

// ---- (e) malformed input -------------------------------------------------------------------

#[actix_rt::test]
async fn garbage_is_dropped_and_request_without_call_id_gets_400_naming_it() {
    let mut gw = start(config()).await;
    let peer = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    for junk in [
        &b"hello\x00\xff\xfe"[..],
        b"\r\n\r\n",
        b"SIP/2.0 200",
        b"INVITE\r\n\r\n",
    ] {
        peer.send_to(junk, gw.local).await.unwrap();
    }
    let no_call_id =
        subscribe_text("z9hG4bKe1", "x", "127.0.0.1:5070").replace("Call-ID: x\r\n", "");
    peer.send_to(no_call_id.as_bytes(), gw.local).await.unwrap();
    let (text, _) = recv_udp(&peer, 2000).await.expect("400");
    let status_line = text.lines().next().unwrap_or("");
    assert!(status_line.starts_with("SIP/2.0 400 "), "{status_line}");
    assert!(status_line.contains("Call-ID"), "{status_line}");
    assert!(
        text.contains("Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bKe1\r\n"),
        "{text}"
    );
    assert!(next(&mut gw.inbound, 100).await.is_none());

    // Still serving.
    let good = subscribe_text("z9hG4bKe2", "after-junk", "127.0.0.1:5070");
    peer.send_to(good.as_bytes(), gw.local).await.unwrap();
    let got = next(&mut gw.inbound, 2000).await.expect("still serving");
    assert_eq!(got.req.call_id, "after-junk");
}

#[actix_rt::test]
async fn ack_and_unknown_responses_are_dropped() {
    let mut gw = start(config()).await;
    let peer = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let ack = subscribe_text("z9hG4bKk1", "ack", "127.0.0.1:5070")
        .replace("SUBSCRIBE sip:", "ACK sip:")
        .replace("7 SUBSCRIBE", "7 ACK");
    peer.send_to(ack.as_bytes(), gw.local).await.unwrap();
    let req = parse_request(&subscribe_text("z9hG4bKk2", "resp", "127.0.0.1:5070"));
    peer.send_to(answer(&req, 200, "OK", "z").as_bytes(), gw.local)
        .await
        .unwrap();
    assert!(next(&mut gw.inbound, 150).await.is_none());
    assert!(recv_udp(&peer, 50).await.is_none());
}

// ---- (f) destinations ----------------------------------------------------------------------

#[actix_rt::test]
async fn in_dialog_request_follows_the_first_route() {
    let peer = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let port = peer.local_addr().unwrap().port();
    let gw = start(config()).await; // no outbound proxy
    let (reply_to, _outcomes) = sink::<TransactionOutcome>();
    let route = format!("<sip:127.0.0.1:{port};lr>");
    gw.addr.do_send(SendRequest {
        req: out_subscribe(
            Destination::InDialog,
            "sip:juliet@127.0.0.1:9;transport=udp",
            vec![route],
        ),
        key: 9,
        reply_to,
        transport: None,
    });
    let (text, _) = recv_udp(&peer, 2000).await.expect("request at the Route");
    let req = parse_request(&text);
    assert_eq!(req.uri, "sip:juliet@127.0.0.1:9;transport=udp");
    assert_eq!(req.call_id, "out-call-1");
}

/// IPv6 (issue 16): on [::1] the Via sent-by is the bracketed `[::1]:port`, an IPv6
/// Record-Route (`<sip:[::1]:port;lr>`) is followed, and the peer's response over UDP/IPv6
/// ends the transaction; an inbound request from [::1] is answered there.
#[actix_rt::test]
async fn ipv6_via_route_and_response_on_loopback() {
    let Ok(peer) = UdpSocket::bind("[::1]:0").await else {
        return; // no IPv6 on this host
    };
    let peer_addr = peer.local_addr().unwrap();
    let port = peer_addr.port();
    let mut cfg = config();
    cfg.listen = "[::1]:0".parse().unwrap();
    let mut gw = start(cfg).await;
    assert!(gw.local.is_ipv6());
    let (reply_to, mut outcomes) = sink::<TransactionOutcome>();
    gw.addr.do_send(SendRequest {
        req: out_subscribe(
            Destination::InDialog,
            "sip:juliet@[::1]:9",
            vec![format!("<sip:[::1]:{port};r2=on;lr>")],
        ),
        key: 11,
        reply_to,
        transport: None,
    });
    let (text, from) = recv_udp(&peer, 2000)
        .await
        .expect("request at the IPv6 Route");
    assert_eq!(from, gw.local);
    let req = parse_request(&text);
    let via = format!("SIP/2.0/UDP [::1]:{};branch=", gw.local.port());
    assert!(req.via[0].starts_with(&via), "{}", req.via[0]);
    assert!(
        text.starts_with("SUBSCRIBE sip:juliet@[::1]:9 SIP/2.0\r\n"),
        "{text}"
    );
    assert!(
        text.contains(&format!("Route: <sip:[::1]:{port};r2=on;lr>\r\n")),
        "{text}"
    );
    peer.send_to(answer(&req, 200, "OK", "v6").as_bytes(), from)
        .await
        .unwrap();
    let out = next(&mut outcomes, 2000).await.expect("outcome");
    match out.result {
        TxnResult::Response(r) => assert_eq!(r.status, 200),
        other => panic!("expected 200, got {other:?}"),
    }
    // inbound: a SUBSCRIBE from [::1] with a bracketed Via is delivered and answered there
    let sent_by = format!("[::1]:{port}");
    let inbound = subscribe_text("z9hG4bKv6in", "v6-in@example.com", &sent_by);
    peer.send_to(inbound.as_bytes(), gw.local).await.unwrap();
    let got = next(&mut gw.inbound, 2000).await.expect("inbound request");
    assert_eq!(got.source.peer, peer_addr);
    gw.addr.do_send(SendResponse {
        txn: got.txn,
        resp: OutResponse::to_request(&got.req, 200, None),
    });
    let (resp, _) = recv_udp(&peer, 2000).await.expect("200 over IPv6");
    assert!(resp.starts_with("SIP/2.0 200 OK\r\n"), "{resp}");
    assert!(
        resp.contains(&format!("Via: SIP/2.0/UDP [::1]:{port};branch=z9hG4bKv6in")),
        "{resp}"
    );
}

#[actix_rt::test]
async fn in_dialog_request_without_route_goes_to_the_request_uri() {
    let peer = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let port = peer.local_addr().unwrap().port();
    let gw = start(config()).await;
    let (reply_to, _outcomes) = sink::<TransactionOutcome>();
    gw.addr.do_send(SendRequest {
        req: out_subscribe(
            Destination::InDialog,
            &format!("sip:juliet@localhost:{port}"),
            vec![],
        ),
        key: 10,
        reply_to,
        transport: None,
    });
    let (text, _) = recv_udp(&peer, 2000)
        .await
        .expect("request at the Request-URI");
    assert_eq!(parse_request(&text).call_id, "out-call-1");
}

#[actix_rt::test]
async fn outbound_proxy_destination_without_proxy_is_a_transport_error() {
    let gw = start(config()).await;
    let (reply_to, mut outcomes) = sink::<TransactionOutcome>();
    gw.addr.do_send(SendRequest {
        req: out_subscribe(Destination::OutboundProxy, "sip:juliet@example.com", vec![]),
        key: 11,
        reply_to,
        transport: None,
    });
    let out = next(&mut outcomes, 2000).await.expect("outcome");
    assert_eq!(out.key, 11);
    match out.result {
        TxnResult::TransportError(e) => {
            assert_eq!(e, "no outbound proxy configured (sip.server_address)")
        }
        other => panic!("{other:?}"),
    }
}

#[actix_rt::test]
async fn tcp_burst_of_two_thousand_requests_is_delivered_and_answered_in_order() {
    let mut gw = start(config()).await;
    let mut s = TcpStream::connect(gw.local).await.unwrap();
    let mut burst = String::new();
    for i in 0..2000 {
        burst.push_str(
            &subscribe_text(
                &format!("z9hG4bKburst{i}"),
                &format!("b{i}"),
                "127.0.0.1:5070",
            )
            .replace("/UDP", "/TCP"),
        );
    }
    let (mut rd, mut wr) = s.split();
    let write = async {
        wr.write_all(burst.as_bytes()).await.unwrap();
    };
    let deliver = async {
        for i in 0..2000 {
            let got = next(&mut gw.inbound, 5000).await.expect("burst request");
            assert_eq!(got.req.call_id, format!("b{i}"));
            gw.addr.do_send(SendResponse {
                txn: got.txn,
                resp: OutResponse::to_request(&got.req, 200, Some("t")),
            });
        }
    };
    let read = async {
        let mut pending = Vec::new();
        let mut count = 0;
        let mut buf = vec![0u8; 65536];
        while count < 2000 {
            let n = tokio::time::timeout(Duration::from_secs(5), rd.read(&mut buf))
                .await
                .expect("responses keep coming")
                .unwrap();
            assert!(n > 0, "connection closed after {count} responses");
            pending.extend_from_slice(&buf[..n]);
            while let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&pending[..end]).into_owned();
                assert!(head.contains(&format!("Call-ID: b{count}\r\n")), "{head}");
                pending.drain(..end + 4); // responses have no body
                count += 1;
            }
        }
    };
    tokio::join!(write, deliver, read);
    assert_eq!(gw.addr.send(GetStats).await.unwrap().server_txns, 0);
}

// ---- oversize messages: 413 from the head alone --------------------------------------------

/// `subscribe_text` with a body of `body_len` octets (and its Content-Length).
fn oversize_subscribe(branch: &str, call_id: &str, body_len: usize) -> String {
    subscribe_text(branch, call_id, "127.0.0.1:5070").replace(
        "Content-Length: 0\r\n\r\n",
        &format!(
            "Content-Type: application/pidf+xml\r\nContent-Length: {body_len}\r\n\r\n{}",
            "x".repeat(body_len)
        ),
    )
}

#[actix_rt::test]
async fn oversize_udp_request_gets_413_from_its_head_and_serving_continues() {
    // 70 KB cannot travel in one IPv4 UDP datagram (65507 octets at most), so: a 60 KB limit
    // and a 64,000-octet datagram, which the receive buffer (limit + 1) also cuts short.
    let mut cfg = config();
    cfg.max_message = 60 * 1024;
    let mut gw = start(cfg).await;
    let peer = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let big = oversize_subscribe("z9hG4bKbig1", "big@example.com", 64_000 - 400);
    assert!(big.len() > 63_000 && big.len() < 65_507, "{}", big.len());
    peer.send_to(big.as_bytes(), gw.local).await.unwrap();
    let (text, from) = recv_udp(&peer, 2000).await.expect("413");
    assert_eq!(from, gw.local);
    let resp = match parse_message(text.as_bytes()) {
        Ok(SipMessage::Response(r)) => r,
        other => panic!("not a response: {other:?}\n{text}"),
    };
    assert_eq!(
        (resp.status, resp.reason.as_str()),
        (413, "Request Entity Too Large")
    );
    assert_eq!(resp.call_id, "big@example.com");
    assert_eq!((resp.cseq, &resp.cseq_method), (7, &Method::Subscribe));
    assert_eq!(resp.via, ["SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bKbig1"]);
    assert!(resp.body.is_empty());
    // Exactly one answer, and nothing for the gateway.
    assert_eq!(recv_udp(&peer, 200).await, None);
    assert!(next(&mut gw.inbound, 100).await.is_none());

    let good = subscribe_text("z9hG4bKbig2", "after-big", "127.0.0.1:5070");
    peer.send_to(good.as_bytes(), gw.local).await.unwrap();
    let got = next(&mut gw.inbound, 2000).await.expect("still serving");
    assert_eq!(got.req.call_id, "after-big");
}

#[actix_rt::test]
async fn oversize_udp_response_ack_or_garbage_is_dropped_without_answer() {
    let mut cfg = config();
    cfg.max_message = 4096;
    let mut gw = start(cfg).await;
    let peer = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let body = "x".repeat(6000);
    let response = format!(
        "SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bKr1\r\n\
         From: <sip:a@example.com>;tag=1\r\nTo: <sip:b@example.com>;tag=2\r\n\
         Call-ID: resp\r\nCSeq: 1 SUBSCRIBE\r\nContent-Length: 6000\r\n\r\n{body}"
    );
    let ack = oversize_subscribe("z9hG4bKr2", "ack", 6000)
        .replace("SUBSCRIBE sip:", "ACK sip:")
        .replace("CSeq: 7 SUBSCRIBE", "CSeq: 7 ACK");
    let garbage = format!("hello there\r\n\r\n{body}");
    for d in [response, ack, garbage] {
        peer.send_to(d.as_bytes(), gw.local).await.unwrap();
    }
    assert_eq!(recv_udp(&peer, 300).await, None);
    assert!(next(&mut gw.inbound, 100).await.is_none());
}

#[actix_rt::test]
async fn oversize_tcp_request_gets_413_then_the_connection_closes() {
    let mut cfg = config();
    cfg.max_message = 16 * 1024;
    let mut gw = start(cfg).await;
    let mut s = TcpStream::connect(gw.local).await.unwrap();
    // A normal request first: the 413 must come from the second message's head.
    let first = subscribe_text("z9hG4bKt0", "tcp-first", "127.0.0.1:5070");
    s.write_all(first.as_bytes()).await.unwrap();
    let got = next(&mut gw.inbound, 2000).await.expect("first request");
    assert_eq!(got.req.call_id, "tcp-first");
    // It declares 70 KB but only the head and the start of the body are sent: the framer
    // decides from Content-Length, and unread data at close would make the kernel reset the
    // connection (the 413 could be lost to the RST).
    let big = oversize_subscribe("z9hG4bKt1", "tcp-big", 70 * 1024);
    let cut = big.find("\r\n\r\n").unwrap() + 4 + 100;
    s.write_all(&big.as_bytes()[..cut]).await.unwrap();
    let mut pending = Vec::new();
    let text = read_tcp_message(&mut s, &mut pending).await.expect("413");
    let resp = match parse_message(text.as_bytes()) {
        Ok(SipMessage::Response(r)) => r,
        other => panic!("not a response: {other:?}\n{text}"),
    };
    assert_eq!(resp.status, 413);
    assert_eq!(resp.call_id, "tcp-big");
    assert_eq!(resp.via, ["SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bKt1"]);
    assert_eq!(read_tcp_message(&mut s, &mut pending).await, None);
    assert!(next(&mut gw.inbound, 100).await.is_none());
}

// ---- (c) completed UDP server transactions: compact records, exact replays (RFC 3261 §17.2.2)

fn notify_text(branch: &str, call_id: &str) -> String {
    format!(
        "NOTIFY sip:romeo*example.net@127.0.0.1:5080 SIP/2.0\r\n\
         Via: SIP/2.0/UDP 127.0.0.1:5070;branch={branch};rport\r\n\
         Max-Forwards: 70\r\n\
         From: \"Juliet\" <sip:juliet@example.com>;tag=jf1\r\n\
         To: <sip:romeo*example.net@gw.example.com>;tag=gw1\r\n\
         Call-ID: {call_id}\r\n\
         CSeq: 8 NOTIFY\r\n\
         Event: presence\r\n\
         Subscription-State: active;expires=600\r\n\
         Content-Length: 0\r\n\r\n"
    )
}

/// Sends `req_text`, answers it with `resp(req)`, then retransmits it `retx` times and returns
/// the first response and every replay.
async fn answer_and_retransmit(
    gw: &mut Gw,
    peer: &UdpSocket,
    req_text: &str,
    resp: impl FnOnce(&SipRequest) -> OutResponse,
    retx: usize,
) -> (String, Vec<String>) {
    peer.send_to(req_text.as_bytes(), gw.local).await.unwrap();
    let got = next(&mut gw.inbound, 2000)
        .await
        .expect("request delivered");
    gw.addr.do_send(SendResponse {
        txn: got.txn,
        resp: resp(&got.req),
    });
    let (first, _) = recv_udp(peer, 2000).await.expect("response");
    let mut replays = Vec::new();
    for _ in 0..retx {
        peer.send_to(req_text.as_bytes(), gw.local).await.unwrap();
        let (r, from) = recv_udp(peer, 2000).await.expect("replayed response");
        assert_eq!(from, gw.local);
        replays.push(r);
    }
    assert!(next(&mut gw.inbound, 100).await.is_none(), "delivered once");
    (first, replays)
}

#[actix_rt::test]
async fn retransmitted_notify_after_200_gets_the_identical_200_rebuilt_without_keeping_it() {
    let mut gw = start(config()).await;
    let peer = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let req_text = notify_text("z9hG4bKn1", "call-n@example.com");
    let (first, replays) = answer_and_retransmit(
        &mut gw,
        &peer,
        &req_text,
        |req| OutResponse::to_request(req, 200, None),
        3,
    )
    .await;
    let expected = "SIP/2.0 200 OK\r\n\
         Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bKn1;rport\r\n\
         From: \"Juliet\" <sip:juliet@example.com>;tag=jf1\r\n\
         To: <sip:romeo*example.net@gw.example.com>;tag=gw1\r\n\
         Call-ID: call-n@example.com\r\n\
         CSeq: 8 NOTIFY\r\n\
         Content-Length: 0\r\n\r\n";
    assert_eq!(first, expected);
    assert_eq!(replays, vec![expected.to_owned(); 3]);
    let stats = gw.addr.send(GetStats).await.unwrap();
    assert_eq!(stats.server_txns, 1, "completed, absorbing until Timer J");
    assert_eq!(stats.kept_responses, 0, "a plain 200 is rebuilt, not kept");
}

#[actix_rt::test]
async fn retransmitted_subscribe_without_to_tag_gets_the_same_derived_to_tag_again() {
    let mut gw = start(config()).await;
    let peer = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let req_text = subscribe_text("z9hG4bKd1", "call-d@example.com", "127.0.0.1:5070");
    let (first, replays) = answer_and_retransmit(
        &mut gw,
        &peer,
        &req_text,
        |req| OutResponse::to_request(req, 481, None),
        2,
    )
    .await;
    let to_tag = parse_message(first.as_bytes())
        .ok()
        .and_then(|m| match m {
            SipMessage::Response(r) => r.to.tag,
            _ => None,
        })
        .expect("a To tag");
    assert!(to_tag.starts_with("sl-"), "derived tag: {to_tag}");
    let expected = format!(
        "SIP/2.0 481 Call/Transaction Does Not Exist\r\n\
         Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bKd1\r\n\
         From: <sip:juliet@example.com>;tag=jf1\r\n\
         To: <sip:romeo*example.net@gw.example.com>;tag={to_tag}\r\n\
         Call-ID: call-d@example.com\r\n\
         CSeq: 7 SUBSCRIBE\r\n\
         Content-Length: 0\r\n\r\n"
    );
    assert_eq!(first, expected);
    assert_eq!(replays, vec![expected.clone(); 2]);
    assert_eq!(gw.addr.send(GetStats).await.unwrap().kept_responses, 0);
}

#[actix_rt::test]
async fn response_with_headers_own_tag_or_reason_is_kept_and_replayed_verbatim() {
    let mut gw = start(config()).await;
    let peer = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    // Our own To tag and headers: not what to_request rebuilds, so the bytes are kept.
    let req_text = subscribe_text("z9hG4bKk1", "call-k@example.com", "127.0.0.1:5070");
    let (first, replays) = answer_and_retransmit(
        &mut gw,
        &peer,
        &req_text,
        |req| {
            OutResponse::to_request(req, 200, Some("gwtag7"))
                .with_header("Expires", "600")
                .with_header("Contact", "<sip:romeo*example.net@127.0.0.1:5080>")
        },
        2,
    )
    .await;
    let expected = "SIP/2.0 200 OK\r\n\
         Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bKk1\r\n\
         From: <sip:juliet@example.com>;tag=jf1\r\n\
         To: <sip:romeo*example.net@gw.example.com>;tag=gwtag7\r\n\
         Call-ID: call-k@example.com\r\n\
         CSeq: 7 SUBSCRIBE\r\n\
         Expires: 600\r\n\
         Contact: <sip:romeo*example.net@127.0.0.1:5080>\r\n\
         Content-Length: 0\r\n\r\n";
    assert_eq!(first, expected);
    assert_eq!(replays, vec![expected.to_owned(); 2]);
    // A changed reason phrase alone is kept too.
    let req_text = notify_text("z9hG4bKk2", "call-k2@example.com");
    let (first, replays) = answer_and_retransmit(
        &mut gw,
        &peer,
        &req_text,
        |req| OutResponse::to_request(req, 489, None).with_reason("Unknown Event"),
        1,
    )
    .await;
    assert!(
        first.starts_with("SIP/2.0 489 Unknown Event\r\n"),
        "{first}"
    );
    assert_eq!(replays, vec![first.clone()]);
    let stats = gw.addr.send(GetStats).await.unwrap();
    assert_eq!(stats.server_txns, 2);
    assert_eq!(stats.kept_responses, 2);
    // Timer J ends both.
    tokio::time::sleep(Duration::from_millis(64 * T1_MS + 200)).await;
    let stats = gw.addr.send(GetStats).await.unwrap();
    assert_eq!((stats.server_txns, stats.kept_responses), (0, 0));
}

#[actix_rt::test]
async fn udp_burst_of_two_thousand_requests_is_delivered_once_each_and_answered() {
    let mut gw = start(config()).await;
    let peer = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    // The 2000 responses arrive before we read them: room for all (the default is ~200 KB).
    socket2::SockRef::from(&peer)
        .set_recv_buffer_size(4 << 20)
        .unwrap();
    let n = 2000;
    for i in 0..n {
        let text = notify_text(&format!("z9hG4bKb{i}"), &format!("call-b{i}@example.com"));
        peer.send_to(text.as_bytes(), gw.local).await.unwrap();
    }
    let mut call_ids = Vec::new();
    while let Some(got) = next(&mut gw.inbound, 2000).await {
        call_ids.push(got.req.call_id.clone());
        gw.addr.do_send(SendResponse {
            txn: got.txn,
            resp: OutResponse::to_request(&got.req, 200, None),
        });
        if call_ids.len() == n {
            break;
        }
    }
    let expected: Vec<String> = (0..n).map(|i| format!("call-b{i}@example.com")).collect();
    assert_eq!(call_ids, expected, "all delivered, in order");
    let mut answered = 0;
    while let Some((text, _)) = recv_udp(&peer, 1000).await {
        let call_id = format!("Call-ID: call-b{answered}@example.com\r\n");
        assert!(text.starts_with("SIP/2.0 200 OK\r\n"), "{text}");
        assert!(text.contains(&call_id), "in order: {text}");
        answered += 1;
        if answered == n {
            break;
        }
    }
    assert_eq!(answered, n);
    let stats = gw.addr.send(GetStats).await.unwrap();
    assert_eq!((stats.server_txns, stats.kept_responses), (n, 0));
}
