"""Settings: defaults, validation naming the key, environment overrides, no leaked secrets."""

from __future__ import annotations

import base64
import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import segment_mw
from segment_mw import ConfigurationError
from segment_mw.client import Client, get_client
from segment_mw.config import (
    DEFAULT_PAGEVIEWS,
    DEFAULT_SCRUB_PARAMS,
    DEFAULT_SEGMENT_HOST,
    DEFAULTS,
    load_settings,
)
from segment_mw.destinations import make_destination

WRITE_KEY = "wk_live_SECRET123"
BASIC = base64.b64encode(f"{WRITE_KEY}:".encode()).decode()
HOOK_TOKEN = "Bearer hook-token-SECRET456"


def load(raw: dict[str, Any] | None = None, **environ: str) -> Any:
    return load_settings(raw, environ=environ)


# -- defaults -----------------------------------------------------------------------------


def test_defaults(tmp_path: Path) -> None:
    settings = load()
    assert settings.queue_url.startswith("sqlite:///")
    assert settings.queue_url.endswith("/segment_mw/queue.sqlite3")
    assert settings.queue_prefix == "segment_mw"
    assert settings.destinations == ()
    assert settings.destination_names == ()
    assert settings.integrations == {}
    assert settings.pageviews == {
        **DEFAULT_PAGEVIEWS,
        "EXCLUDE_PATHS": tuple(DEFAULT_PAGEVIEWS["EXCLUDE_PATHS"]),
    }
    assert settings.trusted_proxies == ()
    assert settings.ip == "full"
    assert settings.scrub_params == frozenset(DEFAULT_SCRUB_PARAMS)
    assert settings.respect_gpc is True
    assert settings.consent is None
    assert settings.user_id is None
    assert settings.retry_budget == 6 * 3600.0
    assert settings.batch_max_events == 2500
    assert settings.batch_max_bytes == 475_000
    assert settings.in_process_flusher is True  # the embedded queue needs no worker


def test_default_queue_lives_in_the_state_directory(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    settings = load()
    assert settings.queue_url == f"sqlite:///{tmp_path}/segment_mw/queue.sqlite3"


def test_redis_queue_turns_the_in_process_flusher_off() -> None:
    assert load({"QUEUE_URL": "redis://localhost:6379/0"}).in_process_flusher is False
    assert load({"QUEUE_URL": "memory://"}).in_process_flusher is True
    assert load({"QUEUE_URL": "redis://h/0", "IN_PROCESS_FLUSHER": True}).in_process_flusher


def test_overrides_merge_over_the_dict() -> None:
    settings = load_settings({"IP": "none", "QUEUE_PREFIX": "a"}, environ={}, QUEUE_PREFIX="b")
    assert (settings.ip, settings.queue_prefix) == ("none", "b")


def test_unknown_key_is_named() -> None:
    with pytest.raises(ConfigurationError, match="'QUEUE_ULR'"):
        load({"QUEUE_ULR": "redis://"})
    with pytest.raises(ConfigurationError, match="'DESTINATION'"):
        load_settings(environ={}, DESTINATION={})
    with pytest.raises(ConfigurationError, match=r"PAGEVIEWS.*'EXCLUDE'"):
        load({"PAGEVIEWS": {"EXCLUDE": []}})


def test_every_default_key_is_accepted() -> None:
    assert load(dict(DEFAULTS)).queue_prefix == "segment_mw"


# -- QUEUE_URL ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "redis://localhost:6379/0",
        "rediss://:pw@redis.example:6380/1",
        "unix:///run/redis.sock",
        "sqlite:////var/lib/app/queue.sqlite3",
        "sqlite:///relative.sqlite3",
        "memory://",
    ],
)
def test_queue_url_schemes(url: str) -> None:
    assert load({"QUEUE_URL": url}).queue_url == url


@pytest.mark.parametrize("url", ["amqp://guest@localhost//", "postgres://db/x", "/tmp/q", 42])
def test_bad_queue_url_is_named(url: Any) -> None:
    with pytest.raises(ConfigurationError, match="QUEUE_URL"):
        load({"QUEUE_URL": url})


