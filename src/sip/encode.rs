//! Writing [`OutRequest`] / [`OutResponse`] as bytes, and the few URI/Via facts the transport
//! needs (where to send, which branch). Header order is fixed so tests can assert exact bytes.

use super::parse::byte_pos;
use super::{NameAddr, OutRequest, OutResponse};

fn line(out: &mut Vec<u8>, name: &str, value: &str) {
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value.as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// `"Display" <uri>;tag=t`; the display name is quoted (with `"` and `\` escaped) only when
/// present.
fn name_addr(out: &mut Vec<u8>, name: &str, na: &NameAddr) {
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b": ");
    if let Some(d) = &na.display {
        out.push(b'"');
        for c in d.bytes() {
            if c == b'"' || c == b'\\' {
                out.push(b'\\');
            }
            out.push(c);
        }
        out.extend_from_slice(b"\" ");
    }
    out.push(b'<');
    out.extend_from_slice(na.uri.as_bytes());
    out.push(b'>');
    if let Some(t) = &na.tag {
        out.extend_from_slice(b";tag=");
        out.extend_from_slice(t.as_bytes());
    }
    out.extend_from_slice(b"\r\n");
}

/// Decimal digits of `n`, without a `String` per number.
fn decimal(out: &mut Vec<u8>, n: usize) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    let mut n = n;
    loop {
        i -= 1;
        if let Some(d) = buf.get_mut(i) {
            *d = b'0' + (n % 10) as u8;
        }
        n /= 10;
        if n == 0 || i == 0 {
            break;
        }
    }
    out.extend_from_slice(buf.get(i..).unwrap_or_default());
}

fn cseq(out: &mut Vec<u8>, n: u32, method: &str) {
    out.extend_from_slice(b"CSeq: ");
    decimal(out, n as usize);
    out.push(b' ');
    out.extend_from_slice(method.as_bytes());
    out.extend_from_slice(b"\r\n");
}

