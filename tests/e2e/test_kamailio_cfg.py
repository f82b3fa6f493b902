"""config/kamailio.cfg under every define combination the lab and the tests use.

Mode (GW_MODE_NOTIFIER / GW_MODE_PUA) x WITH_TLS x WITH_HA x WITH_IPV6: `kamailio -c`
(the parser: syntax, unknown functions, missing #!define values) for all 16. `kamailio -c`
does not run fixups or module initialisation (a pseudo-variable of a module that is not
loaded, a module parameter it refuses, passes it), so the IPv4 combinations are also
started for real on LAB_IP (the lab is stopped first) until the control socket answers,
with the run files start.sh would make (presence DB, dispatcher list, tls.cfg), then
stopped by PID. No gateway is needed.
"""
import itertools
import os
import shutil
import signal
import subprocess
import time

import pytest

from conftest import BASE_DIR, LAB_IP, REPO, tail, wait_until
from test_sip_tls import KAMAILIO_TLS_CFG, make_ca, make_leaf

CFG = os.path.join(REPO, "config", "kamailio.cfg")
ENV = dict(os.environ, PATH=os.environ.get("PATH", "") + ":/usr/local/sbin:/usr/sbin:/sbin")
KAMAILIO = shutil.which("kamailio", path=ENV["PATH"])
KMOD_DIR = next((d for d in ["/usr/lib/x86_64-linux-gnu/kamailio/modules", "/usr/lib/aarch64-linux-gnu/kamailio/modules",
                             "/usr/lib64/kamailio/modules", "/usr/lib/kamailio/modules"]
                 if os.path.isfile(os.path.join(d, "tm.so"))), None)
COMBOS = list(itertools.product(["GW_MODE_NOTIFIER", "GW_MODE_PUA"], [False, True], [False, True], [False, True]))

pytestmark = pytest.mark.skipif(KAMAILIO is None or KMOD_DIR is None, reason="kamailio is not installed")


def combo_id(c):
    mode, tls, ha, v6 = c
    return "-".join([mode.split("_")[-1].lower()] + [n for n, on in (("tls", tls), ("ha", ha), ("ipv6", v6)) if on])


def defines(run_dir, combo, lab_ip):
    """The -A arguments start.sh passes for this combination (paths in run_dir)."""
    mode, tls, ha, v6 = combo
    host = "[%s]" % lab_ip if v6 else lab_ip
    ip2 = "127.0.0.254"
    srv = "sip:%s:5061;transport=tls" % host if tls else "sip:%s:5060" % host
    args = ["LAB_IP=%s" % host, 'SRV_URI="%s"' % srv, 'GW_ADDR="%s:5080"' % host, 'GW_HTTP="%s:9080"' % host,
            'DBURL="sqlite:///%s/kamailio.sqlite"' % run_dir, 'CTL_SOCK="unix:%s/kamailio_ctl"' % run_dir,
            'MPATH="%s/"' % KMOD_DIR, mode]
    if v6:
        args.append("WITH_IPV6")
    if tls:
        args += ["WITH_TLS", 'TLS_CFG="%s/tls.cfg"' % run_dir, 'GW_TLS_ADDR="%s:5081"' % host]
    if ha:
        args += ["WITH_HA", 'DS_LIST="%s/dispatcher.list"' % run_dir, 'GW2_ADDR="%s:5080"' % ip2,
                 'GW2_HTTP="%s:9080"' % ip2, 'GW2_TLS_ADDR="%s:5081"' % ip2,
                 'RPC_FIFO="%s/kamailio_rpc.fifo"' % run_dir]
    out = []
    for a in args:
        out += ["-A", a]
    return out


@pytest.mark.parametrize("combo", COMBOS, ids=combo_id)
def test_config_parses(combo, tmp_path):
    lab_ip = "::1" if combo[3] else LAB_IP
    st = subprocess.run([KAMAILIO, "-c", "-f", CFG] + defines(str(tmp_path), combo, lab_ip),
                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=ENV)
    assert st.returncode == 0 and "config file ok" in st.stdout, st.stdout[-3000:]
    assert " ERROR: " not in st.stdout, st.stdout[-3000:]


