"""Issue 5: `GET /health` follows the XEP-0114 link to the real Prosody, and the gateway
recovers by itself when Prosody comes back. Prosody alone is stopped and started again by
its PID in the run dir (conftest Lab.stop_prosody / start_prosody, as tests/lab/stop.sh and
start.sh do); Kamailio and the gateway keep running. Then an XMPP -> SIP subscription must
work as before, and /metrics counts the reconnect.
"""
import json
import re
import time
import urllib.error
import urllib.request

import pytest

from conftest import GW_HTTP, wait_until
from test_xmpp_watches_sip import BOB, BOB_RES, expect, expect_bob
from xmpp_client import is_presence

pytestmark = pytest.mark.gateway

DOWN_WITHIN = 5.0   # Prosody closes the component stream when it stops
# the gateway's reconnect delay doubles from 1 s (xmpp.reconnect_max_secs 60): after a
# few seconds of outage the next attempt may be 8-16 s away
UP_WITHIN = 30.0


def http_get(path, timeout=2.0):
    """(status, body text) of GET http://GW_HTTP/path; (None, reason) if nothing answers."""
    try:
        with urllib.request.urlopen("http://%s%s" % (GW_HTTP, path), timeout=timeout) as r:
            return r.status, r.read().decode("utf-8")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode("utf-8")
    except OSError as e:
        return None, str(e)


def health():
    """(status, body); `checks.store_queued` (changes not yet committed, a moving count) is
    checked to be a count and left out of the body compared."""
    code, body = http_get("/health")
    if code is None:
        return code, body
    doc = json.loads(body)
    checks = doc.get("checks", {})
    queued = checks.pop("store_queued", None)
    assert isinstance(queued, int) and queued >= 0, doc
    return code, doc


def reconnects(metrics_text):
    m = re.search(r"^pua_xmpp_component_reconnects_total(?:\{[^}]*\})? (\S+)$", metrics_text, re.M)
    return float(m.group(1)) if m else None


@pytest.fixture
def prosody_restored(gw_notifier):
    """The lab with the gateway; Prosody is running again after the test even if it failed
    (a later test's fixture would otherwise restart the whole lab)."""
    yield gw_notifier
    if not gw_notifier.prosody_alive():
        gw_notifier.start_prosody()


def test_health_503_while_prosody_is_down_then_200_and_subscriptions_work(prosody_restored, xmpp, bob):
    lab = prosody_restored
    # The HTTP listener comes up with the gateway (the fixture waits for SIP and XMPP only).
    assert wait_until(lambda: health()[0] == 200, 10), health()
    assert health() == (200, {"status": "ok", "checks": {"xmpp": "up", "store": "ok", "actors": "ok"}})
    code, text = http_get("/metrics")
    assert code == 200, text
    before = reconnects(text) or 0.0

    lab.stop_prosody()
    assert wait_until(lambda: health()[0] == 503, DOWN_WITHIN), health()
    code, body = health()
    assert body == {"status": "unavailable", "reason": "XMPP component not connected",
                    "checks": {"xmpp": "down", "store": "ok", "actors": "ok"}}, body

    lab.start_prosody()
    assert wait_until(lambda: health()[0] == 200, UP_WITHIN), health()
    assert health() == (200, {"status": "ok", "checks": {"xmpp": "up", "store": "ok", "actors": "ok"}})
    code, text = http_get("/metrics")
    assert code == 200, text
    assert "pua_xmpp_component_reconnects_total" in text, text
    assert reconnects(text) >= before + 1, text

    # XMPP -> SIP through the re-established link (as test_case_021 of test_xmpp_watches_sip).
    bob.publish("open", "After the outage")
    alice = xmpp("alice")
    alice.presence(to=BOB, typ="subscribe")
    expect(alice, is_presence(BOB, "subscribed"), "<presence type='subscribed' from='%s'/>" % BOB)
    expect_bob(alice, "<presence from='%s'><status>After the outage</status></presence>" % BOB_RES,
               "After the outage")
    alice.presence(to=BOB, typ="unsubscribe")
    time.sleep(0.5)  # let the gateway end the SIP subscription before the next test