fn tail(
    out: &mut Vec<u8>,
    headers: &[(&'static str, String)],
    content_type: Option<&str>,
    body: &[u8],
) {
    for (n, v) in headers {
        line(out, n, v);
    }
    if let Some(ct) = content_type {
        line(out, "Content-Type", ct);
    }
    out.extend_from_slice(b"Content-Length: ");
    decimal(out, body.len());
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
}

/// Writes the request with `via` (a full Via header value, e.g.
/// "SIP/2.0/UDP 127.0.0.1:5080;branch=z9hG4bK...;rport") as the top Via, Max-Forwards: 70,
/// Content-Length computed in octets.
pub fn encode_request(req: &OutRequest, via: &str, out: &mut Vec<u8>) {
    out.reserve(400 + req.body.len());
    let m = req.method.as_str();
    out.extend_from_slice(m.as_bytes());
    out.push(b' ');
    out.extend_from_slice(req.uri.as_bytes());
    out.extend_from_slice(b" SIP/2.0\r\n");
    line(out, "Via", via);
    for r in &req.route {
        line(out, "Route", r);
    }
    line(out, "Max-Forwards", "70");
    name_addr(out, "From", &req.from);
    name_addr(out, "To", &req.to);
    line(out, "Call-ID", &req.call_id);
    cseq(out, req.cseq, m);
    if let Some(c) = &req.contact {
        out.extend_from_slice(b"Contact: <");
        out.extend_from_slice(c.as_bytes());
        out.extend_from_slice(b">\r\n");
    }
    tail(out, &req.headers, req.content_type, &req.body);
}

/// Writes a response. `From`/`To` with an empty URI and an empty `Call-ID` are left out: they
/// only occur in a best-effort 400 to a request that lacked them.
pub fn encode_response(resp: &OutResponse, out: &mut Vec<u8>) {
    out.reserve(400 + resp.body.len());
    out.extend_from_slice(b"SIP/2.0 ");
    decimal(out, usize::from(resp.status));
    out.push(b' ');
    out.extend_from_slice(resp.reason.as_bytes());
    out.extend_from_slice(b"\r\n");
    for v in &resp.via {
        line(out, "Via", v);
    }
    if !resp.from.uri.is_empty() {
        name_addr(out, "From", &resp.from);
    }
    if !resp.to.uri.is_empty() {
        name_addr(out, "To", &resp.to);
    }
    if !resp.call_id.is_empty() {
        line(out, "Call-ID", &resp.call_id);
    }
    cseq(out, resp.cseq, resp.cseq_method.as_str());
    if let Some(c) = &resp.contact {
        out.extend_from_slice(b"Contact: <");
        out.extend_from_slice(c.as_bytes());
        out.extend_from_slice(b">\r\n");
    }
    for r in &resp.record_route {
        line(out, "Record-Route", r);
    }
    tail(out, &resp.headers, resp.content_type, &resp.body);
}

/// Where a SIP URI points.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostPort {
    pub host: String,
    pub port: Option<u16>,
    /// Lowercased `transport` parameter.
    pub transport: Option<String>,
    /// The scheme is `sips:` (TLS on every hop, RFC 3261 §19.1, RFC 5630).
    pub sips: bool,
}

/// A socket address as a SIP `hostport` (Via sent-by, Contact, Record-Route): an IPv6
/// address in brackets (RFC 3261 §25.1 `IPv6reference`), `[::1]:5080`; a zone id, which SIP
/// cannot carry, is left out.
pub fn hostport(addr: std::net::SocketAddr) -> String {
    match addr {
        std::net::SocketAddr::V4(a) => a.to_string(),
        std::net::SocketAddr::V6(a) => format!("[{}]:{}", a.ip(), a.port()),
    }
}

/// The host part of our Contact URI for requests sent on `transport` ("udp", "tcp", "tls"):
/// the `hostport`, with `;transport=` unless UDP, so that peers reach us back the same way
/// (RFC 3263 §4.1: without the parameter a `sip:` URI means UDP).
pub fn contact_hostport(addr: std::net::SocketAddr, transport: &str) -> String {
    let hp = hostport(addr);
    match transport {
        "tcp" | "tls" => format!("{hp};transport={transport}"),
        _ => hp,
    }
}

/// host/port/transport of a SIP URI given as `sip:u@h:p;transport=tcp`, `<sip:h;lr>`,
/// `sips:...`; None if unparseable.
pub fn uri_host_port(uri: &str) -> Option<HostPort> {
    let mut s = uri.trim();
    // A name-addr: take what is inside the brackets.
    if let Some(open) = s.find('<') {
        let inner = s.get(open + 1..)?;
        s = inner.get(..inner.find('>')?)?.trim();
    }
    let colon = s.find(':')?;
    let scheme = s.get(..colon)?;
    let sips = scheme.eq_ignore_ascii_case("sips");
    if !(scheme.eq_ignore_ascii_case("sip") || sips) {
        return None;
    }
    let rest = s.get(colon + 1..)?;
    // The user part may hold `;` and `?` (RFC 3261 user-unreserved) but never a bare `@`.
    let rest = match rest.find('@') {
        Some(at) => rest.get(at + 1..)?,
        None => rest,
    };
    let end = rest.find([';', '?']).unwrap_or(rest.len());
    let hostport = rest.get(..end)?;
    let params = rest.get(end..)?;
    let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
        let close = v6.find(']')?;
        let host = hostport.get(..close + 2)?;
        let after = v6.get(close + 1..)?;
        (host, after)
    } else {
        match hostport.find(':') {
            Some(c) => (hostport.get(..c)?, hostport.get(c..)?),
            None => (hostport, ""),
        }
    };
    if host.is_empty()
        || !host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-.[]:".contains(&b))
    {
        return None;
    }
    let port = match port {
        "" => None,
        p => Some(p.strip_prefix(':')?.parse::<u16>().ok()?),
    };
    let params = params.split('?').next().unwrap_or("");
    let transport = params.split(';').find_map(|p| {
        let (n, v) = p.split_once('=')?;
        n.trim()
            .eq_ignore_ascii_case("transport")
            .then(|| v.trim().to_ascii_lowercase())
    });
    Some(HostPort {
        host: host.to_owned(),
        port,
        transport,
        sips,
    })
}

