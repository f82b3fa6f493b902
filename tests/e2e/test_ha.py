"""Issue 17: two gateways on one PostgreSQL store, active/standby with a fenced lease.

The test starts its own PostgreSQL server (initdb in the run dir, LAB_IP, a free port); the
lab's gateway (A) runs with `store.url` and `store.lease`, a second one (B) with the same
configuration waits as a standby without connecting anything. `kill -9` of A: B takes the
lease over, restores the pairs from the store, authenticates the component and traffic
resumes, within 5 s of A's death.
"""
import atexit
import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time

import pytest

from conftest import GATEWAY_BIN, GW_ADDR, GW_HTTP, LAB_IP, _lab_or_fail, tail, wait_until
from test_restart import STORE_SETTLE
from test_xmpp_watches_sip import BOB, BOB_RES, expect, expect_bob
from xmpp_client import is_presence

pytestmark = pytest.mark.gateway


def _pg_bin():
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                   key=lambda p: int(p.split("/")[4]) if p.split("/")[4].isdigit() else 0)
    return os.path.dirname(found[-1]) if found else None


class Postgres:
    """A PostgreSQL server of the test, run as the `postgres` user when we are root."""

    def __init__(self):
        self.bin = _pg_bin()
        # Not under pytest's tmp_path: its parents are private to root, and the server runs
        # as `postgres`.
        self.dir = tempfile.mkdtemp(prefix="pua-e2e-pg-")
        with socket.socket() as s:
            s.bind((LAB_IP, 0))
            self.port = s.getsockname()[1]
        self.as_postgres = os.geteuid() == 0

    def _run(self, tool, *args):
        cmd = [os.path.join(self.bin, tool)] + list(args)
        if self.as_postgres:
            cmd = ["runuser", "-u", "postgres", "--"] + cmd
        r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if r.returncode != 0:
            raise RuntimeError("%s failed:\n%s" % (tool, r.stdout))

    def start(self):
        if self.as_postgres:
            shutil.chown(self.dir, "postgres")
        data = os.path.join(self.dir, "data")
        self._run("initdb", "-D", data, "-U", "pua", "--auth=trust", "-E", "UTF8", "--locale=C", "-N")
        with open(os.path.join(data, "postgresql.conf"), "a") as f:
            f.write("\nlisten_addresses = '%s'\nport = %d\nunix_socket_directories = '%s'\n"
                    "max_connections = 20\nshared_buffers = 16MB\n" % (LAB_IP, self.port, self.dir))
        self._run("pg_ctl", "-D", data, "-l", os.path.join(self.dir, "server.log"), "-w", "start")
        # A fixture whose lab fails to start never reaches its own stop(): no server is left
        # running after the session whatever happened (stop() twice is harmless).
        atexit.register(self.stop)

    def stop(self):
        if not os.path.isdir(self.dir):
            return
        try:
            self._run("pg_ctl", "-D", os.path.join(self.dir, "data"), "-w", "-m", "immediate", "stop")
        except RuntimeError:
            pass
        shutil.rmtree(self.dir, ignore_errors=True)

    def url(self):
        return "postgres://pua@%s:%d/postgres" % (LAB_IP, self.port)


def _auths(lab):
    with open(os.path.join(lab.run_dir, "prosody.log"), encoding="utf-8", errors="replace") as f:
        return f.read().count("External component successfully authenticated")


def _read(path):
    with open(path, encoding="utf-8", errors="replace") as f:
        return f.read()


@pytest.fixture
def ha_lab(lab_manager, monkeypatch):
    if _pg_bin() is None:
        pytest.skip("no /usr/lib/postgresql/*/bin/initdb (install the postgresql package)")
    pg = Postgres()
    pg.start()
    monkeypatch.setenv("PUA_XMPP__STORE__URL", pg.url())
    monkeypatch.setenv("PUA_XMPP__STORE__PATH", "")
    monkeypatch.setenv("PUA_XMPP__STORE__LEASE", "true")
    # A lab of its own: the gateway it starts must see the variables above.
    lab_manager.stop()
    lab = _lab_or_fail(lab_manager, "notifier", True)
    standby = {}
    try:
        yield lab, standby
    finally:
        b = standby.get("proc")
        if b is not None and b.poll() is None and b is not lab.gateway:
            b.terminate()
            try:
                b.wait(5)
            except subprocess.TimeoutExpired:
                b.kill()
                b.wait(5)
        # The next test gets a lab whose gateway has the usual SQLite store.
        lab_manager.stop()
        pg.stop()


