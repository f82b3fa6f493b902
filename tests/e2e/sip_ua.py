"""Minimal SIP user agent for the end-to-end tests (standard library only, UDP).

- SipUA: one UDP socket. Sends requests through the outbound proxy (Kamailio),
  retransmitting until a response arrives; answers incoming requests (NOTIFY)
  with 200 by default and keeps them for the test to inspect.
- Subscription: a SUBSCRIBE dialog (initial, refresh, Expires 0) that follows the
  RFC 3261 UAC dialog rules (route set from Record-Route, remote target from Contact).
- Publication: PUBLISH of PIDF (initial with body, modify/refresh with SIP-If-Match).
- parse_pidf: the parts of a PIDF/RPID document the tests assert on.
Messages are handled as bytes; Content-Length counts octets.
"""
import queue
import random
import re
import socket
import string
import threading
import time
import xml.etree.ElementTree as ET

COMPACT = {"v": "via", "f": "from", "t": "to", "i": "call-id", "m": "contact", "l": "content-length",
           "c": "content-type", "o": "event", "k": "supported", "u": "allow-events", "r": "refer-to"}
NS_PIDF = "urn:ietf:params:xml:ns:pidf"
NS_DM = "urn:ietf:params:xml:ns:pidf:data-model"
NS_RPID = "urn:ietf:params:xml:ns:pidf:rpid"
XML_LANG = "{http://www.w3.org/XML/1998/namespace}lang"


def rand(n=10):
    return "".join(random.choice(string.ascii_lowercase + string.digits) for _ in range(n))


def tag_of(value):
    m = re.search(r";\s*tag=([^;>\s]+)", value or "")
    return m.group(1) if m else None


def uri_of(value):
    """URI inside a name-addr (<...>) or a bare addr-spec without parameters."""
    m = re.search(r"<([^>]+)>", value or "")
    return m.group(1) if m else (value or "").split(";")[0].strip()


def split_commas(value):
    """Split a header value at commas that are outside <> and quotes."""
    out, cur, depth, quoted = [], "", 0, False
    for ch in value:
        if ch == '"':
            quoted = not quoted
        elif ch == "<" and not quoted:
            depth += 1
        elif ch == ">" and not quoted:
            depth -= 1
        if ch == "," and depth == 0 and not quoted:
            out.append(cur.strip())
            cur = ""
        else:
            cur += ch
    if cur.strip():
        out.append(cur.strip())
    return out


class SipMessage:
    """A parsed SIP request or response (from bytes)."""

    def __init__(self, data, addr=None):
        self.data, self.addr = data, addr
        self.received_at = time.monotonic()  # parsed right after recvfrom() for received ones
        head, sep, rest = data.partition(b"\r\n\r\n")
        lines = head.decode("utf-8", errors="replace").split("\r\n")
        self.first = lines[0]
        self.headers = []  # [(lowercase long name, value)] in order
        for ln in lines[1:]:
            if ln[:1] in (" ", "\t") and self.headers:
                n, v = self.headers[-1]
                self.headers[-1] = (n, v + " " + ln.strip())
                continue
            n, _, v = ln.partition(":")
            n = n.strip().lower()
            self.headers.append((COMPACT.get(n, n), v.strip()))
        clen = self.h("content-length")
        self.body_bytes = rest[:int(clen)] if clen.isdigit() else rest
        self.body = self.body_bytes.decode("utf-8", errors="replace")
        self.is_request = not self.first.startswith("SIP/2.0")
        if self.is_request:
            parts = self.first.split(" ")
            self.method, self.ruri = parts[0], parts[1] if len(parts) > 1 else ""
            self.code = None
        else:
            parts = self.first.split(" ", 2)
            self.code = int(parts[1])
            self.reason = parts[2] if len(parts) > 2 else ""
            self.method = self.h("cseq").split()[-1] if self.h("cseq") else ""

    def h(self, name, default=""):
        """First value of a header (long lowercase name)."""
        return next((v for n, v in self.headers if n == name), default)

    def hall(self, name):
        """All values of a header, comma-separated values split."""
        return [x for n, v in self.headers if n == name for x in split_commas(v)]

    @property
    def cseq_num(self):
        return int(self.h("cseq").split()[0])

    def sub_state(self):
        """('active'|'pending'|'terminated', {param: value}) from Subscription-State."""
        parts = [p.strip() for p in self.h("subscription-state").split(";")]
        params = {}
        for p in parts[1:]:
            k, _, v = p.partition("=")
            params[k.strip().lower()] = v.strip()
        return parts[0].lower(), params

    def __repr__(self):
        return "<%s | %s>" % (self.first, self.h("subscription-state") or self.h("call-id"))

    def text(self):
        return self.data.decode("utf-8", errors="replace")


