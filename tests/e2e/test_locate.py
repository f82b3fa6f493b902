"""Issue 16: server location per RFC 3263. The gateway's `sip.server_address` is a NAME,
`sip:sip.test`, served by a DNS server this test starts on loopback (dnsmasq):

    sip.test            NAPTR 10 10 "S" "SIP+D2T" _sip._tcp.sip.test.
                        NAPTR 20 10 "S" "SIP+D2U" _sip._udp.sip.test.
    _sip._tcp.sip.test  SRV 10 0 5060 kam1.sip.test.     (the lab's Kamailio, LAB_IP)
                        SRV 20 0 5060 kam2.sip.test.     (a second Kamailio, LOCATE_KAM2_IP)
    kam1.sip.test A LAB_IP;  kam2.sip.test A LOCATE_KAM2_IP

The NAPTR prefers TCP, so the gateway subscribes over TCP to kam1 (top SRV priority).
alice (XMPP) watches bob (SIP). Then kam1 is killed: bob publishes on kam2; the gateway's
refresh to kam1 is refused (TCP), the locator moves kam1 to the back, and the gateway's new
SUBSCRIBE goes to kam2, whose NOTIFY brings bob's new state to alice.

Environment: LOCATE_KAM2_IP (default LAB_IP + 1), LOCATE_DNS_IP (default LAB_IP + 2); the DNS
server listens on port LOCATE_DNS_PORT (default 10053, no root needed).
"""
import os
import re
import shutil
import signal
import subprocess
import time

import pytest

from conftest import GATEWAY_TOML, LAB_IP, LAB_DIR, BASE_DIR, GW_ADDR, GW_HTTP, listening, tail, wait_until
from sip_ua import Publication, SipUA, pidf
from test_xmpp_watches_sip import BOB, BOB_RES, expect, expect_bob
from xmpp_client import is_presence

pytestmark = pytest.mark.gateway


def _next_ip(ip, n):
    a, b, c, d = (int(x) for x in ip.split("."))
    return "%d.%d.%d.%d" % (a, b, c, d + n)


KAM2_IP = os.environ.get("LOCATE_KAM2_IP", _next_ip(LAB_IP, 1))
DNS_IP = os.environ.get("LOCATE_DNS_IP", _next_ip(LAB_IP, 2))
DNS_PORT = int(os.environ.get("LOCATE_DNS_PORT", "10053"))
SUBSCRIBE_EXPIRES = 60
# The refresh is due ~28 s after the grant (60 - 32); refused at once (TCP); the subscriber's
# retry backoff is 30 s +-20 %; then the SUBSCRIBE to kam2 and its NOTIFY.
FAILOVER_BOUND = 28 * 1.05 + 36 + 10
ENV = dict(os.environ, PATH=os.environ.get("PATH", "") + ":/usr/local/sbin:/usr/sbin:/sbin")


def kmod_dir():
    import glob
    for d in sorted(glob.glob("/usr/lib/*/kamailio/modules")) + ["/usr/lib64/kamailio/modules",
                                                                 "/usr/lib/kamailio/modules"]:
        if os.path.isfile(os.path.join(d, "tm.so")):
            return d
    return "/usr/lib/x86_64-linux-gnu/kamailio/modules"


