"""pytest harness: real Prosody + real Kamailio (tests/lab/start.sh) + the pua-xmpp binary.

Environment:
  PUA_XMPP_BIN             gateway binary (default <repo>/target/release/pua-xmpp). Nothing is built.
  PUA_XMPP_ARGS            its arguments; {config} is replaced by the rendered TOML path
                           (default "--config {config}"; PUA_XMPP_CONFIG=<path> is also set)
  PUA_E2E_REQUIRE_GATEWAY  1 = a missing binary is an error, not a skip (set it in CI)
  PUA_E2E_DIR              base run dir (default /tmp/pua-xmpp-e2e); one sub dir per lab start
  LAB_IP, GW_ADDR, GW_HTTP defaults 127.0.0.1, 127.0.0.1:5080, 127.0.0.1:9080
Tests marked `gateway` are collected always and skipped (with the reason) only when the
binary is missing. On a failure the tails of kamailio.log, prosody.log and gateway.log
are added to the report.
"""
import glob
import os
import shlex
import shutil
import signal
import atexit
import subprocess
import sys
import time

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from sip_ua import Publication, SipUA, pidf  # noqa: E402
from xmpp_client import XmppClient  # noqa: E402

REPO = os.path.dirname(os.path.dirname(HERE))
LAB_DIR = os.path.join(REPO, "tests", "lab")
LAB_IP = os.environ.get("LAB_IP", "127.0.0.1")
GW_ADDR = os.environ.get("GW_ADDR", LAB_IP + ":5080")
GW_HTTP = os.environ.get("GW_HTTP", LAB_IP + ":9080")
PROXY = (LAB_IP, 5060)
if ":" in LAB_IP:  # IPv6 lab (LAB_IP=::1): addresses with a port take brackets
    GW_ADDR = os.environ.get("GW_ADDR", "[%s]:5080" % LAB_IP)
    GW_HTTP = os.environ.get("GW_HTTP", "[%s]:9080" % LAB_IP)
BASE_DIR = os.environ.get("PUA_E2E_DIR", "/tmp/pua-xmpp-e2e")
GATEWAY_BIN = os.environ.get("PUA_XMPP_BIN", os.path.join(REPO, "target", "release", "pua-xmpp"))
GATEWAY_ARGS = os.environ.get("PUA_XMPP_ARGS", "--config {config}")
REQUIRE_GATEWAY = os.environ.get("PUA_E2E_REQUIRE_GATEWAY", "") not in ("", "0")
SECRET = "gwsecret"
USERS = {"alice": "alicepw", "zoe": "zoepw"}
MARKER = ".pua-xmpp-e2e"

GATEWAY_TOML = """\
# rendered by tests/e2e/conftest.py
[sip]
listen = "{gw_addr}"
server_address = "sip:{lab_ip}:5060"
gateway_domain = "sip-xmpp.test"

[xmpp]
component_domain = "sip.xmpp.test"
server = "{lab_ip}:5347"
secret = "{secret}"

[mapping]
domain_separator = "*"

[presence]
mode = "{mode}"
subscribe_expires = 600

[store]
path = "{run_dir}/pua-xmpp.db"

[http]
listen = "{gw_http}"

[log]
level = "debug"
"""


def gateway_available():
    return os.path.isfile(GATEWAY_BIN) and os.access(GATEWAY_BIN, os.X_OK)


def tail(path, n=60):
    try:
        with open(path, "rb") as f:
            lines = f.read().decode("utf-8", errors="replace").splitlines()
    except OSError as ex:
        return "(%s)" % ex
    return "\n".join(lines[-n:])


def listening(proto, addr):
    out = subprocess.run(["ss", "-Hln" + proto], capture_output=True, text=True).stdout
    return any(line.split()[3] == addr for line in out.splitlines() if len(line.split()) > 3)


def wait_until(cond, timeout, step=0.1):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(step)
    return cond()


def _alive(pid):
    """Running and not a zombie (like stop.sh's alive())."""
    try:
        with open("/proc/%d/status" % pid) as f:
            return not any(line.startswith("State:") and "Z" in line.split()[1] for line in f)
    except OSError:
        return False