def test_queue_url_from_the_environment_wins() -> None:
    settings = load({"QUEUE_URL": "memory://"}, SEGMENT_MW_QUEUE_URL="redis://envhost:6379/2")
    assert settings.queue_url == "redis://envhost:6379/2"
    assert settings.in_process_flusher is False
    with pytest.raises(ConfigurationError, match="QUEUE_URL"):
        load(SEGMENT_MW_QUEUE_URL="ftp://nope")


# -- DESTINATIONS -------------------------------------------------------------------------


def test_destination_types_and_options(tmp_path: Path) -> None:
    settings = load(
        {
            "DESTINATIONS": {
                "Segment": {"type": "segment", "write_key": WRITE_KEY, "gzip": True},
                "EU": {
                    "type": "segment",
                    "write_key": "wk2",
                    "host": "https://events.eu1.segmentapis.com",
                    "timeout": 3,
                },
                "hook": {"type": "http", "url": "https://hooks.example/in"},
                "file": {"type": "jsonl", "path": tmp_path / "events.jsonl"},
                "debug": {"type": "log", "logger": "x", "level": "DEBUG"},
            }
        }
    )
    assert settings.destination_names == ("Segment", "EU", "hook", "file", "debug")
    kinds = {d.name: d.type for d in settings.destinations}
    assert kinds == {
        "Segment": "segment",
        "EU": "segment",
        "hook": "http",
        "file": "jsonl",
        "debug": "log",
    }
    segment = settings.destination("Segment")
    assert segment.options["host"] == DEFAULT_SEGMENT_HOST
    assert segment.options["timeout"] == 10.0
    assert segment.options["gzip"] is True
    assert "type" not in segment.options
    assert settings.destination("EU").options["timeout"] == 3
    assert settings.destination("hook").options["timeout"] == 10.0
    with pytest.raises(ConfigurationError, match="'nope'"):
        settings.destination("nope")


