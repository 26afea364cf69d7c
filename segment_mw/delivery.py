"""Draining the queue into one destination: batching, acknowledging, retrying, dead-lettering.

Each destination is flushed on its own (``flush_destination``), so a slow or failing one
never holds up or duplicates into the others. Batches are joined from the stored bytes.
A transient failure parks the batch for retry and puts the destination into a back-off
that every process sees (Retry-After honoured, exponential with jitter otherwise); a
rejected batch is split to isolate the offending messages, which alone are dead-lettered.
"""

from __future__ import annotations

import bisect
import logging
import operator
import os
import random
import socket
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from itertools import accumulate, groupby, repeat

from . import events, metrics
from .config import Settings
from .destinations import Destination, Outcome, make_destination
from .errors import InvalidEvent
from .queue import Backoff, Lease, Queue, Record, Records
from .routing import Router

log = logging.getLogger("segment_mw.delivery")

MIN_BACKOFF = 0.5
MAX_BACKOFF = 60.0
# Reads queued ahead of the batch being sent, where the queue allows it: the next ones
# are in hand once this one has been sent. With one read ahead the sending thread waited
# on it about a tenth of a flush; two measured 5-20 % more events/s. The second is read
# only while batches go out quickly (READ_AHEAD_WITHIN): a batch waiting behind two
# slow ones would go untouched long enough for another worker to claim it.
READ_AHEAD = 2
READ_AHEAD_WITHIN = 0.1  # of CLAIM_IDLE: how long a batch may take to send, for two ahead


@dataclass
class FlushReport:
    destination: str
    delivered: int = 0
    dead: int = 0
    retry_at: float | None = None  # the destination is backing off until then
    more: bool = False  # stopped at the time limit with messages left
    claim_in: float | None = None  # another consumer holds messages; look again then

    @property
    def next_run(self) -> float | None:
        """Seconds from now when this destination should be flushed again, if at all."""
        now = time.time()
        candidates = []
        if self.more:
            candidates.append(0.0)
        if self.retry_at is not None:
            candidates.append(max(self.retry_at - now, 0.0))
        if self.claim_in is not None:
            candidates.append(self.claim_in)
        return min(candidates) if candidates else None


def backoff_delay(attempts: int, retry_after: float | None) -> float:
    if retry_after is not None:
        return max(retry_after, MIN_BACKOFF)
    base = min(MAX_BACKOFF, MIN_BACKOFF * 2 ** max(attempts - 1, 0))
    return max(MIN_BACKOFF, random.uniform(base / 2, base))


def batches(records: Records, max_events: int, max_bytes: int, overhead: int) -> Iterator[Records]:
    """Split into requests of at most ``max_events`` messages and ``max_bytes`` bytes.

    Cut points are found by bisecting the running sizes (computed in C): a read holds
    thousands of records, and a Python step per record cost more than the rest of the
    batching together.
    """
    # ends[i]: the bytes of records[:i + 1] in a request body, a separator after each.
    ends = list(accumulate(map(operator.add, map(len, records.bodies), repeat(1))))
    start, done = 0, 0
    while start < len(records):
        # The longest run from ``start`` within both limits, and never an empty one (a
        # single record larger than the limit goes alone, for the destination to refuse).
        limit = done + max_bytes - overhead
        stop = bisect.bisect_right(ends, limit, start, min(start + max_events, len(records)))
        stop = max(stop, start + 1)
        yield records[start:stop]
        done, start = ends[stop - 1], stop


def retry_lease_ttl(dest: Destination) -> float:
    """How long the retry lease lasts: several sends, renewed before each."""
    return float(dest.options.get("timeout", 10.0)) * 4 + 5


