"""The settings dict (``SEGMENT_MW``), its defaults, environment overrides and validation.

One mapping is merged over the defaults, overridden by the deployment's environment
variables, and checked once; every error names the key it is about. The resulting
:class:`Settings` is immutable, and its ``repr`` never shows a write key or header value.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from .errors import ConfigurationError

TOOL_TYPES = ("ga4", "mixpanel", "amplitude", "posthog")
DESTINATION_TYPES = ("segment", "http", "jsonl", "log", "postgres", *TOOL_TYPES)
# A postgres ``dsn`` may hold a password, as a URI's user-info or as ``password=...``.
SECRET_OPTIONS = frozenset(
    {"write_key", "headers", "password", "token", "dsn", "api_secret", "api_key", "secret"}
)
# GA4 back-dates events by 72 hours at most (Measurement Protocol reference).
GA4_MAX_AGE = 72 * 3600.0
DEFAULT_SEGMENT_HOST = "https://api.segment.io"
DEFAULT_TIMEOUT = 10.0
# CLAIM_IDLE must be this many times the longest destination timeout: a batch being sent
# (its messages touched just before) is then never idle long enough to be taken as an
# orphan and sent again by another worker.
CLAIM_IDLE_PER_TIMEOUT = 1.5

DEFAULT_SCRUB_PARAMS = (
    "password",
    "passwd",
    "pass",
    "pwd",
    "token",
    "access_token",
    "refresh_token",
    "id_token",
    "auth",
    "authorization",
    "secret",
    "client_secret",
    "api_key",
    "apikey",
    "key",
    "code",
    "email",
    "session",
    "sessionid",
    "signature",
    "sig",
)

DEFAULT_PAGEVIEWS: dict[str, Any] = {
    "ENABLED": True,
    # Regexes matched against the path; STATIC_URL and MEDIA_URL are added by the Django app.
    "EXCLUDE_PATHS": (
        r"^/favicon\.ico$",
        r"^/robots\.txt$",
        r"^/sitemap[^/]*\.xml$",
        r"^/apple-touch-icon[^/]*\.png$",
        r"^/\.well-known/",
        r"^/(health|healthz|healthcheck|ready|readyz|live|livez|ping|status)/?$",
    ),
    "EXCLUDE_BOTS": True,
    "TITLE": True,  # read <title> from small in-memory HTML bodies
    "TITLE_MAX_BYTES": 65536,
    "NAME": "route",  # page name from the resolved route name; None for no name
}

DEFAULTS: dict[str, Any] = {
    "ENABLED": True,  # False: calls validate their arguments, nothing is queued or sent
    "QUEUE_URL": None,  # None: the embedded SQLite queue under the user's state directory
    "QUEUE_PREFIX": "segment_mw",
    # How many Redis streams the log is spread over; None: 1, or 3 for redis+cluster://.
    # Set (even to 1), readers also drain the shards an earlier setting wrote.
    "QUEUE_SHARDS": None,
    # Pushes return only once this many replicas have them (Redis WAIT); 0: the master's
    # word is enough, and a failover may lose what it had not yet replicated.
    "QUEUE_WAIT_REPLICAS": 0,
    "DESTINATIONS": {},
    "INTEGRATIONS": {},
    "PAGEVIEWS": DEFAULT_PAGEVIEWS,
    "TRUSTED_PROXIES": (),
    "IP": "full",  # "full", "anonymize" (last octet / 80 bits zeroed) or "none"
    "SCRUB_PARAMS": DEFAULT_SCRUB_PARAMS,
    "RESPECT_GPC": True,
    "CONSENT": None,  # callable(request_info) -> bool; False means opted out
    "USER_ID": None,  # callable(request) -> str | None, overrides the framework default
    "COOKIE_DOMAIN": None,
    "COOKIE_SECURE": False,
    "SET_COOKIE": True,
    # Pageviews of requests with no authenticated user take userId from the browser's
    # ajs_user_id cookie. Off: any visitor can write that cookie, naming anyone.
    "USER_ID_FROM_COOKIE": False,
    "RETRY_BUDGET": 6 * 3600.0,
    # Per destination: what the newest dead letters may number, and how long one is kept.
    "DEAD_LETTER_MAX_EVENTS": 100_000,
    "DEAD_LETTER_MAX_AGE": 7 * 86400.0,
    "ENQUEUE_TIMEOUT": 0.01,
    "SPILL_MAX_EVENTS": 10_000,
    "BUFFER_MAX_DELAY": 0.02,
    "FLUSH_DELAY": 0.5,
    "CLAIM_IDLE": 30.0,
    "BATCH_MAX_EVENTS": 2500,
    "BATCH_MAX_BYTES": 475_000,
    "FLUSH_TIME_LIMIT": 20.0,
    "ON_COMMIT": True,
    # A request's events are queued with its facts and completed by the worker. False:
    # made whole on the request path, as workers from before that layout read them (for
    # a rolling deploy, or a rollback of the workers).
    "COMPLETE_IN_WORKER": True,
    "AUTH_SIGNALS": False,
    "IN_PROCESS_FLUSHER": None,  # None: on for sqlite:// and memory://, off for redis://
}

_NUMBER_KEYS = (
    "RETRY_BUDGET",
    "ENQUEUE_TIMEOUT",
    "BUFFER_MAX_DELAY",
    "FLUSH_DELAY",
    "CLAIM_IDLE",
    "FLUSH_TIME_LIMIT",
    "DEAD_LETTER_MAX_AGE",
)
_POSITIVE_KEYS = ("ENQUEUE_TIMEOUT", "FLUSH_TIME_LIMIT", "DEAD_LETTER_MAX_AGE")
_INT_LIMITS = {
    "BATCH_MAX_EVENTS": (1, 2500),
    "BATCH_MAX_BYTES": (1024, 500_000),
    "SPILL_MAX_EVENTS": (0, 10**8),
    "DEAD_LETTER_MAX_EVENTS": (0, 10**9),
    "QUEUE_WAIT_REPLICAS": (0, 64),
}
MAX_QUEUE_SHARDS = 256
# Settings the deployment's environment may override (besides QUEUE_URL and ENABLED):
# they describe the Redis it runs against, which the environment knows best.
_ENV_INTS = {
    "QUEUE_SHARDS": "SEGMENT_MW_QUEUE_SHARDS",
    "QUEUE_WAIT_REPLICAS": "SEGMENT_MW_QUEUE_WAIT_REPLICAS",
}

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


def default_queue_url() -> str:
    """The embedded SQLite queue's URL: ``$XDG_STATE_HOME/segment_mw/queue.sqlite3``.

    Without ``XDG_STATE_HOME`` it lives under the home directory, which a container user
    with no ``HOME`` and no passwd entry does not have: that is a ConfigurationError
    saying what to set, not the RuntimeError ``Path.home()`` raises.
    """
    state = os.environ.get("XDG_STATE_HOME")
    if not state:
        try:
            state = str(Path.home() / ".local" / "state")
        except (RuntimeError, KeyError, OSError) as exc:
            raise ConfigurationError(
                "QUEUE_URL: not set, and the embedded SQLite queue has no directory to live "
                f"in: the home directory cannot be found ({exc}). Set QUEUE_URL (or "
                "SEGMENT_MW_QUEUE_URL), e.g. redis://host:6379/0, or XDG_STATE_HOME to a "
                "writable directory"
            ) from None
    return f"sqlite:///{Path(state) / 'segment_mw' / 'queue.sqlite3'}"


def _switch(key: str, value: Any, environ: Mapping[str, str]) -> bool:
    """A True/False setting; ``SEGMENT_MW_<key>`` overrides it (1/0, true/false, yes/no, on/off)."""
    variable = f"SEGMENT_MW_{key}"
    raw = environ.get(variable, "").strip().lower()
    if raw:
        if raw in _TRUE:
            return True
        if raw in _FALSE:
            return False
        raise ConfigurationError(
            f"{variable}: expected 1 or 0 (true/false, yes/no, on/off), got {raw!r}"
        )
    if not isinstance(value, bool):
        raise ConfigurationError(f"{key}: expected True or False, got {value!r}")
    return value


_SECRET_QUERY = re.compile(r"((?:^|&)(?:password|passwd|pass|token|secret)=)[^&]*", re.IGNORECASE)


def hide_password(url: Any) -> Any:
    """``url`` with its password replaced by ``***`` (for reprs and logs).

    Both places a Redis URL can carry one: the user-info (``redis://:pw@host``) and the
    query string (``redis://host/0?password=pw``, which redis-py accepts too).
    """
    if not isinstance(url, str):
        return url
    parts = original = urlsplit(url)
    if parts.password:
        netloc = parts.netloc.rpartition("@")[2]
        parts = parts._replace(netloc=f"{parts.username or ''}:***@{netloc}")
    if parts.query:
        parts = parts._replace(query=_SECRET_QUERY.sub(r"\1***", parts.query))
    # Rebuilt only when something was hidden: geturl() would shorten "memory://".
    return url if parts == original else parts.geturl()


class _Redacted(dict[str, Any]):
    """Destination options whose repr hides secrets (write keys, header values, passwords)."""

    def __repr__(self) -> str:
        shown = {k: ("***" if k in SECRET_OPTIONS else hide_password(v)) for k, v in self.items()}
        return repr(shown)

    __str__ = __repr__


@dataclass(frozen=True)
class DestinationConfig:
    name: str
    type: str
    options: Mapping[str, Any] = field(default_factory=_Redacted)

    def __repr__(self) -> str:
        return (
            f"DestinationConfig(name={self.name!r}, type={self.type!r}, options={self.options!r})"
        )


@dataclass(frozen=True)
class Settings:
    queue_url: str
    queue_prefix: str
    destinations: tuple[DestinationConfig, ...]
    integrations: Mapping[str, Any]
    pageviews: Mapping[str, Any]
    trusted_proxies: tuple[str, ...] | int
    ip: str
    scrub_params: frozenset[str]
    respect_gpc: bool
    consent: Callable[[Any], bool] | None
    user_id: Callable[[Any], Any] | None
    cookie_domain: str | None
    cookie_secure: bool
    set_cookie: bool
    user_id_from_cookie: bool
    retry_budget: float
    enqueue_timeout: float
    spill_max_events: int
    buffer_max_delay: float
    flush_delay: float
    claim_idle: float
    batch_max_events: int
    batch_max_bytes: int
    flush_time_limit: float
    on_commit: bool
    auth_signals: bool
    in_process_flusher: bool
    enabled: bool = True
    dead_letter_max_events: int = DEFAULTS["DEAD_LETTER_MAX_EVENTS"]
    dead_letter_max_age: float = DEFAULTS["DEAD_LETTER_MAX_AGE"]
    # None: the backend's default (one stream; three for a cluster). Set, even to 1, the
    # queue also drains shards an earlier setting left behind.
    queue_shards: int | None = None
    queue_wait_replicas: int = 0
    complete_in_worker: bool = True
    # Where queue_url came from: "QUEUE_URL", "SEGMENT_MW_QUEUE_URL" or "default" (the
    # embedded SQLite file, which a production deployment should not be left on).
    queue_url_source: str = "QUEUE_URL"

    def destination(self, name: str) -> DestinationConfig:
        for dest in self.destinations:
            if dest.name == name:
                return dest
        raise ConfigurationError(f"DESTINATIONS: no destination named {name!r}")

    @property
    def destination_names(self) -> tuple[str, ...]:
        return tuple(d.name for d in self.destinations)

    def __repr__(self) -> str:
        # A Redis URL may carry a password; destinations redact their own options.
        shown = {f.name: getattr(self, f.name) for f in fields(self)}
        shown["queue_url"] = hide_password(self.queue_url)
        return f"Settings({', '.join(f'{k}={v!r}' for k, v in shown.items())})"


def import_string(path: str, key: str) -> Any:
    from importlib import import_module

    module_name, _, attr = path.replace(":", ".").rpartition(".")
    try:
        return getattr(import_module(module_name), attr)
    except (ImportError, AttributeError, ValueError) as exc:
        raise ConfigurationError(f"{key}: cannot import {path!r}: {exc}") from None


def _callable_setting(value: Any, key: str) -> Callable[[Any], Any] | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = import_string(value, key)
    if not callable(value):
        raise ConfigurationError(f"{key}: expected a callable or a dotted path, got {value!r}")
    return value  # type: ignore[no-any-return]


def _destinations(
    raw: Any, environ: Mapping[str, str], claim_idle: float
) -> tuple[DestinationConfig, ...]:
    if not isinstance(raw, Mapping):
        raise ConfigurationError("DESTINATIONS: expected a mapping of name to options")
    raw = dict(raw)
    write_key = environ.get("SEGMENT_WRITE_KEY")
    host = environ.get("SEGMENT_HOST")
    if write_key and not raw:
        raw["Segment"] = {"type": "segment", "write_key": write_key}
    out = []
    for name, options in raw.items():
        key = f"DESTINATIONS[{name!r}]"
        if not isinstance(name, str) or not name:
            raise ConfigurationError("DESTINATIONS: destination names must be non-empty strings")
        if name.lower() == "all":
            raise ConfigurationError(f"{key}: 'All' is reserved by the integrations object")
        if not isinstance(options, Mapping):
            raise ConfigurationError(f"{key}: expected a mapping with a 'type'")
        opts = _Redacted(options)
        kind = opts.pop("type", None)
        if kind not in DESTINATION_TYPES:
            raise ConfigurationError(
                f"{key}.type: expected one of {', '.join(DESTINATION_TYPES)}, got {kind!r}"
            )
        if kind == "segment":
            if write_key and not opts.get("write_key"):
                opts["write_key"] = write_key
            if host and not opts.get("host"):
                # Like the write key: fills in, so a second (say EU) destination that
                # names its own host keeps it.
                opts["host"] = host
            if not isinstance(opts.get("write_key"), str) or not opts["write_key"]:
                raise ConfigurationError(
                    f"{key}.write_key: a Segment destination needs a write key"
                )
            opts.setdefault("host", DEFAULT_SEGMENT_HOST)
        if kind == "http" and not isinstance(opts.get("url"), str):
            raise ConfigurationError(f"{key}.url: an http destination needs a url")
        if kind == "jsonl" and not isinstance(opts.get("path"), (str, os.PathLike)):
            raise ConfigurationError(f"{key}.path: a jsonl destination needs a file path")
        if kind == "log":
            from .destinations.local import log_level

            try:
                log_level(opts.get("level", "INFO"))
            except ValueError:
                raise ConfigurationError(
                    f"{key}.level: expected a logging level such as 'INFO' or 20"
                ) from None
        if kind == "postgres":
            _check_postgres(key, opts)
        if kind in TOOL_TYPES:
            _check_tool(key, kind, opts)
        if kind in ("segment", "http", "postgres", *TOOL_TYPES):
            _fit_timeout(key, opts, "timeout" in options, claim_idle)
        if kind in ("segment", "http") or (kind in TOOL_TYPES and opts.get("host")):
            scheme = urlsplit(str(opts.get("host") or opts.get("url"))).scheme
            if scheme not in ("http", "https"):
                raise ConfigurationError(f"{key}: the URL must start with http:// or https://")
            if "headers" in opts and not isinstance(opts["headers"], Mapping):
                raise ConfigurationError(f"{key}.headers: expected a mapping")
        out.append(DestinationConfig(name=name, type=kind, options=opts))
    return tuple(out)


_MEASUREMENT_ID = re.compile(r"G-[A-Z0-9]{4,20}", re.ASCII)
_TOOL_OPTIONS = {
    "ga4": {"measurement_id", "api_secret"},
    "mixpanel": {"token", "service_account", "secret", "project_id"},
    "amplitude": {"api_key", "region", "min_id_length", "group_type"},
    "posthog": {"api_key", "group_type"},
}
_COMMON_TOOL_OPTIONS = {"host", "timeout", "gzip", "max_age"}


def _check_tool(key: str, kind: str, opts: dict[str, Any]) -> None:
    """The options of an analytics tool's destination: credentials present, names known."""
    known = _TOOL_OPTIONS[kind] | _COMMON_TOOL_OPTIONS
    unknown = sorted(str(k) for k in opts if k not in known)
    if unknown:
        raise ConfigurationError(
            f"{key}: unknown option(s) {', '.join(unknown)} for a {kind} destination; "
            f"known: {', '.join(sorted(known))}"
        )

    def text(name: str, what: str) -> None:
        if not isinstance(opts.get(name), str) or not opts[name].strip():
            raise ConfigurationError(f"{key}.{name}: a {kind} destination needs {what}")

    if kind == "ga4":
        text("measurement_id", "the stream's measurement id (G-XXXXXXXXXX)")
        if not _MEASUREMENT_ID.fullmatch(opts["measurement_id"]):
            raise ConfigurationError(
                f"{key}.measurement_id: expected a GA4 measurement id such as G-ABC123DEF4, "
                f"got {opts['measurement_id']!r}"
            )
        text("api_secret", "a Measurement Protocol API secret (Admin > Data Streams)")
    elif kind == "mixpanel":
        if opts.get("service_account") is not None:
            text("service_account", "a service account user name")
            text("secret", "the service account's secret")
            project = opts.get("project_id")
            if (
                isinstance(project, bool)
                or not isinstance(project, (int, str))
                or not str(project).isdigit()
            ):
                raise ConfigurationError(
                    f"{key}.project_id: a service account needs the numeric project id"
                )
        else:
            text("token", "a project token, or service_account, secret and project_id")
    else:
        text("api_key", "the project's API key")
    if kind == "amplitude":
        region = opts.setdefault("region", "us")
        if not isinstance(region, str) or region.lower() not in ("us", "eu"):
            raise ConfigurationError(f"{key}.region: expected 'us' or 'eu', got {region!r}")
        min_id = opts.get("min_id_length")
        if min_id is not None and (
            isinstance(min_id, bool) or not isinstance(min_id, int) or min_id < 1
        ):
            raise ConfigurationError(f"{key}.min_id_length: expected a positive whole number")
    if "gzip" in opts and not isinstance(opts["gzip"], bool):
        raise ConfigurationError(f"{key}.gzip: expected True or False")
    max_age = opts.get("max_age")
    if max_age is not None:
        if isinstance(max_age, bool) or not isinstance(max_age, (int, float)) or not max_age > 0:
            raise ConfigurationError(f"{key}.max_age: expected a positive number of seconds")
        if kind == "ga4" and max_age > GA4_MAX_AGE:
            raise ConfigurationError(
                f"{key}.max_age: GA4 back-dates events by 72 hours at most "
                f"({GA4_MAX_AGE:g} s); got {max_age:g}"
            )


_SCHEMA_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}", re.ASCII)


def _check_postgres(key: str, opts: dict[str, Any]) -> None:
    dsn = opts.get("dsn")
    if not isinstance(dsn, str) or not dsn.strip():
        raise ConfigurationError(
            f"{key}.dsn: a postgres destination needs a connection string, "
            "as postgresql://user:password@host:5432/dbname"
        )
    try:
        from psycopg.conninfo import conninfo_to_dict
    except ImportError:  # checked where it delivers: web processes may lack the extra
        pass
    else:
        try:
            conninfo_to_dict(dsn)
        except Exception:
            # Not the driver's message: it may quote the string, password and all.
            raise ConfigurationError(
                f"{key}.dsn: not a libpq connection string or postgresql:// URI"
            ) from None
    schema = opts.setdefault("schema", "segment")
    if not isinstance(schema, str) or not _SCHEMA_NAME.fullmatch(schema) or schema[:3] == "pg_":
        raise ConfigurationError(
            f"{key}.schema: expected a lower-case PostgreSQL name (letters, digits, "
            f"underscores, at most 63, not starting with pg_), got {schema!r}"
        )
    from .warehouse.naming import RESERVED_WORDS

    if schema in RESERVED_WORDS:
        raise ConfigurationError(f"{key}.schema: {schema!r} is a reserved word in SQL")


def _fit_timeout(key: str, opts: dict[str, Any], given: bool, claim_idle: float) -> None:
    """A destination's ``timeout``: set, it must fit CLAIM_IDLE; unset, it is made to fit."""
    timeout = opts.setdefault("timeout", min(DEFAULT_TIMEOUT, claim_idle / CLAIM_IDLE_PER_TIMEOUT))
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise ConfigurationError(f"{key}.timeout: expected a positive number of seconds")
    if not timeout > 0:
        raise ConfigurationError(
            f"{key}.timeout: expected a positive number of seconds"
            if given
            else f"CLAIM_IDLE: {claim_idle:g}s leaves {key} no time to send a batch"
        )
    if timeout * CLAIM_IDLE_PER_TIMEOUT > claim_idle:
        raise ConfigurationError(
            f"{key}.timeout ({timeout:g}s) does not fit CLAIM_IDLE ({claim_idle:g}s): "
            f"a batch still being sent would be claimed and sent again. CLAIM_IDLE "
            f"must be at least {CLAIM_IDLE_PER_TIMEOUT:g} times every destination's "
            f"timeout: raise CLAIM_IDLE to {timeout * CLAIM_IDLE_PER_TIMEOUT:g} or "
            "shorten the timeout"
        )


def _patterns(value: Any) -> tuple[str, ...]:
    # A lone string would otherwise become one pattern per character ("^" excludes all).
    patterns = (value,) if isinstance(value, str) else value
    try:
        patterns = tuple(patterns)
        for pattern in patterns:
            re.compile(pattern)
    except (TypeError, re.error) as exc:
        raise ConfigurationError(
            f"PAGEVIEWS.EXCLUDE_PATHS: expected a list of regular expressions ({exc})"
        ) from None
    return patterns


def _check_queue_url(url: Any) -> str:
    from .queue.urls import CLUSTER_SCHEMES, SENTINEL_SCHEMES, parse_redis_url

    if not isinstance(url, str):
        raise ConfigurationError(f"QUEUE_URL: expected a string, got {url!r}")
    parts = urlsplit(url)
    if parts.scheme in CLUSTER_SCHEMES + SENTINEL_SCHEMES:
        parse_redis_url(url)  # several hosts: urlsplit cannot read their ports
        return url
    if parts.scheme not in ("redis", "rediss", "unix", "sqlite", "memory"):
        raise ConfigurationError(
            f"QUEUE_URL: unsupported scheme {parts.scheme!r}; use redis://, "
            "redis+cluster://, redis+sentinel://, sqlite:/// or memory://"
        )
    # Caught here, not by the first push: redis-py would refuse it on every event.
    if parts.scheme in ("redis", "rediss") and not parts.hostname:
        raise ConfigurationError("QUEUE_URL: a redis:// URL needs a host, as redis://host:6379/0")
    if parts.scheme == "unix" and not parts.path:
        raise ConfigurationError("QUEUE_URL: a unix:// URL needs a socket path")
    try:
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError:
        raise ConfigurationError(f"QUEUE_URL: invalid port in {hide_password(url)!r}") from None
    return url


def load_settings(
    raw: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
    **overrides: Any,
) -> Settings:
    """Merge ``raw`` and ``overrides`` over the defaults, apply the environment, validate."""
    environ = os.environ if environ is None else environ
    merged: dict[str, Any] = dict(DEFAULTS)
    for source in (raw or {}, overrides):
        for key, value in source.items():
            if key not in DEFAULTS:
                raise ConfigurationError(f"unknown setting {key!r}; known: {', '.join(DEFAULTS)}")
            merged[key] = value
    enabled = _switch("ENABLED", merged["ENABLED"], environ)
    url_source = "QUEUE_URL"
    if environ.get("SEGMENT_MW_QUEUE_URL"):
        merged["QUEUE_URL"] = environ["SEGMENT_MW_QUEUE_URL"]
        url_source = "SEGMENT_MW_QUEUE_URL"
    if not merged["QUEUE_URL"]:
        url_source = "default"
        try:
            merged["QUEUE_URL"] = default_queue_url()
        except ConfigurationError:
            if enabled:
                raise
            # Disabled, nothing is ever written there: a CI container without a home
            # directory must still be able to run the app's tests with segment_mw off.
            merged["QUEUE_URL"] = "memory://"
    queue_url = _check_queue_url(merged["QUEUE_URL"])
    for key, variable in _ENV_INTS.items():
        raw_value = environ.get(variable, "").strip()
        if raw_value:
            try:
                merged[key] = int(raw_value)
            except ValueError:
                raise ConfigurationError(
                    f"{variable}: expected a whole number, got {raw_value!r}"
                ) from None
    shards = merged["QUEUE_SHARDS"]
    if shards is not None and (
        isinstance(shards, bool)
        or not isinstance(shards, int)
        or not 1 <= shards <= MAX_QUEUE_SHARDS
    ):
        raise ConfigurationError(
            f"QUEUE_SHARDS: expected a whole number from 1 to {MAX_QUEUE_SHARDS}, got {shards!r}"
        )

    pageviews = dict(DEFAULT_PAGEVIEWS)
    raw_pageviews = merged["PAGEVIEWS"]
    if isinstance(raw_pageviews, bool):
        raw_pageviews = {"ENABLED": raw_pageviews}
    if not isinstance(raw_pageviews, Mapping):
        raise ConfigurationError("PAGEVIEWS: expected a mapping or a bool")
    for key, value in raw_pageviews.items():
        if key not in DEFAULT_PAGEVIEWS:
            raise ConfigurationError(f"PAGEVIEWS: unknown key {key!r}")
        pageviews[key] = value
    pageviews["EXCLUDE_PATHS"] = _patterns(pageviews["EXCLUDE_PATHS"])

    integrations = merged["INTEGRATIONS"]
    if not isinstance(integrations, Mapping):
        raise ConfigurationError("INTEGRATIONS: expected a mapping such as {'All': True}")

    proxies = merged["TRUSTED_PROXIES"]
    if isinstance(proxies, bool) or not isinstance(proxies, (int, list, tuple, str)):
        raise ConfigurationError("TRUSTED_PROXIES: expected a hop count or a list of CIDRs")
    if isinstance(proxies, str):
        proxies = (proxies,)
    if not isinstance(proxies, int):
        import ipaddress

        for cidr in proxies:
            try:
                ipaddress.ip_network(cidr, strict=False)
            except ValueError:
                raise ConfigurationError(f"TRUSTED_PROXIES: {cidr!r} is not a CIDR") from None
        proxies = tuple(proxies)
    elif proxies < 0:
        raise ConfigurationError("TRUSTED_PROXIES: a hop count cannot be negative")

    if merged["IP"] not in ("full", "anonymize", "none"):
        raise ConfigurationError("IP: expected 'full', 'anonymize' or 'none'")
    for key in _NUMBER_KEYS:
        value = merged[key]
        # ``not value >= 0`` also refuses NaN; a zero timeout would make every Redis
        # call non-blocking (and fail), a zero time limit would never deliver anything.
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
            raise ConfigurationError(f"{key}: expected a non-negative number, got {value!r}")
        if key in _POSITIVE_KEYS and value == 0:
            raise ConfigurationError(f"{key}: expected a positive number of seconds, got 0")
    for key, (low, high) in _INT_LIMITS.items():
        value = merged[key]
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise ConfigurationError(f"{key}: expected a whole number from {low} to {high}")
    scrub = merged["SCRUB_PARAMS"]
    if not isinstance(scrub, (list, tuple, set, frozenset)) or not all(
        isinstance(p, str) for p in scrub
    ):
        raise ConfigurationError("SCRUB_PARAMS: expected a list of parameter names")
    in_process = merged["IN_PROCESS_FLUSHER"]
    if in_process is None:
        in_process = not queue_url.startswith(("redis", "unix"))

    return Settings(
        queue_url=queue_url,
        queue_prefix=str(merged["QUEUE_PREFIX"]),
        destinations=_destinations(merged["DESTINATIONS"], environ, float(merged["CLAIM_IDLE"])),
        integrations=dict(integrations),
        pageviews=pageviews,
        trusted_proxies=proxies,
        ip=merged["IP"],
        scrub_params=frozenset(p.lower() for p in scrub),
        respect_gpc=bool(merged["RESPECT_GPC"]),
        consent=_callable_setting(merged["CONSENT"], "CONSENT"),
        user_id=_callable_setting(merged["USER_ID"], "USER_ID"),
        cookie_domain=merged["COOKIE_DOMAIN"],
        cookie_secure=bool(merged["COOKIE_SECURE"]),
        set_cookie=bool(merged["SET_COOKIE"]),
        user_id_from_cookie=bool(merged["USER_ID_FROM_COOKIE"]),
        retry_budget=float(merged["RETRY_BUDGET"]),
        enqueue_timeout=float(merged["ENQUEUE_TIMEOUT"]),
        spill_max_events=int(merged["SPILL_MAX_EVENTS"]),
        buffer_max_delay=float(merged["BUFFER_MAX_DELAY"]),
        flush_delay=float(merged["FLUSH_DELAY"]),
        claim_idle=float(merged["CLAIM_IDLE"]),
        batch_max_events=int(merged["BATCH_MAX_EVENTS"]),
        batch_max_bytes=int(merged["BATCH_MAX_BYTES"]),
        flush_time_limit=float(merged["FLUSH_TIME_LIMIT"]),
        on_commit=bool(merged["ON_COMMIT"]),
        auth_signals=bool(merged["AUTH_SIGNALS"]),
        in_process_flusher=bool(in_process),
        enabled=enabled,
        complete_in_worker=_switch("COMPLETE_IN_WORKER", merged["COMPLETE_IN_WORKER"], environ),
        dead_letter_max_events=int(merged["DEAD_LETTER_MAX_EVENTS"]),
        dead_letter_max_age=float(merged["DEAD_LETTER_MAX_AGE"]),
        queue_shards=shards,
        queue_wait_replicas=int(merged["QUEUE_WAIT_REPLICAS"]),
        queue_url_source=url_source,
    )