class Lab:
    """Runs the lab (and optionally the gateway) in one mode at a time. Each start
    gets a fresh run dir BASE_DIR/NN-mode, kept afterwards for the logs."""

    def __init__(self):
        self.mode = None
        self.with_gateway = False
        self.run_dir = None
        self.gateway = None
        self.gateway_log = None
        self.starts = 0
        # issue 16: the gateway's http.token (given as PUA_XMPP__HTTP__TOKEN) and the token
        # Kamailio sends (start.sh GW_HTTP_TOKEN); None = none. A change restarts the lab.
        self.http_token = None
        self.kamailio_http_token = None
        # HTTPS: (cert, key) PEM paths for the gateway's http.tls_cert/tls_key, and the CA
        # file Kamailio verifies it with (start.sh GW_HTTP_CA; then it calls https://).
        self.http_tls = None
        self.kamailio_http_ca = None
        self._variant = self.variant()
        if os.path.isdir(BASE_DIR):
            if not os.path.exists(os.path.join(BASE_DIR, MARKER)) and os.listdir(BASE_DIR):
                raise RuntimeError("%s exists and was not made by the e2e tests; set PUA_E2E_DIR" % BASE_DIR)
            for sub in sorted(os.listdir(BASE_DIR)):
                self._reap_leftovers(os.path.join(BASE_DIR, sub))
            shutil.rmtree(BASE_DIR)
        os.makedirs(BASE_DIR)
        open(os.path.join(BASE_DIR, MARKER), "w").close()

    @staticmethod
    def _reap_leftovers(run_dir):
        """Stop what an earlier, killed session left running there (by recorded PID)."""
        if not os.path.isdir(run_dir):
            return
        try:
            with open(os.path.join(run_dir, "gateway.pid")) as f:
                pid = int(f.read().strip())
            with open("/proc/%d/cmdline" % pid, "rb") as f:
                cmdline = f.read()
            # only that PID, and only if it still runs with this run dir's config
            if (run_dir + "/pua-xmpp.toml").encode() in cmdline:
                os.kill(pid, signal.SIGTERM)
        except (OSError, ValueError):
            pass
        if any(os.path.exists(os.path.join(run_dir, n + ".pid")) for n in ("kamailio", "prosody")):
            subprocess.run([os.path.join(LAB_DIR, "stop.sh"), run_dir],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def ensure(self, mode, with_gateway):
        """Make the lab run in `mode`, with or without the gateway (restart if needed)."""
        if self.mode == mode and self.with_gateway == with_gateway and self.alive() \
                and self._variant == self.variant():
            return self
        self.stop()
        self.start(mode, with_gateway)
        return self

    def variant(self):
        """The HTTP security settings the running lab was started with (issue 16)."""
        return (self.http_token, self.kamailio_http_token, self.http_tls, self.kamailio_http_ca)

    def alive(self):
        pids = [self._pid("kamailio"), self._pid("prosody")]
        ok = all(p and os.path.exists("/proc/%d" % p) for p in pids)
        if self.with_gateway:
            ok = ok and self.gateway is not None and self.gateway.poll() is None
        return ok

    def _pid(self, name):
        try:
            with open(os.path.join(self.run_dir, name + ".pid")) as f:
                return int(f.read().strip())
        except (OSError, ValueError, TypeError):
            return None

    def start(self, mode, with_gateway):
        self.starts += 1
        self.run_dir = os.path.join(BASE_DIR, "%02d-%s%s" % (self.starts, mode, "-gw" if with_gateway else ""))
        env = dict(os.environ, GW_MODE=mode, LAB_IP=LAB_IP, GW_ADDR=GW_ADDR, GW_HTTP=GW_HTTP, SECRET=SECRET,
                   XMPP_USERS=" ".join("%s:%s" % kv for kv in USERS.items()),
                   GW_HTTP_TOKEN=self.kamailio_http_token or "", GW_HTTP_CA=self.kamailio_http_ca or "")
        self._variant = self.variant()
        st = subprocess.run([os.path.join(LAB_DIR, "start.sh"), self.run_dir], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if st.returncode != 0:
            raise RuntimeError("tests/lab/start.sh failed (GW_MODE=%s):\n%s" % (mode, st.stdout))
        self.mode, self.with_gateway = mode, with_gateway
        if with_gateway:
            self._start_gateway(mode)

    def _start_gateway(self, mode):
        if not gateway_available():
            raise RuntimeError("gateway binary not found: %s" % GATEWAY_BIN)
        cfg = os.path.join(self.run_dir, "pua-xmpp.toml")
        with open(cfg, "w") as f:
            # `gateway_toml`: an optional per-lab template override (set before start())
            template = getattr(self, "gateway_toml", GATEWAY_TOML)
            f.write(template.format(gw_addr=GW_ADDR, lab_ip=LAB_IP, secret=SECRET, mode=mode,
                                    run_dir=self.run_dir, gw_http=GW_HTTP))
        self.gateway_log = os.path.join(self.run_dir, "gateway.log")
        args = [GATEWAY_BIN] + [a.replace("{config}", cfg) for a in shlex.split(GATEWAY_ARGS)]
        env = dict(os.environ, PUA_XMPP_CONFIG=cfg, RUST_BACKTRACE="1")
        if self.http_token:
            env["PUA_XMPP__HTTP__TOKEN"] = self.http_token
        if self.http_tls:
            env["PUA_XMPP__HTTP__TLS_CERT"], env["PUA_XMPP__HTTP__TLS_KEY"] = self.http_tls
        env.setdefault("RUST_LOG", "debug")
        with open(self.gateway_log, "wb") as log:
            # own session: the gateway is stopped by PID in stop(), never by group or name
            self.gateway = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                            env=env, cwd=self.run_dir, start_new_session=True)
        with open(os.path.join(self.run_dir, "gateway.pid"), "w") as f:
            f.write("%d\n" % self.gateway.pid)
        prosody_log = os.path.join(self.run_dir, "prosody.log")

        def component_up():
            try:
                with open(prosody_log, encoding="utf-8", errors="replace") as f:
                    return "External component successfully authenticated" in f.read()
            except OSError:
                return False

        checks = [("SIP UDP listener %s" % GW_ADDR, lambda: listening("u", GW_ADDR)),
                  ("XEP-0114 handshake with Prosody", component_up)]
        if mode == "pua":
            checks.append(("HTTP listener %s" % GW_HTTP, lambda: listening("t", GW_HTTP)))
        for what, cond in checks:
            if not wait_until(lambda: cond() or self.gateway.poll() is not None, 15):
                raise RuntimeError("gateway not ready after 15 s: no %s\n--- gateway.log\n%s"
                                   % (what, tail(self.gateway_log)))
            if self.gateway.poll() is not None:
                raise RuntimeError("gateway exited with %s at start\n--- gateway.log\n%s"
                                   % (self.gateway.returncode, tail(self.gateway_log)))
        if mode == "pua":
            time.sleep(0.5)  # let it send its presence.winfo SUBSCRIBEs (if any) first

    def kill9_and_restart_gateway(self):
        """`kill -9` the gateway and start it again on the same run dir, config and store
        (issue 6). Waits until the new process has authenticated its component again."""
        assert self.gateway is not None and self.gateway.poll() is None, "gateway not running"
        prosody_log = os.path.join(self.run_dir, "prosody.log")

        def auths():
            with open(prosody_log, encoding="utf-8", errors="replace") as f:
                return f.read().count("External component successfully authenticated")

        before = auths()
        self.gateway.kill()  # SIGKILL: no shutdown code runs
        self.gateway.wait(5)
        os.replace(self.gateway_log, self.gateway_log + ".before-kill")
        self._start_gateway(self.mode)
        if not wait_until(lambda: auths() > before, 15):
            raise RuntimeError("restarted gateway did not authenticate\n" + tail(self.gateway_log))

    def prosody_alive(self):
        pid = self._pid("prosody")
        return pid is not None and _alive(pid)

    def stop_prosody(self, timeout=5):
        """Stop only Prosody, by its recorded PID, as tests/lab/stop.sh does (TERM, then
        KILL after `timeout`); Kamailio and the gateway keep running (issue 5: /health)."""
        pid = self._pid("prosody")
        assert pid is not None and _alive(pid), "prosody is not running"
        with open("/proc/%d/comm" % pid) as f:  # PID reuse: only the program we started
            comm = f.read().strip()
        assert comm == "prosody" or comm.startswith("lua5.") or comm == "setsid", comm
        os.kill(pid, signal.SIGTERM)
        if not wait_until(lambda: not _alive(pid), timeout):
            os.kill(pid, signal.SIGKILL)
            wait_until(lambda: not _alive(pid), 5)
        os.remove(os.path.join(self.run_dir, "prosody.pid"))

    def start_prosody(self, timeout=15):
        """Start Prosody again exactly as tests/lab/start.sh does (same rendered config and
        data dir: accounts and rosters survive) and record its PID in the run dir."""
        cfg = os.path.join(self.run_dir, "prosody.cfg.lua")
        out = os.path.join(self.run_dir, "prosody.out")
        env = dict(os.environ, PATH=os.environ.get("PATH", "") + ":/usr/local/sbin:/usr/sbin:/sbin")
        # detached through a shell that exits at once, like start.sh's `setsid prosody &`
        st = subprocess.run(["bash", "-c", 'setsid prosody -F --config "$1" < /dev/null >> "$2" 2>&1 & echo $!',
                             "start_prosody", cfg, out], env=env, capture_output=True, text=True, check=True)
        with open(os.path.join(self.run_dir, "prosody.pid"), "w") as f:
            f.write(st.stdout.strip() + "\n")
        for port in (5222, 5347):
            addr = "%s:%d" % (LAB_IP, port)
            if not wait_until(lambda: listening("t", addr), timeout):
                raise RuntimeError("prosody not listening on %s after %s s\n%s"
                                   % (addr, timeout, tail(os.path.join(self.run_dir, "prosody.log"))))

    def kamailio_alive(self):
        pid = self._pid("kamailio")
        return pid is not None and _alive(pid)

    def restart_kamailio(self, timeout=10):
        """Kill Kamailio by its recorded PID (TERM, then KILL) and start it again exactly as
        tests/lab/start.sh does (same -A defines, sqlite DB, run dir), then re-add the
        permanent DNS cache entries (issue 6). Subscriptions (subs_db_mode=0) are lost."""
        pid = self._pid("kamailio")
        assert pid is not None and _alive(pid), "kamailio is not running"
        with open("/proc/%d/comm" % pid) as f:  # PID reuse: only the program we started
            comm = f.read().strip()
        assert comm in ("kamailio", "setsid"), comm
        os.kill(pid, signal.SIGTERM)
        if not wait_until(lambda: not _alive(pid), 5):
            os.kill(pid, signal.SIGKILL)
            wait_until(lambda: not _alive(pid), 5)
        os.remove(os.path.join(self.run_dir, "kamailio.pid"))
        addr = "%s:5060" % LAB_IP
        wait_until(lambda: not listening("u", addr) and not listening("t", addr), 5)
        env = dict(os.environ, PATH=os.environ.get("PATH", "") + ":/usr/local/sbin:/usr/sbin:/sbin")
        with open(os.path.join(self.run_dir, "lab.env")) as f:
            cfg = dict(line.rstrip("\n").split("=", 1) for line in f if "=" in line)
        kmod_dir = next((d for d in sorted(glob.glob("/usr/lib/*/kamailio/modules"))
                         + ["/usr/lib64/kamailio/modules", "/usr/lib/kamailio/modules"]
                         if os.path.isfile(os.path.join(d, "tm.so"))),
                        "/usr/lib/x86_64-linux-gnu/kamailio/modules")
        kmode = "GW_MODE_PUA" if self.mode == "pua" else "GW_MODE_NOTIFIER"
        kdefs = ["-A", "LAB_IP=%s" % LAB_IP, "-A", 'SRV_URI="sip:%s:5060"' % LAB_IP,
                 "-A", 'GW_ADDR="%s"' % GW_ADDR, "-A", 'GW_HTTP="%s"' % GW_HTTP,
                 "-A", 'DBURL="sqlite:///%s/kamailio.sqlite"' % self.run_dir,
                 "-A", 'CTL_SOCK="unix:%s/kamailio_ctl"' % self.run_dir,
                 "-A", 'MPATH="%s/"' % kmod_dir, "-A", kmode]
        if self.kamailio_http_token:
            kdefs += ["-A", 'GW_HTTP_TOKEN="%s"' % self.kamailio_http_token]
        if self.kamailio_http_ca:
            kdefs += ["-A", 'GW_HTTP_CA="%s"' % self.kamailio_http_ca]
        args = ["kamailio", "-DD", "-E", "-f", cfg["KAMAILIO_CFG"]] + kdefs + \
            ["-Y", self.run_dir, "-w", self.run_dir, "-m", "64", "-M", "16"]
        log = os.path.join(self.run_dir, "kamailio.log")
        # detached through a shell that exits at once, like start.sh's `setsid kamailio &`
        st = subprocess.run(["bash", "-c", 'log="$1"; shift; setsid "$@" < /dev/null >> "$log" 2>&1 & echo $!',
                             "start_kamailio", log] + args, env=env, capture_output=True, text=True, check=True)
        with open(os.path.join(self.run_dir, "kamailio.pid"), "w") as f:
            f.write(st.stdout.strip() + "\n")
        kamcmd = ["kamcmd", "-s", "unix:%s/kamailio_ctl" % self.run_dir]

        def ctl_up():
            return subprocess.run(kamcmd + ["core.uptime"], env=env, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL).returncode == 0
        for what, cond in (("udp " + addr, lambda: listening("u", addr)),
                           ("tcp " + addr, lambda: listening("t", addr)), ("ctl socket", ctl_up)):
            if not wait_until(cond, timeout):
                raise RuntimeError("restarted kamailio: no %s after %s s\n%s" % (what, timeout, tail(log)))
        for d in ("sip.test", "sip-xmpp.test"):
            subprocess.run(kamcmd + ["dns.add_a", d, "86400", LAB_IP, "2"], env=env,
                           stdout=subprocess.DEVNULL, check=True)
            for t in ("udp", "tcp"):
                subprocess.run(kamcmd + ["dns.add_srv", "_sip._%s.%s" % (t, d), "86400", "10", "10", "5060", d, "2"],
                               env=env, stdout=subprocess.DEVNULL, check=True)

    def stop_gateway(self):
        if self.gateway is None:
            return
        if self.gateway.poll() is None:
            self.gateway.terminate()
            try:
                self.gateway.wait(5)
            except subprocess.TimeoutExpired:
                self.gateway.kill()
                self.gateway.wait(5)
        self.gateway = None

    def stop(self):
        self.stop_gateway()
        if self.run_dir is not None:
            subprocess.run([os.path.join(LAB_DIR, "stop.sh"), self.run_dir],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.mode = None

    def log_tails(self):
        if self.run_dir is None:
            return ""
        parts = []
        for name, n in (("gateway.log", 120), ("kamailio.log", 80), ("prosody.log", 40)):
            p = os.path.join(self.run_dir, name)
            if os.path.exists(p):
                parts.append("--- %s (last %d lines)\n%s" % (p, n, tail(p, n)))
        return "\n".join(parts)


_LAB = None


def pytest_configure(config):
    config.addinivalue_line("markers", "gateway: needs the pua-xmpp binary (PUA_XMPP_BIN)")


def pytest_collection_modifyitems(config, items):
    if gateway_available() or REQUIRE_GATEWAY:
        return
    skip = pytest.mark.skip(reason="pua-xmpp binary not found at %s (build it with `cargo build --release` "
                                   "or set PUA_XMPP_BIN; PUA_E2E_REQUIRE_GATEWAY=1 makes this an error)"
                                   % GATEWAY_BIN)
    for item in items:
        if "gateway" in item.keywords:
            item.add_marker(skip)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if rep.failed and _LAB is not None:
        rep.sections.append(("lab logs (run dir %s)" % _LAB.run_dir, _LAB.log_tails()))


@pytest.fixture(scope="session")
def lab_manager():
    global _LAB
    _LAB = Lab()
    atexit.register(_LAB.stop)

    def on_term(signum, frame):  # let pytest run the finalizers (lab stop) on SIGTERM
        raise KeyboardInterrupt("SIGTERM")
    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        yield _LAB
    finally:
        _LAB.stop()
        signal.signal(signal.SIGTERM, previous)


def _lab_or_fail(lab_manager, mode, with_gateway):
    try:
        return lab_manager.ensure(mode, with_gateway)
    except RuntimeError as ex:
        pytest.fail(str(ex), pytrace=False)


@pytest.fixture
def lab_notifier(lab_manager):
    """The lab in notifier mode, no gateway (the tests may play the gateway)."""
    return _lab_or_fail(lab_manager, "notifier", False)


@pytest.fixture
def lab_pua(lab_manager):
    """The lab in PUA mode, no gateway."""
    return _lab_or_fail(lab_manager, "pua", False)


@pytest.fixture
def gw_notifier(lab_manager):
    """The lab in notifier mode with the gateway running; fails if the gateway died."""
    lab = _lab_or_fail(lab_manager, "notifier", True)
    yield lab
    assert lab.gateway is not None and lab.gateway.poll() is None, "the gateway exited during the test"


@pytest.fixture(scope="module", params=["notifier", "pua"])
def gw_mode(request, lab_manager):
    """Module-scoped: the lab restarted with the gateway in each mode in turn."""
    if not gateway_available() and not REQUIRE_GATEWAY:
        pytest.skip("pua-xmpp binary not found at %s" % GATEWAY_BIN)
    return request.param


@pytest.fixture
def gw_lab(gw_mode, lab_manager):
    lab = _lab_or_fail(lab_manager, gw_mode, True)
    yield lab
    assert lab.gateway is not None and lab.gateway.poll() is None, "the gateway exited during the test"


@pytest.fixture
def xmpp():
    """Factory: xmpp('alice') -> logged-in XmppClient (roster fetched, initial presence
    sent unless presence=False). Every client is closed at teardown."""
    clients = []

    def login(user, resource="e2e", presence=True):
        c = XmppClient(LAB_IP, 5222, "xmpp.test")
        clients.append(c)
        return c.login(user, USERS[user], resource=resource, send_presence=presence)

    yield login
    for c in clients:
        c.close()


@pytest.fixture
def sip():
    """Factory: sip('carol') -> SipUA sip:carol@sip.test on an ephemeral UDP port of
    LAB_IP, using Kamailio as outbound proxy. Closed at teardown."""
    uas = []

    def make(user, port=0):
        ua = SipUA(user, LAB_IP, PROXY, port=port)
        uas.append(ua)
        return ua

    yield make
    for ua in uas:
        ua.close()


@pytest.fixture(scope="session")
def bob_ua():
    """bob's UA for the whole session (one publication: Kamailio would otherwise
    aggregate several of bob's publications into one NOTIFY)."""
    ua = SipUA("bob", LAB_IP, PROXY)
    yield ua
    ua.close()


class Bob:
    """bob@sip.test publishing PIDF through Kamailio, one publication per lab start."""

    ENTITY = "sip:bob@sip.test"

    def __init__(self, ua, lab):
        self.ua, self.lab = ua, lab
        self.pub = None
        self.lab_start = None

    def publish(self, basic="open", note=None, activities=(), lang=None):
        if self.lab_start != self.lab.starts:  # a restarted Kamailio forgot the etag
            self.pub = Publication(self.ua, self.ENTITY)
            self.lab_start = self.lab.starts
        r = self.pub.publish(pidf(self.ENTITY, basic, note, activities, tuple_id="t-bob", lang=lang))
        assert r is not None and r.code == 200 and r.h("sip-etag"), \
            "bob's PUBLISH failed: %r\n%s" % (r, self.ua.dump_log(4))
        return r


@pytest.fixture(scope="session")
def _bob_state():
    return {}


@pytest.fixture
def bob(bob_ua, lab_manager, _bob_state):
    """bob's publisher (fixture needs a running lab: request lab_*/gw_* first)."""
    if "bob" not in _bob_state:
        _bob_state["bob"] = Bob(bob_ua, lab_manager)
    return _bob_state["bob"]
