"""Direction 2: SIP users (carol, dave, ... @sip.test) watch the XMPP user alice as
sip:alice*xmpp.test@sip-xmpp.test. Every test runs in both gateway modes (the lab and the
gateway are restarted per mode):
  notifier: Kamailio relays the SUBSCRIBE to the gateway, which answers and NOTIFYs;
  pua:      Kamailio's presence module serves the SUBSCRIBE (force_active=1: active at
            once), tells the gateway (HTTP /pua/req_winfo, winfo), and the gateway
            PUBLISHes alice's presence.
alice's single resource is "e2e", so her tuple id is "ID-e2e" (spec 4.6). NOTIFYs may be
rate-limited (spec 6.2: at most one per 5 s, trailing edge), hence the waits of ~12 s.
"""
import pytest

from sip_ua import Subscription, parse_pidf
from xmpp_client import bare, local, stanza_diff

pytestmark = pytest.mark.gateway

ALICE = "alice@xmpp.test"
ALICE_SIP = "sip:alice*xmpp.test@sip-xmpp.test"
ENTITIES = ("pres:alice*xmpp.test@sip-xmpp.test", ALICE_SIP)  # spec 4.6: pres: (◆ sip: by config)
UPDATE = 12.0   # a NOTIFY caused by an XMPP change (5 s rate limit + slack)
QUIET = 6.0     # no NOTIFY for longer than the rate-limit window: nothing more comes


def jid_of(user):
    return "%s*sip.test@sip.xmpp.test" % user


def note_is(text):
    """NOTIFY predicate: a PIDF whose first tuple carries this note."""
    def pred(m):
        if not m.body_bytes:
            return False
        try:
            tuples = parse_pidf(m.body_bytes)["tuples"]
        except Exception:  # noqa: BLE001 - a bad body is asserted on elsewhere
            return False
        return any(text in t["notes"] for t in tuples)
    return pred


def closed_doc(m):
    if not m.body_bytes:
        return False
    try:
        return [t["basic"] for t in parse_pidf(m.body_bytes)["tuples"]] == ["closed"]
    except Exception:  # noqa: BLE001
        return False


def assert_pidf(n, basic, note, activities, tuple_id="ID-e2e"):
    assert n is not None, "no matching NOTIFY"
    assert n.h("event").split(";")[0] == "presence"
    assert n.sub_state()[0] == "active", n.h("subscription-state")
    assert n.h("content-type") == "application/pidf+xml"
    doc = parse_pidf(n.body_bytes)
    assert doc["entity"] in ENTITIES, doc["entity"]
    got = [(t["id"], t["basic"], t["notes"]) for t in doc["tuples"]]
    assert got == [(tuple_id, basic, [note] if note is not None else [])], got
    assert doc["activities"] == activities, doc["activities"]
    return doc


def subscribe_request(alice, watcher, timeout=8.0):
    """The `subscribe` stanza alice receives for a SIP watcher (exact), or None."""
    el = alice.wait(lambda e: local(e.tag) == "presence" and e.get("type") == "subscribe"
                    and bare(e.get("from")) == jid_of(watcher), timeout)
    if el is not None:
        diff = stanza_diff(el, "<presence type='subscribe' from='%s'/>" % jid_of(watcher))
        assert diff is None, diff
        assert bare(el.get("to")) == ALICE
    return el


def approved_watcher(sip, alice, user, mode):
    """A SIP watcher subscribed to alice with the relation approved (approving it if
    the gateway asks; a relation approved by an earlier test is fine here) and the
    NOTIFY with alice's open state received. Returns the Subscription."""
    sub = Subscription(sip(user), ALICE_SIP)
    r = sub.subscribe(600)
    assert r is not None and r.code == 200, r
    if subscribe_request(alice, user, 4.0) is not None:
        alice.presence(to=jid_of(user), typ="subscribed")
    n = sub.wait_notify(UPDATE, lambda m: m.body_bytes != b"" and not closed_doc(m))
    assert n is not None, "no open NOTIFY for %s\n%s" % (user, sub.ua.dump_log(6))
    sub.discard()  # the pending/closed NOTIFYs before it
    return sub


