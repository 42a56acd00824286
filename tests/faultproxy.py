"""A TCP proxy that injects network faults between a client and a server, for real.

    proxy = FaultProxy("127.0.0.1", redis_port)      # listens on proxy.port
    proxy.hold()     # half-open cut: every open connection goes silent for good
                     # (no FIN, no RST: the peer's kernel still ACKs what is sent, nothing
                     # comes back); new connections are accepted and held the same way
    proxy.hold(b"SUBSCRIBE")  # the same for the open connections whose client has
                     # sent these bytes so far (one kind of connection); new ones pass
    proxy.restore()  # new connections pass again; the held ones stay dead, as after a
                     # host that vanished and came back
    proxy.mute(b"EVALSHA")  # from the next request containing these bytes on, on any
                     # connection (open or new, until restore), the answers are dropped
                     # while requests still reach the server: a reply lost in the
                     # network (the server did the work, the client never hears of it)
    proxy.delay(b"EVALSHA")  # the next request containing these bytes, and what its client
                     # sends after it on that connection, waits in the network: not even
                     # the client closing its connection moves it on (a congested or cut
                     # path keeps its FIN behind the data); other requests pass
    proxy.deliver()  # the waiting bytes reach the server after all (the path heals), then
                     # the closes that waited behind them; new requests pass again
    proxy.reset()    # RST every open connection
    proxy.refuse()   # new connections are reset at once (a closed port)

One thread moves the bytes; the control calls are thread-safe.
"""

from __future__ import annotations

import selectors
import socket
import struct
import threading

LINGER_RESET = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends RST


def _reset(sock: socket.socket) -> None:
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RESET)
    except OSError:
        pass
    sock.close()


class FaultProxy:
    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.setblocking(False)
        self.port: int = self._listener.getsockname()[1]
        self._mode = "pass"
        self._lock = threading.Lock()
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._listener, selectors.EVENT_READ)
        self._peers: dict[socket.socket, socket.socket] = {}  # forwarding, both directions
        self._held: list[socket.socket] = []  # open and silent, until close()
        self._sent: dict[socket.socket, bytes] = {}  # a client's first bytes, per client
        self._muted: set[socket.socket] = set()  # server sides whose bytes are dropped
        self._mute_after = b""  # mode "mute": a request with these bytes mutes its answers
        self._delay_after = b""  # mode "delay": a request with these bytes waits, and after it
        self._delayed: dict[socket.socket, bytes] = {}  # server side: the bytes waiting for it
        self._closed_behind: list[socket.socket] = []  # server sides whose client has closed
        self.connections = 0  # accepted so far
        self._closing = False
        self._thread = threading.Thread(target=self._run, name="fault-proxy", daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    # --- faults -------------------------------------------------------------------------
    def hold(self, containing: bytes | None = None) -> None:
        with self._lock:
            if containing is None:
                self._mode = "hold"
                self._hold_all()
                return
            for client, sent in list(self._sent.items()):
                if containing in sent and client in self._peers:
                    self._hold_pair(client)

    def mute(self, request: bytes) -> None:
        with self._lock:
            self._mode = "mute"
            self._mute_after = request

    def delay(self, request: bytes) -> None:
        with self._lock:
            self._mode = "delay"
            self._delay_after = request

    def deliver(self) -> None:
        with self._lock:
            self._mode = "pass"
            for upstream, data in self._delayed.items():
                try:
                    upstream.sendall(data)
                except OSError:
                    pass
            self._delayed.clear()
            for upstream in self._closed_behind:
                try:
                    upstream.shutdown(socket.SHUT_WR)  # the client's FIN, after its data
                except OSError:
                    pass
                self._held.append(upstream)  # closed by close()
            self._closed_behind.clear()

    def restore(self) -> None:
        with self._lock:
            self._mode = "pass"

    def reset(self) -> None:
        with self._lock:
            for sock in list(self._peers):
                self._selector.unregister(sock)
                _reset(sock)
            self._peers.clear()
            self._muted.clear()

    def refuse(self) -> None:
        with self._lock:
            self._mode = "refuse"

    def close(self) -> None:
        self._closing = True
        self._thread.join(5)
        with self._lock:
            for sock in [*self._peers, *self._held]:
                sock.close()
            self._peers.clear()
            self._held.clear()
        self._listener.close()
        self._selector.close()

    # --- forwarding ---------------------------------------------------------------------
    def _hold_all(self) -> None:
        for sock in list(self._peers):
            self._selector.unregister(sock)
            self._held.append(sock)
        self._peers.clear()

    def _hold_pair(self, sock: socket.socket) -> None:
        other = self._peers.pop(sock)
        del self._peers[other]
        for each in (sock, other):
            self._selector.unregister(each)
            self._held.append(each)

    def _accept(self) -> None:
        try:
            client, _ = self._listener.accept()
        except BlockingIOError:
            return
        self.connections += 1
        if self._mode == "refuse":
            _reset(client)
            return
        try:
            upstream = socket.create_connection(self.target, timeout=5)
        except OSError:
            _reset(client)
            return
        for sock in (client, upstream):
            sock.setblocking(True)
        if self._mode == "hold":
            self._held += [client, upstream]
            return
        self._peers[client] = upstream
        self._peers[upstream] = client
        self._sent[client] = b""
        self._selector.register(client, selectors.EVENT_READ)
        self._selector.register(upstream, selectors.EVENT_READ)

    def _forward(self, sock: socket.socket) -> None:
        other = self._peers.get(sock)
        if other is None:
            return
        try:
            data = sock.recv(65536)
            if data and sock in self._muted:
                return  # read and dropped
            if sock in self._sent and (
                other in self._delayed or (self._mode == "delay" and self._delay_after in data)
            ):
                if data:
                    self._delayed[other] = self._delayed.get(other, b"") + data
                    if self._mode == "delay":
                        self._mode = "pass"  # one request (and its connection) waits
                    return
                # the client closed: its FIN waits behind its data, with the server side
                self._selector.unregister(sock)
                self._selector.unregister(other)
                for each in (sock, other):
                    self._peers.pop(each, None)
                sock.close()
                self._closed_behind.append(other)
                return
            if data:
                if sock in self._sent and len(self._sent[sock]) < 4096:
                    self._sent[sock] += data[:4096]
                other.sendall(data)
                if self._mode == "mute" and sock in self._sent and self._mute_after in data:
                    self._muted.add(other)  # (a request split across reads is missed)
                return
        except OSError:
            pass
        # one side closed (or broke): close both, as the peers would see it
        for each in (sock, other):
            self._selector.unregister(each)
            self._peers.pop(each, None)
            self._muted.discard(each)
            each.close()

    def _run(self) -> None:
        while not self._closing:
            for key, _ in self._selector.select(timeout=0.05):
                with self._lock:
                    if key.fileobj is self._listener:
                        self._accept()
                    else:
                        self._forward(key.fileobj)  # type: ignore[arg-type]
