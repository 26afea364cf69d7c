"""Fork safety in one place: what each process makes for itself, and what runs at a fork.

A forked child (gunicorn, uWSGI, Celery prefork, multiprocessing) inherits its parent's
connections, buffers, thread objects and locks, and may use none of them. A
:class:`ProcessLocal` holds a value made on first use in each process: a child that finds
its parent's value makes its own, and keeps the parent's referenced so that no finaliser
ever closes it (closing an inherited SQLite connection or shutting down an inherited socket
would break the parent's). It goes by the process id, which is right even where a server
forks without running Python's fork hooks (uWSGI without ``py-call-osafterfork``).
:func:`at_fork` is for what must happen at the fork itself, such as a lock that may not be
held across it; its one ``os.register_at_fork`` registration is made on first use, never
at import, and the callbacks of objects that are gone are dropped.
"""

from __future__ import annotations

import logging
import os
import threading
import weakref
from collections.abc import Callable
from types import MethodType
from typing import Generic, TypeVar

log = logging.getLogger("segment_mw.forks")

T = TypeVar("T")

Callback = Callable[[], None]

# The parent's values, held (never used) in a child so their finalisers never run there.
_inherited: list[object] = []


class ProcessLocal(Generic[T]):
    """A value made by ``make`` on first use in each process.

    Two threads of a freshly forked child may race to make it; one value wins and the other
    is dropped, so ``make`` must be cheap and side-effect free (open connections lazily).
    """

    __slots__ = ("_held", "_make")

    def __init__(self, make: Callable[[], T]) -> None:
        self._make = make
        self._held: tuple[int, T] | None = None

    def get(self) -> T:
        """This process's value, made now if it has none."""
        held, pid = self._held, os.getpid()
        if held is not None:
            if held[0] == pid:
                return held[1]
            _inherited.append(held[1])
        value = self._make()
        self._held = (pid, value)
        return value

    def peek(self) -> T | None:
        """This process's value if it made one (never the parent's), else None."""
        held = self._held
        return held[1] if held is not None and held[0] == os.getpid() else None

    def reset(self) -> T | None:
        """Forget the value; return it when this process made it (for the caller to close)."""
        held, self._held = self._held, None
        if held is None:
            return None
        if held[0] != os.getpid():
            _inherited.append(held[1])
            return None
        return held[1]


class _Hooks:
    """The callbacks run around every fork, each held weakly when it is a bound method."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.before: list[Callable[[], Callback | None]] = []
        self.after_in_parent: list[Callable[[], Callback | None]] = []
        self.after_in_child: list[Callable[[], Callback | None]] = []
        self.installed = False

    def add(self, kind: list[Callable[[], Callback | None]], callback: Callback) -> None:
        if isinstance(callback, MethodType):
            kind.append(weakref.WeakMethod(callback))
        else:
            kind.append(lambda: callback)

    def run(self, kind: list[Callable[[], Callback | None]], *, reverse: bool = False) -> None:
        live = [ref for ref in kind if ref() is not None]
        kind[:] = live
        for ref in reversed(live) if reverse else live:
            callback = ref()
            if callback is None:
                continue
            try:
                callback()
            except Exception:  # one part's trouble must not keep the others from their turn
                log.exception("fork callback %r failed", callback)


_hooks = _Hooks()


def _before() -> None:
    _hooks.lock.acquire()
    # The child's list is only run in children: forget its dead callbacks here too.
    _hooks.after_in_child[:] = [ref for ref in _hooks.after_in_child if ref() is not None]
    # Like os.register_at_fork: "before" callbacks run in the reverse order of registration.
    _hooks.run(_hooks.before, reverse=True)


def _after_in_parent() -> None:
    try:
        _hooks.run(_hooks.after_in_parent)
    finally:
        _hooks.lock.release()


def _after_in_child() -> None:
    _hooks.lock = threading.Lock()  # the parent's is held by the forking thread
    _hooks.run(_hooks.after_in_child)


def at_fork(
    *,
    before: Callback | None = None,
    after_in_parent: Callback | None = None,
    after_in_child: Callback | None = None,
) -> None:
    """Run these around every ``os.fork()`` from now on, for as long as their object lives.

    Bound methods are held weakly: registering an object's methods does not keep it alive,
    and once it is collected its callbacks are dropped.
    """
    with _hooks.lock:
        if not _hooks.installed:
            os.register_at_fork(
                before=_before, after_in_parent=_after_in_parent, after_in_child=_after_in_child
            )
            _hooks.installed = True
        for kind, callback in (
            (_hooks.before, before),
            (_hooks.after_in_parent, after_in_parent),
            (_hooks.after_in_child, after_in_child),
        ):
            if callback is not None:
                _hooks.add(kind, callback)


def hooks_installed() -> bool:
    """Whether :func:`at_fork` has registered with ``os.register_at_fork`` in this process."""
    return _hooks.installed