/// The `branch` parameter of a Via value. Read for every message (transaction matching), so
/// the parameters are cut at ASCII delimiters by byte position, not by `str` pattern searches.
pub fn via_branch(via: &str) -> Option<&str> {
    let len = via.len();
    let mut start = byte_pos(via, b';')? + 1;
    loop {
        let end = via
            .get(start..)
            .and_then(|r| byte_pos(r, b';'))
            .map_or(len, |e| start + e);
        let p = via.get(start..end)?;
        if let Some(eq) = byte_pos(p, b'=') {
            let (n, v) = (p.get(..eq)?, p.get(eq + 1..)?);
            let v = v.get(..byte_pos(v, b',').unwrap_or(v.len()))?.trim();
            if n.trim().eq_ignore_ascii_case("branch") && !v.is_empty() {
                return Some(v);
            }
        }
        if end == len {
            return None;
        }
        start = end + 1;
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::sip::{Destination, Method};

    /// The gateway's initial SUBSCRIBE of spec §4.2.
    pub(crate) fn subscribe_4_2() -> OutRequest {
        OutRequest {
            method: Method::Subscribe,
            uri: "sip:juliet@example.com".into(),
            route: vec![],
            from: NameAddr {
                display: None,
                uri: "sip:romeo*example.net@xmpp.example.com".into(),
                tag: Some("gw-5d1c8a".into()),
            },
            to: NameAddr {
                display: None,
                uri: "sip:juliet@example.com".into(),
                tag: None,
            },
            call_id: "8c41f0e2b7d94e1a@gw.xmpp.example.com".into(),
            cseq: 1,
            contact: Some("sip:romeo*example.net@gw.xmpp.example.com:5060;transport=tcp".into()),
            headers: vec![
                ("Event", "presence".into()),
                ("Accept", "application/pidf+xml".into()),
                ("Allow-Events", "presence".into()),
                ("Expires", "3600".into()),
            ],
            content_type: None,
            body: vec![],
            destination: Destination::OutboundProxy,
        }
    }

    #[test]
    fn decimal_digits() {
        for n in [0usize, 7, 10, 99, 100, 4_294_967_295, usize::MAX] {
            let mut out = Vec::new();
            decimal(&mut out, n);
            assert_eq!(out, n.to_string().into_bytes());
        }
    }

    #[test]
    fn spec_4_2_subscribe_exact_bytes() {
        let mut out = Vec::new();
        encode_request(
            &subscribe_4_2(),
            "SIP/2.0/TCP gw.xmpp.example.com:5060;branch=z9hG4bK-5f2a91c3",
            &mut out,
        );
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "SUBSCRIBE sip:juliet@example.com SIP/2.0\r\n\
             Via: SIP/2.0/TCP gw.xmpp.example.com:5060;branch=z9hG4bK-5f2a91c3\r\n\
             Max-Forwards: 70\r\n\
             From: <sip:romeo*example.net@xmpp.example.com>;tag=gw-5d1c8a\r\n\
             To: <sip:juliet@example.com>\r\n\
             Call-ID: 8c41f0e2b7d94e1a@gw.xmpp.example.com\r\n\
             CSeq: 1 SUBSCRIBE\r\n\
             Contact: <sip:romeo*example.net@gw.xmpp.example.com:5060;transport=tcp>\r\n\
             Event: presence\r\n\
             Accept: application/pidf+xml\r\n\
             Allow-Events: presence\r\n\
             Expires: 3600\r\n\
             Content-Length: 0\r\n\
             \r\n"
        );
    }

    /// The gateway's 200 OK of spec §5.1.
    pub(crate) fn ok_5_1() -> OutResponse {
        OutResponse {
            status: 200,
            reason: "OK".into(),
            via: vec!["SIP/2.0/TLS ua7.example.com:5061;branch=z9hG4bK-ua-4411".into()],
            from: NameAddr {
                display: Some("Juliet".into()),
                uri: "sip:juliet@example.com".into(),
                tag: Some("ua-77aa31".into()),
            },
            to: NameAddr {
                display: None,
                uri: "sip:romeo*example.net@xmpp.example.com".into(),
                tag: Some("gw-e01b44".into()),
            },
            call_id: "3f9a0c55e1@ua7.example.com".into(),
            cseq: 20,
            cseq_method: Method::Subscribe,
            contact: Some("sip:romeo*example.net@gw.xmpp.example.com:5061;transport=tls".into()),
            record_route: vec![],
            headers: vec![
                ("Expires", "3600".into()),
                ("Allow-Events", "presence".into()),
            ],
            content_type: None,
            body: vec![],
        }
    }

    #[test]
    fn spec_5_1_ok_exact_bytes() {
        let mut out = Vec::new();
        encode_response(&ok_5_1(), &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "SIP/2.0 200 OK\r\n\
             Via: SIP/2.0/TLS ua7.example.com:5061;branch=z9hG4bK-ua-4411\r\n\
             From: \"Juliet\" <sip:juliet@example.com>;tag=ua-77aa31\r\n\
             To: <sip:romeo*example.net@xmpp.example.com>;tag=gw-e01b44\r\n\
             Call-ID: 3f9a0c55e1@ua7.example.com\r\n\
             CSeq: 20 SUBSCRIBE\r\n\
             Contact: <sip:romeo*example.net@gw.xmpp.example.com:5061;transport=tls>\r\n\
             Expires: 3600\r\n\
             Allow-Events: presence\r\n\
             Content-Length: 0\r\n\
             \r\n"
        );
    }

    #[test]
    fn request_with_routes_body_and_utf8_length() {
        let mut req = subscribe_4_2();
        req.method = Method::Notify;
        req.route = vec!["<sip:127.0.0.2;lr;ftag=a>".into(), "<sip:p2;lr>".into()];
        req.contact = None;
        req.headers = vec![];
        req.content_type = Some("application/pidf+xml");
        req.body = "<n>é</n>".as_bytes().to_vec();
        req.from.display = Some("A \"B\"".into());
        let mut out = Vec::new();
        encode_request(
            &req,
            "SIP/2.0/UDP 127.0.0.2:5080;branch=z9hG4bKx;rport",
            &mut out,
        );
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "NOTIFY sip:juliet@example.com SIP/2.0\r\n\
             Via: SIP/2.0/UDP 127.0.0.2:5080;branch=z9hG4bKx;rport\r\n\
             Route: <sip:127.0.0.2;lr;ftag=a>\r\n\
             Route: <sip:p2;lr>\r\n\
             Max-Forwards: 70\r\n\
             From: \"A \\\"B\\\"\" <sip:romeo*example.net@xmpp.example.com>;tag=gw-5d1c8a\r\n\
             To: <sip:juliet@example.com>\r\n\
             Call-ID: 8c41f0e2b7d94e1a@gw.xmpp.example.com\r\n\
             CSeq: 1 NOTIFY\r\n\
             Content-Type: application/pidf+xml\r\n\
             Content-Length: 9\r\n\
             \r\n<n>é</n>"
        );
    }

    #[test]
    fn response_with_record_route() {
        let mut r = ok_5_1();
        r.record_route = vec!["<sip:127.0.0.2;lr;ftag=ua-77aa31>".into()];
        r.headers = vec![];
        r.contact = None;
        let mut out = Vec::new();
        encode_response(&r, &mut out);
        let s = String::from_utf8(out).unwrap();
        assert!(s.ends_with(
            "CSeq: 20 SUBSCRIBE\r\nRecord-Route: <sip:127.0.0.2;lr;ftag=ua-77aa31>\r\nContent-Length: 0\r\n\r\n"
        ));
    }

    fn hp(host: &str, port: Option<u16>, t: Option<&str>) -> Option<HostPort> {
        Some(HostPort {
            host: host.into(),
            port,
            transport: t.map(str::to_owned),
            sips: false,
        })
    }

    /// IPv6 forms (issue 16): bracketed in sent-by and Contact, zone ids left out; the
    /// Record-Route of a proxy on `[::1]` parses to its bracketed host, port and transport.
    #[test]
    fn ipv6_hostport_contact_and_record_route_forms() {
        use std::net::{Ipv6Addr, SocketAddr, SocketAddrV6};
        let v6: SocketAddr = "[::1]:5080".parse().unwrap();
        assert_eq!(hostport(v6), "[::1]:5080");
        let v4: SocketAddr = "127.0.0.1:5080".parse().unwrap();
        assert_eq!(hostport(v4), "127.0.0.1:5080");
        let zoned = SocketAddr::V6(SocketAddrV6::new(
            "fe80::1".parse::<Ipv6Addr>().unwrap(),
            5080,
            0,
            3,
        ));
        assert_eq!(hostport(zoned), "[fe80::1]:5080");
        assert_eq!(contact_hostport(v6, "udp"), "[::1]:5080");
        assert_eq!(contact_hostport(v6, "tcp"), "[::1]:5080;transport=tcp");
        assert_eq!(contact_hostport(v6, "tls"), "[::1]:5080;transport=tls");
        // What the core makes of it is a URI our own parser reads back.
        let contact = format!("sip:alice*xmpp.example@{}", contact_hostport(v6, "tls"));
        assert_eq!(
            uri_host_port(&contact),
            hp("[::1]", Some(5080), Some("tls"))
        );
        // Kamailio's Record-Route on [::1] (double record-routing: one per transport).
        assert_eq!(
            uri_host_port("<sip:[::1]:5061;transport=tls;r2=on;lr;ftag=a1>"),
            hp("[::1]", Some(5061), Some("tls"))
        );
        assert_eq!(
            uri_host_port("<sip:[::1];r2=on;lr>"),
            hp("[::1]", None, None)
        );
        // A sips: URI says TLS by its scheme.
        let sips = uri_host_port("sips:[2001:db8::2]:5061").unwrap();
        assert!(sips.sips);
        assert_eq!(sips.host, "[2001:db8::2]");
        // Via of a request we send over TLS on [::1].
        let via = format!("SIP/2.0/TLS {};branch=z9hG4bK-7;rport", hostport(v6));
        assert_eq!(via, "SIP/2.0/TLS [::1]:5080;branch=z9hG4bK-7;rport");
        assert_eq!(via_branch(&via), Some("z9hG4bK-7"));
    }

    #[test]
    fn uri_host_port_forms() {
        assert_eq!(
            uri_host_port("sip:u@h.example:5070;transport=TCP"),
            hp("h.example", Some(5070), Some("tcp"))
        );
        assert_eq!(
            uri_host_port("<sip:127.0.0.2;lr;ftag=x>"),
            hp("127.0.0.2", None, None)
        );
        assert_eq!(
            uri_host_port("sips:ps1.example.com"),
            Some(HostPort {
                sips: true,
                ..hp("ps1.example.com", None, None).unwrap()
            })
        );
        assert_eq!(
            uri_host_port("sip:127.0.0.2:5060"),
            hp("127.0.0.2", Some(5060), None)
        );
        assert_eq!(
            uri_host_port("sip:a;b=c@[2001:db8::1]:5061;transport=tls?x=y"),
            hp("[2001:db8::1]", Some(5061), Some("tls"))
        );
        assert_eq!(
            uri_host_port("sip:romeo*example.net@gw.xmpp.example.com:5060;transport=tcp"),
            hp("gw.xmpp.example.com", Some(5060), Some("tcp"))
        );
        assert_eq!(uri_host_port("tel:+15551234567"), None);
        assert_eq!(uri_host_port("sip:h:99999"), None);
        assert_eq!(uri_host_port("sip:"), None);
        assert_eq!(uri_host_port("<sip:h"), None);
        assert_eq!(uri_host_port("sip:u@h:"), None);
    }

    #[test]
    fn via_branch_forms() {
        assert_eq!(
            via_branch("SIP/2.0/UDP 127.0.0.1:5080;branch=z9hG4bK-1;rport"),
            Some("z9hG4bK-1")
        );
        assert_eq!(
            via_branch("SIP/2.0/UDP 127.0.0.2;Branch = z9hG4bKabc"),
            Some("z9hG4bKabc")
        );
        assert_eq!(via_branch("SIP/2.0/UDP 127.0.0.2;rport"), None);
        assert_eq!(via_branch("SIP/2.0/UDP 127.0.0.2;branch="), None);
        // The sent-by part is not a parameter; an empty branch is skipped for a later one; a
        // value ends at a comma (a second Via value in the same header line).
        assert_eq!(via_branch("branch=z9hG4bKx"), None);
        assert_eq!(
            via_branch("SIP/2.0/TCP h;branch= ;x=1;branch=z9hG4bK2,SIP/2.0/UDP g"),
            Some("z9hG4bK2")
        );
        assert_eq!(via_branch("SIP/2.0/UDP h;rport;branch"), None);
        assert_eq!(via_branch("SIP/2.0/UDP h;"), None);
    }
}
