"""Issue 14, "a store that cannot write says so", end to end: the gateway's store on a file
system that fills up, between the real Prosody and the real Kamailio, in both modes.

The test mounts an 8 MiB tmpfs at <run dir>/storefs (root only: without the permission
the test is skipped, with the reason) and restarts the lab's gateway with `store.path`
inside it (the conftest template, only the store path changed; same binary, addresses and
run dir). Then:

1. Baseline, store healthy: alice subscribes to sip:full1@sip.test (published on Kamailio)
   and gets `subscribed` and its presence.
2. The file system is filled (64 KiB writes, then 4 KiB, then 1 byte, until ENOSPC).
3. alice subscribes to full2 (published). The gateway SUBSCRIBEs and Kamailio NOTIFYs, but
   the pair's record cannot be committed: alice gets neither `subscribed` nor the presence
   while the disk is full (durable before acknowledged), and GET /health turns 503 with
   reason "store not writable: <SQLite error>".
4. alice subscribes to full3: an XMPP error `resource-constraint` ("store unavailable, retry
   later") comes back at once and no SUBSCRIBE for full3 leaves the gateway. Notifier mode:
   a SIP watcher's new SUBSCRIBE to alice gets `503 Store Unavailable` + `Retry-After: 60`
   from the gateway. Through Kamailio (kamailio.log shows the gateway's 503) the watcher
   gets Kamailio's `500 Service Unavailable` without Retry-After: tm does not relay a 503
   upstream (RFC 3261 16.7 step 6). Sent straight to the gateway, the watcher gets the 503
   itself. (PUA mode: Kamailio's presence server answers SIP watchers, the gateway is not
   asked.)
5. The filler is deleted. Within 10 s (the writer retries with a backoff of at most 5 s)
   /health is 200 again, alice gets the held `subscribed` and first presence of full2, and
   full3 (and, in notifier mode, the SIP watcher) subscribe normally.

At teardown the filler is removed, the gateway stopped, the tmpfs unmounted and the lab's
usual gateway started again on the run dir's own store. The measured times are printed
(pytest -s or -rA).
"""
import errno
import json
import os
import sqlite3
import subprocess
import time
import urllib.error
import urllib.request

import pytest

import conftest
from conftest import GW_HTTP, LAB_IP, _lab_or_fail, tail, wait_until
from sip_ua import Publication, SipUA, Subscription, pidf, tag_of
from test_sip_watches_xmpp import ALICE_SIP, jid_of, subscribe_request
from xmpp_client import bare, local, stanza_diff

pytestmark = pytest.mark.gateway

ALICE = "alice@xmpp.test"
FS_SIZE = "8m"
STORE_LINE = 'path = "{run_dir}/pua-xmpp.db"'
STORE_FS = "storefs"
SETUP = 8.0        # a step that normally takes milliseconds
FAIL_WITHIN = 5.0  # /health turns 503 after the first failed commit (coalesce 20 ms + one attempt)
# the disk stays full this long after full2's subscribe: longer than the writer's backoff
# takes to reach its 5 s cap (10 ms doubling: 5.1 s), so the recovery shows the cap holds
FULL_FOR = 6.0
RECOVER = 10.0     # the writer's backoff is at most 5 s: it commits within about 5 s of the space
RESTART = 15.0
AUTH_LINE = b"External component successfully authenticated"
STANZAS_NS = "urn:ietf:params:xml:ns:xmpp-stanzas"


# ------------------------------------------------------------------ helpers
def health():
    """(status, parsed JSON body) of GET /health; (None, reason) if nothing answers."""
    try:
        with urllib.request.urlopen("http://%s/health" % GW_HTTP, timeout=2.0) as r:
            return r.status, json.loads(r.read().decode("utf-8"))
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read().decode("utf-8"))
    except OSError as e:
        return None, str(e)


def subscriptions_of(user):
    try:
        with urllib.request.urlopen("http://%s/subscriptions?user=%s" % (GW_HTTP, user), timeout=2.0) as r:
            return json.loads(r.read().decode("utf-8"))
    except (OSError, ValueError) as e:
        return "(%s)" % e


def fill(fs):
    """Write <fs>/fill until the file system refuses (ENOSPC), in decreasing chunk sizes so
    that not even a byte is left. Returns the bytes written."""
    path = os.path.join(fs, "fill")
    written = 0
    with open(path, "wb", buffering=0) as f:
        for chunk in (65536, 4096, 1):
            data = b"\0" * chunk
            while True:
                try:
                    n = f.write(data)
                except OSError as ex:
                    if ex.errno != errno.ENOSPC:
                        raise
                    break
                if not n:
                    break
                written += n
    st = os.statvfs(fs)
    assert st.f_bavail == 0, "the file system still has %d free blocks" % st.f_bavail
    return written


