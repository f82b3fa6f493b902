#!/usr/bin/env python3
"""Presence both ways through a running docker-compose stack (run by scripts/compose-check.sh).

Not a pytest module (tests/e2e starts its own Prosody and Kamailio; this one talks to the
containers): it reuses the e2e clients, tests/e2e/xmpp_client.py and tests/e2e/sip_ua.py.

- XMPP: alice@xmpp.test logs in to Prosody's published c2s port (127.0.0.1:5222).
- SIP: carol (watcher) and bob (presentity) are UDP UAs bound to the compose network's
  gateway address (SUBNET.1, the host side of the bridge), with Kamailio as outbound proxy
  (SUBNET.10, or SUBNET.20 for the `ha` profile's kamailio-ha).
- SIP -> XMPP: bob PUBLISHes PIDF to Kamailio, alice subscribes to bob through the gateway
  and must receive bob's state as an exact presence stanza.
- XMPP -> SIP: carol SUBSCRIBEs to alice through Kamailio, alice approves, and each change
  of alice's presence must reach carol as a NOTIFY with the exact PIDF facts.
- --ha: both gateways' /health (127.0.0.1:9081 and :9082) must show one active and one
  standby. The active instance is killed (SIGKILL to the container's main process, as in a
  crash: `podman kill` counts as a stop by the user, which the restart policy leaves
  stopped); the standby must become active under a newer fence, the relations set up before
  must carry presence again (carol's in-dialog re-SUBSCRIBE to the dead instance's Contact,
  then one change each way), and `restart: always` must bring the killed container back as
  the standby. Then the new
  active one is killed and the first takes over again. The takeover times are printed.
Exit status 0 when every check passed, 1 otherwise (the failed assertion is printed).
"""
import argparse
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "e2e"))

from sip_ua import Publication, SipUA, Subscription, parse_pidf, pidf  # noqa: E402
from xmpp_client import XmppClient, bare, local, stanza_diff  # noqa: E402

ALICE = "alice@xmpp.test"
ALICE_PW = "alicepw"
ALICE_SIP = "sip:alice*xmpp.test@sip-xmpp.test"
ENTITIES = ("pres:alice*xmpp.test@sip-xmpp.test", ALICE_SIP)
RESOURCE = "compose"
TUPLE_ID = "ID-" + RESOURCE           # the gateway's tuple id for alice's resource
BOB_AOR = "sip:bob@sip.test"
BOB = "bob*sip.test@sip.xmpp.test"    # bob as seen from XMPP
BOB_RES = BOB + "/t-bob"              # resource = bob's PIDF tuple id
CAROL_JID = "carol*sip.test@sip.xmpp.test"
NOTIFY_WAIT = 12.0   # a NOTIFY caused by an XMPP change (5 s rate limit + slack)
STANZA_WAIT = 10.0   # a stanza caused by a SIP event
STORE_SETTLE = 1.0   # the store commits within 20 ms of a change; leave a margin


class CheckFailed(Exception):
    pass


def check(cond, msg):
    if not cond:
        raise CheckFailed(msg)


def step(msg):
    print("[check_stack %s] %s" % (time.strftime("%H:%M:%S"), msg), flush=True)


def wait_until(pred, timeout, interval=0.1):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        v = pred()
        if v:
            return v
        time.sleep(interval)
    return pred()


def get_json(port, path):
    """(status, JSON body) of GET http://127.0.0.1:port/path; (None, reason) when nothing
    answers (container down, port not published yet)."""
    try:
        with urllib.request.urlopen("http://127.0.0.1:%d%s" % (port, path), timeout=2) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        try:
            return e.code, json.loads(e.read())
        except ValueError:
            return e.code, None
    except (OSError, ValueError) as e:
        return None, repr(e)


def role(port):
    """'active', 'standby' or None, from the instance's /health."""
    code, body = get_json(port, "/health")
    if code == 200 and isinstance(body, dict):
        if body.get("status") == "ok" and body.get("role", "active") == "active":
            return "active"
        if body == {"status": "standby", "role": "standby"}:
            return "standby"
    return None


