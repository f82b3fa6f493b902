"""Issue 16, admin API access, with the real Kamailio in PUA mode: the shipped
config/kamailio.cfg POSTs /pua/req_winfo with "Authorization: Bearer <GW_HTTP_TOKEN>", and the
gateway (http.token set through PUA_XMPP__HTTP__TOKEN) serves it only with the right token.

  right token:  carol's SUBSCRIBE via Kamailio -> req_winfo accepted -> alice is asked
                (exact <presence type='subscribe'/>), approves, and carol's NOTIFY carries
                alice's note (the gateway PUBLISHed it to Kamailio).
  wrong / no token:  Kamailio still serves the SUBSCRIBE, but the gateway answers 401, logs
                the refusal (address, path, reason; never the token) and does nothing:
                alice is not asked, no PUBLISH, no winfo SUBSCRIBE.
Also /health stays open and /metrics needs the token, over the real listener; and with
http.tls_cert/tls_key the same flow runs over HTTPS (Kamailio started with GW_HTTP_CA).
"""
import http.client
import os
import re
import ssl
import subprocess
import time
import urllib.error
import urllib.request

import pytest

from conftest import GW_HTTP, LAB_IP, _lab_or_fail, wait_until
from sip_ua import Subscription, parse_pidf
from xmpp_client import bare, local, stanza_diff

pytestmark = pytest.mark.gateway

TOKEN = "e2e-admin-token-7f3a9c1d5b2e8046"
WRONG = "e2e-admin-token-7f3a9c1d5b2e8047"
ALICE = "alice@xmpp.test"
ALICE_SIP = "sip:alice*xmpp.test@sip-xmpp.test"
UPDATE = 12.0


def jid_of(user):
    return "%s*sip.test@sip.xmpp.test" % user


@pytest.fixture
def token_lab(lab_manager, request):
    """The lab in PUA mode with the gateway; request.param = the token Kamailio sends."""
    lab_manager.http_token = TOKEN
    lab_manager.kamailio_http_token = request.param
    try:
        lab = _lab_or_fail(lab_manager, "pua", True)
        yield lab
        assert lab.gateway is not None and lab.gateway.poll() is None, "the gateway exited"
    finally:
        lab_manager.http_token = None
        lab_manager.kamailio_http_token = None


def read(path):
    with open(path, encoding="utf-8", errors="replace") as f:
        return f.read()


def http_get(path, token=None, cafile=None):
    scheme = "https" if cafile else "http"
    req = urllib.request.Request("%s://%s%s" % (scheme, GW_HTTP, path))
    if token is not None:
        req.add_header("Authorization", "Bearer " + token)
    ctx = ssl.create_default_context(cafile=cafile) if cafile else None
    try:
        with urllib.request.urlopen(req, timeout=5, context=ctx) as r:
            return r.status, r.headers, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read().decode()


def req_winfo_lines(lab):
    """Kamailio's REQ-WINFO xlog lines: (body, http result code)."""
    return re.findall(r"REQ-WINFO POST \S+ \[([^\]]*)\] -> (-?\d+)", read(os.path.join(lab.run_dir, "kamailio.log")))


def refusals(lab):
    return [line for line in read(lab.gateway_log).splitlines() if "HTTP request refused" in line]


def sip_methods_sent(lab, method):
    """SIP requests of `method` for alice the gateway logged as sent (debug log)."""
    return [line for line in read(lab.gateway_log).splitlines()
            if 'sending request method="%s" uri=%s ' % (method, ALICE_SIP) in line]


