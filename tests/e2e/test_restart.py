"""Issue 6: nothing is lost across a `kill -9` of the gateway. The store (SQLite, batched
writes) holds every relation and dialog; on start the gateway refreshes still-valid SIP
dialogs in-dialog and resumes presence delivery without any new XMPP stanza from the users.
"""
import os
import sqlite3
import time

import pytest

from conftest import _lab_or_fail, wait_until
from test_sip_watches_xmpp import UPDATE, approved_watcher, assert_pidf, note_is
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


def alice_publications(run_dir):
    """(etag, expires) of alice's rows in Kamailio's presentity table (PUA mode)."""
    # a plain connection, as in test_kamailio_restart (WAL database)
    db = sqlite3.connect(os.path.join(run_dir, "kamailio.sqlite"), timeout=5)
    try:
        return db.execute("SELECT etag, expires FROM presentity WHERE username='alice*xmpp.test' "
                          "AND domain='sip-xmpp.test'").fetchall()
    finally:
        db.close()


@pytest.fixture
def gw_pua(lab_manager):
    """The lab in PUA mode with the gateway running; fails if the gateway died."""
    lab = _lab_or_fail(lab_manager, "pua", True)
    yield lab
    assert lab.gateway is not None and lab.gateway.poll() is None, "the gateway exited during the test"


def test_pua_publication_is_refreshed_after_kill9_and_not_duplicated(gw_pua, xmpp, sip):
    """PUA mode: the store holds alice's publication (ETag, document, lease). After a kill -9
    the gateway refreshes it at once with SIP-If-Match, without any stanza from alice, and
    her next change modifies that same publication (a new one would show rita a second,
    stale tuple until the old publication expired)."""
    alice = xmpp("alice")
    alice.presence(show="away", status="Before the crash")
    sub = approved_watcher(sip, alice, "rita", "pua")
    time.sleep(STORE_SETTLE)
    before = alice_publications(gw_pua.run_dir)
    assert len(before) == 1, before

    gw_pua.kill9_and_restart_gateway()

    def refreshed():
        rows = alice_publications(gw_pua.run_dir)
        return len(rows) == 1 and rows[0][1] > before[0][1]
    assert wait_until(refreshed, 10), "publication not refreshed: %r -> %r" % (
        before, alice_publications(gw_pua.run_dir))

    alice.presence(show="dnd", status="After the crash")
    n = sub.wait_notify(UPDATE + 4, note_is("After the crash"))
    assert_pidf(n, "open", "After the crash", ["busy"])
    assert len(alice_publications(gw_pua.run_dir)) == 1
    sub.unsubscribe()
