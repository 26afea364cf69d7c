"""The one fork mechanism, with real ``os.fork()`` children: per-process values, callbacks
around the fork, and nothing wired at import."""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import threading
from collections.abc import Callable

import pytest

from segment_mw import forks


def in_child(body: Callable[[], object]) -> object:
    """Run ``body`` in a forked child and return what it returned (JSON), or its error."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report, then leave without running the parent's exit hooks
        os.close(read)
        try:
            out = json.dumps({"ok": body()})
        except BaseException as exc:  # reported to the parent
            out = json.dumps({"error": repr(exc)})
        os.write(write, out.encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        data = pipe.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    result = json.loads(data)
    assert "error" not in result, result["error"]
    return result["ok"]


class Resource:
    made: list[Resource] = []

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.closed = False
        Resource.made.append(self)

    def close(self) -> None:
        self.closed = True


def test_process_local_makes_one_value_per_process() -> None:
    local: forks.ProcessLocal[Resource] = forks.ProcessLocal(Resource)
    assert local.peek() is None
    parents = local.get()
    assert local.get() is parents
    assert local.peek() is parents

    def child() -> object:
        assert local.peek() is None  # the parent's is never handed out here
        mine = local.get()
        assert mine is not parents
        assert local.get() is mine
        assert local.reset() is mine  # this process made it: the caller closes it
        return [mine.pid, os.getpid(), parents in forks._inherited]

    made_in, child_pid, kept = in_child(child)
    assert made_in == child_pid != os.getpid()
    assert kept  # held in the child so no finaliser of the parent's value runs there
    assert local.get() is parents  # the parent's is untouched
    assert not parents.closed


def test_reset_in_a_child_never_hands_back_the_parents_value() -> None:
    local: forks.ProcessLocal[Resource] = forks.ProcessLocal(Resource)
    parents = local.get()

    def child() -> object:
        gone = local.reset()
        return [gone is None, local.peek() is None, local.get() is not parents]

    assert in_child(child) == [True, True, True]
    assert local.reset() is parents


class Counter:
    def __init__(self) -> None:
        self.events: list[str] = []

    def before(self) -> None:
        self.events.append("before")

    def parent(self) -> None:
        self.events.append("parent")

    def child(self) -> None:
        self.events.append("child")


def test_at_fork_runs_callbacks_around_a_real_fork() -> None:
    counter = Counter()
    forks.at_fork(
        before=counter.before, after_in_parent=counter.parent, after_in_child=counter.child
    )
    assert forks.hooks_installed()
    assert in_child(lambda: counter.events) == ["before", "child"]
    assert counter.events == ["before", "parent"]


class Mortal(Counter):
    pass


def test_at_fork_holds_bound_methods_weakly() -> None:
    def registered() -> int:
        return sum(isinstance(getattr(ref(), "__self__", None), Mortal) for ref in hooks)

    hooks = forks._hooks.after_in_child
    mortal = Mortal()
    forks.at_fork(after_in_child=mortal.child)
    assert registered() == 1
    del mortal
    gc.collect()
    assert registered() == 0  # registering did not keep it alive
    assert any(ref() is None for ref in hooks)
    # The next fork forgets its callback, in the parent too.
    in_child(lambda: None)
    assert all(ref() is not None for ref in hooks)


def test_a_failing_callback_does_not_stop_the_others() -> None:
    counter = Counter()

    def broken() -> None:
        raise RuntimeError("broken")

    forks.at_fork(after_in_child=broken)
    forks.at_fork(after_in_child=counter.child)
    assert in_child(lambda: counter.events) == ["child"]


def test_fork_while_another_thread_holds_a_sqlite_transaction(tmp_path) -> None:
    """The SQLite queue waits at the fork for a transaction in another thread to end."""
    from segment_mw.queue import open_queue

    from .test_queue_backends import entries

    queue = open_queue(f"sqlite:///{tmp_path / 'q.sqlite3'}")
    queue.push(entries(1))
    inside, leave = threading.Event(), threading.Event()

    def hold() -> None:
        with queue._tx():  # type: ignore[attr-defined]
            inside.set()
            leave.wait(10)

    holder = threading.Thread(target=hold)
    holder.start()
    inside.wait(10)
    threading.Timer(0.2, leave.set).start()  # the fork below waits for this

    def child() -> object:
        queue.push(entries(2, tag="child"))
        return len(queue.read_new("A", "c", 10))

    assert in_child(child) == 3
    holder.join(10)
    assert len(queue.read_new("B", "c", 10)) == 3  # the parent's connection works on
    queue.close()


@pytest.mark.parametrize("module", ["segment_mw", "segment_mw.celery", "segment_mw.django"])
def test_nothing_is_wired_at_import(module: str) -> None:
    code = (
        "import os, sys\n"
        "calls = []\n"
        "real = os.register_at_fork\n"
        "os.register_at_fork = lambda **kw: calls.extend(kw.values()) or real(**kw)\n"
        f"import {module}\n"
        "import segment_mw.queue.redis, segment_mw.queue.sql, segment_mw.destinations.http\n"
        "from segment_mw import forks\n"
        "ours = [f for f in calls if (getattr(f, '__module__', '') or '').startswith('segment')]\n"
        "print(len(ours), forks.hooks_installed())\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SEGMENT_", "DJANGO_"))}
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["0", "False"]