# ------------------------------------------------------------------ assertions
def assert_pidf(n, basic, note, activities):
    """A NOTIFY of alice's presence: active subscription, PIDF with exactly one tuple
    (TUPLE_ID, basic, [note]) and exactly these RPID activities."""
    check(n is not None, "no matching NOTIFY")
    check(n.h("event").split(";")[0] == "presence", "Event: %r" % n.h("event"))
    check(n.sub_state()[0] == "active", "Subscription-State: %r" % n.h("subscription-state"))
    check(n.h("content-type") == "application/pidf+xml", "Content-Type: %r" % n.h("content-type"))
    doc = parse_pidf(n.body_bytes)
    check(doc["entity"] in ENTITIES, "entity %r" % doc["entity"])
    got = [(t["id"], t["basic"], t["notes"]) for t in doc["tuples"]]
    want = [(TUPLE_ID, basic, [note] if note is not None else [])]
    check(got == want, "tuples %r, expected %r" % (got, want))
    check(doc["activities"] == activities, "activities %r, expected %r" % (doc["activities"], activities))


def note_is(text):
    def pred(m):
        if not m.body_bytes:
            return False
        try:
            return any(text in t["notes"] for t in parse_pidf(m.body_bytes)["tuples"])
        except Exception:  # noqa: BLE001 - a bad body fails assert_pidf elsewhere
            return False
    return pred


def is_open_doc(m):
    try:
        return bool(m.body_bytes) and [t["basic"] for t in parse_pidf(m.body_bytes)["tuples"]] == ["open"]
    except Exception:  # noqa: BLE001
        return False


def expect_stanza(alice, pred, expected_xml, what, timeout=STANZA_WAIT):
    el = alice.wait(pred, timeout)
    check(el is not None, "alice got no %s; inbox: %s" % (what, alice.dump_inbox()))
    diff = stanza_diff(el, expected_xml)
    check(diff is None, "%s: %s" % (what, diff))
    check(bare(el.get("to")) == ALICE, "%s: to=%r" % (what, el.get("to")))
    return el


def from_bob(status=None):
    def pred(e):
        if local(e.tag) != "presence" or bare(e.get("from")) != BOB or e.get("type") is not None:
            return False
        st = e.find("{jabber:client}status")
        return status is None or (st is not None and st.text == status)
    return pred


