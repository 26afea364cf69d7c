"""The identity and context of the code that is running now: a request, a task, or nothing.

Middleware binds a :class:`Scope` for the request's duration and the Celery integration
binds one for a task's; the six calls and ``@tracked`` read it to fill ids and context.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar, Token
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Scope:
    user_id: str | None = None
    anonymous_id: str | None = None
    context: Mapping[str, Any] = field(default_factory=dict)
    # The user opted out (GPC, consent): nothing is queued while this scope is bound.
    opted_out: bool = False
    # Per-request pageview options set by the view (name, category, properties, skip...).
    pageview: dict[str, Any] = field(default_factory=dict)
    # Messages queued while the scope was bound.
    emitted: int = 0

    def to_headers(self) -> dict[str, Any]:
        """A JSON-safe copy for carrying the scope in a Celery task's headers."""
        return {
            "u": self.user_id,
            "a": self.anonymous_id,
            "c": dict(self.context),
            "o": self.opted_out,
        }

    @classmethod
    def from_headers(cls, data: Any) -> Scope | None:
        if not isinstance(data, Mapping):
            return None
        context = data.get("c")
        return cls(
            user_id=data.get("u") if isinstance(data.get("u"), str) else None,
            anonymous_id=data.get("a") if isinstance(data.get("a"), str) else None,
            context=dict(context) if isinstance(context, Mapping) else {},
            opted_out=data.get("o") is True,
        )


_current: ContextVar[Scope | None] = ContextVar("segment_mw_scope", default=None)


def current() -> Scope | None:
    return _current.get()


def bind(scope: Scope | None) -> Token[Scope | None]:
    return _current.set(scope)


def reset(token: Token[Scope | None]) -> None:
    _current.reset(token)


@contextmanager
def bound(scope: Scope | None) -> Iterator[Scope | None]:
    """Bind ``scope`` for the duration of a ``with`` block (scripts, tasks, tests)."""
    token = _current.set(scope)
    try:
        yield scope
    finally:
        _current.reset(token)
