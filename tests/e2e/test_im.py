"""Instant messaging end to end (issue 15, RFC 7572 page mode), in both presence modes:
a real SIP phone (baresip, registered to Kamailio) and a real XMPP c2s client (alice,
logged in to Prosody) exchange messages through Kamailio and the gateway.

  SIP -> XMPP  baresip /message sip:alice*xmpp.test@sip-xmpp.test -> Kamailio (GATEWAY route)
               -> gateway -> <message type='chat' from='carol*sip.test@sip.xmpp.test'>
  XMPP -> SIP  <message to='carol*sip.test@sip.xmpp.test'> -> gateway -> MESSAGE
               sip:carol@sip.test to Kamailio -> registrar lookup -> baresip

What baresip 1.0.0 (Debian baresip-core) can and cannot do here, found by these tests:
  - it registers (UDP or TCP), sends `/message` to its contact and receives MESSAGEs
    (UDP and TCP); the tests read the received bodies from its SIP trace (-s), and a short
    body also from what it shows the user.
  - `/message` with a body over ~1 KB fails inside baresip (message_send: EINVAL) before
    anything is sent, so the 4 KB SIP -> XMPP message is sent by a scripted UA over TCP
    (`tcp_request` below). The 4 KB XMPP -> SIP message is received by baresip itself.
"""
import os
import socket
import time

import pytest

import baresip_ua
import conftest
from conftest import LAB_IP, PROXY, REQUIRE_GATEWAY
from sip_ua import SipMessage, SipUA, Subscription, rand, uri_of
from xmpp_client import XML_LANG, local, stanza_diff

pytestmark = pytest.mark.gateway

ALICE_SIP = "sip:alice*xmpp.test@sip-xmpp.test"
ALICE = "alice@xmpp.test"
NS_STANZAS = "urn:ietf:params:xml:ns:xmpp-stanzas"
# unicode from several planes, XML and SIP special characters
UNICODE = "Grüße aus Köln ☃ — 日本語 😀 <&> \"quoted\" 'single'"

_next_port = [5100]


def jid_of(user, domain="sip.test"):
    return "%s*%s@sip.xmpp.test" % (user, domain)


def xml_escape(s):
    return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("'", "&apos;")


def big_body(size=4096):
    """A UTF-8 body of exactly `size` octets, not all ASCII, no newline."""
    unit, out, n = "0123456789 é ☃ abcdef ", [], 0
    while n + len(unit.encode("utf-8")) <= size:
        out.append(unit)
        n += len(unit.encode("utf-8"))
    return "".join(out) + "x" * (size - n)


def is_message(frm=None, typ=None):
    def pred(e):
        return local(e.tag) == "message" and (frm is None or e.get("from") == frm) \
            and (typ is None or e.get("type") == typ)
    return pred


@pytest.fixture
def phone(gw_lab):
    """Factory: phone('carol') -> a started baresip for sip:carol@sip.test whose contact
    (the target of `/message`) is alice. Stopped (and so unregistered) at teardown."""
    if not baresip_ua.available():
        if REQUIRE_GATEWAY:
            pytest.fail("baresip (Debian baresip-core) is not installed", pytrace=False)
        pytest.skip("baresip (Debian baresip-core) is not installed")
    phones = []

    def make(user, transport="udp", domain="sip.test", regint=60, peer=ALICE_SIP):
        port = _next_port[0]
        _next_port[0] += 2
        p = baresip_ua.Baresip(gw_lab.run_dir, user, LAB_IP, port, PROXY, peer, domain=domain,
                               transport=transport, regint=regint)
        phones.append(p)
        if regint:
            p.wait_registered()
        else:
            p.wait_ready()
        return p

    yield make
    for p in phones:
        p.close()


