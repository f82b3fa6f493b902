"""SIP over TLS (issue 16) between the gateway and a real Kamailio (tls module).

The test makes its own PKI with openssl: a lab CA signing Kamailio's certificate (IP SAN
LAB_IP, DNS sip.test) and the gateway's (IP SAN LAB_IP, DNS sip-xmpp.test), and a rogue CA.
Kamailio runs with `-A WITH_TLS` (tests/lab/start.sh TLS_CFG=...): a TLS listener on
LAB_IP:5061, requests for sip-xmpp.test relayed to the gateway's TLS listener only. The
gateway's server_address is "sip:LAB_IP:5061;transport=tls" and it verifies Kamailio
against the lab CA (the URI host is an IP, so the IP SAN is what is checked).

PUA mode too (GW_MODE_PUA): Kamailio's presence server serves the SIP watcher of an XMPP
user, the gateway PUBLISHes over TLS and SUBSCRIBEs presence.winfo over TLS, and Kamailio
recognises both as the gateway's (route[FROM_GW]: source IP + top Via sent-by ==
GW_TLS_ADDR); the XMPP watcher of a SIP user works as in notifier mode.

Asserted: presence both ways over TLS only (Kamailio's log shows every request from the
gateway arriving on tls:, its relays to the gateway and their answers on TLS, and no
SIP from the gateway's UDP/TCP address), and a wrong certificate refused with a clear
log line on the side that refuses it; SIGHUP reloads the gateway's certificate.
With LAB_IP=::1 the same tests run over IPv6 (IP SAN ::1, [::1]:5061, [::1]:5081).
"""
import os
import re
import subprocess
import time

import pytest

from conftest import BASE_DIR, GATEWAY_TOML, LAB_IP, tail, wait_until
from sip_ua import Subscription
from test_sip_watches_xmpp import ALICE_SIP, approved_watcher, assert_pidf, note_is
from xmpp_client import is_presence
from test_xmpp_watches_sip import BOB, BOB_RES, expect, expect_bob

pytestmark = pytest.mark.gateway

# LAB_IP=::1 runs the same tests on IPv6: URIs and socket addresses take the bracketed
# form, Kamailio's log prints source addresses without brackets
HOST = "[%s]" % LAB_IP if ":" in LAB_IP else LAB_IP
GW_TLS = "%s:5081" % HOST
SI = re.escape(LAB_IP)  # $si in Kamailio's log


def openssl(*args, cwd):
    subprocess.run(["openssl"] + list(args), cwd=cwd, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def make_ca(d, name):
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", name + "-ca.key", "-out", name + "-ca.pem", "-days", "2",
            "-subj", "/CN=pua-xmpp %s test CA" % name, cwd=d)


def make_leaf(d, ca, name, sans):
    with open(os.path.join(d, name + ".ext"), "w") as f:
        f.write("subjectAltName=%s\nbasicConstraints=CA:FALSE\n"
                "keyUsage=digitalSignature\nextendedKeyUsage=serverAuth,clientAuth\n" % sans)
    openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", name + ".key", "-out", name + ".csr", "-subj", "/CN=" + name, cwd=d)
    openssl("x509", "-req", "-in", name + ".csr", "-CA", ca + "-ca.pem", "-CAkey", ca + "-ca.key",
            "-CAcreateserial", "-out", name + ".pem", "-days", "2", "-extfile", name + ".ext", cwd=d)


KAMAILIO_TLS_CFG = """\
# rendered by tests/e2e/test_sip_tls.py
[server:default]
method = TLSv1.2+
verify_certificate = no
require_certificate = no
certificate = {d}/kamailio.pem
private_key = {d}/kamailio.key

[client:default]
method = TLSv1.2+
verify_certificate = yes
require_certificate = yes
ca_list = {d}/lab-ca.pem
"""


def gateway_toml(d, cert="gateway", ca="lab"):
    """The lab's gateway config with SIP over TLS only (server_address ;transport=tls)."""
    sip = ('[sip]\nlisten = "{gw_addr}"\nserver_address = "sip:{lab_ip}:5061;transport=tls"\n'
           'gateway_domain = "sip-xmpp.test"\n'
           'tls_listen = "%s"\ntls_cert = "%s/%s.pem"\ntls_key = "%s/%s.key"\ntls_ca = "%s/%s-ca.pem"\n'
           % (GW_TLS, d, cert, d, cert, d, ca))
    head, rest = GATEWAY_TOML.split("[xmpp]", 1)
    assert head.strip().splitlines()[-1].startswith("gateway_domain")
    return (head.split("[sip]")[0] + sip + "\n[xmpp]" + rest).replace("{lab_ip}", HOST)


