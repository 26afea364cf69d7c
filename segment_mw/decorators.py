"""``@tracked``: a ``track`` event for each call of a business function, never an error.

The message is built when the call returns or raises, so its messageId, timestamp,
identity and request context are those of the call; inside a Django ``transaction.atomic()``
block a success is only queued once the transaction commits (and dropped on rollback),
so a charge that was rolled back is never reported as completed. The function's own
exceptions pass through untouched; anything that goes wrong with the event itself is
logged to ``segment_mw.tracked`` and counted, never raised into the caller.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import logging
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, TypeVar, cast

from . import api, events, identity, metrics
from . import scope as scope_mod
from .errors import InvalidEvent

log = logging.getLogger("segment_mw.tracked")

F = TypeVar("F", bound="Callable[..., Any] | classmethod[Any, Any, Any] | staticmethod[Any, Any]")
On = Literal["success", "failure", "always"]
ON_VALUES = ("success", "failure", "always")
MAX_ERROR_MESSAGE = 1024  # characters of str(exc); the event must stay under 32 KB

# Celery's control-flow exceptions (a retry, an ignore, a reject) are not failures: the
# task is run again or deliberately dropped. Matched by name so Celery is never imported.
_CELERY_CONTROL = ("Retry", "Ignore", "Reject")


def tracked(
    event: str,
    *,
    properties: Mapping[str, Any] | Callable[..., Mapping[str, Any] | None] | None = None,
    user_id: str | Callable[..., Any] | None = None,
    anonymous_id: str | Callable[..., Any] | None = None,
    integrations: Mapping[str, Any] | None = None,
    context: Mapping[str, Any] | None = None,
    on: On = "success",
    on_commit: bool | None = None,
    using: str | None = None,
    error_message: bool = False,
) -> Callable[[F], F]:
    """Emit the track event ``event`` each time the decorated callable completes.

    Works on plain functions, methods (also above or below ``@classmethod`` and
    ``@staticmethod``), ``async def`` functions and Celery task functions (put
    ``@shared_task`` / ``@app.task`` on top of ``@tracked``). Generator functions are
    refused with :class:`TypeError`: their body runs only while they are iterated.

    ``properties``: a static mapping, or a callable ``properties(result, *args, **kwargs)``
    returning a mapping (or None), called with the call's outcome and its arguments exactly
    as the decorated function received them (``self``/``cls`` included for methods, the
    task for ``bind=True`` tasks). The outcome is the return value (awaited, for ``async
    def``) on success and the exception instance on failure; with ``on="always"``, test
    ``isinstance(result, BaseException)``. A failure event always carries ``error_type``
    (the exception class's qualified name) over the caller's properties; never a
    traceback, and ``str(exc)`` (which often holds customer data: a card number, an
    address) only with ``error_message=True``, as ``error_message`` cut to 1024 characters.

    ``user_id`` / ``anonymous_id``: a static string, or a callable ``(*args, **kwargs)``
    returning the id (or None). What they do not give comes from the current scope: the
    request's identity under the middleware, or, in a Celery task, that of the request
    that sent it. An event naming another user than the request's authenticated one
    (staff acting for a customer) takes none of the request's identity, context or
    opt-out (see :func:`segment_mw.identity.resolve`). With no id at all the event is not
    sent: it is logged with its name and counted as ``no_identity``.

    ``integrations`` and ``context`` are static mappings merged into the message (the
    context over the request's). ``on`` is ``"success"`` (default; no event when the call
    raises), ``"failure"`` (only when it raises) or ``"always"``. Only :class:`Exception`
    counts as a failure: ``KeyboardInterrupt``, task cancellation and Celery's ``Retry``,
    ``Ignore`` and ``Reject`` emit nothing.

    ``on_commit`` (default: the ``ON_COMMIT`` setting, True): inside a Django
    ``transaction.atomic()`` block on the ``using`` database (default ``"default"``), a
    success event is queued by ``transaction.on_commit`` and discarded on rollback;
    outside one it is queued at once. A failure event is always queued at once, since
    the exception usually rolls the transaction back and the failure happened anyway.
    In tests that run inside a transaction (Django's ``TestCase``, pytest-django's
    ``django_db``), capture the commit callbacks (``captureOnCommitCallbacks(execute=True)``
    or the ``django_capture_on_commit_callbacks`` fixture) to see the events.

    Nothing about a visitor who opted out (GPC, consent) is queued, as with the six
    calls. Events are queued with a synchronous durable write (a bounded-time push; on
    failure they wait in the in-memory spill). For ``async def`` functions that write,
    and the building of the event (so the properties callable and id resolvers too), run
    in a worker thread that the wrapper awaits: the event loop never waits on Redis, and
    the event is queued when the await returns. The return value and exceptions of the
    decorated callable pass through unchanged (the same exception object, traceback
    intact). A problem with the event itself (a properties callable or resolver that
    raises or returns the wrong type, an invalid or oversized message) is logged to
    ``segment_mw.tracked`` and counted (``invalid`` or ``tracked_error``), never raised.
    """
    if not isinstance(event, str) or not event.strip():
        raise TypeError("@tracked needs a non-empty event name, e.g. @tracked('Order Completed')")
    if on not in ON_VALUES:
        raise ValueError(f"@tracked({event!r}): on must be one of {ON_VALUES}, got {on!r}")
    if properties is not None and not (isinstance(properties, Mapping) or callable(properties)):
        raise TypeError(f"@tracked({event!r}): properties must be a mapping or a callable")
    for name, resolver in (("user_id", user_id), ("anonymous_id", anonymous_id)):
        if resolver is not None and not (isinstance(resolver, str) or callable(resolver)):
            raise TypeError(f"@tracked({event!r}): {name} must be a string or a callable")
    for name, value in (("integrations", integrations), ("context", context)):
        if value is not None and not isinstance(value, Mapping):
            raise TypeError(f"@tracked({event!r}): {name} must be a mapping")

    spec = _Spec(
        event=event,
        properties=properties,
        user_id=user_id,
        anonymous_id=anonymous_id,
        integrations=integrations,
        context=context,
        on_success=on in ("success", "always"),
        on_failure=on in ("failure", "always"),
        on_commit=on_commit,
        using=using,
        error_message=bool(error_message),
    )

    def decorate(fn: F) -> F:
        if isinstance(fn, (classmethod, staticmethod)):
            return type(fn)(decorate(fn.__func__))
        return cast(F, spec.wrap(fn))

    return decorate


@dataclass(frozen=True)
class _Spec:
    event: str
    properties: Mapping[str, Any] | Callable[..., Mapping[str, Any] | None] | None
    user_id: str | Callable[..., Any] | None
    anonymous_id: str | Callable[..., Any] | None
    integrations: Mapping[str, Any] | None
    context: Mapping[str, Any] | None
    on_success: bool
    on_failure: bool
    on_commit: bool | None
    using: str | None
    error_message: bool

    def wrap(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        if not callable(fn):
            raise TypeError(f"@tracked({self.event!r}) needs a callable, got {fn!r}")
        if inspect.isgeneratorfunction(fn) or inspect.isasyncgenfunction(fn):
            raise TypeError(
                f"@tracked({self.event!r}) cannot wrap the generator function "
                f"{getattr(fn, '__qualname__', fn)!r}: its body only runs while it is "
                "iterated; call segment_mw.track() inside it instead"
            )
        wrapper: Callable[..., Any]
        if inspect.iscoroutinefunction(fn):

            @functools.wraps(fn)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                # The event is built and written in a worker thread (with this context's
                # variables, so the scope is the same): the loop never waits on Redis.
                try:
                    result = await fn(*args, **kwargs)
                except Exception as exc:
                    if self.on_failure:
                        await asyncio.to_thread(self.emit, exc, args, kwargs, failed=True)
                    raise
                if self.on_success:
                    await asyncio.to_thread(self.emit, result, args, kwargs, failed=False)
                return result

            wrapper = async_wrapper
        else:

            @functools.wraps(fn)
            def sync_wrapper(*args: Any, **kwargs: Any) -> Any:
                try:
                    result = fn(*args, **kwargs)
                except Exception as exc:
                    if self.on_failure:
                        self.emit(exc, args, kwargs, failed=True)
                    raise
                if self.on_success:
                    self.emit(result, args, kwargs, failed=False)
                return result

            wrapper = sync_wrapper
        # Celery checks a task's arguments at .delay() against the signature it reads
        # without following __wrapped__; an explicit __signature__ keeps that check.
        with contextlib.suppress(TypeError, ValueError):  # no signature to read: skip it
            cast(Any, wrapper).__signature__ = inspect.signature(fn)
        return wrapper

    def emit(
        self, result: Any, args: tuple[Any, ...], kwargs: dict[str, Any], *, failed: bool
    ) -> None:
        """Build and queue the event; log and count every problem, raise none."""
        if failed and _is_control_flow(result):
            return
        try:
            self._emit(result, args, kwargs, failed=failed)
        except InvalidEvent as exc:
            metrics.count("invalid")
            log.warning("tracked event %r not sent: %s", self.event, exc)
        except Exception as exc:
            # Mostly a properties callable or an id resolver that raised; the traceback
            # says which.
            metrics.count("tracked_error")
            log.warning(
                "tracked event %r not sent: %s: %s",
                self.event,
                type(exc).__name__,
                exc,
                exc_info=True,
            )

    def _emit(
        self, result: Any, args: tuple[Any, ...], kwargs: dict[str, Any], *, failed: bool
    ) -> None:
        current = scope_mod.current()
        who = identity.resolve(
            current,
            user_id=_resolve(self.user_id, args, kwargs),
            anonymous_id=_resolve(self.anonymous_id, args, kwargs),
        )
        if who.opted_out:
            metrics.count("opted_out")  # as for the six calls: nothing is queued for them
            return
        if not who.identified:
            metrics.count("no_identity")
            log.warning(
                "tracked event %r not sent: no user or anonymous id (none is bound for "
                "a request or task, and the decorator's user_id/anonymous_id gave none)",
                self.event,
            )
            return
        props = self._properties(result, args, kwargs)
        if failed:
            props["error_type"] = type(result).__qualname__
            if self.error_message:
                props["error_message"] = str(result)[:MAX_ERROR_MESSAGE]
        entry = api.build_message(
            "track",
            events.track_fields(self.event, props),
            who,
            context=self.context,
            integrations=self.integrations,
        )
        client = api.usable_client()
        if client is None:
            return
        settings = client.settings
        on_commit = settings.on_commit if self.on_commit is None else self.on_commit
        if not failed and on_commit and _defer_to_commit(entry, current, self.using):
            return
        api.queue_message(entry, current, durable=True)

    def _properties(
        self, result: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> dict[str, Any]:
        if self.properties is None:
            return {}
        if isinstance(self.properties, Mapping):
            return dict(self.properties)
        value = self.properties(result, *args, **kwargs)
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            raise InvalidEvent(
                f"properties: the properties callable returned {type(value).__name__}, "
                "expected a mapping"
            )
        return dict(value)


def _resolve(
    resolver: str | Callable[..., Any] | None, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    if resolver is None or isinstance(resolver, str):
        return resolver
    return resolver(*args, **kwargs)


def _is_control_flow(exc: BaseException) -> bool:
    module = sys.modules.get("celery.exceptions")
    if module is None:
        return False
    kinds = tuple(getattr(module, name, None) for name in _CELERY_CONTROL)
    return isinstance(exc, tuple(k for k in kinds if isinstance(k, type)))


def _queue_after_commit(entry: events.Entry, current: scope_mod.Scope | None) -> None:
    # Runs inside Django's commit: an exception here would reach the code that committed.
    try:
        api.queue_message(entry, current, durable=True)
    except Exception:
        metrics.count("tracked_error")
        log.warning("tracked event could not be queued after commit", exc_info=True)


def _defer_to_commit(
    entry: events.Entry, current: scope_mod.Scope | None, using: str | None
) -> bool:
    """Hand ``entry`` to ``transaction.on_commit`` when a Django atomic block is open."""
    # Nobody can be inside transaction.atomic() without having imported it: when it is
    # not loaded, Django is not in use here and is never imported for this check.
    if "django.db.transaction" not in sys.modules:
        return False
    from django.conf import settings

    if not settings.configured:
        return False
    from django.db import transaction

    if not transaction.get_connection(using).in_atomic_block:
        return False
    transaction.on_commit(functools.partial(_queue_after_commit, entry, current), using=using)
    return True
