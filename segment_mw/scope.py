"""The identity and context of the code that is running now: a request, a task, or nothing.

Middleware binds a :class:`Scope` for the request's duration and the Celery integration
binds one for a task's; the six calls and ``@tracked`` read it (through
:mod:`segment_mw.identity`) to fill ids and context. A request's user is asked of the
framework each time an event is built, so a login or logout mid-request shows at once.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar, Token
from typing import Any

from . import metrics
from .request_context import Facts, context_from
from .serialize import dumps

log = logging.getLogger("segment_mw")

#: Asked for the request's authenticated user id when an event is built; None: nobody.
UserSource = Callable[[], "str | None"]


def as_user_id(value: Any) -> str | None:
    """An id as the frameworks hand them over (a string, an integer or UUID primary key).

    Anything else (a model object, a bool) is no id at all: its repr would make a wrong
    one, not an error.
    """
    if isinstance(value, str):
        return value or None
    if isinstance(value, bool) or not isinstance(value, (int, uuid.UUID)):
        return None
    return str(value)


class Scope:
    """Who the current request or task is, and the request's context.

    ``user_id`` is the *authenticated* user: one bound explicitly (``set_user``, a task's
    sender, a script) or else the one the framework reports through ``user_source``. It
    never comes from a browser-writable cookie.
    """

    __slots__ = (
        "_context",
        "_facts_json",
        "_user_id",
        "anonymous_id",
        "emitted",
        "facts",
        "opted_out",
        "pageview",
        "user_source",
    )

    def __init__(
        self,
        user_id: Any = None,
        anonymous_id: str | None = None,
        context: Mapping[str, Any] | None = None,
        opted_out: bool = False,
        pageview: dict[str, Any] | None = None,
        emitted: int = 0,
        user_source: UserSource | None = None,
        facts: Facts | None = None,
    ) -> None:
        self._user_id = as_user_id(user_id)
        self.anonymous_id = anonymous_id
        # A request's context is made from its facts when first asked for (most requests
        # never ask: their events are queued with the facts, see events.build).
        self.facts: Facts | None = facts
        self._context: Mapping[str, Any] | None = context
        self._facts_json: bytes | None = None
        # The user opted out (GPC, consent): nothing about them is queued in this scope.
        self.opted_out = opted_out
        # Per-request pageview options set by the view (name, category, properties, skip...).
        self.pageview: dict[str, Any] = pageview if pageview is not None else {}
        # Messages queued while the scope was bound.
        self.emitted = emitted
        self.user_source = user_source

    @property
    def context(self) -> Mapping[str, Any]:
        """The request's Segment context (``{}`` for a scope that is no request's)."""
        context = self._context
        if context is None:
            context = self._context = context_from(self.facts) if self.facts is not None else {}
        return context

    @property
    def facts_json(self) -> bytes | None:
        """The facts serialised, once per request (every event of it carries them)."""
        if self._facts_json is None and self.facts is not None:
            self._facts_json = dumps(self.facts)
        return self._facts_json

    def set_title(self, title: str) -> None:
        """The page's title, once the response shows it: in the facts and the context made."""
        if self.facts is None:
            return
        self.facts["title"] = title
        self._facts_json = None
        if self._context is not None and isinstance(self._context.get("page"), dict):
            self._context["page"]["title"] = title

    @property
    def user_id(self) -> str | None:
        if self._user_id is not None or self.user_source is None:
            return self._user_id
        try:
            return as_user_id(self.user_source())
        except Exception:
            metrics.count("user_source_failed")
            metrics.warn_once_per_interval(
                "user_source_failed", "could not read the request's user", exc_info=True
            )
            return None

    @user_id.setter
    def user_id(self, value: Any) -> None:
        self._user_id = as_user_id(value)

    def __repr__(self) -> str:
        # Ids and context are personal data: a repr (in a log, a traceback) says only
        # what is there.
        return (
            f"Scope(user_id={'<set>' if self._user_id else None}, "
            f"user_source={'<set>' if self.user_source else None}, "
            f"anonymous_id={'<set>' if self.anonymous_id else None}, "
            f"facts={'<set>' if self.facts else None}, opted_out={self.opted_out})"
        )

    def to_headers(self) -> dict[str, Any]:
        """A JSON-safe copy for carrying the scope in a Celery task's headers.

        The user is read now, when the task is sent: the task acts for whoever the
        request was at that moment.
        """
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
