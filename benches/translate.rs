//! Hot paths of one presence update, each way:
//! (a) NOTIFY body → PIDF parse → view → stanzas → serialized XML;
//! (b) inbound XMPP presence → aggregate → PIDF document;
//! (c) the whole NOTIFY: SIP bytes → parse → PIDF → stanzas → XML, plus the encoded 200 OK,
//! and its SIP half alone (parse; 200 OK build + encode).
//!
//! Instruction counts (stable on a loaded machine), one mode per environment variable:
//! `PUA_CALLGRIND_ITERS=n valgrind --tool=callgrind --toggle-collect='*whole_notify*' <bench>`
//! (whole NOTIFY), `PUA_CALLGRIND_PIDF=n ... '*pidf_only*'` (PIDF parse), `PUA_CALLGRIND_QX=n
//! ... '*qx_only*'` (quick-xml reading the same body with no work per event: the floor of the
//! general path; plain bodies like this one take `pidf`'s own tokenizer, which is below it).

use criterion::{criterion_group, Criterion, Throughput};
use pua_xmpp::pidf::{parse, write_from_xmpp};
use pua_xmpp::presence::{stanzas_for_pidf, view_pidf, Announced, XmppAggregate};
use pua_xmpp::stanza::{BareJid, InPresence, Jid};
use std::hint::black_box;

const BODY: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<presence xmlns="urn:ietf:params:xml:ns:pidf"
          xmlns:dm="urn:ietf:params:xml:ns:pidf:data-model"
          xmlns:rpid="urn:ietf:params:xml:ns:pidf:rpid"
          entity="pres:juliet@example.com">
  <tuple id="t-desk">
    <status><basic>open</basic></status>
    <contact priority="0.8">sip:juliet@ua7.example.com</contact>
    <note xml:lang="en">On the balcony &amp; away from the desk</note>
  </tuple>
  <tuple id="ID-mobile">
    <status><basic>open</basic></status>
    <contact priority="0.3">sip:juliet@198.51.100.7</contact>
  </tuple>
  <tuple id="t-old">
    <status><basic>closed</basic></status>
  </tuple>
  <dm:person id="p1">
    <rpid:activities><rpid:on-the-phone/><rpid:meeting/></rpid:activities>
    <dm:note xml:lang="en">In a meeting until 3</dm:note>
  </dm:person>
</presence>"#;

const NOW: i64 = 1_795_671_862;

fn sip_to_xmpp(c: &mut Criterion) {
    let from = BareJid::new("juliet*example.com@sip.example.net").unwrap();
    let to = Jid::new("romeo@example.net").unwrap();
    let mut out = String::with_capacity(1024);
    let mut g = c.benchmark_group("translate");
    g.throughput(Throughput::Elements(1));
    g.bench_function("pidf_to_stanzas", |b| {
        b.iter(|| {
            let doc = parse(black_box(BODY.as_bytes()), 65536).unwrap();
            let view = view_pidf(&doc, NOW);
            let mut announced = Announced::default();
            let stanzas = stanzas_for_pidf(&view, &mut announced, &from, &to, false);
            out.clear();
            for s in &stanzas {
                s.write_xml(&mut out);
            }
            black_box(out.len())
        })
    });
    g.bench_function("pidf_parse_only", |b| {
        b.iter(|| parse(black_box(BODY.as_bytes()), 65536).unwrap())
    });

    let p = InPresence::from_xml(
        "<presence from='romeo@example.net/orchard' to='juliet*example.com@sip.example.net' xml:lang='en'>\
         <show>away</show><status>Walking in the orchard</status><priority>5</priority></presence>",
    )
    .unwrap();
    let kind = p.kind.clone().unwrap();
    let res = p.from.resource().map(|r| r.as_str().to_owned());
    let mut doc = String::with_capacity(1024);
    g.bench_function("xmpp_to_pidf", |b| {
        b.iter(|| {
            let mut agg = XmppAggregate::new();
            agg.apply(res.as_deref(), kind, black_box(&p.body), p.lang.as_deref());
            doc.clear();
            write_from_xmpp(
                "pres:romeo*example.net@xmpp.example.com",
                "sip:romeo*example.net@xmpp.example.com",
                &agg,
                &mut doc,
            );
            black_box(doc.len())
        })
    });
    g.finish();
}