@pytest.mark.parametrize(
    ("destinations", "message"),
    [
        ([("a", "b")], r"DESTINATIONS: expected a mapping"),
        ({"x": "segment"}, r"DESTINATIONS\['x'\]: expected a mapping"),
        ({"x": {}}, r"DESTINATIONS\['x'\]\.type"),
        ({"x": {"type": "kafka"}}, r"DESTINATIONS\['x'\]\.type.*'kafka'"),
        ({"x": {"type": "segment"}}, r"DESTINATIONS\['x'\]\.write_key"),
        ({"x": {"type": "segment", "write_key": ""}}, r"DESTINATIONS\['x'\]\.write_key"),
        ({"x": {"type": "http"}}, r"DESTINATIONS\['x'\]\.url"),
        ({"x": {"type": "http", "url": "ftp://h/x"}}, r"DESTINATIONS\['x'\].*http://"),
        ({"x": {"type": "segment", "write_key": "k", "host": "api.segment.io"}}, r"\['x'\]"),
        ({"x": {"type": "jsonl"}}, r"DESTINATIONS\['x'\]\.path"),
        ({"x": {"type": "jsonl", "path": 5}}, r"DESTINATIONS\['x'\]\.path"),
        ({"x": {"type": "http", "url": "http://h", "timeout": 0}}, r"\['x'\]\.timeout"),
        ({"x": {"type": "http", "url": "http://h", "timeout": -1}}, r"\['x'\]\.timeout"),
        ({"x": {"type": "http", "url": "http://h", "timeout": "5"}}, r"\['x'\]\.timeout"),
        ({"x": {"type": "http", "url": "http://h", "headers": ["a"]}}, r"\['x'\]\.headers"),
        ({"x": {"type": "log", "level": "LOUD"}}, r"DESTINATIONS\['x'\]\.level"),
        ({"x": {"type": "log", "level": None}}, r"DESTINATIONS\['x'\]\.level"),
        ({"x": {"type": "log", "level": 1.5}}, r"DESTINATIONS\['x'\]\.level"),
        ({"x": {"type": "postgres"}}, r"DESTINATIONS\['x'\]\.dsn"),
        ({"x": {"type": "postgres", "dsn": " "}}, r"DESTINATIONS\['x'\]\.dsn"),
        ({"x": {"type": "postgres", "dsn": "host=h", "schema": "Shop"}}, r"\['x'\]\.schema"),
        ({"x": {"type": "postgres", "dsn": "host=h", "schema": "pg_x"}}, r"\['x'\]\.schema"),
        ({"x": {"type": "postgres", "dsn": "host=h", "schema": "user"}}, r"\['x'\]\.schema"),
        ({"x": {"type": "postgres", "dsn": "host=h", "schema": "a-b"}}, r"\['x'\]\.schema"),
        ({"x": {"type": "postgres", "dsn": "host=h", "timeout": 0}}, r"\['x'\]\.timeout"),
        ({"x": {"type": "postgres", "dsn": "host=h", "timeout": True}}, r"\['x'\]\.timeout"),
        ({"All": {"type": "log"}}, r"'All' is reserved"),
        ({"all": {"type": "log"}}, r"'All' is reserved"),
        ({"": {"type": "log"}}, r"non-empty strings"),
    ],
)
def test_bad_destinations_are_named(destinations: Any, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        load({"DESTINATIONS": destinations})


def test_every_destination_timeout_must_fit_claim_idle() -> None:
    """A batch being sent must never look orphaned: CLAIM_IDLE >= 1.5 x each timeout."""
    hook = {"type": "http", "url": "https://hooks.example/in"}
    fits = load({"CLAIM_IDLE": 30, "DESTINATIONS": {"a": {**hook, "timeout": 20}}})
    assert fits.destination("a").options["timeout"] == 20
    with pytest.raises(ConfigurationError) as refused:
        load({"CLAIM_IDLE": 30, "DESTINATIONS": {"a": hook, "b": {**hook, "timeout": 25}}})
    message = str(refused.value)
    assert "DESTINATIONS['b'].timeout" in message
    assert "CLAIM_IDLE" in message
    assert "37.5" in message  # what CLAIM_IDLE would have to be
    # Unset, a timeout shortens to fit a short CLAIM_IDLE instead of refusing it.
    short = load({"CLAIM_IDLE": 3, "DESTINATIONS": {"a": hook}})
    assert short.destination("a").options["timeout"] == 2.0
    with pytest.raises(ConfigurationError, match=r"CLAIM_IDLE: 0s leaves"):
        load({"CLAIM_IDLE": 0, "DESTINATIONS": {"a": hook}})
    # Destinations without a network take no timeout.
    load({"CLAIM_IDLE": 0, "DESTINATIONS": {"log": {"type": "log"}}})


def test_write_key_alone_makes_one_segment_destination() -> None:
    settings = load(SEGMENT_WRITE_KEY=WRITE_KEY)
    (dest,) = settings.destinations
    assert (dest.name, dest.type) == ("Segment", "segment")
    assert dest.options["write_key"] == WRITE_KEY
    assert dest.options["host"] == DEFAULT_SEGMENT_HOST


def test_segment_host_overrides_the_host() -> None:
    settings = load(SEGMENT_WRITE_KEY=WRITE_KEY, SEGMENT_HOST="https://events.eu1.segmentapis.com")
    assert settings.destination("Segment").options["host"] == "https://events.eu1.segmentapis.com"
    with pytest.raises(ConfigurationError, match="http:// or https://"):
        load(SEGMENT_WRITE_KEY=WRITE_KEY, SEGMENT_HOST="events.eu1.segmentapis.com")


def test_write_key_fills_configured_segment_destinations_only() -> None:
    settings = load(
        {
            "DESTINATIONS": {
                "Mine": {"type": "segment"},
                "Other": {"type": "segment", "write_key": "own"},
                "file": {"type": "jsonl", "path": "/tmp/x.jsonl"},
            }
        },
        SEGMENT_WRITE_KEY=WRITE_KEY,
    )
    assert settings.destination_names == ("Mine", "Other", "file")  # no extra "Segment"
    assert settings.destination("Mine").options["write_key"] == WRITE_KEY
    assert settings.destination("Other").options["write_key"] == "own"
    assert "write_key" not in settings.destination("file").options


def test_no_write_key_no_destination() -> None:
    assert load(SEGMENT_HOST="https://x.example").destinations == ()


# -- other validated keys -----------------------------------------------------------------


def test_trusted_proxies() -> None:
    assert load({"TRUSTED_PROXIES": 2}).trusted_proxies == 2
    assert load({"TRUSTED_PROXIES": 0}).trusted_proxies == 0
    assert load({"TRUSTED_PROXIES": "10.0.0.0/8"}).trusted_proxies == ("10.0.0.0/8",)
    cidrs = ["10.0.0.0/8", "192.168.1.7", "fd00::/8", "172.16.0.1/12"]
    assert load({"TRUSTED_PROXIES": cidrs}).trusted_proxies == tuple(cidrs)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (-1, "negative"),
        (True, "hop count or a list"),
        (1.5, "hop count or a list"),
        ({"10.0.0.0/8": 1}, "hop count or a list"),
        (["10.0.0.0/33"], "'10.0.0.0/33' is not a CIDR"),
        (["10.0.0.0/8", "proxy.internal"], "'proxy.internal' is not a CIDR"),
        ("10.0.0.300", "not a CIDR"),
    ],
)
def test_bad_trusted_proxies_are_named(value: Any, message: str) -> None:
    with pytest.raises(ConfigurationError, match=r"TRUSTED_PROXIES: .*" + re.escape(message)):
        load({"TRUSTED_PROXIES": value})