@pytest.fixture(scope="module")
def pki(lab_manager):
    d = os.path.join(BASE_DIR, "tls-pki")
    os.makedirs(d, exist_ok=True)
    make_ca(d, "lab")
    make_ca(d, "rogue")
    make_leaf(d, "lab", "kamailio", "IP:%s,DNS:sip.test" % LAB_IP)
    make_leaf(d, "lab", "gateway", "IP:%s,DNS:sip-xmpp.test" % LAB_IP)
    make_leaf(d, "rogue", "rogue-gateway", "IP:%s,DNS:sip-xmpp.test" % LAB_IP)
    with open(os.path.join(d, "tls.cfg"), "w") as f:
        f.write(KAMAILIO_TLS_CFG.format(d=d))
    return d


@pytest.fixture(scope="module", params=["notifier", "pua"])
def tls_lab(request, lab_manager, pki):
    """The lab (each mode in turn) with Kamailio's TLS listener and the gateway on TLS only."""
    lab_manager.stop()
    os.environ["TLS_CFG"] = os.path.join(pki, "tls.cfg")
    lab_manager.gateway_toml = gateway_toml(pki)
    try:
        lab_manager.start(request.param, True)
    except RuntimeError as ex:
        pytest.fail(str(ex), pytrace=False)
    yield lab_manager
    lab_manager.stop()
    del os.environ["TLS_CFG"]
    del lab_manager.gateway_toml


def notifier_only(lab):
    """The certificate tests do not depend on the mode: run once, in notifier mode."""
    if lab.mode != "notifier":
        pytest.skip("mode-independent; runs in notifier mode")


def kamailio_log(lab):
    with open(os.path.join(lab.run_dir, "kamailio.log"), encoding="utf-8", errors="replace") as f:
        return f.read()


def gateway_log(lab):
    with open(lab.gateway_log, encoding="utf-8", errors="replace") as f:
        return f.read()


def assert_no_plain_sip_from_gateway(lab):
    """Nothing reached Kamailio from the gateway's UDP/TCP address, nor over plain TCP."""
    log = kamailio_log(lab)
    plain = re.findall(r"(?:SIP-IN|SIP-REPLY-IN) .* from (?:udp|tcp):%s:5080\b" % SI, log)
    assert plain == [], plain
    assert "from tcp:" not in log


def test_xmpp_user_watches_sip_user_over_tls(tls_lab, xmpp, bob):
    bob.publish("open", "Over TLS")
    alice = xmpp("alice")
    alice.presence(to=BOB, typ="subscribe")
    expect(alice, is_presence(BOB, "subscribed"), "<presence type='subscribed' from='%s'/>" % BOB)
    expect_bob(alice, "<presence from='%s'><status>Over TLS</status></presence>" % BOB_RES, "Over TLS")
    bob.publish("open", "Still TLS")
    expect_bob(alice, "<presence from='%s'><status>Still TLS</status></presence>" % BOB_RES, "Still TLS")
    log = kamailio_log(tls_lab)
    # the gateway's SUBSCRIBE came in on TLS; Kamailio's NOTIFYs went to the TLS Contact
    assert re.search(r"SIP-IN SUBSCRIBE sip:bob@sip.test from tls:%s:\d+" % SI, log), \
        tail(os.path.join(tls_lab.run_dir, "kamailio.log"))
    assert re.search(r"SIP-LOCAL-OUT NOTIFY sip:alice\*xmpp.test@%s;transport=tls"
                     % re.escape(GW_TLS), log), "no NOTIFY to the gateway's TLS Contact"
    assert "Via: SIP/2.0/TLS %s;branch=" % GW_TLS in log
    glog = gateway_log(tls_lab)
    assert re.search(r"TLS handshake done.*direction=\"?outbound", glog), "gateway opened no TLS connection"
    assert re.search(r"TLS handshake done.*direction=\"?inbound", glog), "Kamailio opened no TLS connection"
    assert_no_plain_sip_from_gateway(tls_lab)
    alice.presence(to=BOB, typ="unsubscribe")
    # the un-SUBSCRIBE goes in-dialog to the presence server's TLS Contact
    assert wait_until(lambda: re.search(r"SIP-IN SUBSCRIBE sip:%s:5061;transport=tls from tls:" % re.escape(HOST),
                                        kamailio_log(tls_lab)), 5), "no in-dialog SUBSCRIBE over TLS"
    assert "handshake failed" not in gateway_log(tls_lab)