def header(msg_text, name):
    """First value of a header in a logged SIP message (long lowercase name), or ""."""
    for line in msg_text.replace("\r", "").split("\n")[1:]:
        if not line:
            break
        n, _, v = line.partition(":")
        if n.strip().lower() == name:
            return v.strip()
    return ""


def gw_addr():
    host, port = conftest.GW_ADDR.rsplit(":", 1)
    return host, int(port)


def stored_pairs(db):
    """(watcher, presentity) of the subscription table, read through a read-only connection."""
    conn = sqlite3.connect("file:%s?mode=ro" % db, uri=True, timeout=2.0)
    try:
        return conn.execute("SELECT watcher, presentity FROM subscription").fetchall()
    finally:
        conn.close()


def kamailio_offset(lab):
    return os.path.getsize(os.path.join(lab.run_dir, "kamailio.log"))


def kamailio_messages(lab, offset):
    """The SIP messages kamailio.log shows after `offset`, as (log line, message text):
    `SIP-IN <method> <ruri> from <proto>:<ip>:<port>`, `SIP-REPLY-IN ...`, `SIP-LOCAL-OUT ...`
    (config/kamailio.cfg's xlog lines)."""
    with open(os.path.join(lab.run_dir, "kamailio.log"), "rb") as f:
        f.seek(offset)
        text = f.read().decode("utf-8", errors="replace")
    out = []
    for block in text.split("NOTICE: <script>: ")[1:]:
        head, _, rest = block.partition("\n>>>>\n")
        out.append((head.strip(), rest.split("<<<<", 1)[0]))
    return out


def gateway_subscribes_for(msgs, user):
    """The initial SUBSCRIBEs for sip:<user>@sip.test that came from the gateway."""
    return [m for h, m in msgs if h.startswith("SIP-IN SUBSCRIBE sip:%s@sip.test " % user)
            and h.endswith("from udp:%s" % conftest.GW_ADDR)]


def notifies_from(msgs, user):
    """The NOTIFYs Kamailio's presence server generated on behalf of sip:<user>@sip.test."""
    return [m for h, m in msgs if h.startswith("SIP-LOCAL-OUT NOTIFY ")
            and ("From: <sip:%s@sip.test>" % user) in m]


def start_gateway(lab):
    """lab._start_gateway, then wait until Prosody logged a NEW component authentication
    (the conftest check also sees the lines of earlier processes) and /health answers."""
    prosody_log = os.path.join(lab.run_dir, "prosody.log")
    offset = os.path.getsize(prosody_log)

    def authenticated():
        with open(prosody_log, "rb") as f:
            f.seek(offset)
            return AUTH_LINE in f.read()

    lab._start_gateway(lab.mode)
    if not wait_until(lambda: authenticated() or lab.gateway.poll() is not None, RESTART, step=0.02) \
            or lab.gateway.poll() is not None:
        raise AssertionError("gateway did not authenticate its component (exit %s)\n%s"
                             % (lab.gateway.poll(), tail(lab.gateway_log)))
    if not wait_until(lambda: health()[0] == 200, RESTART):
        raise AssertionError("gateway not healthy: %r\n%s" % (health(), tail(lab.gateway_log)))


def mount_tmpfs(fs):
    os.makedirs(fs, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=%s" % FS_SIZE, "tmpfs", fs],
                       capture_output=True, text=True)
    if r.returncode != 0:
        why = (r.stderr or r.stdout).strip()
        low = why.lower()
        if os.geteuid() != 0 or "permission denied" in low or "not permitted" in low or "superuser" in low:
            pytest.skip("cannot mount a tmpfs for the store (needs root): %s" % why)
        pytest.fail("mount -t tmpfs %s failed: %s" % (fs, why), pytrace=False)


def is_mounted(fs):
    with open("/proc/self/mounts") as f:
        return any(line.split()[1] == fs for line in f if len(line.split()) > 1)


def unmount(fs):
    for _ in range(20):
        if not is_mounted(fs):
            return None
        r = subprocess.run(["umount", fs], capture_output=True, text=True)
        if r.returncode == 0:
            return None
        time.sleep(0.25)
    subprocess.run(["umount", "-l", fs], capture_output=True, text=True)
    return "umount %s needed a lazy unmount (busy)" % fs


