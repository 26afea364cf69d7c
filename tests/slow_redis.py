"""A TCP proxy on loopback in front of Redis that answers slowly or drops connections.

``delay`` holds back a ``late`` fraction of the replies (each chunk Redis sends, in
order, after a connection's first: its handshake): what a busy or distant Redis does to
a client with a short timeout. ``cut(n)``
breaks the next pipeline (on whichever connection sends it): only ``n`` bytes of it reach
Redis, and the connection closes as Redis starts answering (Redis ran the commands that
reached it whole, the client reads no reply). Used by the tests and by
``benchmarks/bench_duplicates.py``.
"""

from __future__ import annotations

import contextlib
import random
import socket
import threading
import time
from collections.abc import Iterator


class SlowRedis:
    def __init__(
        self,
        target: tuple[str, int],
        *,
        late: float = 0.0,
        delay: float = 0.0,
        seed: int | None = None,
    ) -> None:
        self.target = target
        self.late = late
        self.delay = delay
        self._cut: tuple[int, int] | None = None  # bytes to let through, of a write above
        self.delayed = 0  # replies held back so far
        self.broken = 0  # connections broken so far
        self._random = random.Random(seed)
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._closing = False
        self._thread = threading.Thread(target=self._accept, name="slow-redis", daemon=True)

    @property
    def port(self) -> int:
        return int(self._listener.getsockname()[1])

    def url(self, db: int = 9) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def cut(self, after: int, *, larger_than: int = 0) -> None:
        """Once more than ``larger_than`` bytes went through a connection, break it ``after`` on."""
        with self._lock:
            self._cut = (after, larger_than)

    def start(self) -> SlowRedis:
        self._thread.start()
        return self

    def close(self) -> None:
        self._closing = True
        with contextlib.suppress(OSError):
            self._listener.close()

    def _accept(self) -> None:
        while not self._closing:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            server.settimeout(None)
            for sock in (client, server):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            cutting = threading.Event()
            threading.Thread(
                target=self._upstream, args=(client, server, cutting), daemon=True
            ).start()
            threading.Thread(
                target=self._downstream, args=(server, client, cutting), daemon=True
            ).start()

    def _upstream(
        self, client: socket.socket, server: socket.socket, cutting: threading.Event
    ) -> None:
        """Commands go to Redis at once (only the first bytes of one that is cut).

        A cut is armed on this connection once more than ``larger_than`` bytes came
        through it since ``cut()``: by what was sent, not by how the kernel happened to
        split it into reads (redis-py writes a pipeline in pieces of a few KB).
        """
        first, limit, seen = True, None, 0
        try:
            while data := client.recv(65536):
                if not first and limit is None:
                    with self._lock:
                        if self._cut is not None:
                            seen += len(data)
                            if seen > self._cut[1]:
                                limit, self._cut = self._cut[0], None
                                cutting.set()
                        else:
                            seen = 0
                if limit is not None:
                    data, limit = data[:limit], limit - len(data[:limit])
                first = False
                if data:
                    server.sendall(data)
        except OSError:
            pass
        finally:
            _close(client, server)

    def _downstream(
        self, server: socket.socket, client: socket.socket, cutting: threading.Event
    ) -> None:
        """Replies come back in order, some of them late; or the connection breaks."""
        first = True
        try:
            while data := server.recv(65536):
                if cutting.is_set():
                    with self._lock:
                        self.broken += 1
                    return
                with self._lock:
                    late = not first and self.late and self._random.random() < self.late
                    if late:
                        self.delayed += 1
                first = False
                if late:
                    time.sleep(self.delay)
                client.sendall(data)
        except OSError:
            pass
        finally:
            _close(client, server)


def _close(*socks: socket.socket) -> None:
    for sock in socks:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            sock.close()


@contextlib.contextmanager
def slow_redis(port: int = 6379, **options: float) -> Iterator[SlowRedis]:
    proxy = SlowRedis(("127.0.0.1", port), **options).start()  # type: ignore[arg-type]
    try:
        yield proxy
    finally:
        proxy.close()
