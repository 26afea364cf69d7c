"""Caches of values computed from request data, bounded in bytes rather than in entries.

User agents, cookies, languages and host headers are whatever the client sends, so a cache
keyed by them fills as easily with 8 KB keys as with 100-byte ones: an entry limit alone
bounds nothing. Each cache here has a byte budget (keys and values as ``sys.getsizeof``
counts them, plus its own bookkeeping per entry), never keeps an entry larger than a limit
(that value is simply computed again next time), and evicts the least recently used first.
"""

from __future__ import annotations

import sys
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any, Generic, TypeVar, overload

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")
D = TypeVar("D")

# What the cache itself spends per entry: the ordered dict's slot and link, and the
# (value, size) pair it keeps.
ENTRY_OVERHEAD = 200


def size_of(obj: Any) -> int:
    """Bytes held by a key or value: strings, bytes, numbers and containers of them."""
    size = sys.getsizeof(obj)
    if isinstance(obj, (tuple, list, frozenset, set)):
        size += sum(size_of(item) for item in obj)
    elif isinstance(obj, dict):
        size += sum(size_of(k) + size_of(v) for k, v in obj.items())
    return size


class BoundedCache(Generic[K, V]):
    """A least-recently-used mapping that holds at most ``max_bytes``.

    Safe to share between threads: a hit is a dict lookup and a move (each atomic), and
    a store takes a lock.
    """

    def __init__(self, *, max_bytes: int, max_entry_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.max_entry_bytes = min(max_entry_bytes, max_bytes)
        self._data: OrderedDict[K, tuple[V, int]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._data)

    @property
    def nbytes(self) -> int:
        """What the entries take, by the same count as the budget."""
        return self._bytes

    @overload
    def get(self, key: K) -> V | None: ...

    @overload
    def get(self, key: K, default: D) -> V | D: ...

    def get(self, key: K, default: Any = None) -> Any:
        entry = self._data.get(key)
        if entry is None:
            return default
        try:  # noqa: SIM105 - suppress() would cost more than the lookup
            self._data.move_to_end(key)
        except KeyError:  # evicted by another thread meanwhile
            pass
        return entry[0]

    def put(self, key: K, value: V) -> None:
        size = size_of(key) + size_of(value) + ENTRY_OVERHEAD
        if size > self.max_entry_bytes:
            return
        with self._lock:
            data = self._data
            old = data.pop(key, None)
            if old is not None:
                self._bytes -= old[1]
            data[key] = (value, size)
            self._bytes += size
            while self._bytes > self.max_bytes:
                _, (_, evicted) = data.popitem(last=False)
                self._bytes -= evicted

    def clear(self) -> None:
        with self._lock:
            self._data.clear()
            self._bytes = 0


class Memo(Generic[K, V]):
    """``func`` of one argument, remembered in a :class:`BoundedCache`."""

    def __init__(self, func: Callable[[K], V], *, max_bytes: int, max_entry_bytes: int) -> None:
        self.func = func
        self.cache: BoundedCache[K, V] = BoundedCache(
            max_bytes=max_bytes, max_entry_bytes=max_entry_bytes
        )
        self.__doc__ = func.__doc__
        self.__name__ = getattr(func, "__name__", "memo")
        self.__wrapped__ = func

    def __call__(self, key: K) -> V:
        # BoundedCache.get inlined: this runs several times per request.
        data = self.cache._data
        entry = data.get(key)
        if entry is not None:
            try:  # noqa: SIM105 - suppress() would cost more than the lookup
                data.move_to_end(key)
            except KeyError:  # evicted by another thread meanwhile
                pass
            return entry[0]
        value = self.func(key)
        self.cache.put(key, value)
        return value

    def cache_clear(self) -> None:
        self.cache.clear()


def memoize(*, max_bytes: int, max_entry_bytes: int) -> Callable[[Callable[[K], V]], Memo[K, V]]:
    """Decorate a function of one hashable argument (request data) with a bounded cache."""

    def decorate(func: Callable[[K], V]) -> Memo[K, V]:
        return Memo(func, max_bytes=max_bytes, max_entry_bytes=max_entry_bytes)

    return decorate
