"""Server-side analytics in the Segment spec: pageview middleware, tracked calls, durable delivery.

``import segment_mw`` wires nothing: call :func:`configure` (Django does it from
settings), then use the six calls or ``@tracked``; add the middleware for pageviews. In
async code, await ``atrack``/``apage``/... (``segment_mw.aio``) for a durable write.
"""

from __future__ import annotations

from .aio import aalias, aflush, agroup, aidentify, apage, ascreen, atrack
from .api import alias, flush, group, identify, page, screen, track
from .client import configure, get_client
from .decorators import tracked
from .errors import ConfigurationError, InvalidEvent
from .identity import set_user
from .scope import Scope, bound
from .version import __version__

__all__ = [
    "ConfigurationError",
    "InvalidEvent",
    "Scope",
    "__version__",
    "aalias",
    "aflush",
    "agroup",
    "aidentify",
    "alias",
    "apage",
    "ascreen",
    "atrack",
    "bound",
    "configure",
    "flush",
    "get_client",
    "group",
    "identify",
    "page",
    "screen",
    "set_user",
    "track",
    "tracked",
]
