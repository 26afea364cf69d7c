"""Shared pieces of the benchmark scripts: a local sink server in its own process, Redis
key clean-up, a private Redis, child processes cleaned up on every exit, resident memory,
and table printing.

Run as a script (``python benchmarks/_common.py serve``) it is the sink: a tiny asyncio
HTTP/1.1 server that answers every POST with 200 and counts requests, bytes and messages
(occurrences of ``"messageId"``, in gzip bodies once decompressed). It runs in a separate
process so its CPU never counts against the client being measured; ``GET /stats``
reports the counts, ``POST /reset`` zeroes them. Started with ``serve --delays`` it also
parses each batch and keeps, for every message whose properties carry ``emitted_at`` (a
``time.time()``), the seconds from then until the batch arrived; ``GET /delays`` hands
them over and forgets them.
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
from collections.abc import Callable, Iterator, Sequence
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
    record_delays = False
    delays: list[float] = []

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

    def reply_json(self, value: object) -> None:
        data = json.dumps(value).encode()
        self.transport.write(  # type: ignore[attr-defined]
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
            + str(len(data)).encode()
            + b"\r\n\r\n"
            + data
        )

    def respond(self, request_line: list[bytes], body: bytes) -> None:
        method = request_line[0]
        path = request_line[1] if len(request_line) > 1 else b"/"
        stats = _SinkProtocol.stats
        if method == b"get" and path == b"/stats":
            self.reply_json(stats)
            return
        if method == b"get" and path == b"/delays":
            self.reply_json(_SinkProtocol.delays)
            _SinkProtocol.delays = []
            return
        if method == b"post" and path == b"/reset":
            for key in stats:
                stats[key] = 0
        else:
            stats["requests"] += 1
            stats["bytes"] += len(body)
            stats["events"] += body.count(b'"messageId"')
            if _SinkProtocol.record_delays:
                self.note_delays(body)
        self.transport.write(_OK)  # type: ignore[attr-defined]

    @staticmethod
    def note_delays(body: bytes) -> None:
        now = time.time()
        try:
            batch = json.loads(body).get("batch", [])
        except (ValueError, AttributeError):
            return
        for message in batch:
            emitted = (message.get("properties") or {}).get("emitted_at")
            if isinstance(emitted, (int, float)):
                _SinkProtocol.delays.append(now - emitted)


async def _serve() -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(_SinkProtocol, "127.0.0.1", 0, backlog=512)
    port = server.sockets[0].getsockname()[1]
    print(port, flush=True)
    async with server:
        await server.serve_forever()


class Sink:
    """The sink server, in a child process."""

    def __init__(self, *, delays: bool = False) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "serve", *(["--delays"] if delays else [])],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        self.port = int(self.proc.stdout.readline())
        self.url = f"http://127.0.0.1:{self.port}"

    def stats(self) -> dict[str, int]:
        with urllib.request.urlopen(self.url + "/stats", timeout=5) as response:
            return json.loads(response.read())  # type: ignore[no-any-return]

    def delays(self) -> list[float]:
        """Seconds from ``emitted_at`` to arrival of the messages received since last asked."""
        with urllib.request.urlopen(self.url + "/delays", timeout=30) as response:
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
def running_sink(*, delays: bool = False) -> Iterator[Sink]:
    sink = Sink(delays=delays)
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


@contextmanager
def private_redis(label: str = "bench") -> Iterator[str]:
    """A redis-server of this run's own, on a free port, without persistence: its URL."""
    import shutil
    import tempfile

    import redis

    if shutil.which("redis-server") is None:
        sys.exit("redis-server is not installed")
    port = free_port()
    directory = tempfile.mkdtemp(prefix=f"{label}-redis-")
    proc = subprocess.Popen(
        [
            *("redis-server", "--port", str(port), "--bind", "127.0.0.1"),
            *("--save", "", "--appendonly", "no", "--dir", directory),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        client = redis.Redis(port=port)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.RedisError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    sys.exit("the private redis-server did not start")
                time.sleep(0.05)
        client.close()
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.kill()
        proc.wait(10)
        shutil.rmtree(directory, ignore_errors=True)


# -- child processes -------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def exit_on_sigterm() -> None:
    """Turn SIGTERM into SystemExit, so ``finally`` blocks stop the children we started.

    Only the first: a second one must not cut the clean-up short.
    """
    import signal

    def stop(*_: object) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        sys.exit(143)

    signal.signal(signal.SIGTERM, stop)


class Processes:
    """Children started in sessions of their own, each stopped with its whole group.

    Servers fork workers (gunicorn, uvicorn, Celery): signalling the group reaches them
    all, and a child that ignores SIGTERM is killed after ``grace`` seconds. Their output
    goes to a log file each, shown by :meth:`log_tail` when one fails.
    """

    def __init__(self) -> None:
        import tempfile

        self.procs: list[subprocess.Popen[bytes]] = []
        self.logs = tempfile.mkdtemp(prefix="bench-logs-")

    def start(
        self, cmd: Sequence[str], *, env: dict[str, str] | None = None, cwd: str | None = None
    ) -> subprocess.Popen[bytes]:
        log = open(os.path.join(self.logs, f"{len(self.procs)}.log"), "wb")  # noqa: SIM115
        with log:
            proc = subprocess.Popen(
                list(cmd),
                env=env,
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        proc.log_path = log.name  # type: ignore[attr-defined]
        self.procs.append(proc)
        return proc

    @staticmethod
    def log_tail(proc: subprocess.Popen[bytes], lines: int = 15) -> str:
        with open(proc.log_path, errors="replace") as f:  # type: ignore[attr-defined]
            return "".join(f.readlines()[-lines:])

    def stop(self, proc: subprocess.Popen[bytes], grace: float = 20.0) -> None:
        import signal

        with suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        with suppress(subprocess.TimeoutExpired):
            proc.wait(grace)
        # The group too: a worker outliving its master must not survive the run.
        with suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        with suppress(subprocess.TimeoutExpired):
            proc.wait(5)
        if proc in self.procs:
            self.procs.remove(proc)

    def stop_all(self) -> None:
        import shutil

        for proc in list(reversed(self.procs)):
            self.stop(proc)
        shutil.rmtree(self.logs, ignore_errors=True)

    def __enter__(self) -> Processes:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_all()


def session_cpu_seconds(leader: int) -> float:
    """User + system CPU of every live process in ``leader``'s session (a server's master
    and the workers it forked), from ``/proc``: the difference of two readings is what
    they spent between them (a process that exited in between is not counted)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                # The command name may hold spaces: fields are counted after its ")".
                fields = f.read().rpartition(")")[2].split()
        except OSError:
            continue
        if int(fields[3]) == leader:  # the session id
            total += int(fields[11]) + int(fields[12])
    return total / tick


def wait_listening(port: int, proc: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    """Until something accepts connections on ``port``; exit if ``proc`` dies first."""
    deadline = time.monotonic() + timeout
    while True:
        with socket.socket() as s:
            s.settimeout(1)
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        if proc.poll() is not None:
            sys.exit(
                f"{proc.args!r} exited with {proc.returncode} before listening:\n"
                + Processes.log_tail(proc)
            )
        if time.monotonic() > deadline:
            sys.exit(f"nothing listened on port {port} within {timeout:g}s")
        time.sleep(0.1)


def wait_for(predicate: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100), nearest rank."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]


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


if __name__ == "__main__" and sys.argv[1:2] == ["serve"]:
    _SinkProtocol.record_delays = "--delays" in sys.argv[2:]
    with suppress(KeyboardInterrupt):
        asyncio.run(_serve())
