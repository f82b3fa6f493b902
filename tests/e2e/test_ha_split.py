"""Issue 17: a network split between one instance of an active/standby pair and PostgreSQL.

Real PostgreSQL, Prosody and Kamailio (-A WITH_HA, dispatcher over both gateways), two
gateways with a short lease (store.lease_ttl_ms 1500, lease_renew_ms 500, lease_retry_ms 250):
A on GW_ADDR, B on a second address. Each reaches PostgreSQL through a TCP relay of its own
(`tcp_cut.TcpCut`) that the test cuts, either with resets and refused connects ("rst") or by
relaying nothing more while keeping every socket open ("blackhole": the socket neither answers
nor fails).

- The active instance cut off: A stops serving and exits (code 3) no later than its lease end
  (5/6 of the lease after its last confirmed renewal left) plus a bound; B, which still reaches
  the database, takes over once the database's lease has expired, authenticates the component
  (A's is gone with A), Kamailio's probes switch to it, and the next change of an
  XMPP-watches-SIP and of a SIP-watches-XMPP relation each reaches its watcher exactly once.
  A SIP subscription A acknowledged just before the cut (the gateway answers 200 only after
  the store committed it) is still there under B; a SUBSCRIBE that reaches A at the cut is
  either not acknowledged (A cannot commit it) or, if it got a 200, known to the new active
  instance.
- The standby cut off: A keeps serving unchanged under the same fence; B's /health answers 503
  with the reason (a standby that cannot take over is not a healthy standby) and 200 again once
  the relay heals; then a kill -9 of A shows B can take over with the short lease.

The takeover time is split from the logs (lease expiry wait, restore, component link) and
printed.
"""
import datetime
import http.client
import json
import os
import re
import ssl
import subprocess
import threading
import time
import urllib.error
import urllib.request

import pytest

from conftest import GATEWAY_BIN, GW_ADDR, GW_HTTP, LAB_IP, _lab_or_fail, tail, wait_until
from tcp_cut import TcpCut
from test_ha import Postgres, _auths, _pg_bin, _read
from test_ha_routing import (_check_relations, _dispatcher, _only_active, _second_ip,
                             relations_through_active)
from sip_ua import Subscription
from test_sip_watches_xmpp import (ALICE_SIP, UPDATE, approved_watcher, assert_pidf, closed_doc,
                                   jid_of, note_is, subscribe_request)
from test_xmpp_watches_sip import BOB_RES, expect_bob

pytestmark = pytest.mark.gateway

TTL, RENEW, RETRY = 1.5, 0.5, 0.25
USABLE = TTL - TTL / 6  # an active instance counts a confirmed lease valid this long


GW2_IP = _second_ip("PUA_E2E_GW2_IP", 10)
GW2_ADDR = "%s:%s" % (GW2_IP, GW_ADDR.rsplit(":", 1)[1])
GW2_HTTP = "%s:%s" % (GW2_IP, GW_HTTP.rsplit(":", 1)[1])


class Pair:
    def __init__(self, lab, pg, cut_a, cut_b):
        self.lab, self.pg, self.cut_a, self.cut_b = lab, pg, cut_a, cut_b
        self.procs = []


def _url(cut):
    return "postgres://pua@%s/postgres" % cut.address()


@pytest.fixture
def split_pair(lab_manager, monkeypatch):
    if _pg_bin() is None:
        pytest.skip("no /usr/lib/postgresql/*/bin/initdb (install the postgresql package)")
    pg = Postgres()
    pg.start()
    cut_a = cut_b = None
    try:
        cut_a = TcpCut(LAB_IP, (LAB_IP, pg.port))
        cut_b = TcpCut(LAB_IP, (LAB_IP, pg.port))
        yield from _split_pair(lab_manager, monkeypatch, pg, cut_a, cut_b)
    finally:
        # also when the lab could not start: no database or relay left behind
        for cut in (cut_a, cut_b):
            if cut is not None:
                cut.close()
        pg.stop()


