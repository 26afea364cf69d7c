"""Django picks the middleware's sync mode under WSGI and its async mode under ASGI."""

from __future__ import annotations

from asgiref.sync import iscoroutinefunction
from django.core.handlers.asgi import ASGIHandler
from django.core.handlers.wsgi import WSGIHandler
from django.http import HttpRequest, HttpResponse

from segment_mw.django import SegmentMiddleware


def find_ours(handler):
    node = handler._middleware_chain
    for _ in range(100):
        if isinstance(node, SegmentMiddleware):
            return node
        node = getattr(node, "__wrapped__", None) or getattr(node, "get_response", None)
    raise AssertionError("SegmentMiddleware is not in the chain")


def test_capabilities():
    assert SegmentMiddleware.sync_capable
    assert SegmentMiddleware.async_capable


def test_wsgi_handler_loads_it_in_sync_mode():
    middleware = find_ours(WSGIHandler())
    assert not middleware.async_mode
    assert not iscoroutinefunction(middleware)


def test_asgi_handler_loads_it_in_async_mode():
    middleware = find_ours(ASGIHandler())
    assert middleware.async_mode
    assert iscoroutinefunction(middleware)


def test_mode_follows_get_response():
    def view(request: HttpRequest) -> HttpResponse:
        return HttpResponse()

    async def async_view(request: HttpRequest) -> HttpResponse:
        return HttpResponse()

    assert not iscoroutinefunction(SegmentMiddleware(view))
    assert iscoroutinefunction(SegmentMiddleware(async_view))
