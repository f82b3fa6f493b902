"""A TCP relay a test can cut, to split one gateway from PostgreSQL (issue 17).

`TcpCut(listen_host, target)` accepts on a free port of `listen_host` and relays every
connection to `target`. Two ways to cut, one way to heal:

- `cut_rst()`: every relayed connection is reset (SO_LINGER 0) and the listening socket
  closed, so new connections are refused: the peer learns at once.
- `cut_blackhole()`: nothing more is relayed either way and new connections are accepted but
  never relayed: the socket neither answers nor fails (a dropped route, a frozen host).
- `heal()`: relaying resumes (after a blackhole the held bytes flow on and the held new
  connections are connected upstream; after a reset the port listens again).
"""
import select
import socket
import struct
import threading
import time


class TcpCut:
    def __init__(self, listen_host, target):
        self.target = target
        self.host = listen_host
        self.lock = threading.Lock()
        self.mode = "open"
        self.pairs = []  # (client socket, upstream socket)
        self.held = []  # accepted while blackholed
        self.listener = self._listen(0)
        self.port = self.listener.getsockname()[1]
        self.stopped = False
        self.thread = threading.Thread(target=self._accept_loop, daemon=True)
        self.thread.start()

    def _listen(self, port):
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((self.host, port))
        s.listen(64)
        s.settimeout(0.1)
        return s

    def address(self):
        return "%s:%d" % (self.host, self.port)

    def _accept_loop(self):
        while not self.stopped:
            with self.lock:
                listener = self.listener
            if listener is None:
                time.sleep(0.05)
                continue
            try:
                client, _ = listener.accept()
            except (socket.timeout, OSError):
                continue
            with self.lock:
                if self.mode == "blackhole":
                    self.held.append(client)
                    continue
            self._relay(client)

    def _relay(self, client):
        try:
            upstream = socket.create_connection(self.target, timeout=3)
        except OSError:
            _reset(client)
            return
        upstream.settimeout(None)
        client.settimeout(None)
        with self.lock:
            self.pairs.append((client, upstream))
        for src, dst in ((client, upstream), (upstream, client)):
            threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def _pump(self, src, dst):
        while not self.stopped:
            if self.mode == "blackhole":
                time.sleep(0.02)
                continue
            try:
                ready, _, _ = select.select([src], [], [], 0.1)
                if not ready:
                    continue
                if self.mode == "blackhole":
                    continue
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
            except (OSError, ValueError):
                break
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def cut_rst(self):
        with self.lock:
            self.mode = "rst"
            pairs, self.pairs = self.pairs, []
            if self.listener is not None:
                self.listener.close()
                self.listener = None
        for c, u in pairs:
            _reset(c)
            _reset(u)

    def cut_blackhole(self):
        with self.lock:
            self.mode = "blackhole"

    def heal(self):
        with self.lock:
            was = self.mode
            self.mode = "open"
            held, self.held = self.held, []
            if self.listener is None:
                self.listener = self._listen(self.port)
        for c in held:
            self._relay(c)
        return was

    def close(self):
        self.stopped = True
        with self.lock:
            if self.listener is not None:
                self.listener.close()
                self.listener = None
            pairs, self.pairs = self.pairs, []
            held, self.held = self.held, []
        for c, u in pairs:
            _reset(c)
            _reset(u)
        for c in held:
            _reset(c)


def _reset(s):
    """Close with an RST, not a FIN."""
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    try:
        s.close()
    except OSError:
        pass
