"""IPv6 (issue 16): the whole lab on ::1 (tests/lab/start.sh LAB_IP=::1: Prosody on ::1,
Kamailio listening on [::1]:5060) and the gateway on [::1]:5080, presence both ways.
Asserted beyond the stanzas and NOTIFYs: the gateway's requests carry the bracketed forms
(Via sent-by and Contact [::1]:5080), and it follows Kamailio's IPv6 Record-Route.

Runs only in an IPv6 lab:  LAB_IP=::1 python3 -m pytest tests/e2e/test_ipv6.py
(GW_ADDR and GW_HTTP then default to [::1]:5080 and [::1]:9080).
"""
import os
import re

import pytest

from conftest import GATEWAY_TOML, GW_ADDR, LAB_IP
from test_sip_watches_xmpp import assert_pidf, approved_watcher, note_is
from test_xmpp_watches_sip import BOB, BOB_RES, expect, expect_bob
from xmpp_client import is_presence

pytestmark = [pytest.mark.gateway,
              pytest.mark.skipif(":" not in LAB_IP, reason="IPv6 lab only: run with LAB_IP=::1")]

HOST = "[%s]" % LAB_IP


@pytest.fixture(scope="module")
def v6_lab(lab_manager):
    """Notifier mode; the gateway's config names every address in its bracketed form."""
    lab_manager.stop()
    lab_manager.gateway_toml = GATEWAY_TOML.replace("{lab_ip}", HOST)
    try:
        lab_manager.start("notifier", True)
    except RuntimeError as ex:
        pytest.fail(str(ex), pytrace=False)
    yield lab_manager
    lab_manager.stop()
    del lab_manager.gateway_toml


def kamailio_log(lab):
    with open(os.path.join(lab.run_dir, "kamailio.log"), encoding="utf-8", errors="replace") as f:
        return f.read()


def test_xmpp_user_watches_sip_user_on_ipv6(v6_lab, xmpp, bob):
    bob.publish("open", "On IPv6")
    alice = xmpp("alice")
    alice.presence(to=BOB, typ="subscribe")
    expect(alice, is_presence(BOB, "subscribed"), "<presence type='subscribed' from='%s'/>" % BOB)
    expect_bob(alice, "<presence from='%s'><status>On IPv6</status></presence>" % BOB_RES, "On IPv6")
    log = kamailio_log(v6_lab)
    # the gateway's SUBSCRIBE: from [::1]:5080 over UDP, bracketed Via and Contact
    assert re.search(r"SIP-IN SUBSCRIBE sip:bob@sip.test from udp:\[?::1\]?:5080", log), log[-3000:]
    assert "Via: SIP/2.0/UDP %s;branch=" % GW_ADDR in log
    assert "Contact: <sip:alice*xmpp.test@%s>" % GW_ADDR in log
    # Kamailio's NOTIFYs reach the gateway's IPv6 Contact
    assert "SIP-LOCAL-OUT NOTIFY sip:alice*xmpp.test@%s" % GW_ADDR in log
    alice.presence(to=BOB, typ="unsubscribe")


def test_sip_user_watches_xmpp_user_on_ipv6(v6_lab, xmpp, sip):
    alice = xmpp("alice")
    sub = approved_watcher(sip, alice, "carol", "notifier")
    # Kamailio record-routed the SUBSCRIBE with its IPv6 address; the gateway's NOTIFYs
    # follow that route set back through it
    assert any(re.search(r"<sip:\[::1\]", rr) for rr in sub.route), sub.route
    alice.presence(show="away", status="v6 lunch")
    assert_pidf(sub.wait_notify(12.0, note_is("v6 lunch")), "open", "v6 lunch", ["away"])
    log = kamailio_log(v6_lab)
    assert re.search(r"SIP-IN NOTIFY sip:carol@\[::1\]:\d+ from udp:\[?::1\]?:5080", log), log[-3000:]
    sub.unsubscribe()
