"""What the Starlette tests need to say the same thing on every supported Starlette.

Starlette's ``TestClient`` only takes a ``client`` address from 0.44, and its router names
the matched route in the scope (``scope["route"]``) from 1.7; before that, pageviews of
plain Starlette routes carry no name (FastAPI's routes put theirs in the scope anyway).
"""

from __future__ import annotations

from typing import Any

import starlette

ROUTE_IN_SCOPE = tuple(int(part) for part in starlette.__version__.split(".")[:2]) >= (1, 7)


def route_name(name: str) -> str | None:
    """The pageview name a plain Starlette route called ``name`` gives on this Starlette."""
    return name if ROUTE_IN_SCOPE else None


def from_client(app: Any, client: tuple[str, int]) -> Any:
    """``app`` as a server would call it for a connection from ``client``."""

    async def wrapped(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] in ("http", "websocket"):
            scope = {**scope, "client": client}
        await app(scope, receive, send)

    return wrapped