def consumer_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class Deliverer:
    """Flushes destinations from a queue; one per process, used by tasks and threads."""

    def __init__(self, settings: Settings, queue: Queue) -> None:
        self.settings = settings
        self.queue = queue
        self.destinations: dict[str, Destination] = {
            d.name: make_destination(d) for d in settings.destinations
        }
        self.router = Router({d.name: d.type for d in settings.destinations})

    def close(self) -> None:
        for dest in self.destinations.values():
            dest.close()

    def flush_all(self, deadline: float | None = None) -> list[FlushReport]:
        return [self.flush_destination(name, deadline=deadline) for name in self.destinations]

    def flush_destination(self, name: str, *, deadline: float | None = None) -> FlushReport:
        settings, queue = self.settings, self.queue
        report = FlushReport(destination=name)
        if not settings.enabled:
            return report  # disabled: nothing is sent; what is queued waits for re-enabling
        if deadline is None:
            deadline = time.monotonic() + settings.flush_time_limit
        queue.ensure_destinations(list(self.destinations))
        backoff = queue.get_backoff(name)
        if backoff.active:
            report.retry_at = backoff.until
            return report
        consumer = consumer_name()
        count = settings.batch_max_events
        dest = self.destinations[name]
        # Parked messages are sent by whoever holds this lease, renewed before each send
        # so that a long run of retries (or of splits) never outlives it.
        lease = queue.take_lease(f"retry:{name}", retry_lease_ttl(dest))
        if lease is not None:
            try:
                while time.monotonic() < deadline:
                    records = queue.read_retry(name, count)
                    if not records or not self._deliver(
                        dest, records, backoff, report, read_at=0.0, lease=lease
                    ):
                        break
            finally:
                lease.release()
        retried = lease is not None and not lease.lost
        while report.retry_at is None:
            if time.monotonic() >= deadline:
                report.more = True
                break
            read_at = time.monotonic()
            records = queue.claim_idle(name, consumer, settings.claim_idle, count)
            if not records or not self._deliver(
                dest, records, backoff, report, read_at=read_at, consumer=consumer
            ):
                break
        if report.retry_at is None and not report.more:
            self._deliver_new(dest, consumer, deadline, backoff, report)
        if report.retry_at is None and backoff.attempts and retried:
            # Only the flush that retried the parked messages may reset the back-off: while
            # another one still has them in flight, their attempt count must stand.
            queue.clear_backoff(name)
        idle = queue.oldest_pending_idle(name)
        if idle is not None and report.retry_at is None:
            report.claim_in = max(settings.claim_idle - idle, 0.0) + 0.1
        try:
            queue.trim()
        except Exception:  # trimming is housekeeping; the next flush does it again
            log.debug("trim failed", exc_info=True)
        return report

    def _deliver_new(
        self,
        dest: Destination,
        consumer: str,
        deadline: float,
        backoff: Backoff,
        report: FlushReport,
    ) -> None:
        """Deliver new messages until none are left, the time is up or a back-off begins.

        Where the queue allows it, the next batches (``READ_AHEAD``) are read while this
        one is being delivered, so that the waits on the queue and on the destination
        overlap, one after another on a thread of their own (which keeps the log's order).
        What was read before the time ran out is delivered, not left held until another
        consumer claims it; reads not started by then are dropped.
        """
        name, queue, count = dest.name, self.queue, self.settings.batch_max_events

        def read() -> Records:
            return queue.read_new(name, consumer, count)

        def deliver(records: Records, read_at: float, acks: _Acks | None = None) -> bool:
            return self._deliver(
                dest, records, backoff, report, read_at=read_at, consumer=consumer, acks=acks
            )

        if not queue.concurrent_reads:
            while report.retry_at is None:
                if time.monotonic() >= deadline:
                    report.more = True
                    return
                read_at = time.monotonic()
                records = read()
                if not records or not deliver(records, read_at):
                    return
            return
        if time.monotonic() >= deadline:
            report.more = True
            return
        # Two threads beside this one, each on a connection of its own: one reads ahead,
        # the other sends the acknowledgements of what was delivered.
        quick = self.settings.claim_idle * READ_AHEAD_WITHIN
        with (
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="segment_mw-read") as reader,
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="segment_mw-ack") as acker,
        ):
            acks = _Acks(queue, acker)
            ahead = _ReadAhead(read, reader)
            try:
                read_at = time.monotonic()
                records = read()
                while True:
                    ahead.drained = ahead.drained or len(records) < count
                    if records:
                        ahead.top_up(deadline)
                        started = time.monotonic()
                        if not deliver(records, read_at, acks):
                            # A back-off began: what was read meanwhile waits with the
                            # parked batch (never sent, so not counted as tried), unless it
                            # waited long enough to be claimed by another consumer.
                            for held, at in ahead.started():
                                ids = self._still_held(name, consumer, held.ids, at)
                                queue.hold_for_retry(name, ids, attempts=0)
                            break
                        ahead.depth = READ_AHEAD if time.monotonic() - started < quick else 1
                    if time.monotonic() >= deadline and ahead.drop_unstarted():
                        report.more = True  # past the time: what was read is still delivered
                    got = ahead.next()
                    if got is None:
                        report.more = report.more or not ahead.drained
                        break
                    records, read_at = got
            except BaseException:
                # Reads not started are dropped; those read stay held, claimed after
                # CLAIM_IDLE, as a failed read's are.
                ahead.drop_unstarted()
                raise
            acks.wait()

    def _still_held(self, name: str, consumer: str, ids: list[str], read_at: float) -> list[str]:
        """``ids`` if read too recently to be claimed by anyone; else those still ours.

        Touching them also resets their idle time, so they are not claimed while sent.
        """
        if not ids or time.monotonic() - read_at < self.settings.claim_idle / 10:
            return ids
        return self._touch(name, consumer, ids)

    def _touch(self, name: str, consumer: str, ids: list[str]) -> list[str]:
        held = self.queue.touch(name, consumer, ids)
        if len(held) < len(ids):
            log.info(
                "destination %s: %d message(s) were claimed by another consumer meanwhile",
                name,
                len(ids) - len(held),
            )
        return held

    def _completed(self, name: str, records: Records, report: FlushReport) -> Records:
        """The records with their messages made whole (a request's events carry its facts).

        One that cannot be completed is dead-lettered alone, with the reason.
        """
        bodies = records.bodies
        if not any(map(bytes.startswith, bodies, repeat(events.DEFERRED))):
            return records  # checked in C, without a method call per record
        whole: list[bytes] = []
        failed: set[int] = set()
        for index, body in enumerate(bodies):
            try:
                body = events.complete(body)  # a whole message comes back as it is
            except InvalidEvent as exc:
                log.warning("destination %s: a message dead-lettered: %s", name, exc)
                self._dead_letter(name, [records[index]], str(exc))
                report.dead += 1
                failed.add(index)
            whole.append(body)
        completed = records.with_bodies(whole)
        if not failed:
            return completed
        return Records.of(r for i, r in enumerate(completed) if i not in failed)

    def _dead_letter(self, name: str, records: Sequence[Record], error: str) -> None:
        dropped = self.queue.dead_letter(name, records, error)
        if dropped:
            log.warning(
                "destination %s: %d older dead letter(s) dropped to stay within "
                "DEAD_LETTER_MAX_EVENTS / DEAD_LETTER_MAX_AGE (see dead_dropped in status)",
                name,
                dropped,
            )

    def _deliver(
        self,
        dest: Destination,
        records: Records,
        backoff: Backoff,
        report: FlushReport,
        *,
        read_at: float,
        consumer: str | None = None,
        lease: Lease | None = None,
        acks: _Acks | None = None,
    ) -> bool:
        """Deliver what is routed to ``dest``; False to stop (a back-off began, the lease lapsed).

        Messages ``consumer`` read at ``read_at`` are touched before a send once they have
        been held a while, so that none is claimed as an orphan (and sent twice) while this
        run of batches (or of splits) goes on; those another consumer claimed meanwhile are
        left to it. Parked messages are sent only while ``lease`` is held. Each request's
        ``X-Retry-Count`` is how often its messages were tried before: batches never mix
        messages tried a different number of times.
        """
        name, queue, settings = dest.name, self.queue, self.settings
        ack = acks.ack if acks is not None else queue.ack
        skipped: list[str] = []
        if not any(records.only) and not any(records.integrations):
            mine = records  # the common case, checked in C: nothing routed specially
        else:
            routed_here: list[Record] = []
            for record in records:
                if record.only is not None:  # a replayed copy is for one destination alone
                    routed = record.only == name
                elif record.integrations is not None:
                    targets = self.router.targets(record.integrations)
                    routed = targets is None or name in targets
                else:
                    routed = True
                if routed:
                    routed_here.append(record)
                else:
                    skipped.append(record.id)
            mine = Records.of(routed_here)
        if skipped:
            ack(name, skipped)
        mine = self._completed(name, mine, report)  # only what this destination is sent
        max_events = min(settings.batch_max_events, dest.max_events or settings.batch_max_events)
        max_bytes = min(settings.batch_max_bytes, dest.max_bytes or settings.batch_max_bytes)
        todo = [
            batch
            for run in _same_attempts(mine)
            for batch in batches(run, max_events, max_bytes, dest.overhead)
        ]
        while todo:
            if lease is not None and not lease.keep():
                log.warning("destination %s: the retry lease lapsed; leaving the rest", name)
                return False
            if consumer is not None and time.monotonic() - read_at >= settings.claim_idle / 10:
                ids = [rid for rest in todo for rid in rest.ids]
                read_at = time.monotonic()
                held = set(self._touch(name, consumer, ids))
                if len(held) < len(ids):
                    todo = [
                        kept
                        for rest in todo
                        if (kept := Records.of(r for r in rest if r.id in held))
                    ]
                    if not todo:
                        break
            batch = todo.pop(0)
            attempt = batch.attempts[0]
            outcome = dest.send(batch.bodies, attempt=attempt)
            counted = metrics.take_unreported()  # what the destination counted (dropped values)
            if counted:
                try:
                    queue.add_counts(counted)
                except Exception:  # reported with the next batch, or by this process's producer
                    metrics.restore_unreported(counted)
            if outcome.ok:
                if outcome.refused:
                    # The destination told the bad messages apart itself: no need to split.
                    for index, why in outcome.refused:
                        queue.dead_letter(name, [batch[index]], why)
                    log.warning(
                        "destination %s refused %d message(s), dead-lettered: %s",
                        name,
                        len(outcome.refused),
                        outcome.refused[0][1],
                    )
                    report.dead += len(outcome.refused)
                pending = set(outcome.pending)
                bad = {index for index, _ in outcome.refused} | pending
                done = batch.ids
                if bad:
                    done = [rid for i, rid in enumerate(done) if i not in bad]
                if done:
                    ack(name, done, delivered=len(done))
                report.delivered += len(done)
                if not pending:
                    continue
                # The rest failed for a passing reason: retried alone, as a failed batch.
                batch = Records.of(r for i, r in enumerate(batch) if i in pending)
                outcome = Outcome.transient(outcome.error or "not delivered", outcome.retry_after)
            error = outcome.error or "unknown error"
            if not outcome.retry:
                if outcome.split and len(batch) > 1:
                    half = len(batch) // 2
                    todo[:0] = [batch[:half], batch[half:]]
                    continue
                log.warning(
                    "destination %s rejected %d message(s), dead-lettered: %s",
                    name,
                    len(batch),
                    error,
                )
                self._dead_letter(name, batch, error)
                report.dead += len(batch)
                continue
            # Transient: park this batch and everything after it, back off for everyone.
            cutoff = time.time() - settings.retry_budget
            left = [*batch, *(r for rest in todo for r in rest)]
            enqueued_at = queue.enqueued_at
            expired = [r for r in left if enqueued_at(r) < cutoff]
            if expired:
                self._dead_letter(name, expired, f"{error} (retry budget exhausted)")
                report.dead += len(expired)
                log.error(
                    "destination %s: %d message(s) out of retry budget, dead-lettered: %s",
                    name,
                    len(expired),
                    error,
                )
            # The batch sent counts one more try; the ones after it were not sent.
            parked = [(r, attempt + 1) for r in batch] + [
                (r, r.attempts) for rest in todo for r in rest
            ]
            waiting = 0
            for tries in sorted({t for _, t in parked}):
                ids = [r.id for r, t in parked if t == tries and enqueued_at(r) >= cutoff]
                queue.hold_for_retry(name, ids, attempts=tries)
                waiting += len(ids)
            attempts = backoff.attempts + 1
            delay = backoff_delay(attempts, outcome.retry_after)
            backoff.attempts, backoff.until = attempts, time.time() + delay
            # When all of it was dead-lettered, the status says so, not just the failure.
            queue.set_backoff(
                name, backoff, error if waiting else f"{error} (retry budget exhausted)"
            )
            report.retry_at = backoff.until
            log.warning(
                "destination %s failed (%s); %d message(s) retried in %.1fs (attempt %d)",
                name,
                error,
                waiting,
                delay,
                attempts,
            )
            return False
        return True


