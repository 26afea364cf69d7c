"""``segment-mw status`` as an operator sees it, from the real command line."""

from __future__ import annotations

import base64
import io
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import segment_mw
from segment_mw import cli

from .conftest import child_env, message_ids

WRITE_KEY = "wk_status_SECRET_1234"
TOKEN = base64.b64encode(f"{WRITE_KEY}:".encode()).decode()


def run_cli(tmp_path: Path, settings: dict, *args: str) -> subprocess.CompletedProcess[str]:
    module = tmp_path / "status_settings.py"
    module.write_text(f"SEGMENT_MW = {settings!r}\n")
    env = child_env()
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), env["PYTHONPATH"]])
    return subprocess.run(
        [
            str(Path(sys.executable).parent / "segment-mw"),
            "--config",
            "status_settings:SEGMENT_MW",
            *args,
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_status_shows_depth_age_and_each_destination_without_secrets(
    fast_settings, sinks, tmp_path
):
    good, segment, flaky = sinks(), sinks(), sinks()
    settings = {
        **fast_settings,
        "DESTINATIONS": {
            "good": {"type": "http", "url": f"{good.url}/good"},
            "Segment": {"type": "segment", "write_key": WRITE_KEY, "host": segment.url},
            "flaky": {"type": "http", "url": f"{flaky.url}/flaky"},
        },
    }
    client = segment_mw.configure(settings)
    # A server that echoes the credentials it refused: they must not reach the status.
    segment.fail(401, times=1, body=f'{{"error": "bad key {WRITE_KEY} / {TOKEN}"}}'.encode())
    flaky.fail(429, times=10_000, headers={"Retry-After": "60"})  # backs off long
    ids = [segment_mw.track("Status", {"n": n}, user_id="u") for n in range(10)]

    queued = run_cli(tmp_path, settings, "status", "--json")
    assert queued.returncode == 0, queued.stderr
    data = json.loads(queued.stdout)
    assert data["depth"] == 10
    assert 0 <= data["oldest_age"] < 60
    assert {n: d["queued"] for n, d in data["destinations"].items()} == {
        "good": 10,
        "Segment": 10,
        "flaky": 10,
    }

    assert client.flush(20)
    assert sorted(message_ids(good)) == sorted(ids)

    as_json = run_cli(tmp_path, settings, "status", "--json")
    human = run_cli(tmp_path, settings, "status")
    for done in (as_json, human):
        assert done.returncode == 0, done.stderr
        for secret in (WRITE_KEY, TOKEN):
            assert secret not in done.stdout
            assert secret not in done.stderr

    data = json.loads(as_json.stdout)
    assert data["depth"] == 10  # the flaky destination still has all of them
    assert data["oldest_age"] >= 0
    dests = data["destinations"]
    assert (dests["good"]["queued"], dests["good"]["delivered"]) == (0, 10)
    assert (dests["good"]["retrying"], dests["good"]["dead"]) == (0, 0)
    assert dests["good"]["last_error"] is None
    assert (dests["Segment"]["queued"], dests["Segment"]["dead"]) == (0, 10)
    assert dests["Segment"]["delivered"] == 0
    assert dests["Segment"]["last_error"].startswith("HTTP 401")
    assert "***" in dests["Segment"]["last_error"]  # the echoed key, scrubbed
    assert (dests["flaky"]["queued"], dests["flaky"]["retrying"]) == (10, 10)
    assert (dests["flaky"]["delivered"], dests["flaky"]["dead"]) == (0, 0)
    assert dests["flaky"]["last_error"].startswith("HTTP 429")
    assert dests["flaky"]["backoff_until"] > time.time() + 30

    text = human.stdout
    assert re.search(r"^depth: 10$", text, re.M), text
    assert re.search(r"^oldest undelivered: \d+(\.\d+)?s$", text, re.M), text
    assert "good: queued=0 delivered=10 retrying=0 dead=0" in text
    assert "Segment: queued=0 delivered=0 retrying=0 dead=10" in text
    assert "flaky: queued=10 delivered=0 retrying=10 dead=0" in text
    assert re.search(r"^  backing off for \d+(\.\d+)?s$", text, re.M), text
    assert re.search(r"^  last error \(.* ago\): HTTP 401", text, re.M), text
    assert re.search(r"^  last error \(.* ago\): HTTP 429", text, re.M), text
    # Where the queue is, without credentials.
    where = f"queue: {settings['QUEUE_URL']} (prefix {settings['QUEUE_PREFIX']})"
    assert text.startswith(where + "\n"), text


def test_status_names_a_removed_destination_and_forget_drops_it(configure, tmp_path):
    archive = {"type": "jsonl", "path": str(tmp_path / "a.jsonl")}
    old = {"archive": archive, "legacy": {"type": "log"}}
    url = f"sqlite:///{tmp_path / 'q.sqlite3'}"
    client = configure(QUEUE_URL=url, DESTINATIONS=old, IN_PROCESS_FLUSHER=False)
    segment_mw.track("Kept", user_id="u")
    client.flush(5)

    client = configure(QUEUE_URL=url, DESTINATIONS={"archive": archive}, IN_PROCESS_FLUSHER=False)
    out = io.StringIO()
    assert cli.main(["status", "--json"], client=client, stdout=out) == 0
    assert json.loads(out.getvalue())["unconfigured"] == ["legacy"]
    out = io.StringIO()
    cli.main(["status"], client=client, stdout=out)
    assert "segment-mw forget legacy" in out.getvalue()

    assert cli.main(["forget", "archive"], client=client, stdout=io.StringIO()) == 2
    assert cli.main(["forget", "legacy"], client=client, stdout=io.StringIO()) == 0
    assert client.status().unconfigured == []
