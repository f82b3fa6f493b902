"""Minimal XMPP c2s client for the end-to-end tests (standard library only).

Plain TCP (the lab has no TLS), SASL PLAIN, resource binding, session, roster get,
raw stanza sending, and receiving top-level stanzas (parsed with xml.etree) with a
timeout and a predicate. Not a general client: just enough to play alice and zoe.
"""
import base64
import socket
import threading
import time
import xml.etree.ElementTree as ET
from xml.sax.saxutils import quoteattr

NS_CLIENT = "jabber:client"
NS_STREAM = "http://etherx.jabber.org/streams"
NS_SASL = "urn:ietf:params:xml:ns:xmpp-sasl"
NS_BIND = "urn:ietf:params:xml:ns:xmpp-bind"
NS_SESSION = "urn:ietf:params:xml:ns:xmpp-session"
NS_ROSTER = "jabber:iq:roster"
XML_LANG = "{http://www.w3.org/XML/1998/namespace}lang"


class XmppError(Exception):
    """The server refused something (SASL, bind, ...) or closed the stream."""


def local(tag):
    """Local name of an ElementTree tag ('{ns}name' -> 'name')."""
    return tag.split("}", 1)[-1]


def ns_of(tag):
    return tag[1:].split("}", 1)[0] if tag.startswith("{") else ""


def bare(jid):
    return (jid or "").split("/", 1)[0]


def canonical(el):
    """Namespace-aware, order-insensitive canonical form of an element, for exact
    comparisons that do not depend on attribute order or child order."""
    children = sorted((canonical(c) for c in el), key=repr)
    text = (el.text or "").strip() if len(el) else (el.text or "")
    return (el.tag, tuple(sorted(el.attrib.items())), text, tuple(children))


