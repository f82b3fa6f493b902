"""The lab itself, without the gateway: Prosody and Kamailio with the shipped configs
start and stop cleanly in both modes, and the test clients work against them. Where a
gateway is needed, the test plays it with a raw UDP socket or a small HTTP server."""
import http.server
import os
import socket
import threading
import time
import urllib.parse

import pytest

from conftest import GW_ADDR, GW_HTTP, LAB_IP, listening
from sip_ua import SipUA, Subscription, parse_pidf, pidf
from xmpp_client import XmppClient, XmppError

PORTS = [("u", LAB_IP + ":5060"), ("t", LAB_IP + ":5060"), ("t", LAB_IP + ":5222"), ("t", LAB_IP + ":5347")]


def pid_alive(pid):
    try:
        with open("/proc/%d/status" % pid) as f:
            return "\nState:\tZ" not in f.read()
    except OSError:
        return False


def test_lab_starts_and_stops_twice_in_both_modes(lab_manager):
    for mode in ("notifier", "pua", "notifier", "pua"):
        lab = lab_manager.ensure(mode, False)
        pids = [lab._pid("kamailio"), lab._pid("prosody")]
        assert all(pids) and all(pid_alive(p) for p in pids), "lab (%s) not running: %s" % (mode, pids)
        with open(os.path.join(lab.run_dir, "lab.env")) as f:
            assert "GW_MODE=%s\n" % mode in f.read()
        assert [p for p in PORTS if not listening(*p)] == []
        lab.stop()
        assert [p for p in pids if pid_alive(p)] == [], "stop.sh left processes running"
        assert [p for p in PORTS if listening(*p)] == [], "ports still bound after stop.sh"


def test_alice_and_zoe_log_in_and_fetch_an_empty_roster(lab_notifier, xmpp):
    alice = xmpp("alice")
    zoe = xmpp("zoe")
    assert alice.jid == "alice@xmpp.test/e2e"
    assert zoe.jid == "zoe@xmpp.test/e2e"
    assert alice.roster == {}
    assert zoe.get_roster() == {}
    # a directed presence between them arrives with the exact text
    zoe.presence(to="alice@xmpp.test/e2e", status="Büro ☕ 会議中")
    el = alice.wait(lambda e: e.get("from") == "zoe@xmpp.test/e2e" and e.find("{jabber:client}status") is not None)
    assert el is not None and el.find("{jabber:client}status").text == "Büro ☕ 会議中"


def test_wrong_password_is_refused(lab_notifier):
    c = XmppClient(LAB_IP)
    try:
        with pytest.raises(XmppError, match="SASL PLAIN failed"):
            c.login("alice", "wrong")
    finally:
        c.close()


def test_component_handshake_with_the_lab_secret(lab_notifier):
    """What the gateway's XEP-0114 connection will do (sha1(stream id + secret))."""
    import hashlib
    import xml.etree.ElementTree as ET
    s = socket.create_connection((LAB_IP, 5347), timeout=5)
    try:
        s.sendall(b"<stream:stream xmlns='jabber:component:accept' "
                  b"xmlns:stream='http://etherx.jabber.org/streams' to='sip.xmpp.test'>")
        p = ET.XMLPullParser(events=("start", "end"))
        sid, got = None, None
        end = time.monotonic() + 5
        while time.monotonic() < end and got is None:
            p.feed(s.recv(4096))
            for ev, el in p.read_events():
                if ev == "start" and sid is None:
                    sid = el.get("id")
                    s.sendall(("<handshake>%s</handshake>" % hashlib.sha1((sid + "gwsecret").encode())
                               .hexdigest()).encode())
                elif ev == "end" and el.tag.endswith("handshake"):
                    got = el
        assert got is not None and (got.text or "") == ""
    finally:
        s.close()


def test_bob_publishes_and_a_watcher_gets_notifies(lab_notifier, sip):
    bob, watcher = sip("bob"), sip("zoe")
    sub = Subscription(watcher, "sip:bob@sip.test")
    r = sub.subscribe(600)
    assert r is not None and r.code == 200 and r.h("expires") == "600"
    n = sub.wait_notify()
    assert n is not None and n.sub_state() == ("active", {"expires": "600"}) and n.body == ""

    from sip_ua import Publication
    pub = Publication(bob, "sip:bob@sip.test")
    p = pub.publish(pidf("sip:bob@sip.test", "open", "In the office", ["away"]))
    assert p is not None and p.code == 200 and p.h("sip-etag") != ""
    n = sub.wait_notify()
    assert n is not None and n.h("content-type") == "application/pidf+xml"
    doc = parse_pidf(n.body_bytes)
    assert [(t["id"], t["basic"], t["notes"]) for t in doc["tuples"]] == [("t-bob", "open", ["In the office"])]
    assert doc["activities"] == ["away"]

    # refresh: SIP-If-Match, no body -> 200 with a (possibly new) etag, same document
    etag = pub.etag
    p = pub.refresh()
    assert p is not None and p.code == 200 and p.h("sip-etag") != "" and etag != ""
    # modify with the unicode note: byte-exact in the NOTIFY
    p = pub.publish(pidf("sip:bob@sip.test", "open", "Büro ☕ 会議中"))
    assert p is not None and p.code == 200
    n = sub.wait_notify(pred=lambda m: "Büro".encode() in m.body_bytes)
    assert n is not None and "Büro ☕ 会議中".encode("utf-8") in n.body_bytes
    assert parse_pidf(n.body_bytes)["tuples"][0]["notes"] == ["Büro ☕ 会議中"]

    r = sub.unsubscribe()
    assert r is not None and r.code == 200
    n = sub.wait_notify(pred=lambda m: m.sub_state()[0] == "terminated")
    assert n is not None and n.sub_state() == ("terminated", {"reason": "timeout"})
    assert pub.remove().code == 200


