"""The disabled mode (``ENABLED: False`` / ``SEGMENT_MW_ENABLED=0``): arguments are still
checked, nothing is queued or sent, and it is counted."""

from __future__ import annotations

import io
import threading

import pytest

import segment_mw
from segment_mw import ConfigurationError, InvalidEvent, cli, metrics
from segment_mw.config import load_settings


def test_disabled_checks_arguments_but_queues_nothing(redis_settings, redis_client, sink):
    threads_before = set(threading.enumerate())
    client = segment_mw.configure(
        {
            **redis_settings,
            "ENABLED": False,
            "DESTINATIONS": {"hook": {"type": "http", "url": sink.url}},
        }
    )
    ids = [segment_mw.track("Order Completed", {"revenue": 9.99}, user_id="u") for _ in range(5)]
    segment_mw.identify("u", {"plan": "pro"})
    segment_mw.page("Home", anonymous_id="a")
    assert len(set(ids)) == 5
    with pytest.raises(InvalidEvent, match="event"):
        segment_mw.track("", user_id="u")
    with pytest.raises(InvalidEvent):
        segment_mw.track("No One")  # no id at all
    assert client.flush(5.0)
    assert metrics.counts()["disabled"] == 7
    assert redis_client.keys(f"{redis_settings['QUEUE_PREFIX']}:*") == []  # never touched
    assert sink.attempts == []
    started = set(threading.enumerate()) - threads_before
    assert not [t.name for t in started if t.name.startswith("segment_mw-")]


def test_the_environment_switches_it_off_and_on():
    assert load_settings({}, environ={"SEGMENT_MW_ENABLED": "0"}).enabled is False
    assert load_settings({"ENABLED": True}, environ={"SEGMENT_MW_ENABLED": "off"}).enabled is False
    assert load_settings({"ENABLED": False}, environ={"SEGMENT_MW_ENABLED": "1"}).enabled is True
    assert load_settings({"ENABLED": False}, environ={"SEGMENT_MW_ENABLED": ""}).enabled is False
    assert load_settings({}, environ={}).enabled is True
    with pytest.raises(ConfigurationError, match="SEGMENT_MW_ENABLED: expected 1 or 0"):
        load_settings({}, environ={"SEGMENT_MW_ENABLED": "maybe"})
    with pytest.raises(ConfigurationError, match="ENABLED: expected True or False"):
        load_settings({"ENABLED": "no"}, environ={})


def test_the_test_fixture_still_sees_what_a_disabled_client_is_given(configure, segment_events):
    configure(ENABLED=False)
    segment_mw.track("Signed Up", user_id="u")
    assert [e["event"] for e in segment_events] == ["Signed Up"]


def test_a_disabled_worker_sends_nothing_and_keeps_the_queue(redis_settings, sink):
    settings = {**redis_settings, "DESTINATIONS": {"hook": {"type": "http", "url": sink.url}}}
    segment_mw.configure(settings)
    ids = [segment_mw.track("Queued", {"n": n}, user_id="u") for n in range(3)]
    off = segment_mw.configure({**settings, "ENABLED": False})  # the kill switch
    assert not off.flush(5.0)  # left queued
    assert sink.attempts == []
    status = off.status().destinations["hook"]
    assert (status.queued, status.delivered) == (3, 0)
    text = io.StringIO()
    assert cli.main(["status"], client=off, stdout=text) == 0
    assert "disabled (ENABLED: False or SEGMENT_MW_ENABLED=0)" in text.getvalue()

    on = segment_mw.configure(settings)
    assert on.flush(10.0)
    assert sorted(e["messageId"] for e in sink.events) == sorted(ids)