def _start_standby(lab, standby):
    """B: the same binary, configuration and environment as A. It waits, connecting nothing."""
    assert "lease acquired: this instance is active" in _read(lab.gateway_log), tail(lab.gateway_log)
    b_log = os.path.join(lab.run_dir, "gateway-b.log")
    cfg = os.path.join(lab.run_dir, "pua-xmpp.toml")
    env = dict(os.environ, PUA_XMPP_CONFIG=cfg, RUST_LOG="info")
    with open(b_log, "wb") as log:
        b = subprocess.Popen([GATEWAY_BIN, "--config", cfg], stdin=subprocess.DEVNULL, stdout=log,
                             stderr=subprocess.STDOUT, env=env, cwd=lab.run_dir, start_new_session=True)
    standby["proc"] = b
    assert wait_until(lambda: "standby: waiting for the lease" in _read(b_log), 10), tail(b_log)
    auths = _auths(lab)
    time.sleep(1.5)
    assert b.poll() is None, tail(b_log)
    assert "lease acquired" not in _read(b_log), tail(b_log)
    assert _auths(lab) == auths, "the standby connected its component"
    return b, b_log, auths


def test_standby_takes_over_within_5_s_of_kill9_and_traffic_resumes(ha_lab, xmpp, bob):
    lab, standby = ha_lab
    b, b_log, auths = _start_standby(lab, standby)

    # A serves: alice watches bob.
    bob.publish("open", "Before the takeover")
    alice = xmpp("alice")
    alice.presence(to=BOB, typ="subscribe")
    expect(alice, is_presence(BOB, "subscribed"), "<presence type='subscribed' from='%s'/>" % BOB)
    expect_bob(alice, "<presence from='%s'><status>Before the takeover</status></presence>" % BOB_RES,
               "Before the takeover")
    time.sleep(STORE_SETTLE)

    lab.gateway.kill()  # SIGKILL: A renews no more, releases nothing
    killed = time.monotonic()
    lab.gateway.wait(5)
    assert wait_until(lambda: _auths(lab) > auths or b.poll() is not None, 10), tail(b_log)
    took = time.monotonic() - killed
    assert b.poll() is None, tail(b_log)
    assert "lease acquired: this instance is active" in _read(b_log), tail(b_log)
    assert took < 5.0, "component back %.2f s after the kill" % took
    lab.gateway, lab.gateway_log = b, b_log  # the lab stops B from now on

    # B restored alice's pair from the store: bob's next PUBLISH reaches her, no new stanza.
    bob.publish("open", "After the takeover")
    expect_bob(alice, "<presence from='%s'><status>After the takeover</status></presence>" % BOB_RES,
               "After the takeover", timeout=10)
    assert alice.get_roster()[BOB]["subscription"] == "to"
    alice.presence(to=BOB, typ="unsubscribe")
    time.sleep(0.5)
    print("takeover: component authenticated %.2f s after kill -9 of the active gateway" % took)


