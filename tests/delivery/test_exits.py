"""Every process exit is drained: Celery prefork children recycled after each task,
gunicorn and uWSGI workers recycled or reloaded, a process pushing its last messages as
it leaves (and asking for their flush), and a uWSGI that runs no background thread."""

from __future__ import annotations

import collections
import json
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

import segment_mw

from .conftest import BROKER, child_env, free_port, message_ids, wait_until

# Events are gathered for a long time before the producer thread pushes them: what a
# process holds when it leaves is (nearly) everything it emitted.
HOLD = {"BUFFER_MAX_DELAY": 30.0}


def hook(sink):
    return {"hook": {"type": "http", "url": f"{sink.url}/hook"}}


def test_prefork_children_recycled_after_each_task_push_what_they_buffered(
    fast_settings, setup, sink, worker_process, celery_app
):
    settings = {**fast_settings, **HOLD, "DESTINATIONS": hook(sink)}
    setup(celery=False, **settings)
    worker = worker_process(
        settings, pool="prefork", concurrency=2, extra=["--max-tasks-per-child=1"]
    )
    worker.wait_ready()
    for task in range(10):
        celery_app.send_task("tests.emit_buffered", args=[f"t{task}", 10])
    expected = {(f"t{task}", n) for task in range(10) for n in range(10)}

    def received() -> list[tuple[str, int]]:
        return [(e["properties"]["tag"], e["properties"]["n"]) for e in sink.events]

    wait_until(lambda: set(received()) >= expected, 60.0, "every task's events", worker)
    counts = collections.Counter(received())
    assert set(counts) == expected
    assert max(counts.values()) == 1
    # Each task ran in a child of its own, which then left through os._exit.
    assert worker.output.count("Task tests.emit_buffered") >= 10


EXITING = """
import json, sys, time
import redis
from celery import Celery
import segment_mw, segment_mw.celery
from segment_mw import api, events

settings, broker, queue_name = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3]
app = Celery("exiting", broker=broker, set_as_current=False)
app.conf.task_default_queue = queue_name
client = segment_mw.configure(settings)
segment_mw.celery.install(app, watchdog=False)

def emit(n):
    return [api.emit("track", events.track_fields("Exiting", {"n": i}), user_id="u",
                     durable=False) for i in range(n)]

ids = emit(1)  # pushed at once, and a flush requested
broker_client = redis.Redis.from_url(broker)
deadline = time.monotonic() + 30
# The flush request is sent after the push: wait for the task itself, not the buffer.
while not broker_client.llen(queue_name) and time.monotonic() < deadline:
    time.sleep(0.01)
assert not client.producer.buffered and broker_client.llen(queue_name) == 1
# As if that flush ran: it frees the kick, and its task leaves the broker.
broker_client.delete(queue_name)
client.queue.release("kick")
ids += emit(20)  # held in memory: gathered for BUFFER_MAX_DELAY
print(json.dumps({"ids": ids, "buffered": client.producer.buffered}))
"""