def tcp_request(method, ruri, frm, body, timeout=5.0, content_type="text/plain;charset=UTF-8"):
    """One request over a fresh TCP connection to Kamailio; returns the final response
    (SipMessage) or None. For what baresip cannot send (a body over ~1 KB)."""
    body = body.encode("utf-8")
    with socket.create_connection(PROXY, timeout=timeout, source_address=(LAB_IP, 0)) as s:
        ip, port = s.getsockname()
        call_id = "%s@%s" % (rand(16), ip)
        head = ["%s %s SIP/2.0" % (method, ruri),
                "Via: SIP/2.0/TCP %s:%d;branch=z9hG4bK%s;rport" % (ip, port, rand()),
                "Max-Forwards: 70", "From: <%s>;tag=%s" % (frm, rand()), "To: <%s>" % ruri,
                "Call-ID: " + call_id, "CSeq: 1 %s" % method, "Content-Type: " + content_type,
                "Content-Language: en", "Content-Length: %d" % len(body), "", ""]
        s.sendall("\r\n".join(head).encode("utf-8") + body)
        buf, end = b"", time.monotonic() + timeout
        while time.monotonic() < end:
            while b"\r\n\r\n" in buf:
                head_end = buf.index(b"\r\n\r\n") + 4
                r = SipMessage(buf[:head_end])
                n = int(r.h("content-length", "0") or 0)
                if len(buf) < head_end + n:
                    break
                r = SipMessage(buf[:head_end + n])
                buf = buf[head_end + n:]
                if r.code is not None and r.code >= 200 and r.h("call-id") == call_id:
                    return r
            s.settimeout(max(0.01, end - time.monotonic()))
            try:
                chunk = s.recv(65536)
            except socket.timeout:
                break
            if not chunk:
                break
            buf += chunk
    return None


def kamailio_log(lab):
    with open(os.path.join(lab.run_dir, "kamailio.log"), encoding="utf-8", errors="replace") as f:
        return f.read()


def test_im_baresip_and_xmpp_client_exchange_unicode(gw_lab, phone, xmpp):
    carol = phone("carol")
    alice = xmpp("alice")

    # SIP -> XMPP: carol's phone sends, alice's client gets the exact text
    carol.message(UNICODE)
    got = alice.wait(is_message(frm=jid_of("carol")), 5, "carol's message")
    body = got.find("{jabber:client}body")
    assert body is not None and body.text == UNICODE, "body %r" % (body is not None and body.text)
    assert got.get("type") == "chat" and got.get("to") == ALICE, got.attrib
    assert sorted(local(c.tag) for c in got) in (["body"], ["body", "thread"]), \
        [c.tag for c in got]
    # the phone was answered with a 2xx: no failure shown
    assert carol.wait_output(lambda out: any(
        t["start"].startswith("SIP/2.0 20") and t["headers"].get("cseq", "").endswith("MESSAGE")
        for t in carol.traced())), carol.output()[-3000:]
    assert carol.failures() == [], carol.failures()

    # XMPP -> SIP: alice replies, the phone receives exactly her text
    reply = "Antwort: " + UNICODE
    alice.send("<message type='chat' to='%s' id='im-u1'><body>%s</body>"
               "<request xmlns='urn:xmpp:receipts'/></message>" % (jid_of("carol"), xml_escape(reply)))
    m = carol.wait_message(reply, 5)
    assert m is not None, "baresip got no MESSAGE with the reply; traced: %r\n%s" % (
        [t["body"][:80] for t in carol.traced("MESSAGE")], carol.output()[-3000:])
    assert m["start"].startswith("MESSAGE sip:carol"), m["start"]
    assert m["headers"]["from"].startswith("<%s>" % ALICE_SIP), m["headers"]["from"]
    assert m["headers"]["content-type"] == "text/plain;charset=UTF-8", m["headers"]
    # and shows it to its user
    assert carol.wait_shown(reply, 3), carol.output()[-2000:]
    # delivered (baresip answers 200): alice gets the XEP-0184 receipt she asked for
    got = alice.wait(is_message(frm=jid_of("carol")), 5, "the receipt")
    diff = stanza_diff(got, "<message xmlns='jabber:client' from='%s' to='alice@xmpp.test/e2e'>"
                            "<received xmlns='urn:xmpp:receipts' id='im-u1'/></message>" % jid_of("carol"),
                       ignore=("id", XML_LANG))
    assert diff is None, diff
    assert alice.wait(is_message(typ="error"), 1.0) is None