def sip_in_blocks(log, method):
    """(first line, message) of each SIP-IN log entry of this method (the xlog of
    request_route prints the whole request between >>>> and <<<<)."""
    return re.findall(r"(SIP-IN %s [^\n]*)\n>>>>\n(.*?)<<<<" % method, log, re.S)


def test_sip_user_watches_xmpp_user_over_tls(tls_lab, xmpp, sip):
    alice = xmpp("alice")
    sub = approved_watcher(sip, alice, "carol", tls_lab.mode)
    alice.presence(show="away", status="TLS lunch")
    assert_pidf(sub.wait_notify(12.0, note_is("TLS lunch")), "open", "TLS lunch", ["away"])
    log = kamailio_log(tls_lab)
    if tls_lab.mode == "pua":
        # Kamailio's presence server sent that NOTIFY: it accepted the gateway's PUBLISH of
        # alice's presence, which came in over TLS from the gateway's TLS address
        pubs = [(line, m) for line, m in sip_in_blocks(log, "PUBLISH")
                if line.startswith("SIP-IN PUBLISH sip:alice*xmpp.test@sip-xmpp.test ")]
        assert pubs, tail(os.path.join(tls_lab.run_dir, "kamailio.log"))
        for line, m in pubs:
            assert re.search(r" from tls:%s:\d+$" % SI, line), line
            assert "Via: SIP/2.0/TLS %s;" % GW_TLS in m, m
        assert any("TLS lunch" in m for _, m in pubs), "no PUBLISH with the new note"
        assert re.search(r"SIP-LOCAL-OUT NOTIFY sip:carol@", log), "the NOTIFY is not Kamailio's own"
        # the gateway's presence.winfo SUBSCRIBE for alice, also over TLS, was served here
        winfo = [(line, m) for line, m in sip_in_blocks(log, "SUBSCRIBE")
                 if re.search(r"^Event: presence\.winfo", m, re.M | re.I)]
        assert winfo, "no presence.winfo SUBSCRIBE from the gateway"
        for line, _ in winfo:
            assert re.search(r" from tls:%s:\d+$" % SI, line), line
        assert re.search(r"SIP-LOCAL-OUT NOTIFY sip:[^ ]*@%s;transport=tls" % re.escape(GW_TLS), log), \
            "no winfo NOTIFY to the gateway's TLS Contact"
        # nothing for sip-xmpp.test was relayed to the gateway (Kamailio served it all)
        assert not re.search(r"SIP-REPLY-IN \d+ [^\n]*\((?:PUBLISH|SUBSCRIBE)\) from tls:%s:5081\b" % SI, log)
        assert_no_plain_sip_from_gateway(tls_lab)
        sub.unsubscribe()
        return
    # Kamailio relayed carol's SUBSCRIBE to the gateway's TLS listener and got its 200 there;
    # the gateway's NOTIFYs (following the Record-Route) came in on TLS
    assert re.search(r"SIP-REPLY-IN 200 OK \(SUBSCRIBE\) from tls:%s:5081\b" % SI, log), \
        tail(os.path.join(tls_lab.run_dir, "kamailio.log"))
    assert re.search(r"SIP-IN NOTIFY sip:carol@[^ ]+ from tls:%s:\d+" % SI, log)
    assert_no_plain_sip_from_gateway(tls_lab)
    sub.unsubscribe()


def restart_gateway(lab, toml):
    """The gateway started again with another config; waits for its component handshake."""
    prosody_log = os.path.join(lab.run_dir, "prosody.log")

    def auths():
        with open(prosody_log, encoding="utf-8", errors="replace") as f:
            return f.read().count("External component successfully authenticated")
    before = auths()
    lab.stop_gateway()
    lab.gateway_toml = toml
    os.replace(lab.gateway_log, lab.gateway_log + ".%d" % time.time())
    lab._start_gateway(lab.mode)
    assert wait_until(lambda: auths() > before, 15), tail(lab.gateway_log)


