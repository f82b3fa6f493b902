"""Issue 17: "restart PostgreSQL under load, nothing lost", end to end.

One gateway on the PostgreSQL store (a server of the test: initdb in a temp dir, LAB_IP, a
free port; `store.url` set, `store.path` empty), real Prosody + Kamailio, notifier and PUA
mode. Load:

* alice watches 20 SIP users (pgr01..pgr20, all published on Kamailio by one UA);
* 3 SIP watchers (pgw1..pgw3) watch alice through Kamailio;
* a background thread PUBLISHes new notes for pgr01..pgr20 all the time (~20/s);
* alice changes her status every 0.3 s;
* a background thread has zoe subscribe to a new SIP user (pgn01..) every 0.25 s, without
  waiting for the answers (collected afterwards: `subscribed` or the refusal, exactly one).

While that runs PostgreSQL is stopped `-m immediate`; the test waits for /health 503 with the
store check failing, checks the documented refusals (XMPP `resource-constraint`; notifier
mode: SIP 503 + Retry-After: 60 straight from the gateway, 500 through Kamailio), keeps it
down DOWN_FOR s, starts it again and waits for /health 200. Then: every relation established
before, and every one acknowledged during, is in the database (subscription,
watcher_relation + notifier_dialog / publication tables), no refused one is; the last note of
each pgrNN and alice's last status reached their watchers; refused set-ups succeed when
retried; the next change of every relation reaches its watcher exactly once. Finally
`kill -9` of the gateway and a restart on the same database: only the current state is
re-sent, and the next change of every relation reaches its watcher exactly once again.
Run time: about 30 s (notifier) + 20 s (PUA).
"""
import json
import os
import subprocess
import threading
import time
import urllib.error
import urllib.request

import pytest

from conftest import GW_ADDR, GW_HTTP, LAB_IP, _lab_or_fail, wait_until
from sip_ua import Publication, SipUA, Subscription, pidf, tag_of
from test_ha import Postgres, _pg_bin
from test_sip_watches_xmpp import ALICE_SIP, UPDATE, approved_watcher, assert_pidf, note_is
from xmpp_client import bare, local, stanza_diff

pytestmark = pytest.mark.gateway

ALICE = "alice@xmpp.test"
ZOE = "zoe@xmpp.test"
N_WATCHED = 20
WATCHED = ["pgr%02d" % i for i in range(1, N_WATCHED + 1)]
NEW = ["pgn%02d" % i for i in range(1, 81)]       # zoe's set-ups during the load (until stopped)
SIP_WATCHERS = ["pgw1", "pgw2", "pgw3"]
STANZAS_NS = "urn:ietf:params:xml:ns:xmpp-stanzas"
SETUP = 8.0
DOWN_FOR = 2.5     # PostgreSQL stays down at least this long after /health said 503
DETECT = 10.0      # /health turns 503 within this of the stop (the store notices under load)
RECOVER = 15.0     # reconnect back-off is bounded: /health 200 within this of the start


def jid(user):
    return "%s*sip.test@sip.xmpp.test" % user


def health():
    try:
        with urllib.request.urlopen("http://%s/health" % GW_HTTP, timeout=2.0) as r:
            return r.status, json.loads(r.read().decode("utf-8"))
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read().decode("utf-8"))
    except OSError as e:
        return None, str(e)


class Pg(Postgres):
    def data(self):
        return os.path.join(self.dir, "data")

    def stop_immediate(self):
        self._run("pg_ctl", "-D", self.data(), "-w", "-m", "immediate", "stop")

    def start_again(self):
        self._run("pg_ctl", "-D", self.data(), "-l", os.path.join(self.dir, "server.log"), "-w", "start")

    def query(self, sql):
        """Rows of `sql` as lists of strings (psql -At, fields split on '|')."""
        r = subprocess.run([os.path.join(self.bin, "psql"), "-h", LAB_IP, "-p", str(self.port), "-U", "pua",
                            "-d", "postgres", "-At", "-F", "|", "-c", sql],
                           capture_output=True, text=True, timeout=10)
        assert r.returncode == 0, r.stderr
        return [line.split("|") for line in r.stdout.splitlines() if line]


