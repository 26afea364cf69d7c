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


def test_each_request_cache_keeps_what_a_real_browser_sends():
    """An entry budget below a real entry's size would compute every time and cache nothing."""
    from segment_mw import bots, capture, identity, pageviews, request_context

    user_agent = (
        "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 "
        "(KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36"
    )
    realistic = [
        (identity.ga_client_id, "GA1.1.1234567890.1712345678"),
        (identity.parse_id_cookie, "%220b9c3c2e-8f5d-4b0e-9a57-3f6d1c2b7e41%22"),
        (bots.is_bot, user_agent),
        (request_context.locale_from, "en-US,en;q=0.9,de;q=0.8"),
        (request_context._parse_brands, '"Chromium";v="124", "Google Chrome";v="124"'),
        (capture._clean_ip, "2001:db8:85a3::8a2e:370:7334"),
        (pageviews._charset, "text/html; charset=utf-8"),
    ]
    for func, value in realistic:
        func.cache_clear()
        first = func(value)
        assert func(value) == first
        assert len(func.cache) == 1, f"{func.__name__} did not keep {value!r}"
