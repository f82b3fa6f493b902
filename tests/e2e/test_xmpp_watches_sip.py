"""Direction 1: the XMPP user alice watches the SIP user bob (sip:bob@sip.test, published
on Kamailio) through the gateway as bob*sip.test@sip.xmpp.test. Runs in notifier mode
(the Kamailio side of this direction is the same in both modes).

Every test asserts the exact stanzas alice receives: attributes (except `id`, the
`xml:lang` Prosody adds, and `to`, which is checked as a bare JID since a probe answer
goes to the full JID) and children, in any order. bob publishes one tuple id="t-bob", so
the resource is "t-bob" (spec 5.3 step 3).
"""
import time

import pytest

from xmpp_client import bare, is_presence, local, stanza_diff

pytestmark = pytest.mark.gateway

BOB = "bob*sip.test@sip.xmpp.test"
BOB_RES = BOB + "/t-bob"
ALICE = "alice@xmpp.test"
UPDATE = 8.0    # seconds to wait for a stanza caused by a SIP event
QUIET = 2.5     # seconds of silence that mean "nothing more comes"


def from_bob(e):
    return local(e.tag) == "presence" and bare(e.get("from")) == BOB


def expect(client, pred, expected_xml, timeout=UPDATE):
    el = client.wait(pred, timeout)
    diff = stanza_diff(el, expected_xml)
    assert diff is None, diff
    assert bare(el.get("to")) == ALICE, "to=%r" % el.get("to")
    return el


def expect_bob(client, expected_xml, status=None, timeout=UPDATE):
    """The next presence from bob's resource whose status is `status` (earlier updates
    of the same resource, e.g. the baseline, are skipped) must equal expected_xml."""
    def pred(e):
        if not from_bob(e):
            return False
        if status is None:
            return True
        st = e.find("{jabber:client}status")
        return st is not None and st.text == status
    return expect(client, pred, expected_xml, timeout)


@pytest.fixture
def alice_watches_bob(gw_notifier, xmpp, bob):
    """bob publishes the baseline (open, "Available"); alice logs in, subscribes to bob
    and has received `subscribed` and the baseline presence. Teardown: unsubscribe."""
    bob.publish("open", "Available")
    alice = xmpp("alice")
    alice.presence(to=BOB, typ="subscribe")
    expect(alice, is_presence(BOB, "subscribed"), "<presence type='subscribed' from='%s'/>" % BOB)
    expect_bob(alice, "<presence from='%s'><status>Available</status></presence>" % BOB_RES, "Available")
    yield alice
    if alice.is_open:
        alice.presence(to=BOB, typ="unsubscribe")
        time.sleep(0.5)  # let the gateway end the SIP subscription before the next test


def test_case_021_subscribe_gives_subscribed_then_current_presence(gw_notifier, xmpp, bob):
    bob.publish("open", "In the office")
    alice = xmpp("alice")
    assert BOB not in alice.roster or alice.roster[BOB]["subscription"] in ("none", "from")
    alice.presence(to=BOB, typ="subscribe")
    expect(alice, is_presence(BOB, "subscribed"), "<presence type='subscribed' from='%s'/>" % BOB)
    expect_bob(alice, "<presence from='%s'><status>In the office</status></presence>" % BOB_RES)
    assert alice.get_roster()[BOB]["subscription"] == "to"
    alice.presence(to=BOB, typ="unsubscribe")


def test_publish_open_with_note_gives_presence_with_status(alice_watches_bob, bob):
    bob.publish("open", "In the office")
    expect_bob(alice_watches_bob, "<presence from='%s'><status>In the office</status></presence>" % BOB_RES,
               "In the office")


@pytest.mark.parametrize("activity,show", [("away", "away"), ("busy", "dnd"), ("on-the-phone", "dnd")])
def test_rpid_activity_gives_show(alice_watches_bob, bob, activity, show):
    note = "rpid %s" % activity
    bob.publish("open", note, [activity])
    expect_bob(alice_watches_bob, "<presence from='%s'><show>%s</show><status>%s</status></presence>"
               % (BOB_RES, show, note), note)


def test_publish_closed_gives_unavailable(alice_watches_bob, bob):
    bob.publish("closed")
    expect(alice_watches_bob, lambda e: from_bob(e) and e.get("type") == "unavailable",
           "<presence type='unavailable' from='%s'/>" % BOB_RES)


def test_case_067_unicode_note_is_byte_exact(alice_watches_bob, bob):
    text = "Büro ☕ 会議中"
    bob.publish("open", text)
    expect_bob(alice_watches_bob, "<presence from='%s'><status>%s</status></presence>" % (BOB_RES, text), text)
    assert text.encode("utf-8") in bytes(alice_watches_bob.raw)


def test_case_024_unsubscribe_stops_updates(gw_notifier, xmpp, bob):
    bob.publish("open", "Available")
    alice = xmpp("alice")
    alice.presence(to=BOB, typ="subscribe")
    expect(alice, is_presence(BOB, "subscribed"), "<presence type='subscribed' from='%s'/>" % BOB)
    expect_bob(alice, "<presence from='%s'><status>Available</status></presence>" % BOB_RES, "Available")
    alice.presence(to=BOB, typ="unsubscribe")
    # spec 4.3: unavailable from the announced resource may come; never `unsubscribed`
    after = alice.collect(from_bob, QUIET)
    assert all(e.get("type") == "unavailable" for e in after), [e.attrib for e in after]
    bob.publish("open", "Should not arrive")
    late = alice.collect(from_bob, QUIET)
    assert late == [], [e.attrib for e in late]


def test_case_026_offline_then_online_gets_current_state_from_probe(alice_watches_bob, xmpp, bob):
    alice_watches_bob.close()
    bob.publish("open", "Back at 3", ["away"])
    alice = xmpp("alice", resource="again")
    el = expect_bob(alice, "<presence from='%s'><show>away</show><status>Back at 3</status></presence>"
                    % BOB_RES, "Back at 3")
    assert el.get("to") in (ALICE, ALICE + "/again")
    alice.presence(to=BOB, typ="unsubscribe")


def test_case_029_unknown_domain_gives_unsubscribed_and_gateway_keeps_serving(alice_watches_bob, bob):
    carol = "carol*unknown.example@sip.xmpp.test"
    alice_watches_bob.presence(to=carol, typ="subscribe")
    expect(alice_watches_bob, lambda e: local(e.tag) == "presence" and bare(e.get("from")) == carol,
           "<presence type='unsubscribed' from='%s'/>" % carol)
    bob.publish("open", "Still here")
    expect_bob(alice_watches_bob, "<presence from='%s'><status>Still here</status></presence>" % BOB_RES,
               "Still here")
