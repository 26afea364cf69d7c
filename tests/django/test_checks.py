"""System checks: ids, messages and hints."""

from __future__ import annotations

import pytest
from django.core import checks

OURS = "segment_mw.django.SegmentMiddleware"
AUTH = "django.contrib.auth.middleware.AuthenticationMiddleware"


@pytest.fixture(autouse=True)
def _no_environment(monkeypatch):
    for name in ("SEGMENT_WRITE_KEY", "SEGMENT_HOST", "SEGMENT_MW_QUEUE_URL"):
        monkeypatch.delenv(name, raising=False)


def ours():
    return [m for m in checks.run_checks() if m.id and m.id.startswith("segment_mw.")]


def ids():
    return [m.id for m in ours()]


def test_the_test_project_passes():
    assert ours() == []


def test_middleware_missing(settings):
    settings.MIDDLEWARE = [m for m in settings.MIDDLEWARE if m != OURS]
    [message] = ours()
    assert message.id == "segment_mw.W001"
    assert OURS in message.hint


def test_middleware_by_its_full_path_counts(settings):
    settings.MIDDLEWARE = [
        "segment_mw.django.middleware.SegmentMiddleware" if m == OURS else m
        for m in settings.MIDDLEWARE
    ]
    assert ours() == []


def test_middleware_before_authentication(settings):
    middleware = [m for m in settings.MIDDLEWARE if m != OURS]
    middleware.insert(middleware.index(AUTH), OURS)
    settings.MIDDLEWARE = middleware
    [message] = ours()
    assert message.id == "segment_mw.W002"
    assert "AuthenticationMiddleware" in message.hint


def test_no_destination(settings):
    settings.SEGMENT_MW = {"QUEUE_URL": "memory://"}
    [message] = ours()
    assert message.id == "segment_mw.W003"
    assert message.level == checks.WARNING
    assert "SEGMENT_WRITE_KEY" in message.hint


def test_write_key_from_the_environment_is_a_destination(settings, monkeypatch):
    monkeypatch.setenv("SEGMENT_WRITE_KEY", "wk")
    settings.SEGMENT_MW = {"QUEUE_URL": "memory://"}
    assert ours() == []


def test_segment_destination_without_a_write_key(settings):
    settings.SEGMENT_MW = {"QUEUE_URL": "memory://", "DESTINATIONS": {"S": {"type": "segment"}}}
    [message] = ours()
    assert message.id == "segment_mw.E002"
    assert message.level == checks.ERROR
    assert "write_key" in message.msg
    assert "SEGMENT_WRITE_KEY" in message.hint


@pytest.mark.parametrize(
    "url",
    ["amqp://localhost", "redis://localhost:port/0", "redis://localhost/abc", "redis:///0"],
)
def test_invalid_queue_url(settings, url):
    settings.SEGMENT_MW = {"QUEUE_URL": url, "DESTINATIONS": {"log": {"type": "log"}}}
    [message] = ours()
    assert message.id == "segment_mw.E003"
    assert "redis://" in message.hint


@pytest.mark.parametrize(
    "raw",
    [
        {"QUEUE_URL": "memory://", "NOT_A_SETTING": 1},
        {"QUEUE_URL": "memory://", "TRUSTED_PROXIES": ["not-a-cidr"]},
        {"QUEUE_URL": "memory://", "DESTINATIONS": {"x": {"type": "carrier-pigeon"}}},
        ["QUEUE_URL", "memory://"],
    ],
    ids=["unknown key", "bad proxies", "bad destination type", "not a dict"],
)
def test_invalid_settings(settings, raw):
    settings.SEGMENT_MW = raw
    [message] = ours()
    assert message.id == "segment_mw.E001"
    assert message.hint
