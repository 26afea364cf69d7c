"""Django integration: add ``"segment_mw.django"`` to ``INSTALLED_APPS`` and
``"segment_mw.django.SegmentMiddleware"`` to ``MIDDLEWARE`` after ``AuthenticationMiddleware``;
settings come from the ``SEGMENT_MW`` dict. The middleware is imported on first use, so
loading the app does not import it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

try:
    import django  # noqa: F401
except ImportError as exc:
    raise ImportError(
        "segment_mw.django needs Django; install it with: pip install 'segment-mw[django]'"
    ) from exc

if TYPE_CHECKING:
    from .middleware import SegmentMiddleware

__all__ = ["SegmentMiddleware"]


def __getattr__(name: str) -> Any:
    if name == "SegmentMiddleware":
        from .middleware import SegmentMiddleware

        return SegmentMiddleware
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