class XmppClient:
    """One c2s session. A reader thread parses the stream and queues every
    top-level element; `wait` takes the first that matches a predicate."""

    def __init__(self, host, port=5222, domain="xmpp.test", timeout=5.0):
        self.host, self.port, self.domain = host, port, domain
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.lock = threading.Condition()
        self.inbox = []          # parsed top-level elements not yet taken by wait()
        self.received = []       # every top-level element ever received (for debugging)
        self.received_at = []    # time.monotonic() when each of them arrived (same index)
        self.raw = bytearray()   # every byte received (for byte-exact checks)
        self.closed = None       # reason once the stream is gone
        self.jid = None
        self._parser = None
        self._depth = 0
        self._header = None
        self._stop = False
        self.sock.settimeout(0.2)
        self._thread = threading.Thread(target=self._reader, daemon=True)
        self._new_parser()
        self._thread.start()

    # ---------------------------------------------------------------- stream
    def _new_parser(self):
        with self.lock:
            self._parser = ET.XMLPullParser(events=("start", "end"))
            self._depth = 0
            self._header = None

    def _reader(self):
        while not self._stop:
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                continue
            except OSError as ex:
                self._set_closed("socket error: %r" % ex)
                return
            if not data:
                self._set_closed("stream closed by server")
                return
            now = time.monotonic()
            with self.lock:
                self.raw += data
                try:
                    self._parser.feed(data)
                    events = list(self._parser.read_events())
                except ET.ParseError as ex:
                    self.closed = "XML parse error: %s" % ex
                    self.lock.notify_all()
                    return
                for ev, el in events:
                    if ev == "start":
                        self._depth += 1
                        if self._depth == 1:
                            self._header = el
                    else:
                        self._depth -= 1
                        if self._depth == 1:
                            self.inbox.append(el)
                            self.received.append(el)
                            self.received_at.append(now)
                            self._detach(el)
                            if is_roster_push(el):
                                # RFC 6121 2.1.6: acknowledge roster pushes
                                self._reply_result(el)
                self.lock.notify_all()

    def _detach(self, el):
        # the pull parser keeps every stanza under the stream header: free it
        try:
            self._header.remove(el)
        except ValueError:
            pass

    def _reply_result(self, iq):
        try:
            self.sock.sendall(("<iq type='result' id=%s/>" % quoteattr(iq.get("id") or "")).encode())
        except OSError:
            pass

    def _set_closed(self, why):
        with self.lock:
            self.closed = why
            self.lock.notify_all()

    def send(self, data):
        """Send raw XML text (str) or bytes."""
        if isinstance(data, str):
            data = data.encode("utf-8")
        self.sock.sendall(data)

    def _open_stream(self, timeout=5.0):
        self._new_parser()
        self.send("<?xml version='1.0'?><stream:stream xmlns='%s' xmlns:stream='%s' to='%s' "
                  "version='1.0'>" % (NS_CLIENT, NS_STREAM, self.domain))
        end = time.monotonic() + timeout
        with self.lock:
            while self._header is None:
                if self.closed or time.monotonic() > end:
                    raise XmppError("no stream header from server: %s" % (self.closed or "timeout"))
                self.lock.wait(0.05)
        return self.wait(lambda e: local(e.tag) == "features" and ns_of(e.tag) == NS_STREAM,
                         timeout, "stream features")

    # ---------------------------------------------------------------- receive
    def wait(self, pred, timeout=5.0, what=None):
        """Remove and return the first queued/arriving top-level element for which
        pred(el) is true; elements that do not match stay queued. On timeout: None,
        or XmppError if `what` names the thing being waited for."""
        end = time.monotonic() + timeout
        with self.lock:
            while True:
                for el in self.inbox:
                    if pred(el):
                        self.inbox.remove(el)
                        return el
                left = end - time.monotonic()
                if left <= 0 or self.closed:
                    if what is not None:
                        raise XmppError("timeout waiting for %s (%s); got: %s"
                                        % (what, self.closed or "%.1f s" % timeout, self.dump_inbox()))
                    return None
                self.lock.wait(min(left, 0.1))

    def collect(self, pred, duration):
        """All elements matching pred that arrive (or are queued) within duration seconds."""
        out = []
        end = time.monotonic() + duration
        while True:
            left = end - time.monotonic()
            el = self.wait(pred, max(0.0, left))
            if el is None:
                return out
            out.append(el)

    def drain(self):
        """Drop everything queued so far; returns what was dropped."""
        with self.lock:
            dropped, self.inbox = self.inbox, []
        return dropped

    def arrived_at(self, el):
        """time.monotonic() when the bytes that completed this received element came in."""
        with self.lock:
            for i in range(len(self.received) - 1, -1, -1):
                if self.received[i] is el:
                    return self.received_at[i]
        raise KeyError("element was not received by this client")

    def dump_inbox(self):
        with self.lock:
            return [ET.tostring(e, encoding="unicode") for e in self.inbox]

    # ---------------------------------------------------------------- session
    def login(self, user, password, resource="e2e", send_presence=True, fetch_roster=True):
        """SASL PLAIN, bind, session, roster get (makes us an "interested resource",
        so the server sends roster pushes), then initial presence."""
        feats = self._open_stream()
        mechs = [m.text for m in feats.iter("{%s}mechanism" % NS_SASL)]
        if "PLAIN" not in mechs:
            raise XmppError("server offers no SASL PLAIN (got %s)" % mechs)
        token = base64.b64encode(("\0%s\0%s" % (user, password)).encode("utf-8")).decode()
        self.send("<auth xmlns='%s' mechanism='PLAIN'>%s</auth>" % (NS_SASL, token))
        res = self.wait(lambda e: ns_of(e.tag) == NS_SASL and local(e.tag) in ("success", "failure"),
                        5.0, "SASL result")
        if local(res.tag) != "success":
            raise XmppError("SASL PLAIN failed for %s: %s" % (user, ET.tostring(res, encoding="unicode")))
        self._open_stream()
        r = self.iq("set", "<bind xmlns='%s'><resource>%s</resource></bind>" % (NS_BIND, resource))
        jid_el = r.find("{%s}bind/{%s}jid" % (NS_BIND, NS_BIND))
        if jid_el is None:
            raise XmppError("bind result without jid")
        self.jid = jid_el.text
        self.iq("set", "<session xmlns='%s'/>" % NS_SESSION)
        self.roster = self.get_roster() if fetch_roster else None
        if send_presence:
            self.send("<presence/>")
        return self

    _iq_counter = 0

    def iq(self, typ, payload, to=None, timeout=5.0):
        """Send an iq and return the result element; XmppError on error/timeout."""
        XmppClient._iq_counter += 1
        iq_id = "e2e%d" % XmppClient._iq_counter
        self.send("<iq type='%s' id='%s'%s>%s</iq>" % (typ, iq_id, " to=%s" % quoteattr(to) if to else "",
                                                    payload))
        r = self.wait(lambda e: local(e.tag) == "iq" and e.get("id") == iq_id
                      and e.get("type") in ("result", "error"), timeout, "iq %s" % iq_id)
        if r.get("type") != "result":
            raise XmppError("iq %s failed: %s" % (iq_id, ET.tostring(r, encoding="unicode")))
        return r

    def get_roster(self):
        """{bare jid: {'subscription': ..., 'ask': ..., 'name': ...}}"""
        r = self.iq("get", "<query xmlns='%s'/>" % NS_ROSTER)
        out = {}
        for item in r.iter("{%s}item" % NS_ROSTER):
            out[item.get("jid")] = {"subscription": item.get("subscription"), "ask": item.get("ask"),
                                    "name": item.get("name")}
        return out

    def presence(self, to=None, typ=None, show=None, status=None, priority=None):
        """Send a presence stanza; text is XML-escaped."""
        attrs = ""
        if to:
            attrs += " to=%s" % quoteattr(to)
        if typ:
            attrs += " type=%s" % quoteattr(typ)
        kids = ""
        if show:
            kids += "<show>%s</show>" % show
        if status is not None:
            kids += "<status>%s</status>" % status.replace("&", "&amp;").replace("<", "&lt;")
        if priority is not None:
            kids += "<priority>%d</priority>" % priority
        self.send("<presence%s>%s</presence>" % (attrs, kids) if kids else "<presence%s/>" % attrs)

    @property
    def is_open(self):
        return not self._stop and self.closed is None

    def close(self):
        """End the stream (the server then broadcasts unavailable) and the socket."""
        if self._stop:
            return
        try:
            self.send("</stream:stream>")
            end = time.monotonic() + 1.0
            with self.lock:
                while not self.closed and time.monotonic() < end:
                    self.lock.wait(0.05)
        except OSError:
            pass
        self._stop = True
        try:
            self.sock.close()
        except OSError:
            pass
        self._thread.join(2)