@pytest.mark.parametrize("token_lab", [TOKEN], indirect=True)
def test_right_token_req_winfo_reaches_the_gateway_and_presence_flows(token_lab, xmpp, sip):
    lab = token_lab
    # The listener itself: /health open, /metrics only with the token.
    assert http_get("/health")[0] == 200
    status, headers, _ = http_get("/metrics")
    assert status == 401 and headers.get("WWW-Authenticate") == 'Bearer realm="pua-xmpp"', (status, headers)
    assert http_get("/metrics", WRONG)[0] == 401
    status, _, body = http_get("/metrics", TOKEN)
    assert status == 200 and 'pua_xmpp_http_refusals_total{reason="token"} 2' in body, body

    alice = xmpp("alice")
    sub = Subscription(sip("carol"), ALICE_SIP)
    r = sub.subscribe(600)
    assert r is not None and r.code == 200, r
    el = alice.wait(lambda e: local(e.tag) == "presence" and e.get("type") == "subscribe"
                    and bare(e.get("from")) == jid_of("carol"), 8.0)
    assert el is not None, "alice was not asked: %s" % alice.dump_inbox()
    diff = stanza_diff(el, "<presence type='subscribe' from='%s'/>" % jid_of("carol"))
    assert diff is None, diff
    assert bare(el.get("to")) == ALICE
    # Kamailio's POST got the gateway's 200.
    assert wait_until(lambda: any(rc == "200" for _, rc in req_winfo_lines(lab)), 3), req_winfo_lines(lab)
    # ... and the gateway watches alice's winfo at Kamailio (the same log test the refused
    # case relies on to see that nothing was sent).
    assert wait_until(lambda: sip_methods_sent(lab, "SUBSCRIBE"), 3), "no winfo SUBSCRIBE logged"

    alice.presence(to=jid_of("carol"), typ="subscribed")
    alice.presence(show="away", status="Token ok")

    def has_note(m):
        if not m.body_bytes:
            return False
        try:
            return any("Token ok" in t["notes"] for t in parse_pidf(m.body_bytes)["tuples"])
        except Exception:  # noqa: BLE001
            return False
    n = sub.wait_notify(UPDATE, has_note)
    assert n is not None, "no NOTIFY with alice's note\n%s" % sub.ua.dump_log(6)
    assert sip_methods_sent(lab, "PUBLISH"), "no PUBLISH logged"
    sub.unsubscribe()

    # Only the two refusals made on purpose above; the token is in no log.
    lines = refusals(lab)
    assert len(lines) == 2 and all("path=/metrics" in x for x in lines), lines
    for name in ("gateway.log", "kamailio.log"):
        text = read(os.path.join(lab.run_dir, name))
        assert TOKEN not in text and WRONG not in text, name


@pytest.mark.parametrize("token_lab", [WRONG, None], indirect=True, ids=["wrong-token", "no-token"])
def test_wrong_or_missing_token_is_refused_and_nothing_happens(token_lab, xmpp, sip):
    lab = token_lab
    alice = xmpp("alice")
    sub = Subscription(sip("dave"), ALICE_SIP)
    r = sub.subscribe(600)
    # Kamailio serves the SUBSCRIBE all the same (the hook's failure is only logged).
    assert r is not None and r.code == 200, r
    assert wait_until(lambda: len(req_winfo_lines(lab)) >= 1, 5), "Kamailio did not call req_winfo"
    body, rc = req_winfo_lines(lab)[0]
    assert rc == "401", req_winfo_lines(lab)
    assert "watcher=sip%3adave%40sip.test" in body.lower(), body

    assert wait_until(lambda: len(refusals(lab)) >= 1, 3), "no refusal logged"
    lines = refusals(lab)
    assert len(lines) == 1, lines
    reason = "wrong bearer token" if lab.kamailio_http_token else "no bearer token"
    assert re.search(r"peer=127\.\d+\.\d+\.\d+:\d+ ", lines[0]), lines[0]  # Kamailio's socket
    assert "method=POST" in lines[0] and "path=/pua/req_winfo" in lines[0], lines[0]
    assert 'reason="%s"' % reason in lines[0], lines[0]

    # Nothing happened: alice is not asked, nothing is published or subscribed for her.
    el = alice.wait(lambda e: local(e.tag) == "presence" and e.get("type") == "subscribe"
                    and bare(e.get("from")) == jid_of("dave"), 4.0)
    assert el is None, "alice was asked although req_winfo was refused"
    alice.presence(show="away", status="Refused")
    time.sleep(2.0)
    log = read(lab.gateway_log)
    assert "req_winfo" not in log.replace("/pua/req_winfo", ""), \
        [x for x in log.splitlines() if "req_winfo" in x]
    assert sip_methods_sent(lab, "PUBLISH") == [] and sip_methods_sent(lab, "SUBSCRIBE") == [], \
        (sip_methods_sent(lab, "PUBLISH"), sip_methods_sent(lab, "SUBSCRIBE"))
    status, _, body = http_get("/metrics", TOKEN)
    assert status == 200 and 'pua_xmpp_http_refusals_total{reason="token"} 1' in body, body
    for name in ("gateway.log", "kamailio.log"):
        text = read(os.path.join(lab.run_dir, name))
        assert TOKEN not in text and WRONG not in text, name
    sub.unsubscribe()