@pytest.fixture(params=["pua", "notifier"])  # pua first: the suite's lab is in pua mode by then
def store_fs_lab(request, lab_manager):
    """The lab in `mode` with its gateway restarted on a store inside an 8 MiB tmpfs.
    Teardown: filler removed, gateway stopped, tmpfs unmounted, the usual gateway restarted."""
    mode = request.param
    lab = _lab_or_fail(lab_manager, mode, True)
    fs = os.path.join(lab.run_dir, STORE_FS)
    assert STORE_LINE in conftest.GATEWAY_TOML, "conftest's store path line changed"
    mount_tmpfs(fs)
    problems = []
    try:
        lab.stop_gateway()
        os.replace(lab.gateway_log, lab.gateway_log + ".before-storefs-" + mode)
        lab.gateway_toml = conftest.GATEWAY_TOML.replace(
            STORE_LINE, 'path = "{run_dir}/%s/pua-xmpp.db"' % STORE_FS)
        start_gateway(lab)
        yield lab, fs
    finally:
        # free the space first: a SIGTERM flush of a full store would retry until the grace ends
        try:
            os.remove(os.path.join(fs, "fill"))
        except OSError:
            pass
        if lab.gateway is not None and lab.gateway.poll() is not None:
            problems.append("the gateway on the tmpfs store exited during the test (%s)" % lab.gateway.returncode)
        lab.stop_gateway()
        if lab.gateway_log and os.path.exists(lab.gateway_log):
            os.replace(lab.gateway_log, lab.gateway_log + ".storefs-" + mode)
        why = unmount(fs)
        if why:
            problems.append(why)
        lab.__dict__.pop("gateway_toml", None)
        try:
            start_gateway(lab)  # the lab's usual gateway, on the run dir's store, for the next tests
        except (AssertionError, RuntimeError) as ex:
            lab.stop()  # the next fixture starts the whole lab again
            problems.append("the usual gateway did not start again: %s" % ex)
    assert not problems, problems


