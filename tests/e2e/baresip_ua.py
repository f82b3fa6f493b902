"""A real SIP phone for the end-to-end tests: baresip (Debian baresip-core), headless.

One `Baresip` is one baresip process with one account, registered to Kamailio (or not,
regint=0). It runs from a generated config dir (`baresip -f DIR`) with no audio modules:
  account.so   the account line (AOR, outbound proxy, regint, transport)
  contact.so   one contact, the peer: `/message TEXT` sends a MESSAGE to it
  menu.so      the commands; it also shows a received MESSAGE as `PEER: "BODY"` (short ones)
               and every failed MESSAGE response as the status line in red
  ctrl_tcp.so  JSON-netstring command socket: the tests send `/message` through it
  stdio.so     the UI output menu.so prints to (no terminal needed for that)
Run with -s (SIP trace): every SIP message it sends and receives, bodies included, is
printed. stdout (line-buffered with stdbuf) goes to DIR/baresip.log, which the tests read.
The process stays in the test run's process group (Ctrl-C stops it too), is stopped by its
PID (SIGTERM: baresip unregisters before it exits), and quits by itself after LIFETIME s.
"""
import json
import os
import re
import socket
import subprocess
import time

LIFETIME = 300  # seconds; no test keeps a phone this long
BARESIP = os.environ.get("BARESIP_BIN", "/usr/bin/baresip")
MODULE_DIRS = ("/usr/lib/baresip/modules", "/usr/lib64/baresip/modules", "/usr/local/lib/baresip/modules")
# a failed request's response as contact.so prints it: ESC[31m<code> <reason>ESC[;m
# what starts each message of its SIP trace (-s): ESC[36;1m#\n then "TCP src -> dst"
TRACE_MARK = b"\x1b[36;1m#\n"
FAILED = re.compile(r"\x1b\[31m(\d{3}) ([^\x1b\r\n]*)")


def available():
    return os.access(BARESIP, os.X_OK) and module_dir() is not None


def module_dir():
    return next((d for d in MODULE_DIRS if os.path.isfile(os.path.join(d, "ctrl_tcp.so"))), None)


