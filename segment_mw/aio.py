"""Awaitable forms of the six calls and of ``flush``, for async code (FastAPI, ASGI, Django).

``await segment_mw.atrack(...)`` builds and queues the message exactly as ``track()``
does, in a worker thread (``asyncio.to_thread``, which carries the caller's context
variables, so the request's or task's identity applies), so the event loop never waits
on Redis or a file. When the await returns, the message is in the queue, or in the
bounded spill (counted) if the queue did not answer within ``ENQUEUE_TIMEOUT``: the same
promise as the synchronous call. Invalid arguments raise
:class:`~segment_mw.InvalidEvent` from the await.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Coroutine
from typing import Any, ParamSpec, TypeVar

from . import api

P = ParamSpec("P")
R = TypeVar("R")


def _awaitable(call: Callable[P, R], name: str) -> Callable[P, Coroutine[Any, Any, R]]:
    """``call`` run off the event loop; same parameters, same result, same errors."""

    @functools.wraps(call)
    async def run(*args: P.args, **kwargs: P.kwargs) -> R:
        return await asyncio.to_thread(call, *args, **kwargs)

    run.__name__ = name
    run.__qualname__ = name
    run.__doc__ = f"Awaitable :func:`segment_mw.{call.__name__}`, run off the event loop.\n\n" + (
        call.__doc__ or ""
    )
    return run


atrack = _awaitable(api.track, "atrack")
apage = _awaitable(api.page, "apage")
ascreen = _awaitable(api.screen, "ascreen")
aidentify = _awaitable(api.identify, "aidentify")
agroup = _awaitable(api.group, "agroup")
aalias = _awaitable(api.alias, "aalias")
aflush = _awaitable(api.flush, "aflush")
