"""``manage.py segment_mw status | flush | replay`` against real queues."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command

import segment_mw

ROOT = Path(__file__).resolve().parents[2]


def run(*args):
    out = io.StringIO()
    call_command("segment_mw", *args, stdout=out)
    return out.getvalue()


def status():
    return json.loads(run("status", "--json"))


def test_status_flush_on_the_memory_queue(settings, tmp_path):
    path = tmp_path / "events.jsonl"
    settings.SEGMENT_MW = {
        "QUEUE_URL": "memory://",
        "IN_PROCESS_FLUSHER": False,
        "DESTINATIONS": {"file": {"type": "jsonl", "path": str(path)}},
    }
    message_id = segment_mw.track("Order Completed", {"total": 3}, user_id="u1")
    before = status()
    assert before["depth"] == 1
    assert before["destinations"]["file"]["queued"] == 1

    text = run("flush")
    assert "file: queued=0 delivered=1" in text
    assert json.loads(path.read_text().splitlines()[0])["messageId"] == message_id
    assert status()["destinations"]["file"]["delivered"] == 1


def test_no_subcommand_means_status(settings):
    text = run()
    assert "queue: memory://" in text
    assert "log: queued=0" in text


def test_replay_dead_letters_through_redis(settings, redis_settings, sink):
    settings.SEGMENT_MW = {
        **redis_settings,
        "ENQUEUE_TIMEOUT": 2.0,  # a loaded test machine must not send the event to the spill
        "DESTINATIONS": {"hook": {"type": "http", "url": f"{sink.url}/v1/batch"}},
    }
    sink.fail(400)  # rejected: dead-lettered at once, not retried
    message_id = segment_mw.track("Refund Issued", user_id="u2")
    run("flush")
    assert status()["destinations"]["hook"]["dead"] == 1
    assert sink.events == []

    text = run("replay", "--destination", "hook")
    assert "hook: 1 dead letter(s) put back" in text
    assert [e["messageId"] for e in sink.events] == [message_id]
    after = status()["destinations"]["hook"]
    assert (after["dead"], after["delivered"]) == (0, 1)


def test_replay_of_an_unknown_destination_fails(settings):
    with pytest.raises(CommandError) as failure:
        run("replay", "--destination", "nope")
    assert failure.value.returncode == 2


def test_invalid_settings_fail_the_command(settings):
    settings.SEGMENT_MW = {"QUEUE_URL": "amqp://nope"}
    with pytest.raises(CommandError, match="SEGMENT_MW is invalid"):
        run("status")


def test_manage_py_entry_point(tmp_path):
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "tests.django_project.settings",
        "PYTHONPATH": str(ROOT),
    }
    result = subprocess.run(
        [sys.executable, "-m", "django", "segment_mw", "status", "--json"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["depth"] == 0