def _split_pair(lab_manager, monkeypatch, pg, cut_a, cut_b):
    # A (the lab's gateway) through its relay; B gets its own in _spawn_b.
    monkeypatch.setenv("PUA_XMPP__STORE__URL", _url(cut_a))
    monkeypatch.setenv("PUA_XMPP__STORE__PATH", "")
    monkeypatch.setenv("PUA_XMPP__STORE__LEASE", "true")
    monkeypatch.setenv("PUA_XMPP__STORE__LEASE_TTL_MS", str(int(TTL * 1000)))
    monkeypatch.setenv("PUA_XMPP__STORE__LEASE_RENEW_MS", str(int(RENEW * 1000)))
    monkeypatch.setenv("PUA_XMPP__STORE__LEASE_RETRY_MS", str(int(RETRY * 1000)))
    monkeypatch.setenv("PUA_XMPP__XMPP__RECONNECT_MAX_SECS", "1")
    monkeypatch.setenv("GW2_ADDR", GW2_ADDR)
    monkeypatch.setenv("GW2_HTTP", GW2_HTTP)
    monkeypatch.setenv("RUST_LOG", "info")
    lab_manager.stop()
    lab = _lab_or_fail(lab_manager, "notifier", True)
    pair = Pair(lab, pg, cut_a, cut_b)
    try:
        yield pair
    finally:
        for p in pair.procs:
            if p.poll() is None and p is not lab.gateway:
                p.kill()
                p.wait(5)
        lab_manager.stop()


def _spawn_b(pair, name="b", tls=None):
    """B: the lab's configuration on GW2_ADDR/GW2_HTTP, PostgreSQL through cut_b; with tls
    (cert, key) its HTTP listener is HTTPS (standby and active alike)."""
    lab = pair.lab
    log_path = os.path.join(lab.run_dir, "gateway-%s.log" % name)
    cfg = os.path.join(lab.run_dir, "pua-xmpp.toml")
    env = dict(os.environ, PUA_XMPP_CONFIG=cfg, RUST_LOG="info",
               PUA_XMPP__SIP__LISTEN=GW2_ADDR, PUA_XMPP__HTTP__LISTEN=GW2_HTTP,
               PUA_XMPP__STORE__URL=_url(pair.cut_b))
    if tls is not None:
        env["PUA_XMPP__HTTP__TLS_CERT"], env["PUA_XMPP__HTTP__TLS_KEY"] = tls
    with open(log_path, "wb") as log:
        p = subprocess.Popen([GATEWAY_BIN, "--config", cfg], stdin=subprocess.DEVNULL, stdout=log,
                             stderr=subprocess.STDOUT, env=env, cwd=lab.run_dir, start_new_session=True)
    pair.procs.append(p)
    assert wait_until(lambda: "standby: waiting for the lease" in _read(log_path), 10), tail(log_path)
    # it reached the database: a healthy standby
    ca = tls[0] if tls else None
    assert wait_until(lambda: _health(GW2_HTTP, ca) == (200, {"status": "standby", "role": "standby"}), 5), \
        (_health(GW2_HTTP, ca), tail(log_path))
    return p, log_path


def _get(addr, path, cafile=None):
    """(status, parsed JSON body) of GET http://addr/path, or https:// verified by cafile."""
    url = "%s://%s%s" % ("https" if cafile else "http", addr, path)
    ctx = ssl.create_default_context(cafile=cafile) if cafile else None
    try:
        with urllib.request.urlopen(url, timeout=3, context=ctx) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def _health(addr, cafile=None):
    try:
        return _get(addr, "/health", cafile)
    except (OSError, ValueError, http.client.HTTPException) as e:
        return (None, str(e))


def _self_signed(d, ip):
    """A self-signed certificate for ip (openssl): (cert, key) paths."""
    cert, key = os.path.join(d, "gw2.crt"), os.path.join(d, "gw2.key")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                    "-nodes", "-keyout", key, "-out", cert, "-days", "2", "-subj", "/CN=pua-xmpp e2e",
                    "-addext", "subjectAltName=IP:%s" % ip], check=True, capture_output=True)
    return cert, key


def _active_fence(addr, cafile=None):
    code, body = _get(addr, "/health", cafile)
    assert code == 200 and body["role"] == "active", body
    assert isinstance(body["fence"], int) and body["fence"] > 0, body
    return body["fence"]


_TS = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+)Z")


def _when(log_path, text):
    """Wall time (epoch seconds) of the first log line containing text, or None."""
    for line in _read(log_path).splitlines():
        if text in line:
            m = _TS.match(line)
            if m:
                ts = m.group(1)[:26]
                return datetime.datetime.strptime(ts, "%Y-%m-%dT%H:%M:%S.%f").replace(
                    tzinfo=datetime.timezone.utc).timestamp()
    return None