def test_im_4kb_both_ways_over_tcp(gw_lab, phone, xmpp):
    big = big_body(4096)
    assert len(big.encode("utf-8")) == 4096
    carol = phone("carol")  # registered over UDP
    alice = xmpp("alice")

    # XMPP -> SIP: the gateway sends it over TCP (RFC 3428's 1300-octet rule), Kamailio
    # relays it to carol's UDP-registered contact over TCP, baresip receives it whole
    alice.send("<message type='chat' to='%s' id='im-big'><body>%s</body></message>"
               % (jid_of("carol"), xml_escape(big)))
    m = carol.wait_message(big, 8)
    assert m is not None, "baresip got no 4 KB MESSAGE: %r\n%s" % (
        [(t["transport"], len(t["body"])) for t in carol.traced("MESSAGE")], carol.output()[-1500:])
    assert m["transport"] == "TCP", m["transport"]
    log = kamailio_log(gw_lab)
    assert "SIP-IN MESSAGE sip:carol@sip.test from tcp:" in log, "gateway did not send it over TCP"
    assert alice.wait(is_message(typ="error"), 1.0) is None

    # SIP -> XMPP over TCP (baresip 1.0.0 cannot send a body over ~1 KB: scripted UA)
    r = tcp_request("MESSAGE", ALICE_SIP, "sip:dave@sip.test", big)
    assert r is not None and 200 <= r.code < 300, r
    got = alice.wait(is_message(frm=jid_of("dave")), 5, "dave's 4 KB message")
    assert got.find("{jabber:client}body").text == big
    assert got.get("type") == "chat"

    # the same over UDP breaks RFC 3261 18.1.1: Kamailio answers 513 and relays nothing
    with SipUA("dave", LAB_IP, PROXY) as udp:
        r = udp.request("MESSAGE", ALICE_SIP, body=big.encode("utf-8"),
                        extra=("Content-Type: text/plain;charset=UTF-8",))
        assert r is not None and r.code == 513, r
    assert alice.wait(is_message(frm=jid_of("dave")), 1.0) is None

    # about the largest body baresip 1.0.0 can send (1000 octets), from a phone registered
    # over TCP
    dave = phone("dave", transport="tcp")
    text = big_body(1000)
    dave.message(text)
    got = alice.wait(is_message(frm=jid_of("dave")), 5, "dave's baresip message")
    assert got.find("{jabber:client}body").text == text


def test_im_to_unregistered_sip_user_comes_back_as_error_stanza(gw_lab, xmpp):
    alice = xmpp("alice")
    alice.send("<message type='chat' to='%s' id='im-404'><body>anyone there?</body></message>"
               % jid_of("nobody"))
    got = alice.wait(is_message(typ="error"), 8, "the error stanza")
    diff = stanza_diff(got, (
        "<message xmlns='jabber:client' type='error' id='im-404' to='alice@xmpp.test/e2e' from='%s'>"
        "<error type='cancel' by='sip.xmpp.test'><item-not-found xmlns='%s'/>"
        "<text xmlns='%s' xml:lang='en'>SIP 404 Not Found</text></error></message>"
        % (jid_of("nobody"), NS_STANZAS, NS_STANZAS)), ignore=(XML_LANG,))
    assert diff is None, diff
    # Kamailio's registrar said so
    assert "MESSAGE to sip:nobody@sip.test: no registered contact" in kamailio_log(gw_lab)