class Extra:
    """The DNS server and the second Kamailio, in their own dir; stopped by PID."""

    def __init__(self):
        self.dir = os.path.join(BASE_DIR, "locate-extra")
        self.procs = {}

    def start(self):
        if os.path.isdir(self.dir):
            shutil.rmtree(self.dir)
        os.makedirs(self.dir)
        self._start_dns()
        self._start_kam2()

    def _start_dns(self):
        for p in ("dnsmasq",):
            if shutil.which(p, path=ENV["PATH"]) is None:
                pytest.fail("dnsmasq missing (Debian package dnsmasq-base)", pytrace=False)
        args = ["dnsmasq", "--no-daemon", "--conf-file=/dev/null", "--no-resolv", "--no-hosts",
                "--bind-interfaces", "--listen-address=%s" % DNS_IP, "--port=%d" % DNS_PORT,
                "--pid-file=", "--log-queries", "--log-facility=-", "--local-ttl=30",
                "--naptr-record=sip.test,10,10,S,SIP+D2T,,_sip._tcp.sip.test",
                "--naptr-record=sip.test,20,10,S,SIP+D2U,,_sip._udp.sip.test",
                "--srv-host=_sip._tcp.sip.test,kam1.sip.test,5060,10,0",
                "--srv-host=_sip._tcp.sip.test,kam2.sip.test,5060,20,0",
                "--srv-host=_sip._udp.sip.test,kam1.sip.test,5060,10,0",
                "--srv-host=_sip._udp.sip.test,kam2.sip.test,5060,20,0",
                "--host-record=kam1.sip.test,%s" % LAB_IP,
                "--host-record=kam2.sip.test,%s" % KAM2_IP]
        log = open(os.path.join(self.dir, "dnsmasq.log"), "wb")
        self.procs["dnsmasq"] = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=log,
                                                 stderr=subprocess.STDOUT, env=ENV, start_new_session=True)
        addr = "%s:%d" % (DNS_IP, DNS_PORT)
        if not wait_until(lambda: listening("u", addr) or self.procs["dnsmasq"].poll() is not None, 10) \
                or self.procs["dnsmasq"].poll() is not None:
            pytest.fail("dnsmasq did not start\n" + tail(os.path.join(self.dir, "dnsmasq.log")), pytrace=False)

    def _start_kam2(self):
        db = os.path.join(self.dir, "kamailio.sqlite")
        for sql in ("standard-create.sql", "presence-create.sql"):
            with open("/usr/share/kamailio/db_sqlite/" + sql) as f:
                subprocess.run(["sqlite3", db], stdin=f, check=True, env=ENV)
        cfg = os.path.join(LAB_DIR, "..", "..", "config", "kamailio.cfg")
        kdefs = ["-A", "LAB_IP=%s" % KAM2_IP, "-A", 'SRV_URI="sip:%s:5060"' % KAM2_IP,
                 "-A", 'GW_ADDR="%s"' % GW_ADDR, "-A", 'GW_HTTP="%s"' % GW_HTTP,
                 "-A", 'DBURL="sqlite:///%s"' % db, "-A", 'CTL_SOCK="unix:%s/kamailio_ctl"' % self.dir,
                 "-A", 'MPATH="%s/"' % kmod_dir(), "-A", "GW_MODE_NOTIFIER"]
        log = open(os.path.join(self.dir, "kamailio.log"), "wb")
        self.procs["kamailio"] = subprocess.Popen(
            ["kamailio", "-DD", "-E", "-f", cfg] + kdefs + ["-Y", self.dir, "-w", self.dir, "-m", "64", "-M", "16"],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=ENV, start_new_session=True)
        addr = "%s:5060" % KAM2_IP
        for proto in ("u", "t"):
            if not wait_until(lambda: listening(proto, addr) or self.procs["kamailio"].poll() is not None, 10) \
                    or self.procs["kamailio"].poll() is not None:
                pytest.fail("second kamailio did not start\n" + tail(os.path.join(self.dir, "kamailio.log")),
                            pytrace=False)

    def stop(self):
        for name, p in self.procs.items():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(5)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait(5)
        self.procs = {}


def kill_kam1(lab):
    """SIGKILL the lab's Kamailio (kam1) by its recorded PID (group): no goodbye to anyone."""
    with open(os.path.join(lab.run_dir, "kamailio.pid")) as f:
        pid = int(f.read().strip())
    with open("/proc/%d/comm" % pid) as f:  # PID reuse: only the program we started
        assert f.read().strip() in ("kamailio", "setsid")
    # Its whole process group (setsid in start.sh): killing the main process alone leaves
    # the SIP workers serving.
    os.killpg(pid, signal.SIGKILL)
    addr = "%s:5060" % LAB_IP
    assert wait_until(lambda: not listening("t", addr) and not listening("u", addr), 10), "kam1 still listening"
    os.remove(os.path.join(lab.run_dir, "kamailio.pid"))


def tcp_peers_5060():
    """The Kamailio addresses (ours) with an established TCP connection on port 5060."""
    out = subprocess.run(["ss", "-Htn", "state", "established"], capture_output=True, text=True,
                         env=ENV).stdout
    peers = set()
    for line in out.splitlines():
        cols = line.split()
        if len(cols) >= 4 and cols[3].endswith(":5060") and cols[3].rsplit(":", 1)[0] in (LAB_IP, KAM2_IP):
            peers.add(cols[3].rsplit(":", 1)[0])
    return peers


def gateway_log(lab):
    with open(lab.gateway_log, encoding="utf-8", errors="replace") as f:
        return re.sub(r"\x1b\[[0-9;]*m", "", f.read())


@pytest.fixture
def located(lab_manager):
    """Prosody + kam1 (the lab), dnsmasq and kam2, and the gateway with
    `server_address = "sip:sip.test"` and `dns_servers = ["DNS_IP:DNS_PORT"]`."""
    lab_manager.stop()
    extra = Extra()
    try:
        lab_manager.start("notifier", False)
        extra.start()
        lab_manager.gateway_toml = GATEWAY_TOML.replace(
            'server_address = "sip:{lab_ip}:5060"',
            'server_address = "sip:sip.test"\ndns_servers = ["%s:%d"]' % (DNS_IP, DNS_PORT)).replace(
            "subscribe_expires = 600", "subscribe_expires = %d" % SUBSCRIBE_EXPIRES)
        lab_manager._start_gateway("notifier")
        lab_manager.with_gateway = True
    except RuntimeError as ex:
        extra.stop()
        lab_manager.__dict__.pop("gateway_toml", None)
        lab_manager.stop()
        pytest.fail(str(ex), pytrace=False)
    try:
        yield lab_manager, extra
        assert lab_manager.gateway is not None and lab_manager.gateway.poll() is None, \
            "the gateway exited during the test"
    finally:
        lab_manager.__dict__.pop("gateway_toml", None)
        lab_manager.stop()
        extra.stop()