@pytest.mark.parametrize("mode", ["full", "anonymize", "none"])
def test_ip_modes(mode: str) -> None:
    assert load({"IP": mode}).ip == mode


@pytest.mark.parametrize("mode", ["anon", "FULL", None, False])
def test_bad_ip_mode_is_named(mode: Any) -> None:
    with pytest.raises(ConfigurationError, match="IP: expected"):
        load({"IP": mode})


@pytest.mark.parametrize(
    ("key", "attr"),
    [
        ("RETRY_BUDGET", "retry_budget"),
        ("ENQUEUE_TIMEOUT", "enqueue_timeout"),
        ("BUFFER_MAX_DELAY", "buffer_max_delay"),
        ("FLUSH_DELAY", "flush_delay"),
        ("CLAIM_IDLE", "claim_idle"),
        ("FLUSH_TIME_LIMIT", "flush_time_limit"),
    ],
)
def test_timeouts_and_delays(key: str, attr: str) -> None:
    assert getattr(load({key: 2}), attr) == 2.0
    assert isinstance(getattr(load({key: 2}), attr), float)
    assert getattr(load({key: 0.25}), attr) == 0.25
    for bad in (-1, "5", None, True, math.nan):
        with pytest.raises(ConfigurationError, match=key):
            load({key: bad})


@pytest.mark.parametrize("key", ["ENQUEUE_TIMEOUT", "FLUSH_TIME_LIMIT"])
def test_zero_timeouts_are_refused(key: str) -> None:
    # A zero socket timeout makes every Redis call non-blocking: every push would fail.
    with pytest.raises(ConfigurationError, match=f"{key}: expected a positive"):
        load({key: 0})


def test_retry_budget_may_be_infinite() -> None:
    assert load({"RETRY_BUDGET": math.inf}).retry_budget == math.inf


@pytest.mark.parametrize(
    ("key", "low", "high"),
    [("BATCH_MAX_EVENTS", 1, 2500), ("BATCH_MAX_BYTES", 1024, 500_000)],
)
def test_batch_limits(key: str, low: int, high: int) -> None:
    attr = key.lower()
    assert getattr(load({key: low}), attr) == low
    assert getattr(load({key: high}), attr) == high
    for bad in (low - 1, high + 1, float(high), "100", True):
        with pytest.raises(ConfigurationError, match=f"{key}: expected a whole number"):
            load({key: bad})


def test_integrations_must_be_a_mapping() -> None:
    assert load({"INTEGRATIONS": {"All": False, "X": True}}).integrations == {
        "All": False,
        "X": True,
    }
    with pytest.raises(ConfigurationError, match="INTEGRATIONS"):
        load({"INTEGRATIONS": ["All"]})


def test_pageviews_bool_and_mapping() -> None:
    assert load({"PAGEVIEWS": False}).pageviews["ENABLED"] is False
    settings = load({"PAGEVIEWS": {"EXCLUDE_BOTS": False}})
    assert settings.pageviews["EXCLUDE_BOTS"] is False
    assert settings.pageviews["TITLE"] is True  # the rest keep their defaults
    with pytest.raises(ConfigurationError, match="PAGEVIEWS"):
        load({"PAGEVIEWS": "yes"})


