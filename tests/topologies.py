"""Private Redis Clusters and Sentinel setups, from plain ``redis-server`` processes.

Each server runs on a free port of its own (a cluster node's bus port, +10000, too),
with its data in a temporary directory, and is killed at teardown. Failure detection is
tuned low (cluster-node-timeout, down-after-milliseconds) so a failover takes seconds.
"""

from __future__ import annotations

import contextlib
import random
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import redis

NODE_TIMEOUT_MS = 1000  # cluster-node-timeout: a master is failed over ~2-3 s after dying
DOWN_AFTER_MS = 1000  # sentinel down-after-milliseconds
READY = 60.0  # generous: other test suites may be loading the machine


def unavailable() -> str | None:
    """Why no private Redis can be started here, or None when one can."""
    for tool in ("redis-server", "redis-cli"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (apt-get install redis-server)"
    return None


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_ports(count: int, *, with_bus: bool = False) -> list[int]:
    """Ports free now (and, for cluster nodes, their bus port 10000 above)."""
    found: list[int] = []
    while len(found) < count:
        port = random.randint(20000, 45000)
        if port in found or (port + 10000) in found:
            continue
        if _bindable(port) and (not with_bus or _bindable(port + 10000)):
            found.append(port)
    return found


def poll(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = predicate()
        except (redis.RedisError, OSError):
            value = None
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


class Server:
    """One redis-server (or sentinel) process."""

    def __init__(self, port: int, directory: Path, args: list[str]) -> None:
        self.port = port
        self.directory = directory
        self.args = args
        self.proc: subprocess.Popen[bytes] | None = None
        directory.mkdir(parents=True, exist_ok=True)

    def start(self) -> None:
        log = open(self.directory / "server.log", "ab")  # noqa: SIM115 - the child holds it
        self.proc = subprocess.Popen(
            ["redis-server", *self.args],
            cwd=self.directory,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        client = self.client()
        poll(client.ping, READY, f"redis-server on port {self.port}")
        client.close()

    def client(self, **options: Any) -> redis.Redis:
        return redis.Redis(port=self.port, socket_timeout=5, socket_connect_timeout=1, **options)

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.proc = None


def _data_args(port: int) -> list[str]:
    return [
        *("--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"),
        # A replica's first sync straight over the socket, at once: it is online sooner.
        *("--repl-diskless-sync", "yes", "--repl-diskless-sync-delay", "0"),
    ]


class Cluster:
    """``masters`` masters with ``replicas`` replicas each, made by redis-cli --cluster."""

    def __init__(self, directory: Path, masters: int = 3, replicas: int = 1) -> None:
        ports = free_ports(masters * (1 + replicas), with_bus=True)
        self.replicas = replicas
        self.nodes = [
            Server(
                port,
                directory / f"node-{port}",
                [
                    *_data_args(port),
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-node-timeout",
                    str(NODE_TIMEOUT_MS),
                    # A replica takes over however long it was cut off from its master.
                    "--cluster-replica-validity-factor",
                    "0",
                ],
            )
            for port in ports
        ]

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{n.port}" for n in self.nodes) + "/"

    def start(self) -> None:
        for node in self.nodes:
            node.start()
        subprocess.run(
            [
                "redis-cli",
                "--cluster",
                "create",
                *(f"127.0.0.1:{n.port}" for n in self.nodes),
                "--cluster-replicas",
                str(self.replicas),
                "--cluster-yes",
            ],
            check=True,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            timeout=READY,
        )
        self.wait_healthy()

    def wait_healthy(self) -> None:
        """Every live node sees the cluster ok, every master with its replicas."""

        def healthy() -> bool:
            for node in self.nodes:
                if not node.alive:
                    continue
                with contextlib.closing(node.client()) as client:
                    info = client.execute_command("CLUSTER", "INFO").decode()
                    if "cluster_state:ok" not in info:
                        return False
            masters = self.masters()
            return len(masters) * (1 + self.replicas) == sum(n.alive for n in self.nodes) and all(
                self._replicas_of(m) >= self.replicas for m in masters
            )

        poll(healthy, READY, "the cluster to be ok")

    def _role(self, node: Server) -> dict[str, Any]:
        with contextlib.closing(node.client()) as client:
            return dict(client.info("replication"))

    def _replicas_of(self, node: Server) -> int:
        role = self._role(node)
        return sum(
            1
            for key, value in role.items()
            if key.startswith("slave")
            and isinstance(value, dict)
            and value.get("state") == "online"
        )

    def masters(self) -> list[Server]:
        return [n for n in self.nodes if n.alive and self._role(n)["role"] == "master"]

    def master_of(self, key: bytes) -> Server:
        for node in self.masters():
            with contextlib.closing(node.client()) as client:
                slot = int(client.execute_command("CLUSTER", "KEYSLOT", key))
                for start, end, master, *_ in client.execute_command("CLUSTER", "SLOTS"):
                    if start <= slot <= end:
                        port = int(master[1])
                        return next(n for n in self.nodes if n.port == port)
        raise AssertionError(f"no master holds {key!r}")

    def stop(self) -> None:
        for node in self.nodes:
            node.kill()


class SentinelSetup:
    """A master, its replica and three sentinels watching them as ``service``."""

    service = "smwmaster"

    def __init__(self, directory: Path) -> None:
        master_port, replica_port, *sentinel_ports = free_ports(5)
        self.master = Server(master_port, directory / "master", _data_args(master_port))
        self.replica = Server(
            replica_port,
            directory / "replica",
            [*_data_args(replica_port), "--replicaof", "127.0.0.1", str(master_port)],
        )
        self.sentinels = []
        for port in sentinel_ports:
            folder = directory / f"sentinel-{port}"
            folder.mkdir(parents=True, exist_ok=True)
            conf = folder / "sentinel.conf"
            conf.write_text(
                f"port {port}\nbind 127.0.0.1\n"
                f"sentinel monitor {self.service} 127.0.0.1 {master_port} 2\n"
                f"sentinel down-after-milliseconds {self.service} {DOWN_AFTER_MS}\n"
                f"sentinel failover-timeout {self.service} 10000\n"
                f"sentinel parallel-syncs {self.service} 1\n"
            )
            self.sentinels.append(Server(port, folder, [str(conf), "--sentinel"]))

    def url(self, db: int = 0) -> str:
        hosts = ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)
        return f"redis+sentinel://{hosts}/{self.service}/{db}"

    def start(self) -> None:
        self.master.start()
        self.replica.start()
        for sentinel in self.sentinels:
            sentinel.start()
        self.wait_healthy()

    def current_master(self) -> Server:
        with contextlib.closing(self.sentinels[0].client()) as client:
            _host, port = client.sentinel_get_master_addr_by_name(self.service)
        return self.master if self.master.port == int(port) else self.replica

    def wait_healthy(self) -> None:
        """Each sentinel knows the master, a replica online, and the two other sentinels."""

        def healthy() -> bool:
            for sentinel in self.sentinels:
                if not sentinel.alive:
                    continue
                with contextlib.closing(sentinel.client()) as client:
                    master = client.sentinel_master(self.service)
                    if not master.get("is_master") or master.get("is_sdown"):
                        return False
                    if int(master.get("num-other-sentinels", 0)) < 2:
                        return False
                    replicas = client.sentinel_slaves(self.service)
                    if not any(not r.get("is_sdown") for r in replicas):
                        return False
            master = self.current_master()
            with contextlib.closing(master.client()) as client:
                replication = client.info("replication")
            return any(
                isinstance(v, dict) and v.get("state") == "online"
                for k, v in replication.items()
                if k.startswith("slave")
            )

        poll(healthy, READY, "the sentinels to agree on a master with a replica")

    def stop(self) -> None:
        for server in [*self.sentinels, self.replica, self.master]:
            server.kill()


@contextlib.contextmanager
def running(setup: Any) -> Iterator[Any]:
    try:
        setup.start()
        yield setup
    finally:
        setup.stop()