def test_named_server_address_fails_over_to_the_next_srv_target(located, xmpp):
    lab, extra = located
    log = gateway_log(lab)
    # NAPTR chose TCP; the SRV priorities put kam1 first.
    m = re.search(r"sip\.server_address: targets \(RFC 3263\) targets=(\[.*\])", log)
    assert m, "no located targets in the gateway log:\n" + tail(lab.gateway_log)
    assert m.group(1) == ("[Target { addr: %s:5060, proto: Tcp }, Target { addr: %s:5060, proto: Tcp }]"
                          % (LAB_IP, KAM2_IP)), m.group(1)

    bob1 = SipUA("bob", LAB_IP, (LAB_IP, 5060))
    bob2 = SipUA("bob", LAB_IP, (KAM2_IP, 5060))
    try:
        pub1 = Publication(bob1, "sip:bob@sip.test")
        r = pub1.publish(pidf("sip:bob@sip.test", "open", "On kam1", tuple_id="t-bob"))
        assert r is not None and r.code == 200, r

        alice = xmpp("alice")
        alice.presence(to=BOB, typ="subscribe")
        expect(alice, is_presence(BOB, "subscribed"), "<presence type='subscribed' from='%s'/>" % BOB)
        expect_bob(alice, "<presence from='%s'><status>On kam1</status></presence>" % BOB_RES, "On kam1")
        # The subscription went to kam1 over TCP: the gateway holds a connection to it.
        assert tcp_peers_5060() == {LAB_IP}, tcp_peers_5060()

        kill_kam1(lab)
        killed = time.monotonic()
        pub2 = Publication(bob2, "sip:bob@sip.test")
        r = pub2.publish(pidf("sip:bob@sip.test", "open", "On kam2", tuple_id="t-bob"))
        assert r is not None and r.code == 200, r

        # No stanza from alice: the refresh to kam1 fails, kam1 goes to the back, and the
        # new SUBSCRIBE reaches kam2, whose NOTIFY brings bob's state.
        expect_bob(alice, "<presence from='%s'><status>On kam2</status></presence>" % BOB_RES, "On kam2",
                   timeout=FAILOVER_BOUND)
        took = time.monotonic() - killed
        print("failover: bob's change on kam2 reached alice %.1f s after kam1 died" % took)

        log = gateway_log(lab)
        assert re.search(r"SIP server target failed; failing over.*target=%s:5060" % re.escape(LAB_IP), log) \
            or re.search(r"target=%s:5060.*SIP server target failed" % re.escape(LAB_IP), log), \
            "no failover in the gateway log:\n" + tail(lab.gateway_log)
        assert ("new target order targets=[Target { addr: %s:5060, proto: Tcp }, Target { addr: %s:5060, proto: Tcp }]"
                % (KAM2_IP, LAB_IP)) in log, tail(lab.gateway_log)

        assert tcp_peers_5060() == {KAM2_IP}, tcp_peers_5060()

        # And later changes keep flowing through kam2.
        r = pub2.publish(pidf("sip:bob@sip.test", "open", "Still on kam2", tuple_id="t-bob"))
        assert r is not None and r.code == 200, r
        expect_bob(alice, "<presence from='%s'><status>Still on kam2</status></presence>" % BOB_RES,
                   "Still on kam2")
        alice.presence(to=BOB, typ="unsubscribe")
        time.sleep(0.5)
    finally:
        bob1.close()
        bob2.close()


def test_a_refused_subscribe_goes_at_once_to_the_next_target(located, xmpp):
    """kam1 dies before the gateway has sent it anything, so it is still first in the list:
    the initial SUBSCRIBE is refused (TCP) and sent again at once, as a new transaction, to
    kam2 (RFC 3263 §4.3), with no retry backoff: alice gets bob's state in seconds."""
    lab, extra = located
    kill_kam1(lab)
    bob2 = SipUA("bob", LAB_IP, (KAM2_IP, 5060))
    try:
        pub2 = Publication(bob2, "sip:bob@sip.test")
        r = pub2.publish(pidf("sip:bob@sip.test", "open", "Only on kam2", tuple_id="t-bob"))
        assert r is not None and r.code == 200, r
        alice = xmpp("alice")
        started = time.monotonic()
        alice.presence(to=BOB, typ="subscribe")
        expect(alice, is_presence(BOB, "subscribed"), "<presence type='subscribed' from='%s'/>" % BOB)
        expect_bob(alice, "<presence from='%s'><status>Only on kam2</status></presence>" % BOB_RES,
                   "Only on kam2")
        took = time.monotonic() - started
        print("immediate failover: bob's state reached alice %.1f s after the subscribe" % took)
        log = gateway_log(lab)
        line = re.search(r"out-of-dialog request failed; sending it again to the next server[^\n]*", log)
        assert line, "no §4.3 retry in the gateway log:\n" + tail(lab.gateway_log)
        assert "failed=%s:5060" % LAB_IP in line.group(0) and "next=%s:5060" % KAM2_IP in line.group(0), \
            line.group(0)
        assert tcp_peers_5060() == {KAM2_IP}, tcp_peers_5060()
        alice.presence(to=BOB, typ="unsubscribe")
        time.sleep(0.5)
    finally:
        bob2.close()