def test_gateway_refuses_a_kamailio_certificate_it_cannot_verify(tls_lab, pki, xmpp, bob):
    """The gateway trusts only the rogue CA: Kamailio's certificate is refused, with a log
    line naming the peer and the reason, and no SUBSCRIBE reaches Kamailio."""
    notifier_only(tls_lab)
    restart_gateway(tls_lab, gateway_toml(pki, ca="rogue"))
    before = len(re.findall(r"SIP-IN SUBSCRIBE sip:bob@sip.test", kamailio_log(tls_lab)))
    bob.publish("open", "Unreachable")
    alice = xmpp("alice")
    alice.presence(to=BOB, typ="subscribe")
    line = re.compile(r"TLS handshake failed; connection refused.*peer=%s:5061.*direction=\"?outbound"
                      r".*invalid peer certificate: UnknownIssuer" % re.escape(HOST))
    assert wait_until(lambda: any(line.search(x) for x in gateway_log(tls_lab).splitlines()), 10), \
        tail(tls_lab.gateway_log)
    time.sleep(1.0)
    after = len(re.findall(r"SIP-IN SUBSCRIBE sip:bob@sip.test", kamailio_log(tls_lab)))
    assert after == before
    assert_no_plain_sip_from_gateway(tls_lab)


def test_kamailio_refuses_a_gateway_certificate_from_an_unknown_ca(tls_lab, pki, xmpp, sip):
    """The gateway presents a certificate of the rogue CA: Kamailio (verify_certificate=yes
    against the lab CA) refuses the TLS connection to it, so a SIP watcher's SUBSCRIBE
    for an XMPP user fails and nothing reaches the gateway in plain text."""
    notifier_only(tls_lab)
    restart_gateway(tls_lab, gateway_toml(pki, cert="rogue-gateway"))
    xmpp("alice")
    sub = Subscription(sip("dave"), ALICE_SIP)
    r = sub.subscribe(600)
    assert r is None or r.code >= 400, r
    klog = kamailio_log(tls_lab)
    assert "SSL routines::certificate verify failed" in klog, \
        tail(os.path.join(tls_lab.run_dir, "kamailio.log"))
    glog = gateway_log(tls_lab)
    assert re.search(r"TLS handshake failed; connection refused.*direction=\"?inbound", glog), tail(tls_lab.gateway_log)
    assert_no_plain_sip_from_gateway(tls_lab)
    # the good certificate back: the next test module gets a working gateway
    restart_gateway(tls_lab, gateway_toml(pki))


def test_sighup_reloads_the_certificate_and_keeps_it_when_the_files_are_bad(tls_lab, pki):
    """SIGHUP: the gateway reads tls_cert/tls_key again; new handshakes present the new
    certificate. Files that do not load are logged and the old certificate stays."""
    notifier_only(tls_lab)
    import shutil
    import signal
    import ssl
    import socket

    def presented_cert():
        ctx = ssl.create_default_context(cafile=os.path.join(pki, "lab-ca.pem"))
        with socket.create_connection((LAB_IP, 5081), timeout=5) as s:
            with ctx.wrap_socket(s, server_hostname="sip-xmpp.test") as t:
                der = t.getpeercert(binary_form=True)
        return der

    # the running gateway reads <pki>/gateway.pem; make a second one and swap it in
    make_leaf(pki, "lab", "gateway2", "IP:%s,DNS:sip-xmpp.test" % LAB_IP)
    with open(os.path.join(pki, "gateway.pem"), "rb") as f:
        first_pem = f.read()
    first = presented_cert()
    assert ssl.DER_cert_to_PEM_cert(first).strip() == first_pem.decode().strip()
    saved = os.path.join(pki, "gateway.orig")
    shutil.copy(os.path.join(pki, "gateway.pem"), saved + ".pem")
    shutil.copy(os.path.join(pki, "gateway.key"), saved + ".key")
    try:
        shutil.copy(os.path.join(pki, "gateway2.pem"), os.path.join(pki, "gateway.pem"))
        shutil.copy(os.path.join(pki, "gateway2.key"), os.path.join(pki, "gateway.key"))
        tls_lab.gateway.send_signal(signal.SIGHUP)
        assert wait_until(lambda: "TLS certificate and key reloaded" in gateway_log(tls_lab), 5)
        second = presented_cert()
        with open(os.path.join(pki, "gateway2.pem")) as f:
            assert ssl.DER_cert_to_PEM_cert(second).strip() == f.read().strip()
        # a broken key: logged, the current certificate stays
        with open(os.path.join(pki, "gateway.key"), "w") as f:
            f.write("not a key\n")
        tls_lab.gateway.send_signal(signal.SIGHUP)
        assert wait_until(lambda: "SIGHUP: TLS certificate or key does not load; keeping the old ones"
                          in gateway_log(tls_lab), 5), tail(tls_lab.gateway_log)
        assert presented_cert() == second
        assert tls_lab.gateway.poll() is None
    finally:
        shutil.copy(saved + ".pem", os.path.join(pki, "gateway.pem"))
        shutil.copy(saved + ".key", os.path.join(pki, "gateway.key"))
