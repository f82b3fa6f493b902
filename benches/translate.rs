//! Hot paths of one presence update, each way:
//! (a) NOTIFY body → PIDF parse → view → stanzas → serialized XML;
//! (b) inbound XMPP presence → aggregate → PIDF document.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
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

criterion_group!(benches, sip_to_xmpp);
criterion_main!(benches);
