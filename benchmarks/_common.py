"""Shared pieces of the benchmark scripts: a local sink server in its own process, Redis
key clean-up, resident memory, and table printing.

Run as a script (``python benchmarks/_common.py serve``) it is the sink: a tiny asyncio
HTTP/1.1 server that answers every POST with 200 and counts requests, bytes and messages
(occurrences of ``"messageId"``, in gzip bodies once decompressed). It runs in a separate
process so its CPU never counts against the client being measured; ``GET /stats``
reports the counts, ``POST /reset`` zeroes them.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import os
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress

REDIS_URL = os.environ.get("SEGMENT_MW_BENCH_REDIS_URL", "redis://127.0.0.1:6379/9")
WRITE_KEY = "bench-write-key"

# -- the sink ------------------------------------------------------------------------------

_OK = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 16\r\n\r\n"
    b'{"success":true}'
)


class _SinkProtocol(asyncio.Protocol):
    stats = {"requests": 0, "events": 0, "bytes": 0}

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.buf = bytearray()
        self.request_line: list[bytes] = []
        self.need = -1  # bytes the current request takes in the buffer; -1: head not parsed
        self.gzipped = False

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        while True:
            if self.need < 0:
                end = buf.find(b"\r\n\r\n")
                if end < 0:
                    return
                head = bytes(buf[:end]).lower()
                length = 0
                at = head.find(b"\r\ncontent-length:")
                if at >= 0:
                    stop = head.find(b"\r\n", at + 2)
                    length = int(head[at + 17 : stop if stop > 0 else None])
                self.request_line = head.split(b" ", 2)
                self.gzipped = b"\r\ncontent-encoding: gzip" in head
                self.body_at = end + 4
                self.need = end + 4 + length
            if len(buf) < self.need:
                return
            body = bytes(buf[self.body_at : self.need])
            if self.gzipped:
                body = gzip.decompress(body)
            del buf[: self.need]
            self.need = -1
            self.respond(self.request_line, body)

    def respond(self, request_line: list[bytes], body: bytes) -> None:
        method = request_line[0]
        path = request_line[1] if len(request_line) > 1 else b"/"
        stats = _SinkProtocol.stats
        if method == b"get" and path == b"/stats":
            data = json.dumps(stats).encode()
            self.transport.write(  # type: ignore[attr-defined]
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
                + str(len(data)).encode()
                + b"\r\n\r\n"
                + data
            )
            return
        if method == b"post" and path == b"/reset":
            for key in stats:
                stats[key] = 0
        else:
            stats["requests"] += 1
            stats["bytes"] += len(body)
            stats["events"] += body.count(b'"messageId"')
        self.transport.write(_OK)  # type: ignore[attr-defined]


async def _serve() -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(_SinkProtocol, "127.0.0.1", 0, backlog=512)
    port = server.sockets[0].getsockname()[1]
    print(port, flush=True)
    async with server:
        await server.serve_forever()


class Sink:
    """The sink server, in a child process."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "serve"],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        self.port = int(self.proc.stdout.readline())
        self.url = f"http://127.0.0.1:{self.port}"

    def stats(self) -> dict[str, int]:
        with urllib.request.urlopen(self.url + "/stats", timeout=5) as response:
            return json.loads(response.read())  # type: ignore[no-any-return]

    def reset(self) -> None:
        req = urllib.request.Request(self.url + "/reset", data=b"", method="POST")
        with urllib.request.urlopen(req, timeout=5):
            pass

    def wait_for(self, events: int, timeout: float = 30.0) -> dict[str, int]:
        deadline = time.monotonic() + timeout
        while True:
            stats = self.stats()
            if stats["events"] >= events or time.monotonic() > deadline:
                return stats
            time.sleep(0.05)

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(5)


@contextmanager
def running_sink() -> Iterator[Sink]:
    sink = Sink()
    try:
        yield sink
    finally:
        sink.close()


def closed_port() -> int:
    """A local port nobody listens on (connections are refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def require_official() -> None:
    """Exit with instructions when Segment's official library (the baseline) is missing."""
    try:
        import segment.analytics  # noqa: F401
    except ImportError:
        sys.exit(
            "The baseline needs Segment's official library: "
            ".venv/bin/pip install -e '.[bench]'  (or: pip install segment-analytics-python)"
        )


# -- Redis -----------------------------------------------------------------------------


def unique_prefix(label: str) -> str:
    return f"bench-{label}-{uuid.uuid4().hex[:10]}"


def redis_client() -> object:
    import redis

    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2)
    try:
        client.ping()
    except redis.RedisError as exc:
        sys.exit(f"Redis is not reachable at {REDIS_URL}: {exc}. Run `bash .ci/ensure-services`.")
    return client


def delete_prefix(prefix: str) -> int:
    client = redis_client()
    keys = list(client.scan_iter(f"{prefix}:*", count=1000))  # type: ignore[attr-defined]
    if keys:
        client.delete(*keys)  # type: ignore[attr-defined]
    return len(keys)


# -- measuring -----------------------------------------------------------------------------


def rss_kib() -> int:
    """Resident set size of this process, from /proc/self/status."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    cells = [[str(h) for h in headers]] + [[_cell(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = []
    for n, row in enumerate(cells):
        lines.append(
            "  ".join(
                c.ljust(w) if i == 0 else c.rjust(w)
                for i, (c, w) in enumerate(zip(row, widths, strict=True))
            )
        )
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _cell(value: object) -> str:
    if isinstance(value, float):
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        if abs(value) >= 10:
            return f"{value:.1f}"
        return f"{value:.2f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def environment() -> str:
    import platform

    return (
        f"python {platform.python_version()} on {platform.machine()}, "
        f"{os.cpu_count()} CPU(s), redis {REDIS_URL}"
    )


if __name__ == "__main__" and sys.argv[1:] == ["serve"]:
    with suppress(KeyboardInterrupt):
        asyncio.run(_serve())
