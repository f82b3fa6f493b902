"""Issue 6: a Kamailio restart. Kamailio keeps subscriptions in memory only
(subs_db_mode=0), so after a restart it has forgotten the gateway's subscription to bob.
The gateway's next in-dialog refresh gets 481 (or no answer); the gateway must then start
a NEW subscription (new Call-ID) by itself, so that bob's next PUBLISH reaches alice again
without any new stanza from alice.

The gateway runs with `[presence] subscribe_expires = 60` here (Kamailio's presence module
has no min_expires set, i.e. 0, so 60 is granted): it refreshes when the remaining time is
<= clamp(granted/4, 32 s, 600 s), i.e. about 28 s after the grant.
"""
import os
import re
import sqlite3
import time

import pytest

from conftest import GATEWAY_TOML
from test_xmpp_watches_sip import BOB, BOB_RES, expect, expect_bob
from xmpp_client import is_presence

pytestmark = pytest.mark.gateway

SUBSCRIBE_EXPIRES = 60
# refresh due ~28 s after the grant, plus a 481 round trip, the new SUBSCRIBE and its NOTIFY
RESUBSCRIBE_WAIT = SUBSCRIBE_EXPIRES - 32 + 12
SUBSCRIBE_LOG = re.compile(r'sending request method="?SUBSCRIBE"? uri=(\S+) call_id=(\S+) cseq=(\d+)')


def sent_subscribes(log_path):
    """(Call-ID, CSeq, initial?) of every SUBSCRIBE the gateway sent, in order (debug log);
    initial = sent to bob's AOR (an in-dialog one goes to Kamailio's Contact)."""
    with open(log_path, encoding="utf-8", errors="replace") as f:
        text = re.sub(r"\x1b\[[0-9;]*m", "", f.read())  # ANSI colours, if any
    return [(m.group(2), int(m.group(3)), m.group(1) == "sip:bob@sip.test") for m in SUBSCRIBE_LOG.finditer(text)]


def bob_publications(run_dir):
    """Rows of bob in Kamailio's presentity table (the publications it aggregates)."""
    # a plain connection: a read-only one cannot open a WAL database whose -shm file is
    # missing (SQLite removes it when the last connection closes, e.g. Kamailio stopping)
    db = sqlite3.connect(os.path.join(run_dir, "kamailio.sqlite"), timeout=5)
    try:
        return db.execute("SELECT etag FROM presentity WHERE username='bob' AND domain='sip.test'").fetchall()
    finally:
        db.close()


@pytest.fixture
def gw_short_expires(lab_manager):
    """A fresh lab in notifier mode whose gateway asks for 60 s subscriptions. Teardown
    stops the lab (its Kamailio was restarted, its gateway config is not the default):
    the next test gets a fresh one."""
    lab_manager.stop()
    lab_manager.gateway_toml = GATEWAY_TOML.replace(
        "subscribe_expires = 600", "subscribe_expires = %d" % SUBSCRIBE_EXPIRES)
    try:
        lab_manager.start("notifier", True)
    except RuntimeError as ex:
        del lab_manager.gateway_toml
        pytest.fail(str(ex), pytrace=False)
    try:
        yield lab_manager
        assert lab_manager.gateway is not None and lab_manager.gateway.poll() is None, \
            "the gateway exited during the test"
    finally:
        del lab_manager.gateway_toml
        lab_manager.stop()


def test_kamailio_restart_gateway_resubscribes_and_alice_gets_next_publish(gw_short_expires, xmpp, bob):
    lab = gw_short_expires
    bob.publish("open", "Before the restart")
    alice = xmpp("alice")
    alice.presence(to=BOB, typ="subscribe")
    expect(alice, is_presence(BOB, "subscribed"), "<presence type='subscribed' from='%s'/>" % BOB)
    expect_bob(alice, "<presence from='%s'><status>Before the restart</status></presence>" % BOB_RES,
               "Before the restart")
    before = sent_subscribes(lab.gateway_log)
    assert len(before) == 1 and before[0][1:] == (1, True), before
    old_call_id = before[0][0]

    lab.restart_kamailio()

    # bob modifies his publication. Kamailio keeps publications in its sqlite DB
    # (publ_cache=1), so the restarted one still knows bob's etag; had it forgotten it,
    # the 412 would make Publication start a new one. Either way bob has ONE publication
    # (two would be aggregated into one NOTIFY).
    bob.publish("open", "After the restart")
    assert len(bob_publications(lab.run_dir)) == 1, bob_publications(lab.run_dir)

    # No new stanza from alice: the gateway's in-dialog refresh (~28 s after the grant)
    # gets 481 from the restarted Kamailio, the gateway subscribes again in a new dialog,
    # and the NOTIFY of that dialog brings bob's current state. It is the very next
    # stanza from bob that alice gets.
    expect_bob(alice, "<presence from='%s'><status>After the restart</status></presence>" % BOB_RES,
               timeout=RESUBSCRIBE_WAIT)
    after = sent_subscribes(lab.gateway_log)
    assert len(after) == 3, after
    assert after[1] == (old_call_id, 2, False), "no in-dialog refresh first: %r" % after
    new_call_id, cseq, initial = after[2]
    assert (cseq, initial) == (1, True) and new_call_id != old_call_id, \
        "no new SUBSCRIBE with a new Call-ID: %r" % after

    # The new subscription carries later changes too.
    bob.publish("open", "Still there", ["away"])
    expect_bob(alice, "<presence from='%s'><show>away</show><status>Still there</status></presence>" % BOB_RES)
    assert alice.get_roster()[BOB]["subscription"] == "to"
    alice.presence(to=BOB, typ="unsubscribe")
    time.sleep(0.5)
