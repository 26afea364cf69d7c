"""Processes come and go: many producers, a worker killed mid-batch, a process exiting."""

from __future__ import annotations

import json
import multiprocessing
import subprocess
import sys
import textwrap

import segment_mw

from . import _producers
from .conftest import BROKER, child_env, message_ids, wait_until


def test_many_producer_processes_all_delivered_exactly(
    fast_settings, setup, sink, worker, celery_queue, tmp_path
):
    settings = {**fast_settings, "DESTINATIONS": {"hook": {"type": "http", "url": f"{sink.url}/h"}}}
    client = setup(**settings)
    ctx = multiprocessing.get_context("spawn")
    procs = []
    for i in range(4):
        out = tmp_path / f"ids-{i}.json"
        proc = ctx.Process(
            target=_producers.produce,
            args=(settings, BROKER, celery_queue, f"p{i}", 250, str(out)),
        )
        proc.start()
        procs.append((proc, out))
    with worker():
        for proc, _ in procs:
            proc.join(60)
            assert proc.exitcode == 0
        expected = [mid for _, out in procs for mid in json.loads(out.read_text())]
        assert len(set(expected)) == 1000
        wait_until(lambda: len(message_ids(sink)) >= 1000, 20.0, "every producer's events")
        wait_until(lambda: client.status().depth == 0, 10.0, "the queue to drain")
    got = message_ids(sink)
    assert set(got) == set(expected)  # none lost, nothing foreign
    duplicates = len(got) - len(set(got))
    if duplicates:
        # Only an enqueue that timed out on the producer's short deadline but reached
        # Redis anyway, then was pushed again from the spill, may arrive twice.
        counters = client.status().counters
        assert counters.get("spilled", 0) + counters.get("push_failed", 0) > 0, counters


def test_worker_killed_mid_batch_next_worker_delivers(fast_settings, setup, sink, worker_process):
    settings = {
        **fast_settings,
        "DESTINATIONS": {"hook": {"type": "http", "url": f"{sink.url}/h", "timeout": 2}},
    }
    client = setup(**settings)
    # The first request hangs: the worker is killed while it holds the batch.
    sink.fail(200, times=1, delay=20)
    expected = [segment_mw.track("Held", {"n": n}, user_id="u") for n in range(50)]

    first = worker_process(settings, pool="prefork", concurrency=1)
    first.wait_ready()
    wait_until(lambda: sink.attempts, 30.0, "the first worker to send its batch", first)
    in_hand = {e["messageId"] for e in sink.attempts[0].body["batch"]}
    assert in_hand
    first.kill()  # SIGKILL, pool children included
    assert message_ids(sink) == []
    assert client.status().destinations["hook"].queued == 50

    # No new traffic, no beat: the next worker finds and delivers the orphaned batch.
    second = worker_process(settings, pool="solo")
    wait_until(
        lambda: set(message_ids(sink)) >= set(expected),
        30.0,
        "the next worker to deliver what the killed one held",
        second,
    )
    assert in_hand <= set(message_ids(sink))
    wait_until(lambda: client.status().depth == 0, 10.0, "the queue to drain")
    assert "Task segment_mw.flush" in second.output


EXITING = """
import json, sys
import segment_mw
from segment_mw import api, events

segment_mw.configure(json.loads(sys.argv[1]))
ids = [
    api.emit("track", events.track_fields("Exiting", {"n": n}), user_id="u", durable=False)
    for n in range(int(sys.argv[2]))
]
print(json.dumps({"ids": ids, "buffered": segment_mw.get_client().producer.buffered}))
"""


def test_process_exiting_normally_hands_over_its_buffer(fast_settings, setup, sink, tmp_path):
    settings = {**fast_settings, "DESTINATIONS": {"hook": {"type": "http", "url": f"{sink.url}/h"}}}
    script = tmp_path / "exiting.py"
    script.write_text(textwrap.dedent(EXITING))
    env = child_env()
    done = subprocess.run(
        [sys.executable, str(script), json.dumps(settings), "5000"],
        env=env,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode()
    result = json.loads(done.stdout.decode().splitlines()[-1])
    print("buffered at exit:", result["buffered"])
    # Everything it emitted is in the queue after it is gone, and deliverable.
    client = setup(celery=False, **settings)
    assert client.status().destinations["hook"].queued == 5000
    assert segment_mw.flush(30)
    assert sorted(message_ids(sink)) == sorted(result["ids"])