# ------------------------------------------------------------------ the relations
class Relations:
    """alice (XMPP) watching bob (SIP) and carol (SIP) watching alice, through the stack."""

    def __init__(self, subnet, proxy_ip, xmpp_port):
        host_ip = "%s.1" % subnet
        proxy = (proxy_ip, 5060)
        self.bob_ua = SipUA("bob", host_ip, proxy)
        self.carol_ua = SipUA("carol", host_ip, proxy)
        self.bob = Publication(self.bob_ua, BOB_AOR)
        self.alice = XmppClient("127.0.0.1", xmpp_port).login("alice", ALICE_PW, resource=RESOURCE)
        self.carol = Subscription(self.carol_ua, ALICE_SIP)

    def close(self):
        for c in (self.alice.close, self.bob_ua.close, self.carol_ua.close):
            try:
                c()
            except Exception:  # noqa: BLE001 - best effort at exit
                pass

    def publish_bob(self, status):
        r = self.bob.publish(pidf(BOB_AOR, "open", status, tuple_id="t-bob"))
        check(r is not None and r.code == 200 and r.h("sip-etag"),
              "bob's PUBLISH: %r\n%s" % (r, self.bob_ua.dump_log(4)))

    def expect_bob(self, status):
        expect_stanza(self.alice, from_bob(status),
                      "<presence from='%s'><status>%s</status></presence>" % (BOB_RES, status),
                      "bob's presence %r" % status)

    def set_up(self):
        """SIP -> XMPP: alice subscribes to bob, gets `subscribed` and bob's published state.
        XMPP -> SIP: carol subscribes to alice, alice approves, carol gets alice's state."""
        step("SIP -> XMPP: bob publishes, alice subscribes to %s" % BOB)
        self.publish_bob("Bob compose")
        self.alice.presence(to=BOB, typ="subscribe")
        expect_stanza(self.alice,
                      lambda e: local(e.tag) == "presence" and e.get("type") == "subscribed"
                      and bare(e.get("from")) == BOB,
                      "<presence type='subscribed' from='%s'/>" % BOB, "subscribed from bob")
        self.expect_bob("Bob compose")
        step("SIP -> XMPP ok: alice got bob's PUBLISHed state")

        step("XMPP -> SIP: carol SUBSCRIBEs to %s" % ALICE_SIP)
        r = self.carol.subscribe(600)
        check(r is not None and r.code == 200, "carol's SUBSCRIBE: %r\n%s" % (r, self.carol_ua.dump_log(6)))
        sub = self.alice.wait(lambda e: local(e.tag) == "presence" and e.get("type") == "subscribe"
                              and bare(e.get("from")) == CAROL_JID, 8.0)
        if sub is not None:  # a relation approved in an earlier run needs no new approval
            diff = stanza_diff(sub, "<presence type='subscribe' from='%s'/>" % CAROL_JID)
            check(diff is None, "subscribe from carol: %s" % diff)
            self.alice.presence(to=CAROL_JID, typ="subscribed")
        n = self.carol.wait_notify(NOTIFY_WAIT, is_open_doc)
        check(n is not None, "no open NOTIFY for carol\n%s" % self.carol_ua.dump_log(6))
        assert_pidf(n, "open", None, [])
        self.carol.discard()
        self.alice_changes("Away compose")
        step("XMPP -> SIP ok: carol got alice's state and her change")

    def alice_changes(self, note):
        self.alice.drain()
        self.alice.presence(show="away", status=note)
        assert_pidf(self.carol.wait_notify(NOTIFY_WAIT, note_is(note)), "open", note, ["away"])

    def after_takeover(self, label, prev_note):
        """The relations set up before carry presence through the new active instance:
        carol's in-dialog re-SUBSCRIBE (remote target: the dead instance's Contact) gets 200
        and alice's state of before; one change of alice reaches carol exactly once, and
        one PUBLISH of bob reaches alice exactly once."""
        r = wait_until(lambda: self._refresh_ok(), 10.0, 0.5)
        check(r, "carol's re-SUBSCRIBE after the takeover: %r\n%s"
              % (self.carol.last_response, self.carol_ua.dump_log(6)))
        refreshed = self.carol.notifies(2.0)
        check(refreshed, "no NOTIFY after the re-SUBSCRIBE\n%s" % self.carol_ua.dump_log(6))
        for n in refreshed:
            assert_pidf(n, "open", prev_note, ["away"])
        note = "Away %s" % label
        self.alice_changes(note)
        later = self.carol.notifies(6.0)
        check(later == [], "duplicate NOTIFYs: %s" % [m.text() for m in later])
        status = "Bob %s" % label
        self.publish_bob(status)
        self.expect_bob(status)
        dups = self.alice.collect(from_bob(), 4.0)
        check(dups == [], "duplicate presence from bob: %s" % dups)
        return note

    def _refresh_ok(self):
        r = self.carol.refresh(600)
        return r is not None and r.code == 200


# ------------------------------------------------------------------ containers
ENGINE = ["podman"]  # --engine: podman or docker (same ps/kill/inspect arguments)


def container_of(project, service):
    out = subprocess.run(ENGINE + ["ps", "-q", "--filter", "label=com.docker.compose.project=%s" % project,
                          "--filter", "label=com.docker.compose.service=%s" % service],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, check=False).stdout.split()
    check(len(out) == 1, "running container of %s: %r" % (service, out))
    return out[0]


def inspect(cid, fmt):
    return subprocess.run(ENGINE + ["inspect", "--format", fmt, cid], stdout=subprocess.PIPE,
                          stderr=subprocess.DEVNULL, text=True, check=False).stdout.strip()


def restarts(cid):
    out = inspect(cid, "{{.RestartCount}}")
    return int(out) if out.isdigit() else -1


def fence(port):
    code, body = get_json(port, "/health")
    return body.get("fence") if code == 200 and isinstance(body, dict) else None