def test_im_to_a_phone_that_unregistered_comes_back_as_error_stanza(gw_lab, phone, xmpp):
    erin = phone("erin")
    erin.close()  # baresip unregisters when it stops (SIGTERM)
    alice = xmpp("alice")
    alice.send("<message type='chat' to='%s' id='im-gone'><body>still there?</body></message>"
               % jid_of("erin"))
    got = alice.wait(is_message(typ="error"), 8, "the error stanza")
    diff = stanza_diff(got, (
        "<message xmlns='jabber:client' type='error' id='im-gone' to='alice@xmpp.test/e2e' from='%s'>"
        "<error type='cancel' by='sip.xmpp.test'><item-not-found xmlns='%s'/>"
        "<text xmlns='%s' xml:lang='en'>SIP 404 Not Found</text></error></message>"
        % (jid_of("erin"), NS_STANZAS, NS_STANZAS)), ignore=(XML_LANG,))
    assert diff is None, diff


def test_im_goes_to_the_spelling_the_presence_side_learned(gw_lab, xmpp, sip):
    """A SIP user spelled `Bobby` (JIDs fold it to `bobby`) watches alice: the gateway's
    presence side learns that spelling (mapping case 9), and alice's message to
    bobby*sip.test@sip.xmpp.test goes to sip:Bobby@sip.test, not sip:bobby@sip.test."""
    if gw_lab.mode != "notifier":
        pytest.skip("only in notifier mode does the gateway itself take SIP watchers' SUBSCRIBEs")
    ua = sip("Bobby")
    r = ua.request("REGISTER", "sip:sip.test", to=ua.aor, extra=("Expires: 60",))
    assert r is not None and r.code == 200, r
    alice = xmpp("alice")
    sub = Subscription(ua, ALICE_SIP)
    r = sub.subscribe(60)
    assert r is not None and 200 <= r.code < 300, r
    alice.send("<message type='chat' to='%s' id='im-case'><body>hi Bobby</body></message>"
               % jid_of("bobby"))
    m = ua.wait_request("MESSAGE", 5)
    assert m is not None, "no MESSAGE; alice got %s" % alice.dump_inbox()
    assert uri_of(m.h("to")) == "sip:Bobby@sip.test", m.h("to")
    assert m.body == "hi Bobby"
    sub.unsubscribe()


@pytest.fixture
def gw_sip_domains(gw_lab):
    """The gateway restarted (same lab, mode and store) with allowed_sip_domains = ["sip.test"];
    restarted with the default config afterwards."""
    lab = gw_lab

    def restart(template):
        lab.stop_gateway()
        os.replace(lab.gateway_log, lab.gateway_log + ".%s" % rand(4))
        lab.gateway_toml = template
        try:
            lab._start_gateway(lab.mode)
        except RuntimeError as ex:
            pytest.fail(str(ex), pytrace=False)

    default = conftest.GATEWAY_TOML
    sep = 'domain_separator = "*"\n'
    assert sep in default
    restart(default.replace(sep, sep + 'allowed_sip_domains = ["sip.test"]\n'))
    try:
        yield lab
    finally:
        restart(default)
        del lab.gateway_toml


def test_im_from_sip_domain_outside_allowed_sip_domains_is_refused(gw_sip_domains, phone, xmpp):
    alice = xmpp("alice")
    # a real phone of another domain (not registered: Kamailio serves sip.test only)
    eve = phone("eve", domain="other.test", regint=0)
    eve.message("hello from outside")
    assert eve.wait_output(lambda _: eve.failures(), 5), eve.output()[-2000:]
    assert eve.failures() == [(403, "Forbidden")], eve.failures()
    # the same, scripted, for the exact status line
    with SipUA("mallory", LAB_IP, PROXY, domain="other.test") as ua:
        r = ua.request("MESSAGE", ALICE_SIP, body="scripted hello from outside",
                       extra=("Content-Type: text/plain;charset=UTF-8",))
        assert r is not None and (r.code, r.reason) == (403, "Forbidden"), r
    assert alice.wait(is_message(), 1.0) is None, "a refused MESSAGE reached alice"
    # sip.test is still served
    carol = phone("carol")
    carol.message("inside " + UNICODE)
    got = alice.wait(is_message(frm=jid_of("carol")), 5, "carol's message")
    assert got.find("{jabber:client}body").text == "inside " + UNICODE