@pytest.fixture(params=["notifier", "pua"])
def pg_lab(request, lab_manager, monkeypatch):
    if _pg_bin() is None:
        pytest.skip("no /usr/lib/postgresql/*/bin/initdb (install the postgresql package)")
    pg = Pg()
    pg.start()
    monkeypatch.setenv("PUA_XMPP__STORE__URL", pg.url())
    monkeypatch.setenv("PUA_XMPP__STORE__PATH", "")
    lab_manager.stop()  # a lab of its own: its gateway must see the variables above
    try:
        lab = _lab_or_fail(lab_manager, request.param, True)
        assert wait_until(lambda: health()[0] == 200, 10), health()
        yield lab, pg
    finally:
        lab_manager.stop()  # the next test gets the usual SQLite gateway
        pg.stop()


def is_from(user, typ=None):
    return lambda e: (local(e.tag) == "presence" and bare(e.get("from")) == jid(user)
                      and e.get("type") == typ)


def presence_xml(user, note):
    return "<presence from='%s/t-%s'><status>%s</status></presence>" % (jid(user), user, note)


class Publisher:
    """One UDP endpoint publishing for every pgrNN / pgnNN (each its own publication)."""

    def __init__(self, ua):
        self.ua = ua
        self.pubs = {}
        self.last = {}
        self.hiccups = 0
        self.lock = threading.Lock()

    def publish(self, user, note):
        with self.lock:
            aor = "sip:%s@sip.test" % user
            if user not in self.pubs:
                self.pubs[user] = Publication(self.ua, aor)
            body = pidf(aor, "open", note, tuple_id="t-" + user)
            r = self.pubs[user].publish(body)
            if r is None:
                # no answer from Kamailio within 5 s (a starved CPU): once more, same etag;
                # if the first one did arrive, Kamailio answers 412 and a new publication starts
                self.hiccups += 1
                r = self.pubs[user].publish(body)
            assert r is not None and r.code == 200 and r.h("sip-etag"), "PUBLISH %s: %r" % (user, r)
            self.last[user] = note


def subscribe_ok(client, user, note, who):
    """subscribe -> exactly `subscribed`, then the first presence with `note`."""
    client.presence(to=jid(user), typ="subscribe")
    el = client.wait(lambda e: is_from(user, "subscribed")(e) or is_from(user, "error")(e), SETUP)
    assert el is not None, "%s -> %s: no answer; inbox %s" % (who, user, client.dump_inbox())
    assert stanza_diff(el, "<presence type='subscribed' from='%s'/>" % jid(user)) is None, \
        "%s -> %s: %s" % (who, user, stanza_diff(el, "<presence type='subscribed' from='%s'/>" % jid(user)))
    el = client.wait(is_from(user), SETUP)
    assert el is not None, "%s -> %s: no first presence; inbox %s" % (who, user, client.dump_inbox())
    assert stanza_diff(el, presence_xml(user, note)) is None, stanza_diff(el, presence_xml(user, note))


def final_round(pub, clients_of, tag):
    """A new note for every watched SIP user; each watcher gets exactly that one presence."""
    notes = {}
    for user in clients_of:
        notes[user] = "%s %s" % (user, tag)
        pub.publish(user, notes[user])
    for user, clients in clients_of.items():
        for c in clients:
            el = c.wait(lambda e, u=user: is_from(u)(e) and e.findtext("{jabber:client}status") == notes[u], SETUP)
            assert el is not None, "%s: no presence of %s with %r; inbox %s" % (tag, user, notes[user], c.dump_inbox())
            diff = stanza_diff(el, presence_xml(user, notes[user]))
            assert diff is None, "%s: %s" % (tag, diff)
    time.sleep(1.0)
    for user, clients in clients_of.items():
        for c in clients:
            extra = [(e.attrib, e.findtext("{jabber:client}status")) for e in c.collect(is_from(user), 0.0)]
            assert extra == [], "%s: duplicated/extra presences of %s: %s" % (tag, user, extra)