class _ReadAhead:
    """Reads queued ahead of the batch being sent, run one after another on ``reader``.

    One thread keeps them in the log's order. ``depth``: how many to keep queued;
    ``drained``: a read came back short, so nothing more is read ahead.
    """

    def __init__(self, read: Callable[[], Records], reader: ThreadPoolExecutor) -> None:
        self.read, self.reader = read, reader
        self.queued: deque[tuple[Future[Records], float]] = deque()  # (read, queued at)
        self.depth = 1  # two once a batch was seen to go out quickly
        self.drained = False

    def top_up(self, deadline: float) -> None:
        while not self.drained and len(self.queued) < self.depth:
            at = time.monotonic()
            if at >= deadline:
                return
            self.queued.append((self.reader.submit(self.read), at))

    def drop_unstarted(self) -> bool:
        """Cancel the reads not started yet; whether there were any."""
        kept = [(future, at) for future, at in self.queued if not future.cancel()]
        dropped = len(kept) < len(self.queued)
        self.queued = deque(kept)
        return dropped

    def next(self) -> tuple[Records, float] | None:
        """The next read's records and when it was queued; None when none is queued."""
        if not self.queued:
            return None
        future, at = self.queued.popleft()
        return future.result(), at

    def started(self) -> Iterator[tuple[Records, float]]:
        """What every read already started holds (waited for); the others are dropped."""
        self.drop_unstarted()
        while (got := self.next()) is not None:
            yield got


