"""Issue 16 + 17: an active/standby pair behind Kamailio, SIP over TLS only
(Kamailio with -A WITH_HA -A WITH_TLS; tests/lab/start.sh with GW2_ADDR and TLS_CFG).

Two gateways on one PostgreSQL store (store.lease = true), each with a TLS listener: A on
LAB_IP:5081, B on LAB_IP+1:5081 (their UDP/TCP listeners on :5080 too, unused). Kamailio's
dispatcher list names the TLS listeners (`sip:...:5081;transport=tls`): it probes both with
OPTIONS over TLS, relays sip-xmpp.test to the one that answers, routes in-dialog requests
aimed at either's TLS Contact to the active one, and recognises either's requests (NOTIFY,
SUBSCRIBE, PUBLISH over TLS) by source IP + top Via sent-by (route[FROM_GW]). kill -9 of
the active: the standby takes over, and the next change of each relation (a SIP watcher of
alice, alice watching bob) reaches its watcher exactly once; then A comes back as a standby,
B is killed, and the same holds. Both modes (notifier, PUA). Kamailio's log shows no SIP
between it and either gateway other than over TLS. A SIP peer sending a request every 50 ms
across the kill gets no 503 and no request without a final answer.
"""
import os
import re
import time

import pytest

from conftest import BASE_DIR, LAB_IP, _lab_or_fail, tail, wait_until
from sip_ua import Subscription
from test_ha import Postgres, _pg_bin
from test_ha_routing import (GW2_HTTP, _assert_roles, _check_relations, _dispatcher, _get,
                             _kill_active_and_wait, _only_active, _second_ip, _spawn,
                             relations_through_active, takeover_window)
from test_restart import STORE_SETTLE
from test_sip_tls import KAMAILIO_TLS_CFG, gateway_toml, kamailio_log, make_ca, make_leaf
from test_sip_watches_xmpp import ALICE_SIP, subscribe_request

pytestmark = pytest.mark.gateway

IP2 = _second_ip()
GW_SIP_A, GW_SIP_B = "%s:5080" % LAB_IP, "%s:5080" % IP2
TLS_A, TLS_B = "%s:5081" % LAB_IP, "%s:5081" % IP2
HTTP_A = "%s:9080" % LAB_IP
# the dispatcher's names of the two destinations (tests/lab/start.sh with TLS_CFG)
DS_A, DS_B = "%s;transport=tls" % TLS_A, "%s;transport=tls" % TLS_B


@pytest.fixture(scope="module")
def ha_pki(lab_manager):
    """Lab CA; Kamailio's certificate (LAB_IP) and the gateways' (both IPs)."""
    d = os.path.join(BASE_DIR, "ha-tls-pki")
    os.makedirs(d, exist_ok=True)
    make_ca(d, "lab")
    make_leaf(d, "lab", "kamailio", "IP:%s,DNS:sip.test" % LAB_IP)
    make_leaf(d, "lab", "gateway", "IP:%s,IP:%s,DNS:sip-xmpp.test" % (LAB_IP, IP2))
    with open(os.path.join(d, "tls.cfg"), "w") as f:
        f.write(KAMAILIO_TLS_CFG.format(d=d))
    return d


@pytest.fixture(params=["notifier", "pua"])
def ha_tls_pair(request, lab_manager, ha_pki, monkeypatch):
    if _pg_bin() is None:
        pytest.skip("no /usr/lib/postgresql/*/bin/initdb (install the postgresql package)")
    pg = Postgres()
    pg.start()
    monkeypatch.setenv("PUA_XMPP__STORE__URL", pg.url())
    monkeypatch.setenv("PUA_XMPP__STORE__PATH", "")
    monkeypatch.setenv("PUA_XMPP__STORE__LEASE", "true")
    monkeypatch.setenv("PUA_XMPP__XMPP__RECONNECT_MAX_SECS", "1")
    # start.sh: -A WITH_HA -A WITH_TLS, dispatcher list of both TLS listeners
    monkeypatch.setenv("GW2_ADDR", GW_SIP_B)
    monkeypatch.setenv("GW2_HTTP", GW2_HTTP)
    monkeypatch.setenv("GW2_TLS_ADDR", TLS_B)
    monkeypatch.setenv("TLS_CFG", os.path.join(ha_pki, "tls.cfg"))
    lab_manager.stop()
    lab_manager.gateway_toml = gateway_toml(ha_pki)
    procs = []
    try:
        lab = _lab_or_fail(lab_manager, request.param, True)
        yield lab, procs
    finally:
        for p in procs:
            if p.poll() is None and p is not lab_manager.gateway:
                p.kill()
                p.wait(5)
        lab_manager.stop()
        del lab_manager.gateway_toml
        pg.stop()


