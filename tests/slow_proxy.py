"""A TCP proxy on loopback that holds every chunk a client sends for a fixed delay.

It stands for a remote or busy Redis: each reply comes that much later, and a write lands
only that long after it was sent, so a write the library merely buffered cannot be in
Redis yet when the call that made it returns. The proxy runs its own event loop in a
thread, so an event loop the test blocks does not stall it.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field


@dataclass
class SlowProxy:
    upstream: tuple[str, int]
    delay: float
    port: int = 0
    # Chunks forwarded upstream, to show the traffic really went through the proxy.
    forwarded: int = 0
    _loop: asyncio.AbstractEventLoop = field(default_factory=asyncio.new_event_loop)
    _writers: set[asyncio.StreamWriter] = field(default_factory=set)

    async def _pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: float
    ) -> None:
        """Copy ``reader`` to ``writer``, each chunk ``delay`` after it arrived, in order."""
        due: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def forward() -> None:
            while True:
                at, data = await due.get()
                if not data:
                    break
                wait = at - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                writer.write(data)
                self.forwarded += 1
                await writer.drain()

        sender = asyncio.ensure_future(forward())
        try:
            while data := await reader.read(65536):
                due.put_nowait((time.monotonic() + delay, data))
        except ConnectionError:
            pass
        finally:
            due.put_nowait((0.0, b""))
            with contextlib.suppress(ConnectionError):
                await sender
            writer.close()

    async def _handle(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        try:
            server_r, server_w = await asyncio.open_connection(*self.upstream)
        except OSError:
            client_w.close()
            return
        self._writers.update((client_w, server_w))
        await asyncio.gather(
            self._pipe(client_r, server_w, self.delay),
            self._pipe(server_r, client_w, 0.0),
            return_exceptions=True,
        )

    def _serve(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(asyncio.start_server(self._handle, "127.0.0.1", 0))
        self.port = server.sockets[0].getsockname()[1]
        ready.set()
        try:
            self._loop.run_forever()
        finally:
            server.close()
            # Closing both ends lets every connection's pipes finish on their own.
            for writer in self._writers:
                writer.close()
            tasks = asyncio.all_tasks(self._loop)
            if tasks:
                self._loop.run_until_complete(asyncio.wait(tasks, timeout=5))
            for task in tasks:
                task.cancel()
            self._loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
            self._loop.close()

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)


@contextlib.contextmanager
def running_proxy(upstream: tuple[str, int], delay: float) -> Iterator[SlowProxy]:
    proxy = SlowProxy(upstream, delay)
    ready = threading.Event()
    thread = threading.Thread(target=proxy._serve, args=(ready,), name="slow-proxy", daemon=True)
    thread.start()
    if not ready.wait(10):
        raise RuntimeError("the proxy did not start")
    try:
        yield proxy
    finally:
        proxy.stop()
        thread.join(10)
