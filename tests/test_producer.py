"""The producer's hand-off: what it asks of the queue, and what it never does."""

from __future__ import annotations

import threading
import time

import segment_mw
from segment_mw.delivery import Deliverer
from segment_mw.producer import Producer
from segment_mw.queue import open_queue

from .slow_redis import SlowRedis


def test_a_queue_that_fails_the_kick_lease_is_not_hammered(configure):
    client = configure()
    calls = []

    class Unreachable:
        def __getattr__(self, name):
            return getattr(client.queue, name)

        def acquire(self, name, ttl):
            calls.append(name)
            raise ConnectionError("queue down")

    producer = Producer(Unreachable(), client.settings, on_kick=lambda: None)
    state = producer._state.get()
    state.kick_wanted = True
    producer._ensure_thread(state)
    state.wake.set()
    time.sleep(1.0)
    producer.close(timeout=0.5)
    # Backing off (50 ms, 100 ms, ... 2 s): a handful of tries, never a busy loop.
    assert 1 <= len(calls) <= 10


def test_no_kick_lease_is_taken_by_a_process_that_cannot_request_a_flush(
    configure, redis_settings, redis_client
):
    client = configure(**redis_settings, DESTINATIONS={"log": {"type": "log"}})
    assert not client.can_kick()
    segment_mw.page("Home", user_id="u")  # buffered: pushed by the writer thread
    client.producer.drain()
    time.sleep(0.1)
    assert not redis_client.exists(f"{redis_settings['QUEUE_PREFIX']}:lease:kick")

    kicks = threading.Event()
    client.on_kick = kicks.set
    segment_mw.page("Home", user_id="u")
    assert kicks.wait(5)
    assert redis_client.exists(f"{redis_settings['QUEUE_PREFIX']}:lease:kick")


def test_producers_create_cursors_so_an_old_worker_cannot_trim_a_new_destination(
    configure, redis_settings, tmp_path
):
    a = {"type": "jsonl", "path": str(tmp_path / "a.jsonl")}
    b = {"type": "jsonl", "path": str(tmp_path / "b.jsonl")}
    # The web processes run the new settings (destination B added) before any worker does.
    client = configure(**redis_settings, DESTINATIONS={"A": a, "B": b})
    ids = [segment_mw.track("Added", user_id="u") for _ in range(3)]
    segment_mw.page("Buffered", user_id="u")
    client.producer.drain()

    # An old worker, configured with A only, delivers and trims.
    old = Deliverer(
        segment_mw.config.load_settings({**redis_settings, "DESTINATIONS": {"A": a}}),
        open_queue(redis_settings["QUEUE_URL"], prefix=redis_settings["QUEUE_PREFIX"]),
    )
    old.flush_destination("A")
    assert len((tmp_path / "a.jsonl").read_text().splitlines()) == 4

    # The new worker still finds every message for B.
    client.deliverer.flush_destination("B")
    lines = (tmp_path / "b.jsonl").read_text().splitlines()
    assert len(lines) == 4
    assert all(i in "".join(lines) for i in ids)


def test_drain_waits_for_the_push_the_writer_thread_has_in_flight(configure):
    """flush() must not report success while the writer thread still holds messages."""
    client = configure(DESTINATIONS={"log": {"type": "log"}})
    queue = client.queue
    original = queue.push
    in_push, release = threading.Event(), threading.Event()

    def slow_push(entries):
        in_push.set()
        release.wait(5)
        return original(entries)

    producer = Producer(queue, client.settings)
    queue.push = slow_push  # type: ignore[method-assign]
    producer.submit(segment_mw.events.build("track", {"event": "E"}, user_id="u"))
    assert in_push.wait(5)  # the writer took the message out of the buffer
    assert producer.buffered == 0

    drained: list[bool] = []
    drainer = threading.Thread(target=lambda: drained.append(producer.drain(5)))
    drainer.start()
    drainer.join(0.2)
    assert drainer.is_alive()  # still waiting for the push in flight
    release.set()
    drainer.join(5)
    assert drained == [True]
    [record] = queue.read_new("log", "c", 10)  # in the queue by the time drain returned
    assert b'"event":"E"' in record.body
    producer.close(timeout=1)


def test_a_durable_write_that_takes_the_kick_lease_asks_for_the_flush_at_once(
    redis_settings, redis_client
):
    # The writer thread busy with buffered messages all along: the flush a durable write
    # took the lease for must not wait until the buffer happens to be empty (every other
    # process finds the lease held meanwhile, and asks for none).
    from segment_mw import events
    from segment_mw.config import load_settings

    # Redis 2 ms away: the buffer is never empty between pushes.
    proxy = SlowRedis(("127.0.0.1", 6379), late=1.0, delay=0.002).start()
    url = proxy.url(int(redis_settings["QUEUE_URL"].rsplit("/", 1)[1]))
    settings = load_settings(
        {**redis_settings, "QUEUE_URL": url, "DESTINATIONS": {"log": {"type": "log"}}},
        environ={},
    )
    queue = open_queue(settings.queue_url, prefix=settings.queue_prefix)
    kicks: list[float] = []
    producer = Producer(queue, settings, on_kick=lambda: kicks.append(time.monotonic()))
    stop = threading.Event()

    def entry() -> events.Entry:
        return events.build("track", events.track_fields("E", {}), user_id="u")

    def keep_busy() -> None:
        while not stop.is_set():
            producer.submit(entry())
            time.sleep(0.0002)

    busy = threading.Thread(target=keep_busy, daemon=True)
    busy.start()
    try:
        time.sleep(0.3)
        redis_client.delete(f"{settings.queue_prefix}:lease:kick")  # as a finished flush leaves it
        kicks.clear()
        started = time.monotonic()
        producer.submit(entry(), durable=True)
        assert redis_client.pttl(f"{settings.queue_prefix}:lease:kick") > 0  # it took the lease
        deadline = started + 20.0
        while not kicks and time.monotonic() < deadline:
            time.sleep(0.005)
        assert kicks, "no flush was asked for while the writer was busy"
        # Prompt: well under the lease's 60 s, whatever the machine's load.
        assert kicks[0] - started < 10.0
    finally:
        stop.set()
        busy.join()
        producer.close(1.0)
        proxy.close()


def test_without_threads_a_durable_write_that_takes_the_lease_asks_at_once(redis_settings):
    # uWSGI without enable-threads: pushes run in the request, and one failed in the last
    # second (its retry window): the lease a durable write took is acted on all the same.
    from segment_mw import events
    from segment_mw.config import load_settings

    settings = load_settings(
        {**redis_settings, "DESTINATIONS": {"log": {"type": "log"}}}, environ={}
    )
    queue = open_queue(settings.queue_url, prefix=settings.queue_prefix)
    kicks: list[int] = []
    producer = Producer(queue, settings, on_kick=lambda: kicks.append(1), direct_queue=queue)
    state = producer._state.get()
    state.threads_run = False
    state.inline_retry_at = time.monotonic() + 60.0
    producer.submit(
        events.build("track", events.track_fields("Charge", {}), user_id="u"), durable=True
    )
    assert kicks == [1]
    assert state.thread is None
    assert producer._exit_hook  # and what it holds is drained at exit