def is_presence(frm=None, typ=None, full=None):
    """Predicate: a presence stanza with this bare `from` (or exact full `from`) and type
    (None = available)."""
    def pred(e):
        if local(e.tag) != "presence" or e.get("type") != typ:
            return False
        if full is not None:
            return e.get("from") == full
        return frm is None or bare(e.get("from")) == frm
    return pred


def is_roster_push(e):
    return local(e.tag) == "iq" and e.get("type") == "set" and e.find("{%s}query" % NS_ROSTER) is not None


def parse_stanza(xml_text, ns=NS_CLIENT):
    """Parse an expected stanza written in the tests (default namespace jabber:client)."""
    el = ET.fromstring(xml_text.replace("<presence", "<presence xmlns='%s'" % ns, 1)
                       if "xmlns=" not in xml_text.split(">", 1)[0] else xml_text)
    return el


def stanza_diff(got, expected_xml, ignore=("id", XML_LANG, "to")):
    """None if `got` equals the expected stanza exactly (attributes and children, order
    of either not significant), else a message showing both. Top-level attributes in
    `ignore` are not compared: `id` is the sender's choice, Prosody adds `xml:lang`,
    and `to` may be the bare or the full JID (check it with bare())."""
    exp = parse_stanza(expected_xml)

    def strip(el):
        c = ET.Element(el.tag, {k: v for k, v in el.attrib.items() if k not in ignore})
        c.text = el.text
        c.extend(list(el))
        return c

    if got is None:
        return "expected %s, got nothing" % expected_xml
    if canonical(strip(got)) != canonical(strip(exp)):
        return "expected %s\n     got %s" % (expected_xml, ET.tostring(got, encoding="unicode"))
    return None