def takeover(project, killed_svc, killed_port, new_port):
    """A crash of the active instance: SIGKILL to the container's main process (pua-xmpp
    itself: the entrypoint execs it) from the host. Not `podman kill` / `docker kill`: the
    engines count that as a stop by the user, and `restart: always` then leaves the container
    stopped. Returns the seconds until the standby's /health says active (under a newer
    fence), then waits for `restart: always` to bring the killed one back as the standby."""
    cid = container_of(project, killed_svc)
    before, old_fence = restarts(cid), fence(killed_port)
    pid = inspect(cid, "{{.State.Pid}}")
    check(pid.isdigit() and int(pid) > 1, "main pid of %s: %r" % (killed_svc, pid))
    step("kill -KILL %s (main process of %s %s, the active one, fence %s)" % (pid, killed_svc, cid, old_fence))
    os.kill(int(pid), signal.SIGKILL)
    t0 = time.monotonic()
    check(wait_until(lambda: role(new_port) == "active", 30.0, 0.1),
          "the standby on :%d did not become active: %r" % (new_port, get_json(new_port, "/health")))
    took = time.monotonic() - t0
    new_fence = fence(new_port)
    check(isinstance(new_fence, int) and isinstance(old_fence, int) and new_fence > old_fence,
          "fence %r after %r" % (new_fence, old_fence))
    step("takeover: :%d active (fence %d) %.1f s after the kill" % (new_port, new_fence, took))
    check(wait_until(lambda: role(killed_port) == "standby", 60.0, 0.5),
          "%s did not come back as the standby: %r (restarts %d -> %d, %s)"
          % (killed_svc, get_json(killed_port, "/health"), before, restarts(cid),
             inspect(cid, "{{.State.Status}} {{.State.ExitCode}}")))
    back = time.monotonic() - t0
    check(restarts(cid) == before + 1, "RestartCount %d -> %d" % (before, restarts(cid)))
    step("%s restarted by its policy, standby %.1f s after the kill" % (killed_svc, back))
    check(role(new_port) == "active" and fence(new_port) == new_fence,
          "the new active one changed: %r" % (get_json(new_port, "/health"),))
    return took


def run(args):
    gateways = [("pua-xmpp-a", 9081), ("pua-xmpp-b", 9082)] if args.ha else [("pua-xmpp", 9080)]
    for svc, port in gateways:
        step("%s /health on 127.0.0.1:%d: %r" % (svc, port, get_json(port, "/health")))
    if args.ha:
        roles = {svc: role(port) for svc, port in gateways}
        check(sorted(roles.values(), key=str) == ["active", "standby"], "roles: %r" % roles)
        active = next(s for s, r in roles.items() if r == "active")
        step("roles: %r" % roles)
    else:
        check(role(9080) == "active", "gateway /health: %r" % (get_json(9080, "/health"),))

    proxy_ip = "%s.%d" % (args.subnet, 20 if args.ha else 10)
    rel = Relations(args.subnet, proxy_ip, 5222)
    try:
        rel.set_up()
        if not args.ha:
            return []
        time.sleep(STORE_SETTLE)
        ports = dict(gateways)
        other = {"pua-xmpp-a": "pua-xmpp-b", "pua-xmpp-b": "pua-xmpp-a"}
        times = []
        prev = "Away compose"
        for i in (1, 2):
            standby = other[active]
            times.append(takeover(args.project, active, ports[active], ports[standby]))
            prev = rel.after_takeover("takeover%d" % i, prev)
            step("presence both ways after takeover %d (%s -> %s)" % (i, active, standby))
            active = standby
            time.sleep(STORE_SETTLE)
        return times
    finally:
        rel.close()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--ha", action="store_true", help="the `ha` profile: two gateways, kill/takeover")
    ap.add_argument("--subnet", default=os.environ.get("PUA_SUBNET", "172.28.53"))
    ap.add_argument("--project", default=os.environ.get("COMPOSE_PROJECT_NAME", "pua-xmpp"),
                    help="compose project name (container labels)")
    ap.add_argument("--engine", default="podman", choices=("podman", "docker"))
    args = ap.parse_args()
    ENGINE[0] = args.engine
    try:
        times = run(args)
    except CheckFailed as e:
        print("check_stack: FAILED: %s" % e, flush=True)
        return 1
    if times:
        print("check_stack: takeover times (kill -> standby's /health active): %s"
              % ", ".join("%.1f s" % t for t in times))
    print("check_stack: OK", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