class _Acks:
    """Acknowledgements sent from a pool thread, so the next batch need not wait for them.

    A crash before one lands sends its batch again, as a crash just before an inline
    acknowledgement would: delivery stays at least once. ``wait`` raises the first failure.
    """

    def __init__(self, queue: Queue, pool: ThreadPoolExecutor) -> None:
        self.queue, self.pool = queue, pool
        self.pending: list[Future[None]] = []

    def ack(self, destination: str, ids: Sequence[str], *, delivered: int = 0) -> None:
        for done in [f for f in self.pending if f.done()]:
            self.pending.remove(done)
            done.result()  # a failed acknowledgement stops the flush, as an inline one does
        self.pending.append(self.pool.submit(self.queue.ack, destination, ids, delivered=delivered))

    def wait(self) -> None:
        pending, self.pending = self.pending, []
        for future in pending:
            future.result()


def _same_attempts(records: Records) -> Iterator[Records]:
    """Runs of consecutive records tried the same number of times."""
    attempts = records.attempts
    if not attempts:
        return
    if attempts.count(attempts[0]) == len(attempts):
        yield records  # the common case: a read of new messages, or of one retried batch
        return
    start = 0
    for _tries, run in groupby(attempts):
        stop = start + sum(1 for _ in run)
        yield records[start:stop]
        start = stop
