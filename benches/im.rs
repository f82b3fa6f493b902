//! Hot paths of one instant message in the sans-IO core (issue 15), each way:
//! (x2s) chat stanza XML → `InMessage` → `ImGateway` → MESSAGE encoded for the wire, then the
//! proxy's `200` parsed and handed back (it frees the target for the next message);
//! (s2x) MESSAGE bytes → parse → `ImGateway` → stanza XML, and the final response encoded
//! (`bounce_wait` 0 here, so the 202 comes at once instead of from a timer).
//! The per-sender limiter is off (`rate_per_sender = 0`); the load tool measures the runtime
//! around this (`pua-xmpp-bench --scenario im`, BENCHMARKS.md "IM (session 8)").

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use pua_xmpp::address::{AddressMapper, MappingConfig};
use pua_xmpp::im::{ImConfig, ImGateway, Input, Output};
use pua_xmpp::im_content::MessageHeaders;
use pua_xmpp::message::InMessage;
use pua_xmpp::sip::encode::{encode_request, encode_response};
use pua_xmpp::sip::parse::parse_message;
use pua_xmpp::sip::SipMessage;
use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

const PROXY: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 10));
const VIA: &str = "SIP/2.0/UDP 192.0.2.20:5060;branch=z9hG4bK-bench;rport";

const STANZA: &str = "<message from='romeo@example.net/orchard' \
    to='juliet*example.com@sip.example.net' type='chat' id='m-101' xml:lang='en'>\
    <body>Meet me at the orchard wall at nine.</body>\
    <active xmlns='http://jabber.org/protocol/chatstates'/></message>";

/// The MESSAGE of the s2x path; the 16 zeros of the Call-ID are overwritten with a counter
/// so that no two iterations look like retransmissions of each other.
const MESSAGE: &str = "MESSAGE sip:romeo*example.net@xmpp.example.com SIP/2.0\r\n\
    Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK-m117\r\n\
    Max-Forwards: 70\r\n\
    From: <sip:juliet@example.com>;tag=ua7-1\r\n\
    To: <sip:romeo*example.net@xmpp.example.com>\r\n\
    Call-ID: 0000000000000000@ua7.example.com\r\n\
    CSeq: 1 MESSAGE\r\n\
    Content-Type: text/plain;charset=UTF-8\r\n\
    Content-Length: 36\r\n\r\n\
    Meet me at the orchard wall at nine.";

fn gateway() -> ImGateway {
    let mut m = MappingConfig::encoded("sip.example.net", "xmpp.example.com");
    m.allowed_sip_domains = vec!["example.com".into()];
    m.allowed_xmpp_domains = vec!["example.net".into()];
    let Ok(mapper) = AddressMapper::new(m) else {
        panic!("mapping config")
    };
    let cfg = ImConfig {
        trusted_sources: vec![PROXY],
        call_id_host: "gw.xmpp.example.com".into(),
        rate_per_sender: 0,
        bounce_wait: Duration::ZERO,
        ..ImConfig::default()
    };
    let mut gw = ImGateway::new(cfg, mapper, 42, 4711);
    gw.handle_input(Input::XmppLink { up: true }, Instant::now());
    gw
}

/// Writes `n` as 16 decimal digits over `at`.
fn put_counter(at: &mut [u8], mut n: u64) {
    for b in at.iter_mut().rev() {
        *b = b'0' + (n % 10) as u8;
        n /= 10;
    }
}

fn im(c: &mut Criterion) {
    let mut g = c.benchmark_group("im");
    g.throughput(Throughput::Elements(1));

    let mut gw = gateway();
    let mut now = Instant::now();
    let mut wire = Vec::with_capacity(1024);
    let mut resp_text = String::with_capacity(512);
    g.bench_function("x2s_stanza_to_message_and_200", |b| {
        b.iter(|| {
            now += Duration::from_micros(10);
            let Ok(m) = InMessage::from_xml(black_box(STANZA)) else {
                panic!("stanza")
            };
            gw.handle_input(Input::Stanza(&m), now);
            let mut sent = None;
            while let Some(out) = gw.poll_output() {
                if let Output::Request { req, .. } = out {
                    wire.clear();
                    encode_request(&req, VIA, &mut wire);
                    sent = Some(req);
                }
            }
            let Some(req) = sent else {
                panic!("no MESSAGE")
            };
            resp_text.clear();
            resp_text.push_str("SIP/2.0 200 OK\r\nVia: ");
            for part in [
                VIA,
                "\r\nFrom: <",
                &req.from.uri,
                ">;tag=",
                req.from.tag.as_deref().unwrap_or(""),
                "\r\nTo: <",
                &req.to.uri,
                ">;tag=ua-1\r\nCall-ID: ",
                &req.call_id,
                "\r\nCSeq: ",
                &req.cseq.to_string(),
                " MESSAGE\r\nContent-Length: 0\r\n\r\n",
            ] {
                resp_text.push_str(part);
            }
            let Ok(SipMessage::Response(resp)) = parse_message(resp_text.as_bytes()) else {
                panic!("200")
            };
            gw.handle_input(Input::Response(&resp), now);
            while let Some(out) = gw.poll_output() {
                black_box(out);
            }
            black_box(wire.len())
        })
    });

    let mut gw = gateway();
    let mut now = Instant::now();
    let mut bytes = MESSAGE.as_bytes().to_vec();
    let Some(at) = MESSAGE.find("Call-ID: ").map(|i| i + 9) else {
        panic!("template")
    };
    let mut n = 0u64;
    let mut xml = String::with_capacity(1024);
    g.bench_function("s2x_message_to_stanza_and_202", |b| {
        b.iter(|| {
            n += 1;
            now += Duration::from_micros(10);
            if let Some(digits) = bytes.get_mut(at..at + 16) {
                put_counter(digits, n);
            }
            let Ok(SipMessage::Request(req)) = parse_message(black_box(&bytes)) else {
                panic!("MESSAGE")
            };
            let headers = MessageHeaders::from_raw(&bytes);
            gw.handle_input(
                Input::Message {
                    req: &req,
                    headers: &headers,
                    source: PROXY,
                    key: n,
                },
                now,
            );
            // Timers (forgetting answered MESSAGEs) fire as the clock moves on.
            if gw.poll_timeout().is_some_and(|t| t <= now) {
                gw.handle_input(Input::Timeout, now);
            }
            let mut stanzas = 0;
            while let Some(out) = gw.poll_output() {
                match out {
                    Output::Stanza(m) => {
                        xml.clear();
                        m.write_xml(&mut xml);
                        stanzas += 1;
                    }
                    Output::Response { resp, .. } => {
                        wire.clear();
                        encode_response(&resp, &mut wire);
                    }
                    _ => {}
                }
            }
            assert_eq!(stanzas, 1);
            black_box(xml.len() + wire.len())
        })
    });
    g.finish();
}

criterion_group!(benches, im);
criterion_main!(benches);