/// A Kamailio-style 200 to a SUBSCRIBE of ours (TCP).
fn subscribe_200_bytes() -> String {
    "SIP/2.0 200 OK\r\n\
     Via: SIP/2.0/TCP 127.0.0.1:5080;branch=z9hG4bK9f2c4e6a1b3d5f70a1;rport=5080\r\n\
     From: <sip:romeo*example.net@sip.example.net>;tag=gw-4be1c2d3e4f5\r\n\
     To: <sip:juliet@example.com>;tag=a6a1c5f60faecf035a1ae5b6e96e979a-1f2e\r\n\
     Call-ID: 6f1e2d3c4b5a69780a1b2c3d@127.0.0.1\r\n\
     CSeq: 1 SUBSCRIBE\r\n\
     Expires: 600\r\n\
     Contact: <sip:127.0.0.2:5060;transport=tcp>\r\n\
     Server: kamailio (5.6.3 (x86_64/linux))\r\n\
     Content-Length: 0\r\n\r\n"
        .to_owned()
}

/// The NOTIFY of the whole-message benches: Kamailio-like headers around [`BODY`].
fn notify_bytes() -> String {
    format!(
        "NOTIFY sip:romeo*example.net@gw.xmpp.example.com:5060 SIP/2.0\r\n\
         Via: SIP/2.0/UDP 127.0.0.1;branch=z9hG4bK5471.38fed0050eb238c9b70863934fe0601d.0\r\n\
         Via: SIP/2.0/UDP 127.0.0.1:5070;received=127.0.0.1;branch=z9hG4bK7e36f70f3a3a49cca;rport=5070\r\n\
         Max-Forwards: 69\r\nFrom: <sip:juliet@example.com>;tag=ps-91aa07\r\n\
         To: <sip:romeo*example.net@xmpp.example.com>;tag=gw-5d1c8a\r\n\
         Call-ID: 8c41f0e2b7d94e1a@gw.xmpp.example.com\r\nCSeq: 102 NOTIFY\r\n\
         Contact: <sip:ps1.example.com:5060;transport=tcp>\r\nEvent: presence\r\n\
         Subscription-State: active;expires=1740\r\nContent-Type: application/pidf+xml\r\n\
         Content-Length: {}\r\n\r\n{BODY}",
        BODY.len()
    )
}

/// The whole NOTIFY path of one update: parse, 200 OK encoded, body → stanzas → XML. Not
/// inlined, so callgrind can count exactly this function (`--toggle-collect=*whole_notify*`).
#[inline(never)]
fn whole_notify(
    notify: &[u8],
    from: &BareJid,
    to: &Jid,
    out: &mut String,
    wire: &mut Vec<u8>,
) -> (usize, usize) {
    let msg = pua_xmpp::sip::parse::parse_message(notify).unwrap();
    let pua_xmpp::sip::SipMessage::Request(req) = msg else {
        unreachable!()
    };
    let resp = pua_xmpp::sip::OutResponse::to_request(&req, 200, None);
    wire.clear();
    pua_xmpp::sip::encode::encode_response(&resp, wire);
    let doc = parse(&req.body, 65536).unwrap();
    let view = view_pidf(&doc, NOW);
    let mut announced = Announced::default();
    out.clear();
    for s in stanzas_for_pidf(&view, &mut announced, from, to, false) {
        s.write_xml(out);
    }
    (out.len(), wire.len())
}

