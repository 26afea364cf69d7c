"""Which Redis server holds a key: one server, a Sentinel-watched master, or a cluster.

Every key the queue touches in one command or script shares a hash tag, so each shard of
the queue lives on one node; a shard talks to that node through a plain client, and its
pipelines, transactions and scripts run there unchanged. redis-py does the rest: its
``Sentinel`` finds the current master (and re-finds it after a failover), its
``RedisCluster`` keeps the slot map (refreshed after a failover or resharding, when
``invalidate`` is called).
"""

from __future__ import annotations

import abc
import inspect
import threading
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from ..config import hide_password
from .urls import RedisTarget

# How to turn CLIENT SETINFO off: redis-py 7+ takes driver_info, older ones lib_name/version.
NO_CLIENT_INFO: dict[str, None] = (
    {"driver_info": None}
    if "driver_info" in inspect.signature(redis.Redis.__init__).parameters
    else {"lib_name": None, "lib_version": None}
)

# A blocking command (WAIT, a blocking read) waits at most this share of the socket
# timeout, so its reply always comes before the socket gives up on it. redis-py 8 lowered
# the default socket timeout; the queue never relies on the default.
BLOCK_SHARE = 0.5


def block_ms(socket_timeout: float) -> int:
    """The longest a blocking command may wait (ms) on a socket with ``socket_timeout``."""
    return max(int(socket_timeout * 1000 * BLOCK_SHARE), 1)


def connection_options(timeout: float) -> dict[str, Any]:
    """Bounded timeouts and no client-side retry loop, for every client the queue makes."""
    return {
        "socket_timeout": timeout,
        "socket_connect_timeout": timeout,
        "retry": Retry(NoBackoff(), 0),
        "health_check_interval": 0,
        "protocol": 2,
        **NO_CLIENT_INFO,
    }


def url_options(target: RedisTarget) -> dict[str, Any]:
    """The URL's TLS, auth and query options as client keyword arguments."""
    from redis.connection import parse_url

    options: dict[str, Any] = parse_url(target.redis_py_url())  # type: ignore[no-untyped-call]
    for name in ("host", "port", "db", "connection_class", "path"):
        options.pop(name, None)
    if target.tls:
        options["ssl"] = True
    if target.username:
        options["username"] = target.username
    if target.password is not None:
        options["password"] = target.password
    return options


class Topology(abc.ABC):
    """The clients of one queue URL in one process."""

    clustered = False

    def __init__(self, target: RedisTarget, timeout: float):
        self.target = target
        self.timeout = timeout
        self.where: str = str(hide_password(target.url))

    @abc.abstractmethod
    def client_for(self, key: bytes) -> Any:
        """A client of the node that holds ``key`` (the master)."""

    @abc.abstractmethod
    def masters(self) -> list[tuple[str, Any]]:
        """Every master as (address, client), for the server checks."""

    def invalidate(self) -> None:  # noqa: B027 - only a cluster has a map to refresh
        """A command failed in a way that may mean the node moved: look again next time."""

    @abc.abstractmethod
    def close(self) -> None: ...


class SingleServer(Topology):
    def __init__(self, target: RedisTarget, timeout: float):
        super().__init__(target, timeout)
        self._client: Any = None

    def client_for(self, key: bytes) -> Any:
        if self._client is None:
            self._client = redis.Redis.from_url(self.target.url, **connection_options(self.timeout))
        return self._client

    def masters(self) -> list[tuple[str, Any]]:
        return [(self.where, self.client_for(b""))]

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None


class SentinelMaster(Topology):
    """The master the sentinels name; redis-py's pool asks them again after a failover."""

    def __init__(self, target: RedisTarget, timeout: float):
        super().__init__(target, timeout)
        self._client: Any = None
        self._sentinel: Any = None

    def client_for(self, key: bytes) -> Any:
        if self._client is None:
            from redis.sentinel import Sentinel

            options = connection_options(self.timeout)
            sentinel_options = {
                k: v for k, v in options.items() if k.startswith("socket_") or k == "protocol"
            }
            if self.target.tls:
                sentinel_options["ssl"] = True
            sentinel_options.update(dict(self.target.sentinel_auth))
            for name in ("sentinel_password", "sentinel_username"):
                if name in sentinel_options:
                    sentinel_options[name.removeprefix("sentinel_")] = sentinel_options.pop(name)
            # Typed from redis-py 8.2 on, untyped in the older versions we accept.
            self._sentinel = Sentinel(  # type: ignore[no-untyped-call, unused-ignore]
                list(self.target.nodes), sentinel_kwargs=sentinel_options, **options
            )
            self._client = self._sentinel.master_for(
                self.target.service, db=self.target.db, **url_options(self.target)
            )
        return self._client

    def masters(self) -> list[tuple[str, Any]]:
        client = self.client_for(b"")
        host, port = self._sentinel.discover_master(self.target.service)
        return [(f"{host}:{port} (master of {self.target.service})", client)]

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            for sentinel in self._sentinel.sentinels:
                sentinel.close()
            self._client = self._sentinel = None


class Cluster(Topology):
    """redis-py's ``RedisCluster`` for the slot map; a plain client per master node."""

    clustered = True

    def __init__(self, target: RedisTarget, timeout: float):
        super().__init__(target, timeout)
        self._lock = threading.Lock()
        self._cluster: Any = None
        self._stale = False
        self._nodes: dict[str, Any] = {}  # node name -> our client of it

    def _map(self) -> Any:
        from redis.cluster import ClusterNode, RedisCluster
        from redis.exceptions import RedisClusterException

        with self._lock:
            try:
                if self._cluster is None:
                    options = {**connection_options(self.timeout), **url_options(self.target)}
                    self._cluster = RedisCluster(
                        startup_nodes=[
                            ClusterNode(h, p)  # type: ignore[no-untyped-call]
                            for h, p in self.target.nodes
                        ],
                        **options,
                    )
                elif self._stale:
                    self._cluster.nodes_manager.initialize()
                self._stale = False
            except RedisClusterException as exc:
                # No node answered with a full slot map (mid-failover): an outage to the
                # queue, like a connection refused.
                raise redis.ConnectionError(f"Redis Cluster: {exc}") from exc
            return self._cluster

    def _client(self, host: str, port: int) -> Any:
        name = f"{host}:{port}"
        client = self._nodes.get(name)
        if client is None:
            options = {**connection_options(self.timeout), **url_options(self.target)}
            client = self._nodes.setdefault(name, redis.Redis(host=host, port=port, **options))
        return client

    def client_for(self, key: bytes) -> Any:
        from redis.exceptions import RedisClusterException

        cluster = self._map()
        try:
            node = cluster.get_node_from_key(key)
        except RedisClusterException as exc:  # a slot without a master for now
            self._stale = True
            raise redis.ConnectionError(f"Redis Cluster: {exc}") from exc
        return self._client(node.host, node.port)

    def masters(self) -> list[tuple[str, Any]]:
        return [
            (f"{node.host}:{node.port}", self._client(node.host, node.port))
            for node in self._map().get_primaries()
        ]

    def invalidate(self) -> None:
        self._stale = True

    def close(self) -> None:
        with self._lock:
            for client in self._nodes.values():
                client.close()
            self._nodes.clear()
            if self._cluster is not None:
                self._cluster.close()
                self._cluster = None


def open_topology(target: RedisTarget, timeout: float) -> Topology:
    kinds: dict[str, type[Topology]] = {
        "single": SingleServer,
        "sentinel": SentinelMaster,
        "cluster": Cluster,
    }
    return kinds[target.kind](target, timeout)