@pytest.fixture(scope="module")
def cfg_dir(lab_manager):
    """The lab stopped (its addresses are used here); certificates for the TLS runs."""
    lab_manager.stop()
    d = os.path.join(BASE_DIR, "kamailio-cfg")
    os.makedirs(d, exist_ok=True)
    make_ca(d, "lab")
    make_leaf(d, "lab", "kamailio", "IP:%s,DNS:sip.test" % LAB_IP)
    return d


def _prepare(run_dir, combo, certs):
    os.makedirs(run_dir)
    for sql in ("standard-create.sql", "presence-create.sql"):
        with open("/usr/share/kamailio/db_sqlite/" + sql, "rb") as f:
            subprocess.run(["sqlite3", os.path.join(run_dir, "kamailio.sqlite")], stdin=f, check=True)
    if combo[1]:
        with open(os.path.join(run_dir, "tls.cfg"), "w") as f:
            f.write(KAMAILIO_TLS_CFG.format(d=certs))
    if combo[2]:
        t = ";transport=tls" if combo[1] else ""
        with open(os.path.join(run_dir, "dispatcher.list"), "w") as f:
            f.write("1 sip:%s:%d%s 0 10\n1 sip:127.0.0.254:%d%s 0 5\n"
                    % (LAB_IP, 5081 if combo[1] else 5080, t, 5081 if combo[1] else 5080, t))


def _group_alive(p):
    """Whether any process of p's process group is still running (zombies of it reaped)."""
    p.poll()
    try:
        os.killpg(p.pid, 0)
    except ProcessLookupError:
        return False
    out = subprocess.run(["ps", "-o", "stat=", "-g", str(p.pid)], stdout=subprocess.PIPE, text=True).stdout
    return any(not st.startswith("Z") for st in out.split())


@pytest.mark.parametrize("combo", [c for c in COMBOS if not c[3]], ids=combo_id)
def test_config_starts(combo, cfg_dir):
    """Kamailio starts with this combination (fixups and module init pass), answers on
    its control socket, and logs no ERROR while starting."""
    run_dir = os.path.join(cfg_dir, combo_id(combo))
    _prepare(run_dir, combo, cfg_dir)
    log_path = os.path.join(run_dir, "kamailio.log")
    with open(log_path, "wb") as log:
        p = subprocess.Popen([KAMAILIO, "-DD", "-E", "-f", CFG] + defines(run_dir, combo, LAB_IP)
                             + ["-Y", run_dir, "-w", run_dir, "-m", "64", "-M", "16"],
                             stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=ENV,
                             start_new_session=True)
    kamcmd = ["kamcmd", "-s", "unix:%s/kamailio_ctl" % run_dir, "core.uptime"]
    try:
        up = wait_until(lambda: p.poll() is not None or subprocess.run(
            kamcmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode == 0, 10)
        assert up and p.poll() is None, "kamailio exited (%s)\n%s" % (p.returncode, tail(log_path))
        time.sleep(0.3)
        with open(log_path, encoding="utf-8", errors="replace") as f:
            errors = [line for line in f if " ERROR: " in line or " CRITICAL: " in line]
        # with HA the probes of the (absent) gateways fail: that is not a config error
        errors = [e for e in errors if not any(k in e for k in ("tcp_main.c", "forward.h", "uac.c", "t_fwd.c"))]
        assert errors == [], "".join(errors)
    finally:
        # The whole process group (its own session): a main process that died or was killed
        # first must not leave children holding the SIP ports for the next combination.
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(p.pid, sig)
            except ProcessLookupError:
                break
            if sig == signal.SIGTERM:
                wait_until(lambda: not _group_alive(p), 5)
        try:
            p.wait(5)
        except subprocess.TimeoutExpired:
            pass