def test_exclude_paths_are_regexes() -> None:
    # One string is one pattern, not one pattern per character ("^" would match all).
    assert load({"PAGEVIEWS": {"EXCLUDE_PATHS": r"^/admin/"}}).pageviews["EXCLUDE_PATHS"] == (
        r"^/admin/",
    )
    assert load({"PAGEVIEWS": {"EXCLUDE_PATHS": [r"^/a", r"^/b"]}}).pageviews["EXCLUDE_PATHS"] == (
        r"^/a",
        r"^/b",
    )
    for bad in (["(unclosed"], 5, [5]):
        with pytest.raises(ConfigurationError, match=r"PAGEVIEWS\.EXCLUDE_PATHS"):
            load({"PAGEVIEWS": {"EXCLUDE_PATHS": bad}})


def test_scrub_params() -> None:
    assert load({"SCRUB_PARAMS": ["Token", "X"]}).scrub_params == frozenset({"token", "x"})
    for bad in ("token", 5, ["ok", 5]):
        with pytest.raises(ConfigurationError, match="SCRUB_PARAMS"):
            load({"SCRUB_PARAMS": bad})


def _consent(_request: Any) -> bool:
    return True


def test_callables_by_object_or_dotted_path() -> None:
    assert load({"CONSENT": _consent}).consent is _consent
    assert load({"USER_ID": "tests.test_config:_consent"}).user_id is _consent
    assert load({"USER_ID": "tests.test_config._consent"}).user_id is _consent
    with pytest.raises(ConfigurationError, match="CONSENT: cannot import"):
        load({"CONSENT": "tests.test_config.missing"})
    with pytest.raises(ConfigurationError, match="USER_ID: expected a callable"):
        load({"USER_ID": 5})


# -- secrets never printed ----------------------------------------------------------------


def _assert_no_secret(text: str) -> None:
    for secret in (WRITE_KEY, BASIC, HOOK_TOKEN, "hook-token-SECRET456"):
        assert secret not in text, text


def test_reprs_never_show_write_keys_or_authorization() -> None:
    settings = load(
        {
            "DESTINATIONS": {
                "Segment": {"type": "segment", "write_key": WRITE_KEY},
                "hook": {
                    "type": "http",
                    "url": "https://hooks.example/in",
                    "headers": {"Authorization": HOOK_TOKEN},
                },
            }
        }
    )
    segment, hook = settings.destinations
    shown = [
        repr(settings),
        str(settings),
        repr(segment),
        str(segment),
        repr(hook),
        repr(segment.options),
        str(segment.options),
        repr(hook.options),
        str(hook.options),
        f"{segment.options}",
    ]
    client = Client(settings)
    shown += [repr(client), str(client)]
    for config in settings.destinations:
        dest = make_destination(config)
        shown += [repr(dest), str(dest), repr(dest.options), str(dest.options)]
    for text in shown:
        _assert_no_secret(text)
    assert "Segment" in repr(settings)  # still useful: names and types are shown
    assert "https://hooks.example/in" in repr(hook.options)
    # The secrets are still there to be used.
    assert segment.options["write_key"] == WRITE_KEY
    assert make_destination(segment).headers["Authorization"] == f"Basic {BASIC}"  # type: ignore[attr-defined]
    assert make_destination(hook).headers["Authorization"] == HOOK_TOKEN  # type: ignore[attr-defined]


def test_passwords_in_urls_are_not_shown() -> None:
    settings = load(
        {
            "QUEUE_URL": "redis://:redis-SECRET@redis.internal:6379/0",
            "DESTINATIONS": {"hook": {"type": "http", "url": "https://bob:hook-SECRET@x.example/"}},
        }
    )
    text = repr(settings) + str(settings.destinations[0].options)
    assert "redis-SECRET" not in text
    assert "hook-SECRET" not in text
    assert "redis://:***@redis.internal:6379/0" in text
    assert "https://bob:***@x.example/" in text
    assert settings.queue_url == "redis://:redis-SECRET@redis.internal:6379/0"  # still usable