fn notify_to_stanzas(c: &mut Criterion) {
    let from = BareJid::new("juliet*example.com@sip.example.net").unwrap();
    let to = Jid::new("romeo@example.net").unwrap();
    let notify = notify_bytes();
    let mut out = String::with_capacity(1024);
    let mut wire = Vec::with_capacity(1024);
    let mut g = c.benchmark_group("translate");
    g.throughput(Throughput::Elements(1));
    g.bench_function("notify_bytes_to_stanzas_and_200", |b| {
        b.iter(|| {
            black_box(whole_notify(
                black_box(notify.as_bytes()),
                &from,
                &to,
                &mut out,
                &mut wire,
            ))
        })
    });
    // The SIP half alone: rsip + our layer, and the 200 OK built and encoded from the request.
    g.bench_function("notify_sip_parse_only", |b| {
        b.iter(|| pua_xmpp::sip::parse::parse_message(black_box(notify.as_bytes())).unwrap())
    });
    let pua_xmpp::sip::SipMessage::Request(req) =
        pua_xmpp::sip::parse::parse_message(notify.as_bytes()).unwrap()
    else {
        unreachable!()
    };
    g.bench_function("ok_200_build_and_encode", |b| {
        b.iter(|| {
            let resp = pua_xmpp::sip::OutResponse::to_request(black_box(&req), 200, None);
            wire.clear();
            pua_xmpp::sip::encode::encode_response(&resp, &mut wire);
            black_box(wire.len())
        })
    });
    // The set-up path parses one response per subscription: the 200 to our SUBSCRIBE.
    let ok = subscribe_200_bytes();
    g.bench_function("subscribe_200_parse", |b| {
        b.iter(|| pua_xmpp::sip::parse::parse_message(black_box(ok.as_bytes())).unwrap())
    });
    g.finish();
}

/// `PUA_CALLGRIND_ITERS=n` runs the whole-NOTIFY path n times and exits, for
/// `valgrind --tool=callgrind --toggle-collect='*whole_notify*'` (instruction counts do not
/// depend on machine load, unlike criterion's times).
fn callgrind_loop(iters: usize) {
    let from = BareJid::new("juliet*example.com@sip.example.net").unwrap();
    let to = Jid::new("romeo@example.net").unwrap();
    let notify = notify_bytes();
    let mut out = String::with_capacity(1024);
    let mut wire = Vec::with_capacity(1024);
    let mut total = 0;
    for _ in 0..iters {
        let (a, b) = whole_notify(
            black_box(notify.as_bytes()),
            &from,
            &to,
            &mut out,
            &mut wire,
        );
        total += a + b;
    }
    println!("{iters} iterations, {total} octets written");
}

/// PIDF parse alone, for `--toggle-collect='*pidf_only*'` with `PUA_CALLGRIND_PIDF=n`.
#[inline(never)]
fn pidf_only(body: &[u8]) -> usize {
    parse(body, 65536).map_or(0, |d| d.tuples.len())
}

#[inline(never)]
fn qx_only(body: &[u8]) -> usize {
    let mut r = quick_xml::Reader::from_reader(body);
    let mut n = 0;
    loop {
        match r.read_event() {
            Ok(quick_xml::events::Event::Eof) | Err(_) => return n,
            Ok(_) => n += 1,
        }
    }
}

criterion_group!(benches, sip_to_xmpp, notify_to_stanzas);

fn main() {
    if let Some(n) = std::env::var("PUA_CALLGRIND_ITERS")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        callgrind_loop(n);
        return;
    }
    if let Some(n) = std::env::var("PUA_CALLGRIND_QX")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
    {
        let total: usize = (0..n).map(|_| qx_only(black_box(BODY.as_bytes()))).sum();
        println!("{n} iterations, {total} events");
        return;
    }
    if let Some(n) = std::env::var("PUA_CALLGRIND_PIDF")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
    {
        let total: usize = (0..n).map(|_| pidf_only(black_box(BODY.as_bytes()))).sum();
        println!("{n} iterations, {total} tuples");
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
