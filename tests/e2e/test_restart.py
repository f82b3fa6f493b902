"""Issue 6: nothing is lost across a `kill -9` of the gateway. The store (SQLite, batched
writes) holds every relation and dialog; on start the gateway refreshes still-valid SIP
dialogs in-dialog and resumes presence delivery without any new XMPP stanza from the users.
"""
import time

import pytest

from sip_ua import Subscription
from test_sip_watches_xmpp import ALICE_SIP, UPDATE, approved_watcher, assert_pidf, note_is
from test_xmpp_watches_sip import BOB, BOB_RES, expect, expect_bob
from xmpp_client import is_presence

pytestmark = pytest.mark.gateway

STORE_SETTLE = 1.0  # the store commits within 20 ms of a change; leave a margin


def test_xmpp_watcher_keeps_receiving_after_kill9(gw_notifier, xmpp, bob):
    bob.publish("open", "Before the crash")
    alice = xmpp("alice")
    alice.presence(to=BOB, typ="subscribe")
    expect(alice, is_presence(BOB, "subscribed"), "<presence type='subscribed' from='%s'/>" % BOB)
    expect_bob(alice, "<presence from='%s'><status>Before the crash</status></presence>" % BOB_RES,
               "Before the crash")
    time.sleep(STORE_SETTLE)

    gw_notifier.kill9_and_restart_gateway()

    # No new stanza from alice: the next PUBLISH of bob reaches her.
    bob.publish("open", "After the crash")
    expect_bob(alice, "<presence from='%s'><status>After the crash</status></presence>" % BOB_RES,
               "After the crash", timeout=UPDATE + 4)
    # And the relation was not turned into a roster change.
    assert alice.get_roster()[BOB]["subscription"] == "to"
    alice.presence(to=BOB, typ="unsubscribe")
    time.sleep(0.5)


def test_sip_watcher_dialog_gets_next_notify_after_kill9(gw_notifier, xmpp, sip):
    alice = xmpp("alice")
    alice.presence(show="away", status="Before the crash")
    sub = approved_watcher(sip, alice, "rita", "notifier")
    time.sleep(STORE_SETTLE)

    gw_notifier.kill9_and_restart_gateway()

    # The restarted gateway probes alice; her next change reaches erin in the SAME dialog.
    alice.presence(show="dnd", status="After the crash")
    n = sub.wait_notify(UPDATE + 4, note_is("After the crash"))
    assert_pidf(n, "open", "After the crash", ["busy"])
    # A refresh of the old dialog is accepted (the dialog survived), not 481.
    r = sub.refresh(600)
    assert r is not None and r.code == 200, r
    sub.unsubscribe()