class SipUA:
    """UDP SIP endpoint `sip:<user>@<ip>:<port>` using `proxy` (ip, port) as outbound proxy.

    Incoming requests are answered by self.answer(msg) -> (code, reason, [extra headers])
    (default 200 OK) and stored; wait_request() takes them out. Retransmitted requests
    get the same answer again and are not stored twice."""

    def __init__(self, user, ip, proxy, port=0, domain="sip.test"):
        self.user, self.ip, self.proxy, self.domain = user, ip, proxy, domain
        self.sock = socket.socket(socket.AF_INET6 if ":" in ip else socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((ip, port))
        self.port = self.sock.getsockname()[1]
        self.host = "[%s]" % ip if ":" in ip else ip  # IPv6 reference in Via/Contact
        self.aor = "sip:%s@%s" % (user, domain)
        self.contact = "sip:%s@%s:%d" % (user, self.host, self.port)
        self.answer = lambda m: (200, "OK", [])
        self.requests, self.all_requests = [], []
        self.responses = queue.Queue()
        self.cond = threading.Condition()
        self.replied = {}  # (call-id, cseq, top via branch) -> raw reply (retransmissions)
        self.log = []      # (direction, addr, text)
        self.cseq = random.randint(1, 1000)
        self._stop = False
        self.sock.settimeout(0.1)
        self._thread = threading.Thread(target=self._reader, daemon=True)
        self._thread.start()

    def close(self):
        self._stop = True
        self._thread.join(2)
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _reader(self):
        while not self._stop:
            try:
                data, addr = self.sock.recvfrom(65535)
            except socket.timeout:
                continue
            except OSError:
                return
            if not data.strip():
                continue  # keepalive
            try:
                m = SipMessage(data, addr)
            except (ValueError, IndexError):
                continue
            self.log.append(("<-", addr, m.text()))
            if not m.is_request:
                self.responses.put(m)
                continue
            if m.method == "ACK":
                continue
            key = (m.h("call-id"), m.h("cseq"), m.h("via"))
            if key in self.replied:
                self._send(self.replied[key], addr)
                continue
            code, reason, extra = self.answer(m)
            self.replied[key] = self._reply_bytes(m, code, reason, extra)
            self._send(self.replied[key], addr)
            with self.cond:
                self.requests.append(m)
                self.all_requests.append(m)
                self.cond.notify_all()

    def _send(self, data, dest):
        self.log.append(("->", dest, data.decode("utf-8", errors="replace")))
        self.sock.sendto(data, dest)

    def _reply_bytes(self, req, code, reason, extra=()):
        to = req.h("to") if tag_of(req.h("to")) else req.h("to") + ";tag=" + rand()
        lines = ["SIP/2.0 %d %s" % (code, reason)] + ["Via: %s" % v for v in req.hall("via")]
        lines += ["From: " + req.h("from"), "To: " + to, "Call-ID: " + req.h("call-id"),
                  "CSeq: " + req.h("cseq")]
        lines += list(extra) + ["Content-Length: 0", "", ""]
        return "\r\n".join(lines).encode("utf-8")

    def request(self, method, ruri, frm=None, to=None, call_id=None, from_tag=None, to_tag=None,
                extra=(), body=b"", cseq=None, timeout=5.0, route=()):
        """Send a request to the proxy (retransmitted every 0.5 s until a response
        arrives) and return the final response, or None on timeout."""
        if cseq is None:
            self.cseq += 1
            cseq = self.cseq
        if isinstance(body, str):
            body = body.encode("utf-8")
        call_id = call_id or "%s@%s" % (rand(16), self.ip)
        frm = frm or self.aor
        lines = ["%s %s SIP/2.0" % (method, ruri),
                 "Via: SIP/2.0/UDP %s:%d;branch=z9hG4bK%s;rport" % (self.host, self.port, rand()),
                 "Max-Forwards: 70"]
        lines += ["Route: %s" % r for r in route]
        lines += ["From: <%s>;tag=%s" % (frm, from_tag or rand()),
                  "To: <%s>%s" % (to or ruri, ";tag=" + to_tag if to_tag else ""),
                  "Call-ID: " + call_id, "CSeq: %d %s" % (cseq, method),
                  "Contact: <%s>" % self.contact, "User-Agent: pua-xmpp-e2e"]
        raw = ("\r\n".join(lines + list(extra) + ["Content-Length: %d" % len(body), "", ""])).encode("utf-8") + body
        end, nxt, provisional = time.monotonic() + timeout, 0.0, False
        while time.monotonic() < end:
            if not provisional and time.monotonic() >= nxt:
                self._send(raw, self.proxy)
                nxt = time.monotonic() + 0.5
            try:
                r = self.responses.get(timeout=0.05)
            except queue.Empty:
                continue
            if r.h("call-id") == call_id and r.h("cseq") == "%d %s" % (cseq, method):
                if r.code >= 200:
                    return r
                provisional = True
        return None

    def wait_request(self, method, timeout=5.0, pred=None):
        """Remove and return the first received request with this method matching
        pred (others stay queued), or None after timeout seconds."""
        end = time.monotonic() + timeout
        with self.cond:
            while True:
                for m in self.requests:
                    if m.method == method and (pred is None or pred(m)):
                        self.requests.remove(m)
                        return m
                left = end - time.monotonic()
                if left <= 0:
                    return None
                self.cond.wait(left)

    def collect(self, method, duration, pred=None):
        """Every request with this method (and pred) received within duration seconds."""
        out, end = [], time.monotonic() + duration
        while True:
            m = self.wait_request(method, max(0.0, end - time.monotonic()), pred)
            if m is None:
                return out
            out.append(m)

    def drain(self):
        with self.cond:
            dropped, self.requests = self.requests, []
        return dropped

    def dump_log(self, last=20):
        return "\n".join("%s %s:%d\n%s" % (d, a[0], a[1], t) for d, a, t in self.log[-last:])


class Subscription:
    """A SUBSCRIBE dialog from `ua` to `target` (UAC side)."""

    def __init__(self, ua, target, event="presence", accept="application/pidf+xml"):
        self.ua, self.target, self.event, self.accept = ua, target, event, accept
        self.call_id = "%s@%s" % (rand(16), ua.ip)
        self.from_tag = rand()
        self.to_tag = None
        self.remote_target = target
        self.route = []
        self.cseq = random.randint(1, 1000)
        self.last_response = None

    def _send(self, expires):
        self.cseq += 1
        extra = ["Event: %s" % self.event, "Expires: %d" % expires]
        if self.accept:
            extra.append("Accept: %s" % self.accept)
        r = self.ua.request("SUBSCRIBE", self.remote_target, to=self.target, call_id=self.call_id,
                            from_tag=self.from_tag, to_tag=self.to_tag, extra=extra, cseq=self.cseq,
                            route=self.route)
        self.last_response = r
        if r is not None and 200 <= r.code < 300 and self.to_tag is None:
            # RFC 3261 12.1.2: dialog from the 2xx
            self.to_tag = tag_of(r.h("to"))
            self.route = list(reversed(r.hall("record-route")))
            if r.h("contact"):
                self.remote_target = uri_of(r.h("contact"))
        return r

    def subscribe(self, expires=600):
        """Initial SUBSCRIBE; returns the final response (None on timeout)."""
        return self._send(expires)

    def refresh(self, expires=600):
        return self._send(expires)

    def unsubscribe(self):
        return self._send(0)

    def is_mine(self, m):
        return m.h("call-id") == self.call_id and tag_of(m.h("to")) == self.from_tag

    def wait_notify(self, timeout=5.0, pred=None):
        """Next NOTIFY of this dialog (optionally matching pred); it updates the
        remote target like a NOTIFY must (RFC 6665 4.1.2.4)."""
        n = self.ua.wait_request("NOTIFY", timeout, lambda m: self.is_mine(m) and (pred is None or pred(m)))
        if n is not None:
            if self.to_tag is None:
                self.to_tag = tag_of(n.h("from"))
                self.route = n.hall("record-route")
            if n.h("contact"):
                self.remote_target = uri_of(n.h("contact"))
        return n

    def discard(self):
        """Drop the NOTIFYs of this dialog received so far (already answered)."""
        with self.ua.cond:
            dropped = [m for m in self.ua.requests if m.method == "NOTIFY" and self.is_mine(m)]
            self.ua.requests = [m for m in self.ua.requests if m not in dropped]
        return dropped

    def notifies(self, duration, pred=None):
        """Every NOTIFY of this dialog received within duration seconds."""
        out, end = [], time.monotonic() + duration
        while True:
            n = self.wait_notify(max(0.0, end - time.monotonic()), pred)
            if n is None:
                return out
            out.append(n)


class Publication:
    """One PUBLISH publication (RFC 3903) for `aor`, sent through the ua's proxy."""

    def __init__(self, ua, aor, expires=600):
        self.ua, self.aor, self.expires = ua, aor, expires
        self.etag = None
        self.call_id = "%s@%s" % (rand(16), ua.ip)
        self.from_tag = rand()
        self.last_response = None

    def publish(self, body, expires=None):
        """Initial PUBLISH (no etag yet) or modify (SIP-If-Match) with a PIDF body;
        a 412 (the server forgot the etag) starts over with an initial PUBLISH."""
        r = self._send(body, expires)
        if r is not None and r.code == 412 and self.etag is not None:
            self.etag = None
            r = self._send(body, expires)
        return r

    def refresh(self, expires=None):
        """Refresh: SIP-If-Match, no body."""
        return self._send(b"", expires)

    def remove(self):
        return self._send(b"", 0)

    def _send(self, body, expires):
        extra = ["Event: presence", "Expires: %d" % (self.expires if expires is None else expires)]
        if self.etag:
            extra.append("SIP-If-Match: %s" % self.etag)
        if body:
            extra.append("Content-Type: application/pidf+xml")
        r = self.ua.request("PUBLISH", self.aor, frm=self.aor, to=self.aor, call_id=self.call_id,
                            from_tag=self.from_tag, extra=extra, body=body)
        self.last_response = r
        if r is not None and 200 <= r.code < 300 and r.h("sip-etag"):
            self.etag = r.h("sip-etag")
        return r


def xml_text(s):
    return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def pidf(entity, basic, note=None, activities=(), tuple_id="t-bob", lang=None):
    """A PIDF document with one tuple and, if activities are given, a dm:person with
    rpid:activities (RFC 4480). Returns UTF-8 bytes."""
    lang_attr = ' xml:lang="%s"' % lang if lang else ""
    note_el = "<note%s>%s</note>" % (lang_attr, xml_text(note)) if note is not None else ""
    person = ""
    if activities:
        person = ('<dm:person id="p1"><rpid:activities>%s</rpid:activities></dm:person>'
                  % "".join("<rpid:%s/>" % a for a in activities))
    doc = ('<?xml version="1.0" encoding="UTF-8"?>\n'
           '<presence xmlns="%s" xmlns:dm="%s" xmlns:rpid="%s" entity="%s">'
           '<tuple id="%s"><status><basic>%s</basic></status>%s</tuple>%s</presence>\n'
           % (NS_PIDF, NS_DM, NS_RPID, entity, tuple_id, basic, note_el, person))
    return doc.encode("utf-8")


def parse_pidf(body):
    """The facts of a PIDF document the tests compare exactly:
    {'entity', 'tuples': [{'id', 'basic', 'notes', 'contact'}], 'notes' (presence level),
     'person_notes', 'activities' (sorted local names from person and tuples),
     'user_input'}."""
    if isinstance(body, str):
        body = body.encode("utf-8")
    root = ET.fromstring(body)
    if root.tag != "{%s}presence" % NS_PIDF:
        raise ValueError("not a PIDF document: root %s" % root.tag)
    tuples = []
    acts = set()
    for t in root.findall("{%s}tuple" % NS_PIDF):
        basic = t.find("{%s}status/{%s}basic" % (NS_PIDF, NS_PIDF))
        contact = t.find("{%s}contact" % NS_PIDF)
        tuples.append({
            "id": t.get("id"),
            "basic": basic.text.strip() if basic is not None and basic.text else None,
            "notes": [n.text or "" for n in t.findall("{%s}note" % NS_PIDF)],
            "contact": contact.text.strip() if contact is not None and contact.text else None,
            "priority": contact.get("priority") if contact is not None else None,
        })
        for a in t.iter("{%s}activities" % NS_RPID):
            acts.update(c.tag.split("}", 1)[-1] for c in a if c.tag != "{%s}note" % NS_RPID)
    person_notes, user_input = [], None
    for p in root.findall("{%s}person" % NS_DM):
        person_notes += [n.text or "" for n in p.findall("{%s}note" % NS_DM)]
        for a in p.iter("{%s}activities" % NS_RPID):
            acts.update(c.tag.split("}", 1)[-1] for c in a if c.tag != "{%s}note" % NS_RPID)
        ui = p.find("{%s}user-input" % NS_RPID)
        if ui is not None:
            user_input = (ui.text or "").strip()
    return {
        "entity": root.get("entity"),
        "tuples": tuples,
        "notes": [n.text or "" for n in root.findall("{%s}note" % NS_PIDF)],
        "person_notes": person_notes,
        "activities": sorted(acts),
        "user_input": user_input,
    }
