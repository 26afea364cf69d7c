"""Safe defaults: dead-letter caps validated, what resolving the settings touches (a home
directory, a state directory) failing as a clear ConfigurationError, and ``status``
always naming the queue it reads (without its password)."""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

import segment_mw
from segment_mw import ConfigurationError, cli, metrics
from segment_mw.config import DEFAULTS, load_settings

ROOT = Path(__file__).resolve().parents[1]


def test_dead_letter_caps_have_defaults_and_are_validated():
    settings = load_settings({}, environ={})
    assert settings.dead_letter_max_events == DEFAULTS["DEAD_LETTER_MAX_EVENTS"] == 100_000
    assert settings.dead_letter_max_age == DEFAULTS["DEAD_LETTER_MAX_AGE"] == 7 * 86400
    assert load_settings({"DEAD_LETTER_MAX_EVENTS": 0}, environ={}).dead_letter_max_events == 0
    for key, bad in [
        ("DEAD_LETTER_MAX_EVENTS", -1),
        ("DEAD_LETTER_MAX_EVENTS", 2.5),
        ("DEAD_LETTER_MAX_EVENTS", True),
        ("DEAD_LETTER_MAX_AGE", 0),
        ("DEAD_LETTER_MAX_AGE", -5),
        ("DEAD_LETTER_MAX_AGE", "7d"),
    ]:
        with pytest.raises(ConfigurationError, match=f"^{key}: "):
            load_settings({key: bad}, environ={})


NO_HOME = """
import json, os, sys
import segment_mw, segment_mw.api, segment_mw.client, segment_mw.config, segment_mw.metrics
from segment_mw import ConfigurationError, InvalidEvent
for name in ("HOME", "XDG_STATE_HOME", "SEGMENT_MW_QUEUE_URL"):
    os.environ.pop(name, None)
os.setgid(54321)
os.setuid(54321)  # a user with no passwd entry: Path.home() has nothing to go on
out = {}
try:
    segment_mw.config.load_settings({})
except ConfigurationError as exc:
    out["error"] = str(exc)
out["message_id"] = segment_mw.track("Order Completed", user_id="u1")  # must not raise
try:
    segment_mw.track("", user_id="u1")
except InvalidEvent as exc:
    out["invalid"] = str(exc)
out["counts"] = segment_mw.metrics.counts()
os.environ["SEGMENT_MW_ENABLED"] = "0"
out["disabled_queue"] = segment_mw.config.load_settings({}).queue_url
print(json.dumps(out))
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to become a user with no passwd entry")
def test_no_home_directory_is_a_clear_configuration_error():
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SEGMENT_", "DJANGO_"))}
    env["PYTHONPATH"] = str(ROOT)
    done = subprocess.run(
        [sys.executable, "-c", NO_HOME],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["error"].startswith("QUEUE_URL: not set")
    assert "home directory cannot be found" in out["error"]
    assert "SEGMENT_MW_QUEUE_URL" in out["error"]
    assert "XDG_STATE_HOME" in out["error"]
    assert out["message_id"]
    assert "event" in out["invalid"]  # arguments are still checked
    assert out["counts"]["misconfigured"] >= 1
    assert "home directory cannot be found" in done.stderr  # logged, once, not a traceback
    assert "Traceback" not in done.stderr
    assert out["disabled_queue"] == "memory://"  # disabled: nothing needs the directory


@pytest.mark.parametrize("problem", ["a file in the way", "not a database"])
def test_an_unusable_state_directory_is_a_clear_configuration_error(
    problem, tmp_path, monkeypatch, caplog
):
    if problem == "a file in the way":
        (tmp_path / "state").write_text("not a directory")
        queue_file = tmp_path / "state" / "segment_mw" / "queue.sqlite3"
    else:
        queue_file = tmp_path / "state" / "segment_mw" / "queue.sqlite3"
        queue_file.parent.mkdir(parents=True)
        queue_file.write_bytes(b"this is not an SQLite database, it is a text file " * 100)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    # No in-process flusher: it would only fail the same way, at length, at exit.
    client = segment_mw.configure(
        {"DESTINATIONS": {"hook": {"type": "log"}}, "IN_PROCESS_FLUSHER": False}
    )
    with caplog.at_level(logging.WARNING, logger="segment_mw"):
        assert segment_mw.track("Order Completed", user_id="u")  # never raises
    assert metrics.counts()["misconfigured"] >= 1
    messages = [r.getMessage() for r in caplog.records]
    [logged] = [m for m in messages if m.startswith("QUEUE_URL: cannot open the SQLite")]
    assert str(queue_file) in logged
    assert "XDG_STATE_HOME" in logged
    with pytest.raises(ConfigurationError, match="cannot open the SQLite queue"):
        client.status()
    err = io.StringIO()
    monkeypatch.setattr("sys.stderr", err)
    assert cli.main(["status"], client=client, stdout=io.StringIO()) == 2
    assert "cannot open the SQLite queue" in err.getvalue()
    assert "the default: QUEUE_URL is not set" in err.getvalue()
    # Closed here, the message the queue never took is counted dropped once, in the test
    # (not again by the exit hook, at the end of the whole run).
    producer = client.producer
    with caplog.at_level(logging.ERROR, logger="segment_mw"):
        producer.close(timeout=0.2)
        producer.close(timeout=0.2)
    assert metrics.counts()["dropped"] == 1


def test_status_names_the_queue_without_its_password(redis_url, queue_prefix):
    url = redis_url.replace("redis://", "redis://:hunter2-SECRET@")
    client = segment_mw.configure({"QUEUE_URL": url, "QUEUE_PREFIX": queue_prefix})
    err = io.StringIO()
    out = io.StringIO()
    original = sys.stderr
    sys.stderr = err
    try:
        # This Redis has no password: AUTH fails, and the error names the queue anyway.
        assert cli.main(["status"], client=client, stdout=out) == 2
    finally:
        sys.stderr = original
    hidden = redis_url.replace("redis://", "redis://:***@")
    assert f"cannot reach the queue {hidden} (prefix {queue_prefix})" in err.getvalue()
    assert "hunter2" not in err.getvalue() + out.getvalue()

    client = segment_mw.configure({"QUEUE_URL": redis_url, "QUEUE_PREFIX": queue_prefix})
    out = io.StringIO()
    assert cli.main(["status", "--json"], client=client, stdout=out) == 0
    data = json.loads(out.getvalue())
    assert data["queue"] == {"url": redis_url, "prefix": queue_prefix, "source": "QUEUE_URL"}
    assert data["enabled"] is True
    out = io.StringIO()
    assert cli.main(["status"], client=client, stdout=out) == 0
    assert out.getvalue().startswith(f"queue: {redis_url} (prefix {queue_prefix})\n")


def test_status_says_the_default_queue_is_in_use(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    client = segment_mw.configure({})
    out = io.StringIO()
    assert cli.main(["status"], client=client, stdout=out) == 0
    assert f"queue: sqlite:///{tmp_path}/segment_mw/queue.sqlite3" in out.getvalue()
    assert "(the default: QUEUE_URL is not set)" in out.getvalue()
