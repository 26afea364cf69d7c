"""System checks about the queue itself: the local SQLite fallback in production, and a
real Redis that can evict keys or is too old."""

from __future__ import annotations

import pytest
import redis
from django.core import checks

import segment_mw.queue.redis as redis_backend

from ..delivery.conftest import RedisServer


@pytest.fixture(autouse=True)
def _no_environment(monkeypatch, tmp_path):
    for name in ("SEGMENT_WRITE_KEY", "SEGMENT_HOST", "SEGMENT_MW_QUEUE_URL", "SEGMENT_MW_ENABLED"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))


@pytest.fixture
def private_redis(tmp_path):
    server = RedisServer(tmp_path)
    server.start()
    yield server
    server.kill()


def ours():
    return [m for m in checks.run_checks() if m.id and m.id.startswith("segment_mw.")]


def test_the_sqlite_fallback_in_production_is_a_warning(settings, segment_settings):
    segment_settings(QUEUE_URL=None)
    [message] = ours()
    assert message.id == "segment_mw.W007"
    assert message.level == checks.WARNING
    assert "queue.sqlite3" in message.msg
    assert "redis://" in message.hint


@pytest.mark.parametrize(
    "change",
    [{"DEBUG": True}, {"SEGMENT_MW": {"ENABLED": False}}, {"SEGMENT_MW": {"QUEUE_URL": "x"}}],
    ids=["DEBUG", "disabled", "named"],
)
def test_no_fallback_warning_in_development_when_disabled_or_named(
    change, settings, segment_settings, tmp_path
):
    overrides = dict(change.get("SEGMENT_MW", {}))
    if "QUEUE_URL" in overrides:
        overrides["QUEUE_URL"] = f"sqlite:///{tmp_path / 'queue.sqlite3'}"
    segment_settings(**{"QUEUE_URL": None, **overrides})
    if "DEBUG" in change:
        settings.DEBUG = True
    assert ours() == []


def test_a_redis_that_can_evict_the_queue_is_a_warning(private_redis, segment_settings):
    segment_settings(QUEUE_URL=private_redis.url)
    assert ours() == []
    admin = redis.Redis(port=private_redis.port)

    admin.config_set("maxmemory-policy", "allkeys-lfu")
    [message] = ours()
    assert message.id == "segment_mw.W005"
    assert "allkeys-lfu" in message.msg
    assert "lost" in message.msg
    assert "noeviction" in message.hint

    admin.config_set("maxmemory-policy", "volatile-ttl")
    [message] = ours()
    assert message.id == "segment_mw.W006"
    assert "volatile-ttl" in message.msg
    assert "leases" in message.msg


def test_a_redis_too_old_is_an_error(private_redis, segment_settings, monkeypatch):
    """A real server, the minimum raised above it (as an older server would be)."""
    monkeypatch.setattr(redis_backend, "MIN_REDIS_VERSION", (99, 0))
    segment_settings(QUEUE_URL=private_redis.url)
    [message] = ours()
    assert message.id == "segment_mw.E004"
    assert "needs Redis 99.0 or later" in message.msg


def test_an_unreachable_redis_says_nothing(segment_settings, private_redis):
    segment_settings(QUEUE_URL=private_redis.url)
    private_redis.kill()
    assert ours() == []


@pytest.mark.scale_out
def test_every_master_of_a_cluster_is_checked(cluster, segment_settings, queue_prefix):
    segment_settings(QUEUE_URL=cluster.url, QUEUE_PREFIX=queue_prefix)
    assert ours() == []
    masters = cluster.masters()
    admins = [m.client() for m in masters[1:]]
    try:
        admins[0].config_set("maxmemory-policy", "allkeys-lru")
        admins[1].config_set("maxmemory-policy", "volatile-lru")
        found = sorted((m.id, m.msg) for m in ours())
        assert [i for i, _ in found] == ["segment_mw.W005", "segment_mw.W006"]
        assert f"127.0.0.1:{masters[1].port}" in found[0][1]  # each names its node
        assert f"127.0.0.1:{masters[2].port}" in found[1][1]
    finally:
        for admin in admins:
            admin.config_set("maxmemory-policy", "noeviction")
            admin.close()


@pytest.mark.scale_out
def test_the_master_behind_sentinels_is_checked(
    sentinels, segment_settings, monkeypatch, queue_prefix
):
    segment_settings(QUEUE_URL=sentinels.url(), QUEUE_PREFIX=queue_prefix)
    assert ours() == []
    monkeypatch.setattr(redis_backend, "MIN_REDIS_VERSION", (99, 0))
    [message] = ours()
    assert message.id == "segment_mw.E004"
    assert f"master of {sentinels.service}" in message.msg