@pytest.mark.parametrize("how", ["rst", "blackhole"])
def test_active_cut_from_the_database_steps_down_and_the_standby_takes_over(split_pair, how, xmpp, sip, bob):
    pair, lab = split_pair, split_pair.lab
    a, a_log = lab.gateway, lab.gateway_log
    b, b_log = _spawn_b(pair)
    assert wait_until(lambda: _only_active(lab, GW_ADDR), 6), _dispatcher(lab)
    fence_a = _active_fence(GW_HTTP)
    alice, carol = relations_through_active(xmpp, sip, bob, "notifier")

    # Acknowledged by A right before the cut: dave's subscription (200 after the commit) and
    # the NOTIFY with alice's state. No settling time.
    dave = approved_watcher(sip, alice, "dave", "notifier")
    auths = _auths(lab)
    erin = Subscription(sip("erin"), ALICE_SIP)
    erin_first = {}
    cut_wall, t0 = time.time(), time.monotonic()
    getattr(pair.cut_a, "cut_" + how)()
    # In flight at the cut: erin's SUBSCRIBE reaches A, which cannot commit it. Whatever
    # final response erin gets, a 200 must mean the active instance knows the subscription.
    sender = threading.Thread(target=lambda: erin_first.setdefault("r", erin.subscribe(600)))
    sender.start()

    # A: serves until its lease end, then exits with code 3. The last confirmed renewal
    # left at most RENEW (+ its round trip) before the cut, and counts USABLE from its
    # departure.
    try:
        rc = a.wait(10)
    except subprocess.TimeoutExpired:
        pytest.fail("A still running 10 s after the cut\n" + tail(a_log))
    a_gone = time.monotonic() - t0
    assert rc == 3, (rc, tail(a_log))
    assert "lease lost: another instance may be active; exiting" in _read(a_log), tail(a_log)
    assert "reason=Expired" in _read(a_log), tail(a_log)
    assert USABLE - RENEW - 0.2 <= a_gone <= USABLE + 0.5, "A exited %.2f s after the cut" % a_gone

    # B: active once the database's lease expired (at most TTL after the cut) + a retry;
    # then restore, component, and Kamailio's probes.
    assert wait_until(lambda: "lease acquired: this instance is active" in _read(b_log), 6), tail(b_log)
    b_acquired = time.monotonic() - t0
    assert b_acquired <= TTL + RETRY + 0.5, "B active %.2f s after the cut" % b_acquired
    assert wait_until(lambda: _auths(lab) > auths, 10), tail(b_log)
    b_component = time.monotonic() - t0
    assert _auths(lab) == auths + 1, "one new component connection: B's"
    assert a.poll() == 3 and b.poll() is None
    assert wait_until(lambda: _only_active(lab, GW2_ADDR), 8), _dispatcher(lab)
    routed = time.monotonic() - t0
    lab.gateway, lab.gateway_log = b, b_log
    fence_b = _active_fence(GW2_HTTP)
    assert fence_b > fence_a, (fence_a, fence_b)

    sender.join(10)
    first = erin_first.get("r")
    answered = "none" if first is None else "%d from %s" % (first.code, first.h("contact") or "?")
    r = first
    for _ in range(3):
        if r is not None and r.code == 200:
            break
        time.sleep(1)
        r = erin.subscribe(600)  # refused or unanswered during the takeover: a new one
    assert r is not None and r.code == 200, (answered, r)
    if subscribe_request(alice, "erin", 4.0) is not None:
        alice.presence(to=jid_of("erin"), typ="subscribed")
    n = erin.wait_notify(UPDATE, lambda m: m.body_bytes != b"" and not closed_doc(m))
    assert n is not None, "erin: no open NOTIFY (first answer %s)\n%s" % (answered, erin.ua.dump_log(8))
    erin.discard()

    # The next change of each relation reaches its watcher exactly once.
    _check_relations(lab, alice, carol, bob, "after the %s split" % how, "Before")
    # dave's subscription, acknowledged by A just before the cut, was not lost.
    note = "Away after the %s split" % how
    n = dave.wait_notify(UPDATE, note_is(note))
    assert n is not None, "dave lost his subscription\n%s" % dave.ua.dump_log(8)
    assert_pidf(n, "open", note, ["away"])
    assert dave.notifies(2.0, note_is(note)) == []
    n = erin.wait_notify(UPDATE, note_is(note))
    assert n is not None, "erin missed the change\n%s" % erin.ua.dump_log(8)
    assert erin.notifies(1.0, note_is(note)) == []

    # The takeover, split from the logs (seconds after the cut).
    lost = _when(a_log, "lease lost")
    acquired = _when(b_log, "lease acquired")
    restored = _when(b_log, "state restored from the store")
    linked = _when(b_log, "XMPP component link up")
    assert None not in (lost, acquired, restored, linked), tail(b_log)
    print("\n[%s] cut -> A steps down %.3f s (exit seen %.2f s); -> B lease acquired %.3f s "
          "(expiry wait); restore %.3f s; component link %.3f s; B active with component "
          "%.3f s after the cut (seen %.2f s); Kamailio routes to B %.2f s; erin's SUBSCRIBE "
          "sent at the cut: %s"
          % (how, lost - cut_wall, a_gone, acquired - cut_wall, restored - acquired,
             linked - restored, linked - cut_wall, b_component, routed, answered))


