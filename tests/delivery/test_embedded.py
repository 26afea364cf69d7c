"""The embedded default end to end: no Redis, no Celery, a SQLite file and the in-process
flusher, in processes that emit and exit (and fork) the way scripts and servers do."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

from celery import Celery
from celery.exceptions import AlwaysEagerIgnored

import segment_mw
import segment_mw.celery

from .conftest import child_env, message_ids, wait_until

SCRIPT = """
import json, os, sys, time
import segment_mw
from segment_mw import api, events

out, host, mode = sys.argv[1], sys.argv[2], sys.argv[3]
segment_mw.configure({
    "DESTINATIONS": {
        "file": {"type": "jsonl", "path": out},
        "Segment": {"type": "segment", "write_key": "wk_embedded", "host": host},
    },
    "FLUSH_DELAY": 0.05,
})

def emit(tag, n):
    ids = [segment_mw.track(tag, {"n": i}, user_id="u") for i in range(n)]
    # The buffered hand-off the middleware uses, handed over at exit.
    ids += [
        api.emit("track", events.track_fields(tag + " Buffered", {"n": i}),
                 user_id="u", durable=False)
        for i in range(n)
    ]
    return ids

def delivered():
    try:
        with open(out, "rb") as fh:
            # Only whole lines: a flusher may be writing the last one right now.
            return {json.loads(line)["messageId"] for line in fh if line.endswith(b"\\n")}
    except FileNotFoundError:
        return set()

ids = emit("Parent", 10)
result = {"parent": ids}
if mode == "fork":
    deadline = time.monotonic() + 10
    while not set(ids) <= delivered() and time.monotonic() < deadline:
        time.sleep(0.01)
    pid = os.fork()
    if pid == 0:
        with open(out + ".child", "w") as fh:
            json.dump(emit("Child", 10), fh)
        sys.exit(0)  # a normal exit: the child's exit hooks hand over and deliver
    _, code = os.waitpid(pid, 0)
    with open(out + ".child") as fh:
        child = json.load(fh)
    result["child"] = child
    result["child_exit"] = code
    # Delivered while the parent still runs (by the child's exit hook, or by the parent's
    # flusher if it read them first), not left for the parent's own exit: to both
    # destinations, however slowly a loaded machine gets round to the second.
    def queued():
        status = segment_mw.get_client().status()
        return sum(d.queued + d.retrying for d in status.destinations.values())
    deadline = time.monotonic() + 30
    while (not set(child) <= delivered() or queued()) and time.monotonic() < deadline:
        time.sleep(0.01)
    result["child_delivered"] = set(child) <= delivered() and not queued()
result["servers"] = sorted(m for m in sys.modules if m.split(".")[0] in ("redis", "celery"))
print(json.dumps(result))
"""


def run_script(tmp_path: Path, sink_url: str, mode: str) -> dict:
    script = tmp_path / "produce.py"
    script.write_text(textwrap.dedent(SCRIPT))
    env = child_env(XDG_STATE_HOME=str(tmp_path / "state"))
    out = tmp_path / "events.jsonl"
    done = subprocess.run(
        [sys.executable, str(script), str(out), sink_url, mode],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode()
    result = json.loads(done.stdout.decode().strip().splitlines()[-1])
    # The embedded default: a SQLite file under the user's state directory.
    assert (tmp_path / "state" / "segment_mw" / "queue.sqlite3").exists()
    result["jsonl"] = [json.loads(line)["messageId"] for line in out.read_bytes().splitlines()]
    return result


def test_script_emits_and_exits_and_everything_is_delivered(tmp_path, sink):
    result = run_script(tmp_path, sink.url, "plain")
    assert result["servers"] == []  # neither Redis nor Celery was needed, or imported
    expected = sorted(result["parent"])
    assert len(expected) == 20
    # Delivered by the time the process exited: nothing is left for someone else.
    assert sorted(result["jsonl"]) == expected
    assert sorted(message_ids(sink)) == expected


def test_forked_child_emits_and_delivers_at_its_exit(tmp_path, sink):
    result = run_script(tmp_path, sink.url, "fork")
    assert result["child_exit"] == 0
    assert result["child_delivered"]
    expected = sorted(result["parent"] + result["child"])
    assert len(set(expected)) == 40
    assert sorted(result["jsonl"]) == expected
    assert sorted(message_ids(sink)) == expected


def test_an_always_eager_celery_app_publishes_nothing_and_the_process_delivers(
    tmp_path: Path,
) -> None:
    """No AlwaysEagerIgnored warning, no send_task: the in-process flusher delivers."""
    out = tmp_path / "events.jsonl"
    app = Celery("eager", broker="memory://", set_as_current=False)
    app.conf.task_always_eager = True
    segment_mw.configure(
        {
            "QUEUE_URL": "memory://",
            "DESTINATIONS": {"file": {"type": "jsonl", "path": str(out)}},
            "IN_PROCESS_FLUSHER": False,  # the eager app's kicks are what delivers here
            "FLUSH_DELAY": 0.05,
        }
    )
    segment_mw.celery.install(app, watchdog=False)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            ids = [segment_mw.track("Eager", {"n": n}, user_id="u") for n in range(3)]
            wait_until(lambda: out.exists() and len(out.read_text().splitlines()) == 3)
    finally:
        segment_mw.celery.uninstall()
    assert [json.loads(line)["messageId"] for line in out.read_text().splitlines()] == ids
    assert not [w for w in caught if issubclass(w.category, AlwaysEagerIgnored)]