def test_case_049_sip_subscribe_reaches_alice_as_subscribe(gw_lab, gw_mode, xmpp, sip):
    alice = xmpp("alice")
    sub = Subscription(sip("carol"), ALICE_SIP)
    r = sub.subscribe(600)
    assert r is not None and r.code == 200 and r.h("expires") == "600", r
    assert subscribe_request(alice, "carol") is not None, "alice got no subscribe: %s" % alice.dump_inbox()
    n = sub.wait_notify()
    assert n is not None
    # notifier: pending until alice decides (spec 5.1); pua: Kamailio force_active
    assert n.sub_state()[0] == ("pending" if gw_mode == "notifier" else "active"), n.h("subscription-state")
    assert n.body_bytes == b""

    # case 050: approve, then away + "Lunch"
    alice.presence(to=jid_of("carol"), typ="subscribed")
    alice.presence(show="away", status="Lunch")
    assert_pidf(sub.wait_notify(UPDATE, note_is("Lunch")), "open", "Lunch", ["away"])

    # case 034: dnd -> rpid busy
    alice.presence(show="dnd", status="Meeting")
    assert_pidf(sub.wait_notify(UPDATE, note_is("Meeting")), "open", "Meeting", ["busy"])

    # case 044: unavailable -> closed
    alice.presence(typ="unavailable")
    n = sub.wait_notify(UPDATE, closed_doc)
    assert n is not None, "no closed NOTIFY"
    doc = parse_pidf(n.body_bytes)
    assert [t["basic"] for t in doc["tuples"]] == ["closed"] and doc["activities"] == []
    sub.unsubscribe()


def test_case_060_decline_terminates_with_rejected(gw_lab, gw_mode, xmpp, sip):
    if gw_mode == "pua":
        pytest.skip("PUA mode: Kamailio's force_active=1 makes every watcher active; a decline cannot be enforced")
    alice = xmpp("alice")
    sub = Subscription(sip("erin"), ALICE_SIP)
    assert sub.subscribe(600).code == 200
    assert subscribe_request(alice, "erin") is not None
    n = sub.wait_notify()
    assert n is not None and n.sub_state()[0] == "pending"
    alice.presence(to=jid_of("erin"), typ="unsubscribed")
    n = sub.wait_notify(UPDATE)
    assert n is not None and n.sub_state() == ("terminated", {"reason": "rejected"}), n
    assert n.body_bytes == b""
    alice.presence(show="chat", status="Not for erin")
    late = sub.notifies(QUIET)
    assert late == [], late


def test_case_053_unsubscribe_gives_final_notify_and_nothing_after(gw_lab, gw_mode, xmpp, sip):
    alice = xmpp("alice")
    sub = approved_watcher(sip, alice, "frank", gw_mode)
    sub.notifies(2.0)  # NOTIFYs still under way (e.g. the trailing edge of the rate limit)
    r = sub.unsubscribe()
    assert r is not None and r.code == 200, r
    n = sub.wait_notify(UPDATE, lambda m: m.sub_state()[0] == "terminated")
    assert n is not None and n.sub_state() == ("terminated", {"reason": "timeout"}), n
    alice.presence(show="away", status="After frank left")
    late = sub.notifies(QUIET)
    assert late == [], late
    # an Expires: 0 is not a roster change (spec 1.2, case 053)
    stanzas = [e for e in alice.drain() if bare(e.get("from")) == jid_of("frank")]
    assert [e.get("type") for e in stanzas if e.get("type") in ("unsubscribe", "unsubscribed")] == []


def test_two_watchers_get_exactly_one_notify_each(gw_lab, gw_mode, xmpp, sip):
    alice = xmpp("alice")
    subs = [approved_watcher(sip, alice, u, gw_mode) for u in ("carol", "dave")]
    alice.presence(status="Before")
    for s in subs:
        assert s.wait_notify(UPDATE, note_is("Before")) is not None
    for s in subs:  # let any trailing NOTIFY of the rate limiter pass
        s.notifies(QUIET)
    alice.presence(show="dnd", status="Only once")
    got = [s.notifies(UPDATE) for s in subs]
    for s, ns in zip(subs, got):
        assert len(ns) == 1, "%s got %d NOTIFYs: %r" % (s.ua.user, len(ns), ns)
        assert_pidf(ns[0], "open", "Only once", ["busy"])
    for s in subs:
        s.unsubscribe()


def test_case_067_unicode_status_in_the_note(gw_lab, gw_mode, xmpp, sip):
    text = "Büro ☕ 会議中"
    alice = xmpp("alice")
    sub = approved_watcher(sip, alice, "grace", gw_mode)
    alice.presence(status=text)
    n = sub.wait_notify(UPDATE, note_is(text))
    assert_pidf(n, "open", text, [])
    assert text.encode("utf-8") in n.body_bytes
    assert int(n.h("content-length")) == len(n.body_bytes)
    sub.unsubscribe()