# ------------------------------------------------------------------ the test
def test_full_store_holds_acknowledgements_refuses_new_subscriptions_then_recovers(store_fs_lab, xmpp, sip):
    lab, fs = store_fs_lab
    mode = lab.mode
    times = {}
    started = time.monotonic()
    code, doc = health()
    assert code == 200 and doc["checks"]["store"] == "ok", (code, doc)

    users = ["full1", "full2", "full3"]
    jids = {u: "%s*sip.test@sip.xmpp.test" % u for u in users}
    notes = {u: "%s is here" % u.capitalize() for u in users}
    ua = sip("full")  # one UDP endpoint publishes for every full<i>@sip.test
    pubs = {}
    for u in users:
        aor = "sip:%s@sip.test" % u
        pubs[u] = Publication(ua, aor)
        r = pubs[u].publish(pidf(aor, "open", notes[u], tuple_id="t-" + u))
        assert r is not None and r.code == 200 and r.h("sip-etag"), "PUBLISH %s: %r" % (u, r)

    def from_jid(u):
        return lambda e: local(e.tag) == "presence" and bare(e.get("from")) == jids[u]

    def subscribed_xml(u):
        return "<presence type='subscribed' from='%s'/>" % jids[u]

    def presence_xml(u):
        return "<presence from='%s/t-%s'><status>%s</status></presence>" % (jids[u], u, notes[u])

    def expect(el, xml, what):
        diff = stanza_diff(el, xml)
        assert diff is None, "%s: %s; alice's other stanzas: %s" % (what, diff, alice.dump_inbox())
        assert bare(el.get("to")) == ALICE, el.get("to")

    def subscribe_normally(u, what):
        t0 = time.monotonic()
        alice.presence(to=jids[u], typ="subscribe")
        el = alice.wait(lambda e: from_jid(u)(e) and e.get("type") == "subscribed", SETUP)
        expect(el, subscribed_xml(u), "%s: subscribed" % what)
        el = alice.wait(lambda e: from_jid(u)(e) and e.get("type") is None, SETUP)
        expect(el, presence_xml(u), "%s: first presence" % what)
        return time.monotonic() - t0

    # 1. baseline with a healthy store
    alice = xmpp("alice")
    times["baseline full1"] = subscribe_normally("full1", "baseline full1")

    # 2. fill the file system
    t0 = time.monotonic()
    filled = fill(fs)
    times["fill"] = time.monotonic() - t0
    assert health()[0] == 200, health()  # nothing has tried to write yet

    # 3. a new pair while the disk is full: SIP side goes ahead, nothing acknowledged to alice
    koff = kamailio_offset(lab)
    t_full = time.monotonic()
    alice.presence(to=jids["full2"], typ="subscribe")
    assert wait_until(lambda: health()[0] == 503, FAIL_WITHIN, step=0.02), \
        "/health still %r %.0f s after a new pair on a full disk" % (health(), FAIL_WITHIN)
    times["full2 subscribe -> /health 503"] = time.monotonic() - t_full
    code, doc = health()
    assert code == 503, (code, doc)
    assert set(doc) == {"status", "reason", "checks"}, doc
    checks = doc["checks"]
    assert set(checks) == {"xmpp", "store", "store_queued", "actors"}, doc
    store_text = checks["store"]
    assert store_text.startswith("not writable: "), doc
    error = store_text[len("not writable: "):]
    print("\n[%s] /health while the disk is full: %s\n[%s] store error: %r" % (mode, json.dumps(doc), mode, error))
    assert error.startswith("sqlite: database or disk is full"), error
    assert doc["status"] == "unavailable" and doc["reason"] == "store " + store_text, doc
    assert checks["xmpp"] == "up" and checks["actors"] == "ok", doc
    assert isinstance(checks["store_queued"], int) and checks["store_queued"] >= 1, doc

    # the gateway did subscribe and Kamailio did notify (the held output is the pair's)
    def sip_side_done():
        msgs = kamailio_messages(lab, koff)
        return gateway_subscribes_for(msgs, "full2") and notifies_from(msgs, "full2")
    assert wait_until(sip_side_done, SETUP), \
        "no SUBSCRIBE from the gateway / NOTIFY from Kamailio for full2:\n%s" % kamailio_messages(lab, koff)
    times["full2 subscribe -> Kamailio's NOTIFY seen"] = time.monotonic() - t_full
    print("[%s] subscriptions of alice while the disk is full: %s" % (mode, subscriptions_of(ALICE)))

    # 4. refusals while the disk is full
    koff3 = kamailio_offset(lab)
    t0 = time.monotonic()
    alice.presence(to=jids["full3"], typ="subscribe")
    el = alice.wait(from_jid("full3"), SETUP)
    times["full3 subscribe -> error"] = time.monotonic() - t0
    expect(el, "<presence type='error' from='%s'><error type='wait' by='sip.xmpp.test'>"
               "<resource-constraint xmlns='%s'/><text xmlns='%s' xml:lang='en'>store unavailable, retry later"
               "</text></error></presence>" % (jids["full3"], STANZAS_NS, STANZAS_NS), "full3 while full")

    if mode == "notifier":
        # through Kamailio, as every SIP watcher: the gateway answers 503 Store Unavailable +
        # Retry-After: 60; Kamailio's tm relays a 503 as 500 (RFC 3261 16.7 step 6: a proxy
        # does not forward a 503 upstream), without the Retry-After
        koffw = kamailio_offset(lab)
        watcher = Subscription(sip("fullw"), ALICE_SIP)
        t0 = time.monotonic()
        r = watcher.subscribe(600)
        times["SIP SUBSCRIBE via Kamailio -> final"] = time.monotonic() - t0
        assert r is not None, "no answer to the SIP watcher's SUBSCRIBE\n%s" % watcher.ua.dump_log(4)
        replies = [(h, m) for h, m in kamailio_messages(lab, koffw) if h.startswith("SIP-REPLY-IN ")
                   and header(m, "call-id") == watcher.call_id]
        assert [h for h, _ in replies] == ["SIP-REPLY-IN 503 Store Unavailable (SUBSCRIBE) from udp:%s"
                                           % conftest.GW_ADDR], replies
        assert header(replies[0][1], "retry-after") == "60", replies[0][1]
        assert (r.code, r.reason, r.h("retry-after")) == (500, "Service Unavailable", ""), r.text()
        print("[%s] SIP watcher via Kamailio: the gateway answered %r, the watcher got %r"
              % (mode, replies[0][0], r.first))
        assert watcher.ua.collect("NOTIFY", 0.0) == [], "NOTIFY after a refused SUBSCRIBE"
        # straight to the gateway (no trusted_peers in the test config): its own answer, exactly
        direct = SipUA("fullwd", LAB_IP, gw_addr())
        try:
            sub = Subscription(direct, ALICE_SIP)
            t0 = time.monotonic()
            r = sub.subscribe(600)
            times["SIP SUBSCRIBE direct -> 503"] = time.monotonic() - t0
            assert r is not None, "no answer from the gateway\n%s" % direct.dump_log(4)
            assert (r.code, r.reason, r.h("retry-after")) == (503, "Store Unavailable", "60"), r.text()
            assert tag_of(r.h("to")), r.text()
            assert direct.collect("NOTIFY", 0.3) == [], "NOTIFY after a refused SUBSCRIBE"
        finally:
            direct.close()

    # nothing is released while the disk is full (FULL_FOR s in all, then all received so far)
    time.sleep(max(0.0, FULL_FOR - (time.monotonic() - t_full)))
    held = [e.attrib for e in alice.collect(from_jid("full2"), 0.0)]
    assert held == [], "alice got stanzas of full2 while the disk was full: %s" % held
    late3 = [e.attrib for e in alice.collect(from_jid("full3"), 0.0)]
    assert late3 == [], "alice got more stanzas of full3 while the disk was full: %s" % late3
    if mode == "notifier":
        for w in ("fullw", "fullwd"):
            assert subscribe_request(alice, w, 0.0) is None, "alice was asked about the refused watcher " + w
    msgs = kamailio_messages(lab, koff3)
    assert gateway_subscribes_for(msgs, "full3") == [], "the gateway SUBSCRIBEd to full3 while the disk was full"
    code, doc = health()
    assert code == 503 and doc["checks"]["store"] == store_text, (code, doc)
    times["disk full for"] = time.monotonic() - t_full

    # 5. space again: everything resumes by itself
    t_free = time.monotonic()
    os.remove(os.path.join(fs, "fill"))
    el = alice.wait(lambda e: from_jid("full2")(e) and e.get("type") == "subscribed", RECOVER)
    t_subscribed = time.monotonic()
    expect(el, subscribed_xml("full2"), "full2: the held subscribed")
    rows = stored_pairs(os.path.join(fs, "pua-xmpp.db"))
    assert (ALICE, jids["full2"]) in rows, "full2's pair is not in the store once acknowledged: %s" % rows
    el = alice.wait(lambda e: from_jid("full2")(e) and e.get("type") is None, SETUP)
    t_presence = time.monotonic()
    expect(el, presence_xml("full2"), "full2: the held first presence")
    assert wait_until(lambda: health()[0] == 200, RECOVER - (time.monotonic() - t_free), step=0.02), health()
    t_healthy = time.monotonic()
    times["space -> /health 200 (seen)"] = t_healthy - t_free
    times["space -> full2 subscribed"] = t_subscribed - t_free
    times["space -> full2 presence"] = t_presence - t_free
    assert t_subscribed - t_free < RECOVER
    code, doc = health()
    checks = doc["checks"]
    assert isinstance(checks.pop("store_queued"), int), doc
    assert (code, doc) == (200, {"status": "ok", "checks": {"xmpp": "up", "store": "ok", "actors": "ok"}}), doc
    extra2 = [e.attrib for e in alice.collect(from_jid("full2"), 0.0)]
    assert extra2 == [], "more stanzas of full2 than subscribed + one presence: %s" % extra2

    times["full3 again (subscribed + presence)"] = subscribe_normally("full3", "full3 after recovery")
    if mode == "notifier":
        watcher = Subscription(sip("fullw2"), ALICE_SIP)
        r = watcher.subscribe(600)
        assert r is not None and r.code == 200 and r.h("expires") == "600", r
        assert subscribe_request(alice, "fullw2", SETUP) is not None, "alice was not asked about fullw2"
        n = watcher.wait_notify(SETUP)
        assert n is not None and n.sub_state()[0] == "pending" and n.body_bytes == b"", n
        r = watcher.unsubscribe()
        assert r is not None and r.code == 200, r
        alice.presence(to=jid_of("fullw2"), typ="unsubscribed")

    # the baseline pair went through all of it
    notes["full1"] = "Full1 after the fault"
    r = pubs["full1"].publish(pidf("sip:full1@sip.test", "open", notes["full1"], tuple_id="t-full1"))
    assert r is not None and r.code == 200, r
    el = alice.wait(lambda e: from_jid("full1")(e) and e.get("type") is None
                    and (e.findtext("{jabber:client}status") == notes["full1"]), SETUP)
    expect(el, presence_xml("full1"), "full1 after the fault")

    assert lab.gateway.poll() is None, "the gateway exited"
    times["whole test"] = time.monotonic() - started
    print("[%s] filled %d bytes; times (s):\n%s" % (mode, filled, "\n".join(
        "  %-40s %6.3f" % kv for kv in times.items())))

    for u in users:
        alice.presence(to=jids[u], typ="unsubscribe")
        pubs[u].remove()
    time.sleep(0.5)  # let the gateway end the SIP subscriptions before the next test
