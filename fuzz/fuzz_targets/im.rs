//! Instant messaging (issue 15), both directions through `im::ImGateway`: an XMPP `<message/>`
//! (first byte even) or a SIP MESSAGE (first byte odd) of any content. Nothing may panic; every
//! stanza the gateway writes must parse back as XML, and every MESSAGE must encode and parse
//! back as SIP.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pua_xmpp::address::{AddressMapper, MappingConfig};
use pua_xmpp::im::{ImConfig, ImGateway, Input, Output};
use pua_xmpp::im_content::MessageHeaders;
use pua_xmpp::message::InMessage;
use pua_xmpp::sip::parse::parse_message;
use pua_xmpp::sip::SipMessage;
use std::net::IpAddr;
use std::time::{Duration, Instant};

fuzz_target!(|data: &[u8]| {
    let Some((&select, rest)) = data.split_first() else {
        return;
    };
    let Ok(mapper) = AddressMapper::new(MappingConfig::encoded(
        "sip.example.net",
        "xmpp.example.com",
    )) else {
        return;
    };
    let mut gw = ImGateway::new(ImConfig::default(), mapper, 1, 1);
    let now = Instant::now();
    gw.handle_input(Input::XmppLink { up: true }, now);
    if select & 1 == 0 {
        let Ok(text) = std::str::from_utf8(rest) else {
            return;
        };
        let Ok(m) = InMessage::from_xml(text) else {
            return;
        };
        gw.handle_input(Input::Stanza(&m), now);
    } else {
        let headers = MessageHeaders::from_raw(rest);
        let Ok(SipMessage::Request(req)) = parse_message(rest) else {
            return;
        };
        let input = Input::Message {
            req: &req,
            headers: &headers,
            source: IpAddr::from([127, 0, 0, 1]),
            key: 1,
        };
        gw.handle_input(input, now);
    }
    // Let every wait run out too (bounce waits, queue ages).
    gw.handle_input(Input::Timeout, now + Duration::from_secs(120));
    while let Some(out) = gw.poll_output() {
        match out {
            Output::Stanza(s) => {
                // The stanza as the stream carries it (the stream gives its namespace).
                let xml = s.to_xml();
                let framed = format!("<stream xmlns='jabber:component:accept'>{xml}</stream>");
                assert!(framed.parse::<minidom::Element>().is_ok(), "{xml}");
            }
            Output::Request { req, .. } => {
                let mut wire = Vec::new();
                pua_xmpp::sip::encode::encode_request(
                    &req,
                    "SIP/2.0/UDP 127.0.0.1:5080;branch=z9hG4bKfuzz",
                    &mut wire,
                );
                assert!(
                    parse_message(&wire).is_ok(),
                    "{}",
                    String::from_utf8_lossy(&wire)
                );
            }
            _ => {}
        }
    }
});
