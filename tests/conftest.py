"""Shared fixtures: a real Redis with a private key prefix per test, a local HTTP sink,
and a clean process-wide client around every test."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

import segment_mw
from segment_mw import metrics
from segment_mw.client import Client, reset_client

from .pg import pg_database, warehouse  # noqa: F401 - fixtures for the warehouse tests
from .sink import Sink, running_sink
from .topologies import Cluster, SentinelSetup, running, unavailable

REDIS_URL = os.environ.get("SEGMENT_MW_TEST_REDIS_URL", "redis://127.0.0.1:6379/9")


@pytest.fixture(autouse=True)
def _clean_client() -> Iterator[None]:
    reset_client()
    metrics.reset()
    yield
    reset_client()
    metrics.reset()


@pytest.fixture(scope="session")
def redis_url() -> str:
    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1).ping()
    except redis.RedisError as exc:  # CI starts Redis; a missing one is a failure, not a skip
        pytest.fail(
            f"Redis is not reachable at {REDIS_URL}: {exc}. Run `bash .ci/ensure-services`."
        )
    return REDIS_URL


@pytest.fixture
def redis_client(redis_url: str) -> redis.Redis:
    return redis.Redis.from_url(redis_url)


@pytest.fixture
def queue_prefix(redis_client: redis.Redis) -> Iterator[str]:
    """A key prefix no other test uses; its keys are deleted afterwards."""
    prefix = f"t-{uuid.uuid4().hex[:12]}"
    yield prefix
    # Sharded queues' keys carry the prefix inside a hash tag: {prefix:s1}:log.
    keys = list(redis_client.scan_iter(f"*{prefix}*", count=1000))
    if keys:
        redis_client.delete(*keys)


@pytest.fixture
def sink() -> Iterator[Sink]:
    with running_sink() as server:
        yield server


@pytest.fixture
def configure() -> Callable[..., Client]:
    """Configure the process-wide client for a test (memory queue unless told otherwise)."""

    def _configure(**settings: Any) -> Client:
        settings.setdefault("QUEUE_URL", "memory://")
        return segment_mw.configure(settings)

    return _configure


@pytest.fixture
def redis_settings(redis_url: str, queue_prefix: str) -> dict[str, Any]:
    return {"QUEUE_URL": redis_url, "QUEUE_PREFIX": queue_prefix}


@pytest.fixture(scope="session")
def _redis_server_startable() -> None:
    why = unavailable()
    if why:  # the one reason to skip the scale-out tests: say so in the summary
        pytest.skip(f"no private Redis Cluster or Sentinel can be started: {why}")


@pytest.fixture(scope="session")
def cluster(
    _redis_server_startable: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Cluster]:
    """A private Redis Cluster for the session: three masters, each with a replica."""
    with running(Cluster(tmp_path_factory.mktemp("cluster"))) as found:
        yield found


@pytest.fixture(scope="session")
def sentinels(
    _redis_server_startable: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[SentinelSetup]:
    """A private master, replica and three sentinels for the session."""
    with running(SentinelSetup(tmp_path_factory.mktemp("sentinel"))) as found:
        yield found