def test_subscribe_to_unknown_domain_is_forbidden(lab_notifier, sip):
    """What the gateway gets for carol*unknown.example (spec 4.8: 403 -> unsubscribed)."""
    ua = sip("gwtest")
    r = Subscription(ua, "sip:carol@unknown.example").subscribe(600)
    assert r is not None and r.code == 403


def _fake_gateway():
    host, port = GW_ADDR.rsplit(":", 1)
    gw = SipUA("alice*xmpp.test", host, (LAB_IP, 5060), port=int(port))
    return gw


def test_notifier_mode_relays_subscribe_to_the_gateway(lab_notifier, sip):
    carol = sip("carol")
    gw = _fake_gateway()
    try:
        gw.answer = lambda m: (200, "OK", ["Contact: <%s>" % gw.contact, "Expires: 600"]
                               + ["Record-Route: %s" % v for v in m.hall("record-route")])
        sub = Subscription(carol, "sip:alice*xmpp.test@sip-xmpp.test")
        r = sub.subscribe(600)
        s = gw.wait_request("SUBSCRIBE", 1)
        assert s is not None and s.ruri == "sip:alice*xmpp.test@sip-xmpp.test"
        assert len(s.hall("record-route")) == 1 and s.hall("record-route")[0].startswith("<sip:%s;lr" % LAB_IP)
        assert r is not None and r.code == 200
        assert sub.route == s.hall("record-route") and sub.remote_target == gw.contact
        # the in-dialog refresh follows the route set to the gateway
        r = sub.refresh(300)
        s2 = gw.wait_request("SUBSCRIBE", 1)
        assert r is not None and r.code == 200 and s2 is not None and s2.h("expires") == "300"
        assert s2.h("call-id") == sub.call_id
    finally:
        gw.close()


class _Recorder(http.server.BaseHTTPRequestHandler):
    requests = []

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.requests.append((self.path, self.headers.get("Content-Type"), body.decode()))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *a):
        pass


def test_pua_mode_reports_sip_watchers_to_the_gateway_http_api(lab_pua, sip):
    host, port = GW_HTTP.rsplit(":", 1)
    _Recorder.requests = []
    srv = http.server.HTTPServer((host, int(port)), _Recorder)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        carol = sip("carol")
        sub = Subscription(carol, "sip:alice*xmpp.test@sip-xmpp.test")
        r = sub.subscribe(600)
        assert r is not None and r.code == 200
        n = sub.wait_notify()
        assert n is not None and n.sub_state()[0] == "active"
        assert len(_Recorder.requests) == 1
        path, ctype, body = _Recorder.requests[0]
        assert path == "/pua/req_winfo"
        assert ctype == "application/x-www-form-urlencoded"
        assert urllib.parse.parse_qs(body, strict_parsing=True) == {
            "uri": ["sip:alice*xmpp.test@sip-xmpp.test"], "expires": ["600"], "watcher": ["sip:carol@sip.test"]}
        # the in-dialog refresh goes to the presence server directly: no second report
        assert sub.refresh(600).code == 200
        assert len(_Recorder.requests) == 1
    finally:
        srv.shutdown()
        srv.server_close()


def test_pua_mode_subscribe_works_when_the_gateway_http_api_is_down(lab_pua, sip):
    carol = sip("carol")
    sub = Subscription(carol, "sip:alice*xmpp.test@sip-xmpp.test")
    t0 = time.monotonic()
    r = sub.subscribe(600)
    assert r is not None and r.code == 200 and time.monotonic() - t0 < 2.5
    n = sub.wait_notify()
    assert n is not None and n.sub_state()[0] == "active"


def test_pua_mode_accepts_publish_and_winfo_from_the_gateway_only(lab_pua, sip):
    gw = _fake_gateway()
    try:
        pres = "sip:alice*xmpp.test@sip-xmpp.test"
        w = Subscription(gw, pres, event="presence.winfo", accept="application/watcherinfo+xml")
        r = w.subscribe(600)
        assert r is not None and r.code == 200
        n = w.wait_notify()
        assert n is not None and n.h("content-type") == "application/watcherinfo+xml"
        from sip_ua import Publication
        p = Publication(gw, pres).publish(pidf("pres:" + pres[4:], "open", "Lunch", ["away"], tuple_id="ID-e2e"))
        assert p is not None and p.code == 200 and p.h("sip-etag") != ""
        carol = sip("carol")
        sub = Subscription(carol, pres)
        assert sub.subscribe(600).code == 200
        n = sub.wait_notify(pred=lambda m: m.body != "")
        assert n is not None and parse_pidf(n.body_bytes)["tuples"][0]["notes"] == ["Lunch"]
        wn = w.wait_notify(pred=lambda m: b"sip:carol@sip.test" in m.body_bytes)
        assert wn is not None
        # a PUBLISH that does not come from GW_ADDR is relayed to the gateway, not stored
        other = Publication(carol, pres).publish(pidf("pres:x", "open", "fake"))
        assert gw.wait_request("PUBLISH", 2) is not None and other is not None and other.code == 200
    finally:
        gw.close()