def sip_watchers_get(alice, subs, show, note):
    alice.presence(show=show, status=note)
    for w, sub in subs.items():
        n = sub.wait_notify(UPDATE, note_is(note))
        assert n is not None, "%s got no NOTIFY with %r\n%s" % (w, note, sub.ua.dump_log(6))
        assert_pidf(n, "open", note, ["busy"] if show == "dnd" else ["away"] if show == "away" else [])
        extra = sub.notifies(0.5, note_is(note))
        assert extra == [], "%s: duplicated NOTIFY %r" % (w, extra)


def test_postgres_restart_under_load_loses_nothing(pg_lab, xmpp, sip):
    lab, pg = pg_lab
    t_start = time.monotonic()
    pub = Publisher(sip("pgrpub"))
    for u in WATCHED:
        pub.publish(u, "%s initial" % u)

    # relations before the restart
    alice = xmpp("alice")
    zoe = xmpp("zoe")
    for u in WATCHED:
        alice.presence(to=jid(u), typ="subscribe")
    for u in WATCHED:
        el = alice.wait(is_from(u, "subscribed"), SETUP)
        assert el is not None, "alice -> %s: no subscribed; inbox %s" % (u, alice.dump_inbox())
        el = alice.wait(is_from(u), SETUP)
        assert el is not None and stanza_diff(el, presence_xml(u, "%s initial" % u)) is None, \
            (u, el is not None and stanza_diff(el, presence_xml(u, "%s initial" % u)))
    alice.presence(show="away", status="alice before")
    mode = lab.mode
    subs = {w: approved_watcher(sip, alice, w, mode) for w in SIP_WATCHERS}
    t_setup = time.monotonic() - t_start

    # the load
    stop = threading.Event()
    errors = []
    sent = []  # (user, monotonic time of zoe's subscribe)

    def publish_loop():
        i = 0
        try:
            while not stop.is_set():
                u = WATCHED[i % N_WATCHED]
                pub.publish(u, "%s load %d" % (u, i))
                i += 1
                time.sleep(0.04)
        except BaseException as ex:  # noqa: BLE001 - reported by the main thread
            errors.append("publisher: %r" % ex)

    alice_last = {}

    def alice_loop():
        # alice's own presence changes all the time too (NOTIFYs to the SIP watchers; in PUA
        # mode PUBLISHes of the gateway)
        i = 0
        try:
            while not stop.is_set():
                alice_last["note"] = "alice load %d" % i
                alice.presence(show="away", status=alice_last["note"])
                i += 1
                time.sleep(0.3)
        except BaseException as ex:  # noqa: BLE001
            errors.append("alice: %r" % ex)

    def subscribe_loop():
        # one new set-up every 0.25 s, never waiting for the answer: some fall into the outage
        try:
            for u in NEW:
                if stop.is_set():
                    return
                pub.publish(u, "%s here" % u)
                zoe.presence(to=jid(u), typ="subscribe")
                sent.append((u, time.monotonic()))
                time.sleep(0.25)
        except BaseException as ex:  # noqa: BLE001
            errors.append("subscriber: %r" % ex)

    threads = [threading.Thread(target=publish_loop, daemon=True),
               threading.Thread(target=subscribe_loop, daemon=True),
               threading.Thread(target=alice_loop, daemon=True)]
    for t in threads:
        t.start()
    time.sleep(1.0)

    # PostgreSQL down
    assert health()[0] == 200, health()
    t_down = time.monotonic()
    pg.stop_immediate()
    assert wait_until(lambda: health()[0] == 503, DETECT, step=0.05), \
        "/health still %r %.0f s after PostgreSQL stopped" % (health(), DETECT)
    t_503 = time.monotonic()
    code, doc = health()
    print("\n/health while PostgreSQL is down: %s %s" % (code, json.dumps(doc)))
    assert code == 503 and doc["checks"]["store"] != "ok" and doc["status"] == "unavailable", doc
    assert doc["checks"]["xmpp"] == "up", doc

    # documented refusals while down (notifier mode: the gateway answers SIP watchers; in PUA
    # mode Kamailio's presence server does). Straight to the gateway: 503 + Retry-After: 60;
    # through Kamailio the watcher gets tm's 500 (a proxy does not relay a 503, RFC 3261 16.7).
    if mode == "notifier":
        host, port = GW_ADDR.rsplit(":", 1)
        direct = SipUA("pgwd", LAB_IP, (host, int(port)))
        try:
            dsub = Subscription(direct, ALICE_SIP)
            r = dsub.subscribe(600)
            assert r is not None, "no answer from the gateway\n%s" % direct.dump_log(4)
            assert (r.code, r.reason, r.h("retry-after")) == (503, "Store Unavailable", "60"), r.text()
            assert tag_of(r.h("to")), r.text()
            assert direct.collect("NOTIFY", 0.2) == [], "NOTIFY after a refused SUBSCRIBE"
        finally:
            direct.close()
        ksub = Subscription(sip("pgwk"), ALICE_SIP)
        r = ksub.subscribe(600)
        assert r is not None and (r.code, r.h("retry-after")) == (500, ""), r
        assert ksub.ua.collect("NOTIFY", 0.2) == [], "NOTIFY after a refused SUBSCRIBE"
    time.sleep(max(0.0, DOWN_FOR - (time.monotonic() - t_503)))
    code, doc = health()
    assert code == 503 and doc["checks"]["store"] != "ok", doc

    # PostgreSQL back
    pg.start_again()
    t_up = time.monotonic()
    assert wait_until(lambda: health()[0] == 200, RECOVER, step=0.05), \
        "/health still %r %.0f s after PostgreSQL started" % (health(), RECOVER)
    t_200 = time.monotonic()
    time.sleep(2.0)  # the load goes on with the store back
    stop.set()
    for t in threads:
        t.join(25)
    assert not errors, errors
    code, doc = health()
    assert code == 200 and doc["checks"]["store"] == "ok", doc

    refusal = ("<presence type='error' from='%s'><error type='wait' by='sip.xmpp.test'>"
               "<resource-constraint xmlns='%s'/><text xmlns='%s' xml:lang='en'>"
               "store unavailable, retry later</text></error></presence>")
    outcomes = []  # (user, "subscribed" | "refused" | "timeout", time sent)
    for u, t in sent:
        el = zoe.wait(lambda e, u=u: is_from(u, "subscribed")(e) or is_from(u, "error")(e), 10.0)
        if el is None:
            outcomes.append((u, "timeout", t))
        elif el.get("type") == "subscribed":
            diff = stanza_diff(el, "<presence type='subscribed' from='%s'/>" % jid(u))
            assert diff is None, "zoe -> %s: %s" % (u, diff)
            outcomes.append((u, "subscribed", t))
        else:
            diff = stanza_diff(el, refusal % (jid(u), STANZAS_NS, STANZAS_NS))
            assert diff is None, "zoe -> %s: unexpected error: %s" % (u, diff)
            outcomes.append((u, "refused", t))
    time.sleep(0.5)
    for u, _ in sent:
        extra = [e.attrib for e in zoe.collect(lambda e, u=u: is_from(u, "subscribed")(e)
                                              or is_from(u, "error")(e), 0.0)]
        assert extra == [], "zoe -> %s: more than one answer: %s" % (u, extra)

    print("setup %.1f s; /health 503 after %.2f s, 200 %.2f s after start; zoe's set-ups: %s"
          % (t_setup, t_503 - t_down, t_200 - t_up,
             [(u, o, round(t - t_down, 2)) for u, o, t in outcomes]))
    acked = [u for u, o, _ in outcomes if o == "subscribed"]
    refused = [u for u, o, _ in outcomes if o == "refused"]
    timed_out = [u for u, o, _ in outcomes if o == "timeout"]
    assert timed_out == [], "set-ups neither acknowledged nor refused within 20 s: %s" % timed_out
    assert [u for u, o, t in outcomes if o == "refused" and t_503 <= t <= t_up], \
        "no set-up was refused while PostgreSQL was down: %s" % outcomes
    assert [u for u, o, t in outcomes if o == "subscribed" and t_down <= t], \
        "no set-up was acknowledged during/after the outage while the load ran: %s" % outcomes
    early = [(u, o) for u, o, t in outcomes if o == "refused" and (t < t_down or t > t_200)]
    assert not early, "set-ups refused while the store was healthy: %s" % early

    # the last note of every pgrNN reached alice (eventually), nothing lost during the outage
    def last_status(user):
        got = [e for e in alice.collect(is_from(user), 0.0)]
        return got[-1].findtext("{jabber:client}status") if got else None

    time.sleep(1.0)
    lasts = {u: last_status(u) for u in WATCHED}
    missing = {u: (lasts[u], pub.last[u]) for u in WATCHED if lasts[u] != pub.last[u]}
    assert not missing, "alice's last presence is not the last PUBLISH: %s" % missing
    zoe.collect(lambda e: True, 0.0)  # first presences of her new relations
    # alice's last change under load reached every SIP watcher (rate-limited, not lost)
    for w, sub in subs.items():
        n = sub.wait_notify(UPDATE, note_is(alice_last["note"]))
        assert n is not None, "%s never got alice's last change %r\n%s" % (w, alice_last["note"], sub.ua.dump_log(4))
        assert_pidf(n, "open", alice_last["note"], ["away"])
        sub.discard()

    # in the database
    rows = {tuple(r) for r in pg.query("SELECT watcher, presentity FROM subscription")}
    lost = [(w, jid(u)) for w, us in ((ALICE, WATCHED), (ZOE, acked)) for u in us if (w, jid(u)) not in rows]
    assert not lost, "acknowledged relations missing from PostgreSQL: %s\nrows: %s" % (lost, sorted(rows))
    stray = [(ZOE, jid(u)) for u in refused if (ZOE, jid(u)) in rows]
    assert not stray, "refused set-ups in the store: %s" % stray
    if mode == "notifier":
        dialogs = {r[0] for r in pg.query("SELECT call_id FROM notifier_dialog")}
        assert {s.call_id for s in subs.values()} <= dialogs, (sorted(dialogs), [s.call_id for s in subs.values()])
        assert {(ALICE, jid(w)) for w in SIP_WATCHERS} <= \
            {tuple(r) for r in pg.query("SELECT presentity, watcher FROM watcher_relation")}, \
            pg.query("SELECT presentity, watcher, state FROM watcher_relation")
    else:
        pubs = pg.query("SELECT presentity, etag FROM publication")
        assert [p for p in pubs if p[0] == ALICE and p[1]], "alice's publication not in PostgreSQL: %s" % pubs

    # refused set-ups succeed when retried
    for u in refused:
        subscribe_ok(zoe, u, pub.last[u], "zoe (retry)")
    relations = {u: [alice] for u in WATCHED}
    relations.update({u: [zoe] for u in acked + refused})

    if mode == "notifier":  # the refused SIP watchers, retried through Kamailio
        for w in ("pgwd", "pgwk"):
            subs[w] = approved_watcher(sip, alice, w, mode)

    # every relation works: the next change reaches its watcher exactly once
    final_round(pub, relations, "after the PostgreSQL restart")
    sip_watchers_get(alice, subs, "dnd", "alice after the PostgreSQL restart")
    rows = {tuple(r) for r in pg.query("SELECT watcher, presentity FROM subscription")}
    lost = [(ZOE, jid(u)) for u in refused if (ZOE, jid(u)) not in rows]
    assert not lost, "retried relations missing from PostgreSQL: %s" % lost

    # kill -9 of the gateway, restart on the same database: everything restored
    time.sleep(0.5)
    lab.kill9_and_restart_gateway()
    assert wait_until(lambda: health()[0] == 200, 10), health()
    # The restarted gateway refreshes its SIP dialogs; Kamailio's NOTIFYs may re-send the
    # current state (presence is a state: a repeat is not a change). It must be the current one.
    time.sleep(2.0)
    for user, clients in relations.items():
        for c in clients:
            for e in c.collect(is_from(user), 0.0):
                diff = stanza_diff(e, presence_xml(user, "%s after the PostgreSQL restart" % user))
                assert diff is None, "stale state of %s re-sent after kill -9: %s" % (user, diff)
    final_round(pub, relations, "after kill -9")
    sip_watchers_get(alice, subs, "away", "alice after kill -9")
    print("relations checked: %d XMPP->SIP (%d set up under load, %d retried), %d SIP->XMPP; "
          "%d PUBLISHes sent twice (no answer in 5 s); whole test %.1f s"
          % (sum(len(c) for c in relations.values()), len(acked), len(refused), len(subs), pub.hiccups,
             time.monotonic() - t_start))