def test_a_graceful_stop_hands_the_lease_over_at_once(ha_lab, xmpp, bob):
    lab, standby = ha_lab
    b, b_log, auths = _start_standby(lab, standby)
    bob.publish("open", "Before the handover")
    alice = xmpp("alice")
    alice.presence(to=BOB, typ="subscribe")
    expect(alice, is_presence(BOB, "subscribed"), "<presence type='subscribed' from='%s'/>" % BOB)
    expect_bob(alice, "<presence from='%s'><status>Before the handover</status></presence>" % BOB_RES,
               "Before the handover")

    lab.gateway.terminate()  # SIGTERM: flush, release the lease, exit 0
    stopped = time.monotonic()
    assert lab.gateway.wait(15) == 0, tail(lab.gateway_log)
    assert "stopping: giving the lease up" in _read(lab.gateway_log), tail(lab.gateway_log)
    assert wait_until(lambda: _auths(lab) > auths or b.poll() is not None, 10), tail(b_log)
    took = time.monotonic() - stopped
    assert b.poll() is None, tail(b_log)
    # Released, not expired: the standby's next acquire (every 0.5 s) gets it.
    assert took < 2.0, "component back %.2f s after SIGTERM" % took
    lab.gateway, lab.gateway_log = b, b_log

    bob.publish("open", "After the handover")
    expect_bob(alice, "<presence from='%s'><status>After the handover</status></presence>" % BOB_RES,
               "After the handover", timeout=10)
    alice.presence(to=BOB, typ="unsubscribe")
    time.sleep(0.5)
    print("handover: component authenticated %.2f s after SIGTERM of the active gateway" % took)


def test_a_paused_leader_is_replaced_and_exits_when_it_resumes(ha_lab, xmpp, bob):
    """SIGSTOP of the active gateway (a frozen VM, a long GC): the standby takes the lease over
    at its expiry; when the old one resumes, its first look at the clock steps it down and it
    exits with code 3, freeing the component for the new one."""
    import signal
    lab, standby = ha_lab
    # The frozen A keeps its sockets: B needs addresses of its own (in production each
    # instance has its own address behind the proxy's dispatcher). B retries Prosody every
    # second: Prosody refuses a second connection of the component while A's is open.
    host, port = GW_ADDR.rsplit(":", 1)
    b_env = {"PUA_XMPP__XMPP__RECONNECT_MAX_SECS": "1",
             "PUA_XMPP__SIP__LISTEN": "%s:%d" % (host, int(port) + 1),
             "PUA_XMPP__HTTP__LISTEN": "%s:%d" % (host, int(GW_HTTP.rsplit(":", 1)[1]) + 1)}
    os.environ.update(b_env)
    try:
        b, b_log, auths = _start_standby(lab, standby)
    finally:
        for k in b_env:
            del os.environ[k]
    bob.publish("open", "Before the pause")
    alice = xmpp("alice")
    alice.presence(to=BOB, typ="subscribe")
    expect(alice, is_presence(BOB, "subscribed"), "<presence type='subscribed' from='%s'/>" % BOB)
    expect_bob(alice, "<presence from='%s'><status>Before the pause</status></presence>" % BOB_RES,
               "Before the pause")
    time.sleep(STORE_SETTLE)

    a = lab.gateway
    os.kill(a.pid, signal.SIGSTOP)
    assert wait_until(lambda: "lease acquired: this instance is active" in _read(b_log), 10), tail(b_log)
    time.sleep(1.0)
    assert a.poll() is None
    os.kill(a.pid, signal.SIGCONT)
    resumed = time.monotonic()
    assert a.wait(5) == 3, tail(lab.gateway_log)
    assert "lease lost" in _read(lab.gateway_log), tail(lab.gateway_log)
    exited = time.monotonic() - resumed
    # B met Prosody's "Component already connected" while A was frozen with its connection
    # open; a lease holder retries a conflict after 1 s, doubling to 5 s (component.rs), so
    # it is back within one 5 s step of A's exit.
    assert wait_until(lambda: _auths(lab) > auths or b.poll() is not None, 10), tail(b_log)
    back = time.monotonic() - resumed
    assert b.poll() is None, tail(b_log)
    assert back < 7.0, "component back %.2f s after the old leader resumed" % back
    assert "still served by another connection (conflict)" in _read(b_log), tail(b_log)
    lab.gateway, lab.gateway_log = b, b_log

    bob.publish("open", "After the pause")
    expect_bob(alice, "<presence from='%s'><status>After the pause</status></presence>" % BOB_RES,
               "After the pause", timeout=10)
    alice.presence(to=BOB, typ="unsubscribe")
    time.sleep(0.5)
    print("paused leader exited %.2f s after SIGCONT, component back after %.2f s" % (exited, back))