def self_signed(d, name):
    """A self-signed certificate for LAB_IP (openssl): (cert, key) paths."""
    cert, key = str(d / (name + ".crt")), str(d / (name + ".key"))
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                    "-nodes", "-keyout", key, "-out", cert, "-days", "2", "-subj", "/CN=pua-xmpp e2e",
                    "-addext", "subjectAltName=IP:%s" % LAB_IP], check=True, capture_output=True)
    return cert, key


@pytest.fixture
def https_lab(lab_manager, tmp_path_factory, request):
    """PUA mode, gateway on HTTPS with a certificate for LAB_IP, Kamailio calling https://
    and verifying it (GW_HTTP_CA), both with the token. request.param "other-ca": Kamailio
    trusts another certificate only."""
    d = tmp_path_factory.mktemp("https")
    cert, key = self_signed(d, "gw")
    lab_manager.http_token = TOKEN
    lab_manager.kamailio_http_token = TOKEN
    lab_manager.http_tls = (cert, key)
    lab_manager.kamailio_http_ca = self_signed(d, "other")[0] if request.param == "other-ca" else cert
    try:
        lab = _lab_or_fail(lab_manager, "pua", True)
        yield lab, cert
        assert lab.gateway is not None and lab.gateway.poll() is None, "the gateway exited"
    finally:
        lab_manager.http_token = lab_manager.kamailio_http_token = None
        lab_manager.http_tls = lab_manager.kamailio_http_ca = None


@pytest.mark.parametrize("https_lab", ["gw-ca"], indirect=True)
def test_https_kamailio_calls_req_winfo_over_tls(https_lab, xmpp, sip):
    lab, cert = https_lab
    assert http_get("/health", cafile=cert)[0] == 200
    assert http_get("/metrics", cafile=cert)[0] == 401
    assert http_get("/metrics", TOKEN, cafile=cert)[0] == 200
    # plain HTTP gets no HTTP answer (a TLS alert, or the connection closed)
    with pytest.raises((urllib.error.URLError, http.client.HTTPException, ConnectionError)):
        http_get("/health")

    alice = xmpp("alice")
    sub = Subscription(sip("erin"), ALICE_SIP)
    r = sub.subscribe(600)
    assert r is not None and r.code == 200, r
    el = alice.wait(lambda e: local(e.tag) == "presence" and e.get("type") == "subscribe"
                    and bare(e.get("from")) == jid_of("erin"), 8.0)
    assert el is not None, "alice was not asked: %s\n%s" % (alice.dump_inbox(), req_winfo_lines(lab))
    assert stanza_diff(el, "<presence type='subscribe' from='%s'/>" % jid_of("erin")) is None
    lines = req_winfo_lines(lab)
    assert lines and lines[0][1] == "200", lines
    assert "https://%s/pua/req_winfo" % GW_HTTP in read(os.path.join(lab.run_dir, "kamailio.log"))
    assert refusals(lab) == [refusals(lab)[0]] and "path=/metrics" in refusals(lab)[0], refusals(lab)
    sub.unsubscribe()


@pytest.mark.parametrize("https_lab", ["other-ca"], indirect=True)
def test_https_kamailio_refuses_a_gateway_certificate_it_does_not_trust(https_lab, xmpp, sip):
    lab, _ = https_lab
    alice = xmpp("alice")
    sub = Subscription(sip("frank"), ALICE_SIP)
    r = sub.subscribe(600)
    assert r is not None and r.code == 200, r
    assert wait_until(lambda: len(req_winfo_lines(lab)) >= 1, 5), "Kamailio did not call req_winfo"
    rc = req_winfo_lines(lab)[0][1]
    assert rc != "200", req_winfo_lines(lab)  # a curl TLS error code, no HTTP status
    el = alice.wait(lambda e: local(e.tag) == "presence" and e.get("type") == "subscribe"
                    and bare(e.get("from")) == jid_of("frank"), 4.0)
    assert el is None, "alice was asked through an unverified TLS connection"
    assert "sending request method" not in read(lab.gateway_log)
    sub.unsubscribe()
