from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import pytest

from ..sink import Sink, running_sink


@pytest.fixture
def sinks() -> Iterator[Callable[[], Sink]]:
    """As many more sinks as a test needs (one for the SDK, one for us)."""
    with contextlib.ExitStack() as stack:
        yield lambda: stack.enter_context(running_sink())