def assert_tls_only(lab):
    """Kamailio exchanged SIP with the gateways over TLS only: nothing from their UDP/TCP
    addresses, no TCP at all, and their requests and answers came in on tls:."""
    log = kamailio_log(lab)
    for ip in (LAB_IP, IP2):
        plain = re.findall(r"(?:SIP-IN|SIP-REPLY-IN) [^\n]* from (?:udp|tcp):%s:5080\b" % re.escape(ip), log)
        assert plain == [], plain
    assert "from tcp:" not in log
    # the dispatcher's probes were answered over TLS by the active instance(s)
    assert re.search(r"SIP-REPLY-IN 200 OK \(OPTIONS\) from tls:%s:5081\b" % re.escape(LAB_IP), log), \
        tail(os.path.join(lab.run_dir, "kamailio.log"))
    return log


def test_tls_watchers_follow_two_takeovers(ha_tls_pair, xmpp, sip, bob):
    lab, procs = ha_tls_pair
    a = lab.gateway
    b, b_log = _spawn(lab, procs, "b", GW_SIP_B, GW2_HTTP, TLS_B)
    assert wait_until(lambda: _only_active(lab, DS_A), 5), _dispatcher(lab)
    assert set(_dispatcher(lab)) == {"sip:" + DS_A, "sip:" + DS_B}, _dispatcher(lab)
    fence1 = _assert_roles(HTTP_A, GW2_HTTP)

    mode = lab.mode
    alice, carol = relations_through_active(xmpp, sip, bob, mode)

    # 1: kill -9 of A while a SIP peer sends a request every 50 ms; B takes over
    counts, slowest = takeover_window(lab, procs, a, (b, b_log), DS_B, None, "TLS (%s)" % mode)
    lab.gateway, lab.gateway_log = b, b_log
    # measured: every request answered 200 (the slowest after ~3 s: it waited for the new
    # leader); only one in flight at the very kill may fail
    non_200 = sum(n for code, n in counts.items() if code != 200)
    assert counts.get(503, 0) == 0 and counts.get("none", 0) == 0 and non_200 <= 2, counts
    assert slowest < 6.0, slowest
    _check_relations(lab, alice, carol, bob, "after B", "Before")
    code, body = _get(GW2_HTTP, "/health")
    assert code == 200 and body["role"] == "active" and body["fence"] > fence1, body
    log = kamailio_log(lab)
    # B's requests (its NOTIFYs / PUBLISHes) came in over TLS from its address
    assert re.search(r"SIP-IN (?:NOTIFY|PUBLISH|SUBSCRIBE) [^\n]* from tls:%s:\d+" % re.escape(IP2), log), \
        tail(os.path.join(lab.run_dir, "kamailio.log"))
    if mode == "pua":
        pubs = re.findall(r"SIP-IN PUBLISH sip:alice\*xmpp\.test@sip-xmpp\.test from (\S+)", log)
        assert pubs and all(p.startswith("tls:") for p in pubs), pubs
        dave = Subscription(sip("dave"), ALICE_SIP)
        r = dave.subscribe(600)
        assert r is not None and r.code == 200, r
        assert subscribe_request(alice, "dave", 6.0) is not None, alice.dump_inbox()
        dave.unsubscribe()

    # 2: A comes back as a standby, then B is killed
    a2, a2_log = _spawn(lab, procs, "a2", GW_SIP_A, HTTP_A, TLS_A)
    time.sleep(STORE_SETTLE)
    _assert_roles(GW2_HTTP, HTTP_A)
    _kill_active_and_wait(lab, b, a2_log, DS_A)
    lab.gateway, lab.gateway_log = a2, a2_log
    _check_relations(lab, alice, carol, bob, "after A", "Away after B")
    code, body = _get(HTTP_A, "/health")
    assert code == 200 and body["role"] == "active" and body["fence"] > fence1 + 1, body
    log = assert_tls_only(lab)
    if mode == "notifier":
        # carol's re-SUBSCRIBEs toward a dead instance's TLS Contact went to the new leader
        assert re.search(r"SIP-IN SUBSCRIBE sip:alice\*xmpp\.test@%s;transport=tls from udp:" % re.escape(TLS_A),
                         log), "no in-dialog SUBSCRIBE to A's TLS Contact"
        assert re.search(r"SIP-IN SUBSCRIBE sip:alice\*xmpp\.test@%s;transport=tls from udp:" % re.escape(TLS_B),
                         log), "no in-dialog SUBSCRIBE to B's TLS Contact"
