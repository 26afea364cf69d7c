"""Redis queue URLs: one server, a Redis Cluster, or a Sentinel-watched master.

``redis://`` / ``rediss://`` / ``unix://`` name one server, as redis-py reads them.
``redis+cluster://host:port[,host:port...]/`` names a cluster by any of its nodes (the
rest are discovered); ``redis+sentinel://host:26379[,host:26379...]/<service>/<db>``
names the sentinels that know the master of ``service``. ``rediss+`` turns TLS on. A
password in the URL is the data nodes'; sentinels that want their own take
``?sentinel_password=...`` (and ``sentinel_username``). Other query arguments are
redis-py's own (``ssl_cert_reqs``, ``ssl_ca_certs``...), parsed by redis-py.

Parsing needs no redis-py, so the settings can be checked without it installed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit

from ..errors import ConfigurationError

CLUSTER_SCHEMES = ("redis+cluster", "rediss+cluster")
SENTINEL_SCHEMES = ("redis+sentinel", "rediss+sentinel")
SINGLE_SCHEMES = ("redis", "rediss", "unix")
REDIS_SCHEMES = SINGLE_SCHEMES + CLUSTER_SCHEMES + SENTINEL_SCHEMES
_SENTINEL_QUERY = ("sentinel_password", "sentinel_username")


@dataclass(frozen=True)
class RedisTarget:
    """What a Redis queue URL names (``kind``: "single", "cluster" or "sentinel")."""

    kind: str
    url: str = field(repr=False)  # as given (a single server's URL goes to redis-py as is)
    nodes: tuple[tuple[str, int], ...] = ()
    service: str = ""
    db: int = 0
    tls: bool = False
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    query: tuple[tuple[str, str], ...] = field(default=(), repr=False)  # redis-py's own
    sentinel_auth: tuple[tuple[str, str], ...] = field(default=(), repr=False)

    def redis_py_url(self) -> str:
        """A one-server URL carrying the options (TLS, auth, query), for redis-py's parser.

        Its host is a placeholder: the nodes are dialled by address.
        """
        scheme = "rediss" if self.tls else "redis"
        query = f"?{urlencode(self.query)}" if self.query else ""
        return f"{scheme}://localhost/{self.db}{query}"


def _nodes(netloc: str, url: str, default_port: int) -> tuple[tuple[str, int], ...]:
    nodes = []
    for part in netloc.split(","):
        part = part.strip()
        if not part:
            continue
        try:
            parsed = urlsplit(f"//{part}")
            host, port = parsed.hostname, parsed.port or default_port
        except ValueError:
            raise ConfigurationError(f"QUEUE_URL: invalid host:port {part!r} in {url}") from None
        if not host:
            raise ConfigurationError(f"QUEUE_URL: a host is missing in {url}")
        nodes.append((host, port))
    if not nodes:
        raise ConfigurationError(f"QUEUE_URL: {url} names no host, as host:port[,host:port]")
    return tuple(nodes)


def parse_redis_url(url: str) -> RedisTarget:
    """Read a Redis queue URL; ConfigurationError (without its password) when malformed."""
    from ..config import hide_password

    shown = hide_password(url)
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in REDIS_SCHEMES:
        raise ConfigurationError(f"QUEUE_URL: not a Redis URL: {shown!r}")
    if scheme in SINGLE_SCHEMES:
        return RedisTarget("single", url, tls=scheme == "rediss")
    netloc, _, tail = rest.partition("/")
    path, _, query_text = tail.partition("?")
    userinfo, at, hosts = netloc.rpartition("@")
    username = password = None
    if at:
        name, colon, secret = userinfo.partition(":")
        username = unquote(name) or None
        password = unquote(secret) if colon else None
    query = parse_qsl(query_text, keep_blank_values=True)
    sentinel_auth = tuple((k, v) for k, v in query if k in _SENTINEL_QUERY)
    query = [(k, v) for k, v in query if k not in _SENTINEL_QUERY]
    tls = scheme.startswith("rediss")
    if scheme in CLUSTER_SCHEMES:
        if path.strip("/") not in ("", "0"):
            raise ConfigurationError(
                f"QUEUE_URL: a Redis Cluster has database 0 only, not /{path} in {shown!r}"
            )
        return RedisTarget(
            "cluster",
            url,
            _nodes(hosts, shown, 6379),
            tls=tls,
            username=username,
            password=password,
            query=tuple(query),
        )
    parts = [p for p in path.split("/") if p]
    if not parts or len(parts) > 2:
        raise ConfigurationError(
            f"QUEUE_URL: a Sentinel URL names the service and database, as "
            f"redis+sentinel://host:26379,host:26379/mymaster/0, not {shown!r}"
        )
    try:
        db = int(parts[1]) if len(parts) == 2 else 0
    except ValueError:
        raise ConfigurationError(f"QUEUE_URL: invalid database {parts[1]!r} in {shown!r}") from None
    return RedisTarget(
        "sentinel",
        url,
        _nodes(hosts, shown, 26379),
        service=unquote(parts[0]),
        db=db,
        tls=tls,
        username=username,
        password=password,
        query=tuple(query),
        sentinel_auth=sentinel_auth,
    )