def test_postgres_destination_defaults_and_its_dsn_is_never_shown() -> None:
    settings = load(
        {
            "DESTINATIONS": {
                "warehouse": {"type": "postgres", "dsn": "postgresql://u:pg-SECRET@db/analytics"},
                "other": {"type": "postgres", "dsn": "host=db password=pg-SECRET2", "schema": "s"},
            }
        }
    )
    warehouse, other = settings.destinations
    assert (warehouse.options["schema"], warehouse.options["timeout"]) == ("segment", 10.0)
    assert other.options["schema"] == "s"
    shown = repr(settings) + str(warehouse.options) + repr(other) + repr(Client(settings))
    for config in settings.destinations:
        dest = make_destination(config)
        shown += repr(dest) + repr(dest.options) + str(vars(dest).get("target"))
    assert "pg-SECRET" not in shown
    assert warehouse.options["dsn"] == "postgresql://u:pg-SECRET@db/analytics"  # still usable


def test_an_unreadable_dsn_is_refused_without_repeating_it() -> None:
    # libpq's own message would quote the string, password and all.
    with pytest.raises(ConfigurationError, match=r"\['w'\]\.dsn") as caught:
        load({"DESTINATIONS": {"w": {"type": "postgres", "dsn": "password=pg-SECRET host"}}})
    assert "pg-SECRET" not in str(caught.value)


def test_env_write_key_is_not_shown_either() -> None:
    settings = load(SEGMENT_WRITE_KEY=WRITE_KEY)
    _assert_no_secret(repr(settings))
    _assert_no_secret(repr(Client(settings)))


# -- configure() --------------------------------------------------------------------------


def test_configure_replaces_the_client(configure: Callable[..., Client]) -> None:
    first = configure(QUEUE_PREFIX="one", IN_PROCESS_FLUSHER=False)
    assert get_client() is first
    listener_calls: list[Any] = []
    first.listeners.append(listener_calls.append)
    second = segment_mw.configure({"QUEUE_URL": "memory://"}, QUEUE_PREFIX="two")
    assert second is not first
    assert get_client() is second
    assert second.settings.queue_prefix == "two"
    assert second.listeners == [listener_calls.append]  # capture fixtures carry over
    segment_mw.track("After", user_id="u1")
    assert len(listener_calls) == 1


def test_configure_validates(configure: Callable[..., Client]) -> None:
    before = configure(IN_PROCESS_FLUSHER=False)
    with pytest.raises(ConfigurationError, match="'NOPE'"):
        segment_mw.configure({"NOPE": 1})
    assert get_client() is before  # a bad configuration leaves the working one in place


def test_segment_host_fills_in_but_does_not_override_an_explicit_host():
    settings = load_settings(
        {
            "DESTINATIONS": {
                "US": {"type": "segment", "write_key": "k1"},
                "EU": {
                    "type": "segment",
                    "write_key": "k2",
                    "host": "https://events.eu1.segmentapis.com",
                },
            }
        },
        environ={"SEGMENT_HOST": "https://proxy.example"},
    )
    assert settings.destination("US").options["host"] == "https://proxy.example"
    assert settings.destination("EU").options["host"] == "https://events.eu1.segmentapis.com"


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("redis:/x", "needs a host"),
        ("redis://host:abc/0", "invalid port"),
        ("unix://", "socket path"),
    ],
)
def test_queue_urls_redis_would_refuse_are_refused_at_load(url, message):
    with pytest.raises(ConfigurationError, match=message):
        load_settings({"QUEUE_URL": url}, environ={})


def test_a_password_in_the_queue_urls_query_string_is_hidden():
    from segment_mw import cli

    url = "redis://127.0.0.1:6379/9?password=s3cr3t&socket_timeout=1"
    settings = load_settings({"QUEUE_URL": url}, environ={})
    assert "s3cr3t" not in repr(settings)
    described = cli._describe(segment_mw.client.Client(settings))
    assert "s3cr3t" not in described
    assert "password=***" in described


def test_direct_calls_never_raise_for_broken_settings(monkeypatch, caplog):
    from segment_mw import metrics
    from segment_mw.client import reset_client

    reset_client()
    monkeypatch.setenv("SEGMENT_MW_QUEUE_URL", "amqp://elsewhere")
    message_id = segment_mw.track("Order Completed", user_id="u")
    assert message_id
    assert segment_mw.flush(0.1) is False
    assert metrics.counts()["misconfigured"] >= 2
    assert "misconfigured" in caplog.text
    with pytest.raises(segment_mw.InvalidEvent):  # the caller's own mistakes still raise
        segment_mw.track("", user_id="u")
