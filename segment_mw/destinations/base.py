"""What a destination is: it takes a batch of serialised messages and says how it went."""

from __future__ import annotations

import abc
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Outcome:
    """The result of one delivery attempt."""

    ok: bool
    retry: bool = False  # a transient failure: try again later
    retry_after: float | None = None  # seconds the destination asked us to wait
    split: bool = False  # the batch was rejected as a whole: isolate the bad message(s)
    error: str | None = None
    #: with ``ok``: positions in the batch refused for good, and why; the rest was delivered
    refused: tuple[tuple[int, str], ...] = ()
    #: with ``ok``: positions not delivered yet, to be retried after a back-off (``error``
    #: and ``retry_after`` say why and when), as for a transient failure of just those
    pending: tuple[int, ...] = ()

    @classmethod
    def success(cls) -> Outcome:
        return cls(ok=True)

    @classmethod
    def partial(
        cls,
        refused: Mapping[int, str],
        pending: Iterable[int] = (),
        *,
        error: str | None = None,
        retry_after: float | None = None,
    ) -> Outcome:
        """Delivered, except the messages at these positions.

        The ``refused`` can never be (they are dead-lettered); the ``pending`` failed for
        a passing reason (``error``) and are retried after a back-off, alone: what was
        delivered beside them is not sent again.
        """
        return cls(
            ok=True,
            refused=tuple(sorted(refused.items())),
            pending=tuple(sorted(set(pending))),
            error=error,
            retry_after=retry_after,
        )

    @classmethod
    def transient(cls, error: str, retry_after: float | None = None) -> Outcome:
        return cls(ok=False, retry=True, retry_after=retry_after, error=error)

    @classmethod
    def rejected(cls, error: str, *, split: bool = False) -> Outcome:
        return cls(ok=False, split=split, error=error)


class Destination(abc.ABC):
    type: str = ""
    #: bytes a request adds around the joined messages (for the batch size limit)
    overhead: int = 0
    #: the most messages, and stored bytes, one ``send`` may be handed (the API's own
    #: limits); None: the BATCH_MAX_EVENTS / BATCH_MAX_BYTES settings alone decide
    max_events: int | None = None
    max_bytes: int | None = None

    def __init__(self, name: str, options: Mapping[str, Any]) -> None:
        self.name = name
        self.options = options

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"

    @abc.abstractmethod
    def send(self, bodies: Sequence[bytes], *, attempt: int = 0) -> Outcome:
        """Deliver the messages; never raise for delivery trouble, report it."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections and files."""
