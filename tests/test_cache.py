"""The bounded cache every request-keyed cache uses: a byte budget that holds under a
flood, least recently used out first, oversized entries never kept."""

from __future__ import annotations

import gc
import os
import threading
import tracemalloc

from segment_mw.cache import BoundedCache, memoize


def random_key(chars: int) -> str:
    return os.urandom(chars // 2).hex()


def test_a_flood_of_distinct_keys_stays_within_the_byte_budget():
    budget = 256 * 1024
    upper = memoize(max_bytes=budget, max_entry_bytes=4096)(str.upper)
    keys = [random_key(400) for _ in range(20_000)]  # made before measuring
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for key in keys:
            assert upper(key) == key.upper()
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert upper.cache.nbytes <= budget
    assert 100 < len(upper.cache) < 20_000
    # The budget counts what the entries really hold (values and bookkeeping), not just keys.
    assert grown < budget * 1.25, f"grew {grown} bytes for a {budget}-byte cache"


def test_least_recently_used_leave_first():
    cache: BoundedCache[str, int] = BoundedCache(max_bytes=3 * 300, max_entry_bytes=300)
    for key in ("a", "b", "c"):
        cache.put(key, 1)
    assert len(cache) == 3
    assert cache.get("a") == 1  # used: "b" is now the oldest
    cache.put("d", 1)
    assert [k for k in ("a", "b", "c", "d") if cache.get(k) is not None] == ["a", "c", "d"]


def test_entries_over_the_limit_are_computed_every_time_and_never_kept():
    calls: list[str] = []

    @memoize(max_bytes=1 << 20, max_entry_bytes=1024)
    def judge(value: str | None) -> None:
        calls.append(str(value))

    huge = random_key(8192)
    judge(huge)
    judge(huge)
    judge(None)
    judge(None)  # None is a value like any other: remembered
    assert calls == [huge, huge, "None"]
    assert len(judge.cache) == 1


def test_threads_share_a_cache_without_errors():
    seen: list[BaseException] = []
    memo = memoize(max_bytes=32 * 1024, max_entry_bytes=1024)(len)
    keys = [random_key(100) for _ in range(2_000)]

    def hammer() -> None:
        try:
            for _ in range(3):
                for key in keys:
                    assert memo(key) == len(key)
        except BaseException as exc:
            seen.append(exc)

    threads = [threading.Thread(target=hammer) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert seen == []
    assert memo.cache.nbytes <= 32 * 1024
    assert memo.cache.nbytes == sum(size for _, size in memo.cache._data.values())