def test_a_process_on_its_way_out_requests_a_flush_of_what_it_pushed(
    fast_settings, setup, sink, celery_queue, tmp_path
):
    settings = {**fast_settings, **HOLD, "DESTINATIONS": hook(sink)}
    script = tmp_path / "exiting.py"
    script.write_text(textwrap.dedent(EXITING))
    done = subprocess.run(
        [sys.executable, str(script), json.dumps(settings), BROKER, celery_queue],
        env=child_env(),
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode()
    result = json.loads(done.stdout.decode().splitlines()[-1])
    assert result["buffered"] == 20
    # A flush was asked for on the way out: no waiting for a worker's watchdog.
    sent = [json.loads(raw) for raw in redis.Redis.from_url(BROKER).lrange(celery_queue, 0, -1)]
    assert [m["headers"]["task"] for m in sent] == ["segment_mw.flush"]
    client = setup(celery=False, **settings)
    assert client.status().destinations["hook"].queued == 21
    assert segment_mw.flush(30)
    assert sorted(message_ids(sink)) == sorted(result["ids"])


APP = """
import json, os
import segment_mw
from segment_mw import api, events

segment_mw.configure(json.loads(os.environ["EXITS_TEST_SETTINGS"]))

def application(environ, start_response):
    fields = events.page_fields("Home", {"q": environ.get("QUERY_STRING", "")}, None)
    message_id = api.emit("page", fields, user_id="u", durable=False)  # as pageviews are
    body = json.dumps({"id": message_id, "pid": os.getpid()}).encode()
    start_response("200 OK", [("Content-Type", "application/json")])
    return [body]
"""


def serve(
    command: list[str], settings: dict[str, Any], tmp_path: Path, port: int
) -> subprocess.Popen[bytes]:
    (tmp_path / "exits_app.py").write_text(textwrap.dedent(APP))
    env = child_env(EXITS_TEST_SETTINGS=json.dumps(settings))
    env["PYTHONPATH"] = f"{tmp_path}:{env['PYTHONPATH']}"
    log = open(tmp_path / "server.log", "wb")  # noqa: SIM115 - the server's for its life
    server = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=log, stderr=log)

    def answers() -> bool:
        if server.poll() is not None:
            raise AssertionError((tmp_path / "server.log").read_text())
        try:
            return httpx.get(f"http://127.0.0.1:{port}/?probe", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    wait_until(answers, 30.0, "the server to start")
    return server


def get_many(port: int, count: int) -> list[dict[str, Any]]:
    with httpx.Client(timeout=30) as http:
        return [http.get(f"http://127.0.0.1:{port}/?n={n}").json() for n in range(count)]


def stop(server: subprocess.Popen[bytes]) -> None:
    server.send_signal(signal.SIGTERM)
    try:
        server.wait(30)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()
        raise


def delivered_once(setup: Any, settings: dict[str, Any], sink: Any, ids: set[str]) -> None:
    setup(celery=False, **settings)
    assert segment_mw.flush(30)
    counts = collections.Counter(message_ids(sink))
    assert ids <= set(counts)  # the probes' pageviews are there too
    assert max(counts.values()) == 1


def test_gunicorn_workers_recycled_by_max_requests_lose_nothing(
    fast_settings, setup, sink, tmp_path
):
    settings = {**fast_settings, **HOLD, "DESTINATIONS": hook(sink)}
    port = free_port()
    gunicorn = [sys.executable, "-m", "gunicorn", "--bind", f"127.0.0.1:{port}"]
    server = serve(
        [*gunicorn, "--workers=2", "--max-requests=10", "exits_app:application"],
        settings,
        tmp_path,
        port,
    )
    try:
        pages = get_many(port, 100)
    finally:
        stop(server)
    assert len({p["pid"] for p in pages}) >= 6  # the workers were recycled, again and again
    delivered_once(setup, settings, sink, {p["id"] for p in pages})


UWSGI = shutil.which("uwsgi", path=str(Path(sys.executable).parent)) or shutil.which("uwsgi")


@pytest.mark.skipif(UWSGI is None, reason="uWSGI is not installed (pip install uwsgi builds it)")
def test_uwsgi_workers_recycled_and_reloaded_lose_nothing(fast_settings, setup, sink, tmp_path):
    settings = {**fast_settings, **HOLD, "DESTINATIONS": hook(sink)}
    port = free_port()
    assert UWSGI is not None
    server = serve(
        [
            UWSGI,
            f"--http-socket=127.0.0.1:{port}",
            "--wsgi-file=exits_app.py",
            "--master",
            "--processes=2",
            "--max-requests=10",
            "--min-worker-lifetime=0",
            "--die-on-term",
        ],
        settings,
        tmp_path,
        port,
    )
    try:
        pages = get_many(port, 40)
        server.send_signal(signal.SIGHUP)  # a graceful reload: every worker replaced
        wait_until(lambda: get_many(port, 1), 30.0, "the reload")
        pages += get_many(port, 20)
    finally:
        stop(server)
    log = (tmp_path / "server.log").read_text()
    assert "is done. Seeya!" in log  # recycled by max-requests
    assert "gracefully killing workers" in log  # and reloaded
    delivered_once(setup, settings, sink, {p["id"] for p in pages})


THREADLESS = """
import json, sys, threading, types

# A uWSGI that has not enabled threads, as its uwsgi module presents it (recent uWSGI
# releases always enable them, so this cannot be had from a real one here).
sys.modules["uwsgi"] = types.SimpleNamespace(has_threads=0, opt={})

import segment_mw
from segment_mw import api, errors, events

settings = json.loads(sys.argv[1])
try:
    segment_mw.configure({**settings, "IN_PROCESS_FLUSHER": True})
except errors.ConfigurationError as exc:
    refused = str(exc)
else:
    refused = None
client = segment_mw.configure(settings)
ids = []
stored = []
for n in range(20):
    ids.append(api.emit("track", events.track_fields("Inline", {"n": n}), user_id="u",
                        durable=False))
    stored.append(client.status().destinations["hook"].queued)
threads = [t.name for t in threading.enumerate() if t.name.startswith("segment_mw")]
print(json.dumps({"ids": ids, "stored": stored, "threads": threads, "refused": refused}))
"""


def test_where_no_thread_runs_each_message_is_pushed_from_the_request(
    fast_settings, setup, sink, tmp_path
):
    settings = {**fast_settings, **HOLD, "DESTINATIONS": hook(sink)}
    script = tmp_path / "threadless.py"
    script.write_text(textwrap.dedent(THREADLESS))
    done = subprocess.run(
        [sys.executable, str(script), json.dumps(settings)],
        env=child_env(),
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode()
    result = json.loads(done.stdout.decode().splitlines()[-1])
    assert "enable-threads" in result["refused"]  # the in-process flusher could never run
    assert result["threads"] == []  # no thread was started, none would have run
    assert result["stored"] == list(range(1, 21))  # each one in the queue as it returns
    delivered_once(setup, settings, sink, set(result["ids"]))