@pytest.mark.parametrize("how,scheme", [("rst", "http"), ("blackhole", "http"), ("rst", "https")])
def test_standby_cut_from_the_database_says_so_and_recovers(split_pair, how, scheme, xmpp, sip, bob, tmp_path):
    """With "https", B's HTTP listener has a certificate: its standby /health is HTTPS (the
    same check as once it is active)."""
    pair, lab = split_pair, split_pair.lab
    a, a_log = lab.gateway, lab.gateway_log
    tls = _self_signed(str(tmp_path), GW2_IP) if scheme == "https" else None
    ca = tls[0] if tls else None
    b, b_log = _spawn_b(pair, tls=tls)
    if tls:
        assert _health(GW2_HTTP)[0] is None, "plain HTTP got an HTTP answer from the HTTPS standby"
    assert wait_until(lambda: _only_active(lab, GW_ADDR), 6), _dispatcher(lab)
    fence_a = _active_fence(GW_HTTP)
    alice, carol = relations_through_active(xmpp, sip, bob, "notifier")
    auths = _auths(lab)

    t0 = time.monotonic()
    getattr(pair.cut_b, "cut_" + how)()
    # B cannot take over any more: 503 with the reason, within a lease.
    assert wait_until(lambda: _health(GW2_HTTP, ca)[0] == 503, 5), _health(GW2_HTTP, ca)
    said = time.monotonic() - t0
    code, body = _health(GW2_HTTP, ca)
    assert code == 503 and body["status"] == "unavailable" and body["role"] == "standby", body
    assert body["reason"].startswith("database unreachable") and body["reason"].endswith(
        ": cannot take over"), body
    assert said <= TTL + 1.0, "B said so %.2f s after the cut" % said

    # A serves on, unchanged: same fence, both relations deliver exactly once.
    alice.presence(show="away", status="B is cut")
    assert_pidf(carol.wait_notify(UPDATE, note_is("B is cut")), "open", "B is cut", ["away"])
    bob.publish("open", "Bob while B is cut")
    expect_bob(alice, "<presence from='%s'><status>Bob while B is cut</status></presence>" % BOB_RES,
               "Bob while B is cut")
    time.sleep(2 * TTL)  # longer than a lease
    assert carol.notifies(1.0, note_is("B is cut")) == []
    assert a.poll() is None and b.poll() is None, (tail(a_log), tail(b_log))
    assert _active_fence(GW_HTTP) == fence_a
    assert _health(GW2_HTTP, ca)[0] == 503
    assert "lease acquired" not in _read(b_log)
    assert _auths(lab) == auths, "no component reconnect"

    # Healed: B is a healthy standby again, A unchanged.
    pair.cut_b.heal()
    t1 = time.monotonic()
    assert wait_until(lambda: _health(GW2_HTTP, ca) == (200, {"status": "standby", "role": "standby"}), 6), \
        (_health(GW2_HTTP, ca), tail(b_log))
    healed = time.monotonic() - t1
    assert _active_fence(GW_HTTP) == fence_a
    assert "lease acquired" not in _read(b_log)

    # And it can take over: kill -9 of A, B active within the short lease + a retry.
    a.kill()
    killed_wall, t2 = time.time(), time.monotonic()
    a.wait(5)
    assert wait_until(lambda: "lease acquired: this instance is active" in _read(b_log), 6), tail(b_log)
    acquired = time.monotonic() - t2
    assert acquired <= TTL + RETRY + 0.5, "B active %.2f s after kill -9 of A" % acquired
    assert wait_until(lambda: _auths(lab) > auths, 10), tail(b_log)
    lab.gateway, lab.gateway_log = b, b_log
    assert wait_until(lambda: _health(GW2_HTTP, ca)[0] == 200, 5), _health(GW2_HTTP, ca)
    assert _active_fence(GW2_HTTP, ca) > fence_a
    linked = _when(b_log, "XMPP component link up")
    print("\n[%s, %s] standby /health 503 %.2f s after its cut, 200 %.2f s after the heal; "
          "kill -9 of A -> B lease %.2f s, component link %.3f s"
          % (how, scheme, said, healed, acquired, linked - killed_wall))