class Baresip:
    def __init__(self, run_dir, user, ip, port, proxy, peer, domain="sip.test", transport="udp", regint=60):
        """`peer`: the SIP URI `/message` sends to. `transport`: how it registers and sends
        (udp or tcp) through the outbound proxy `proxy` = (ip, port)."""
        self.user, self.ip, self.port, self.peer = user, ip, port, peer
        self.aor = "sip:%s@%s" % (user, domain)
        self.dir = os.path.join(run_dir, "baresip-%s-%d" % (user, port))
        self.ctrl_port = port + 1000  # port + 1 is its SIP over TLS
        os.makedirs(self.dir, exist_ok=True)
        with open(os.path.join(self.dir, "config"), "w") as f:
            f.write("poll_method\tpoll\n"
                    "sip_listen\t%s:%d\n"
                    "module_path\t%s\n"
                    "module\tstdio.so\n"  # its UI output prints received MESSAGEs
                    "module_app\taccount.so\n"
                    "module_app\tcontact.so\n"
                    "module_app\tmenu.so\n"
                    "module_app\tctrl_tcp.so\n"
                    "ctrl_tcp_listen\t%s:%d\n"
                    "audio_player\tnone\naudio_source\tnone\naudio_alert\tnone\n"
                    % (ip, port, module_dir(), ip, self.ctrl_port))
        tparam = ";transport=tcp" if transport == "tcp" else ""
        with open(os.path.join(self.dir, "accounts"), "w") as f:
            f.write('<%s%s>;outbound="sip:%s:%d%s";regint=%d;answermode=manual\n'
                    % (self.aor, tparam, proxy[0], proxy[1], tparam, regint))
        with open(os.path.join(self.dir, "contacts"), "w") as f:
            f.write('"peer" <%s>\n' % peer)
        self.log_path = os.path.join(self.dir, "baresip.log")
        with open(self.log_path, "wb") as log:
            # -t: a baresip left behind by a killed test run quits by itself
            self.proc = subprocess.Popen(["stdbuf", "-oL", "-eL", BARESIP, "-s", "-t", str(LIFETIME),
                                          "-f", self.dir],
                                         stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        with open(os.path.join(self.dir, "baresip.pid"), "w") as f:
            f.write("%d\n" % self.proc.pid)
        self.ctrl = None
        self._token = 0

    # ------------------------------------------------------------------ output
    def output(self):
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode("utf-8", errors="replace")
        except OSError:
            return ""

    def wait_output(self, pred, timeout=5.0):
        """The first truthy pred(log text) within timeout, else None."""
        end = time.monotonic() + timeout
        while True:
            r = pred(self.output())
            if r or time.monotonic() > end or self.proc.poll() is not None:
                return r
            time.sleep(0.05)

    def wait_registered(self, timeout=5.0):
        # what it prints on a 200 to its REGISTER: `carol@sip.test: {0/UDP/v4} 200 OK (...)`
        done = re.compile(r"^%s: \{\d+/\w+/v4\} 200 " % re.escape(self.aor[4:]), re.M)
        ok = self.wait_output(lambda out: done.search(out), timeout)
        assert ok, "baresip %s did not register:\n%s" % (self.aor, self.output())

    def wait_ready(self, timeout=5.0):
        """Started and its command socket accepts (for an account that does not register)."""
        ok = self.wait_output(lambda out: "baresip is ready." in out, timeout)
        assert ok, "baresip %s did not start:\n%s" % (self.aor, self.output())

    def raw(self):
        try:
            with open(self.log_path, "rb") as f:
                return f.read()
        except OSError:
            return b""

    def traced(self, method=None):
        """The SIP messages baresip received, from its SIP trace (`-s`): dicts with
        transport (UDP/TCP), src, start line, headers {lower name: value}, body (str, read
        by Content-Length). Retransmissions (same Call-ID, CSeq, Via) appear once."""
        out, seen = [], set()
        for block in self.raw().split(TRACE_MARK)[1:]:
            head, _, rest = block.partition(b"\n")
            m = re.match(rb"(UDP|TCP) (\S+) -> (\S+)$", head.strip())
            if not m or m.group(3).decode() != "%s:%d" % (self.ip, self.port):
                continue  # one baresip sent, not received
            hdrs, sep, after = rest.partition(b"\r\n\r\n")
            if not sep:
                continue
            lines = hdrs.decode("utf-8", errors="replace").split("\r\n")
            headers = {}
            for line in lines[1:]:
                name, _, value = line.partition(":")
                headers.setdefault(name.strip().lower(), value.strip())
            if method is not None and not lines[0].startswith(method + " "):
                continue
            n = int(headers.get("content-length", "0") or 0)
            key = (headers.get("call-id"), headers.get("cseq"), headers.get("via"))
            if key in seen:
                continue
            seen.add(key)
            out.append({"transport": m.group(1).decode(), "src": m.group(2).decode(), "start": lines[0],
                        "headers": headers, "body": after[:n].decode("utf-8", errors="replace"),
                        "complete": len(after) >= n})
        return out

    def wait_message(self, body, timeout=5.0):
        """The received MESSAGE (see traced) whose body is exactly `body`, or None."""
        def find(_):
            return next((t for t in self.traced("MESSAGE") if t["complete"] and t["body"] == body), None)
        return self.wait_output(find, timeout)

    def shown(self):
        """Bodies of the MESSAGEs from `peer` as menu.so shows them to the user
        (`PEER: "BODY"`; baresip 1.0.0 shows nothing for a body over ~500 bytes)."""
        head = '%s: "' % self.peer
        out, bodies, i = self.output(), [], 0
        while True:
            i = out.find(head, i)
            if i < 0:
                return bodies
            start = i + len(head)
            end = out.find('"\n', start)
            if end < 0:
                return bodies
            bodies.append(out[start:end])
            i = end

    def wait_shown(self, body, timeout=5.0):
        """True once menu.so showed a MESSAGE with exactly this body from `peer`."""
        return bool(self.wait_output(lambda _: body in self.shown(), timeout))

    def failures(self):
        """(code, reason) of every failed MESSAGE this UA sent, in order."""
        return [(int(c), r) for c, r in FAILED.findall(self.output())]

    # ------------------------------------------------------------------ commands
    def command(self, command, params="", timeout=5.0):
        """One ctrl_tcp command; returns its JSON response."""
        if self.ctrl is None:
            end = time.monotonic() + timeout
            while True:
                try:
                    self.ctrl = socket.create_connection((self.ip, self.ctrl_port), timeout=timeout)
                    break
                except OSError:
                    if time.monotonic() > end:
                        raise
                    time.sleep(0.05)
        self._token += 1
        js = json.dumps({"command": command, "params": params, "token": str(self._token)}).encode("utf-8")
        self.ctrl.sendall(b"%d:%s," % (len(js), js))
        buf = b""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            m = re.match(rb"(\d+):", buf)
            if m and len(buf) >= m.end() + int(m.group(1)) + 1:
                n = int(m.group(1))
                resp = json.loads(buf[m.end():m.end() + n].decode("utf-8"))
                buf = buf[m.end() + n + 1:]
                if resp.get("response") and resp.get("token") == str(self._token):
                    return resp
                continue
            chunk = self.ctrl.recv(65536)
            if not chunk:
                break
            buf += chunk
        raise AssertionError("no ctrl_tcp response to %s from baresip %s" % (command, self.aor))

    def message(self, text):
        """`/message TEXT` to the peer (a MESSAGE through the outbound proxy)."""
        resp = self.command("message", text)
        assert resp.get("ok"), "baresip refused /message: %r" % resp
        return resp

    def close(self):
        if self.ctrl is not None:
            self.ctrl.close()
            self.ctrl = None
        if self.proc.poll() is None:
            self.proc.terminate()  # baresip unregisters on SIGTERM
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
