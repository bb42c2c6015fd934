"""A TCP proxy that delays, holds or resets connections on command, for fault tests.

Put it between a store and PostgreSQL (`proxy.dsn(dsn)`), then:

* `delay(seconds)`: every byte is delivered that much later (a slow network; a session
  whose next command arrives late enough hits the server's idle-in-transaction timeout);
* `blackhole()`: nothing is delivered until `heal()`. The proxy's kernel still ACKs what
  was sent to it, so TCP keepalives and tcp_user_timeout never fire: for a partition in
  which packets really vanish, drop them with iptables in a private network namespace;
* `reset()`: every open connection ends at once with an RST, in both directions;
* `heal()`: back to forwarding at once (held data is delivered).
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import select
import socket
import struct
import threading
import time
from urllib.parse import urlsplit, urlunsplit

_FOREVER = float("inf")


class _Direction:
    """One direction of one connection: what was read, and when it may be sent on."""

    def __init__(self, proxy: FaultProxy, source: socket.socket, sink: socket.socket) -> None:
        self.proxy = proxy
        self.source = source
        self.sink = sink
        self.queue: list[tuple[float, int, bytes]] = []
        self.order = itertools.count()
        self.ready = threading.Condition()

    def read(self) -> None:
        while not self.proxy.closed:
            try:
                readable, _, _ = select.select([self.source], [], [], 0.05)
                if not readable:
                    continue
                data = self.source.recv(65536)
            except (OSError, ValueError):
                break
            if not data:
                break
            with self.ready:
                heapq.heappush(self.queue, (self.proxy.release_time(), next(self.order), data))
                self.ready.notify()
        with self.ready:
            heapq.heappush(self.queue, (self.proxy.release_time(), next(self.order), b""))
            self.ready.notify()

    def write(self) -> None:
        while True:
            with self.ready:
                while not self.queue or self.queue[0][0] > time.monotonic():
                    if self.proxy.closed:
                        return
                    wait = self.queue[0][0] - time.monotonic() if self.queue else 0.05
                    self.ready.wait(min(max(wait, 0.0), 0.05))
                _, _, data = heapq.heappop(self.queue)
            try:
                if not data:
                    self.sink.shutdown(socket.SHUT_WR)
                    return
                self.sink.sendall(data)
            except OSError:
                return

    def release_held(self) -> None:
        with self.ready:
            now = time.monotonic()
            self.queue = [(min(at, now), order, data) for at, order, data in self.queue]
            heapq.heapify(self.queue)
            self.ready.notify()


class FaultProxy:
    """Forwards 127.0.0.1:`port` to `target_host`:`target_port`, misbehaving on command."""

    def __init__(self, target_port: int, target_host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self.closed = False
        self._delay = 0.0
        self._held = False
        self._lock = threading.Lock()
        self._connections: list[tuple[socket.socket, socket.socket, list[_Direction]]] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._acceptor = threading.Thread(target=self._accept, name="fault-proxy", daemon=True)
        self._acceptor.start()

    def dsn(self, dsn: str) -> str:
        """`dsn` (a postgresql:// URL) pointed at the proxy instead of the server."""
        parts = urlsplit(dsn)
        netloc = parts.netloc.rsplit("@", 1)
        host = f"127.0.0.1:{self.port}"
        return urlunsplit(
            parts._replace(netloc=f"{netloc[0]}@{host}" if len(netloc) == 2 else host)
        )

    def release_time(self) -> float:
        return _FOREVER if self._held else time.monotonic() + self._delay

    def delay(self, seconds: float) -> None:
        """Deliver every byte read from now on `seconds` late."""
        self._delay = seconds

    def blackhole(self) -> None:
        """Deliver nothing from now on, until `heal()` (see the module docstring)."""
        self._held = True

    def heal(self) -> None:
        """Forward again at once; data held by `blackhole()` goes on now."""
        self._held = False
        self._delay = 0.0
        with self._lock:
            directions = [d for _, _, pair in self._connections for d in pair]
        for direction in directions:
            direction.release_held()

    def reset(self) -> None:
        """End every open connection with an RST, in both directions."""
        with self._lock:
            connections, self._connections = self._connections, []
        linger = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends an RST
        for client, server, _ in connections:
            for sock in (client, server):
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
                    sock.close()

    def close(self) -> None:
        self.closed = True
        self.reset()
        with contextlib.suppress(OSError):
            self._listener.close()
        self._acceptor.join(timeout=5)

    def __enter__(self) -> FaultProxy:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _accept(self) -> None:
        while not self.closed:
            try:
                readable, _, _ = select.select([self._listener], [], [], 0.05)
                if not readable:
                    continue
                client, _ = self._listener.accept()
            except (OSError, ValueError):
                continue
            try:
                server = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()  # nothing to forward to: the client sees the connection end
                continue
            server.settimeout(None)
            for sock in (client, server):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            pair = [_Direction(self, client, server), _Direction(self, server, client)]
            with self._lock:
                self._connections.append((client, server, pair))
            for direction in pair:
                for target in (direction.read, direction.write):
                    threading.Thread(target=target, name="fault-proxy-pump", daemon=True).start()
