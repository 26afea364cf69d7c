from __future__ import annotations

from collections.abc import Iterator

from asgiref.sync import sync_to_async
from django.contrib.auth import authenticate, login, logout
from django.http import (
    HttpRequest,
    HttpResponse,
    HttpResponseBadRequest,
    HttpResponseRedirect,
    JsonResponse,
    StreamingHttpResponse,
)
from django.template.response import TemplateResponse
from django.views import View

import segment_mw
from segment_mw.pageviews import pageview, set_pageview

PAGE = b"<!doctype html><html><head><title>%s</title></head><body>ok</body></html>"


def html(title: str = "Plain") -> HttpResponse:
    return HttpResponse(PAGE % title.encode())


def home(request: HttpRequest) -> TemplateResponse:
    return TemplateResponse(request, "page.html", {"title": "Home & garden"})


def plain(request: HttpRequest) -> HttpResponse:
    return html()


def product(request: HttpRequest, pk: int) -> HttpResponse:
    return html(f"Product {pk}")


def json_view(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"ok": True})


def form(request: HttpRequest) -> HttpResponse:
    return html("Form")


STREAM_CHUNKS = [
    b"<!doctype html><html><head><title>Streamed</title></head>",
    b"<body>",
    b"</body>",
]


def stream(request: HttpRequest) -> StreamingHttpResponse:
    def chunks() -> Iterator[bytes]:
        yield from STREAM_CHUNKS

    return StreamingHttpResponse(chunks(), content_type="text/html; charset=utf-8")


@pageview(
    "Checkout",
    category="Shop",
    properties={"step": 1},
    integrations={"Mixpanel": False},
)
def checkout(request: HttpRequest) -> HttpResponse:
    return html("Checkout")


@pageview(skip=True)
def skipped(request: HttpRequest) -> HttpResponse:
    return html("Skipped")


@pageview("About us", category="Company")
class About(View):
    def get(self, request: HttpRequest) -> HttpResponse:
        return html("About")


def dynamic(request: HttpRequest) -> HttpResponse:
    set_pageview(name="Dynamic", properties={"variant": "b"})
    return html("Dynamic")


def whoami(request: HttpRequest) -> HttpResponse:
    return html(f"Hello {request.user.get_username() or 'stranger'}")


def session_view(request: HttpRequest) -> HttpResponse:
    visits = request.session.get("visits", 0)
    return html(f"Visits {visits}")


def track_view(request: HttpRequest) -> JsonResponse:
    if request.GET.get("load_user"):
        request.user.is_authenticated  # noqa: B018
    message_id = segment_mw.track("Button Clicked", {"button": "buy"})
    return JsonResponse({"messageId": message_id})


async def async_home(request: HttpRequest) -> HttpResponse:
    return html("Async")


async def async_track(request: HttpRequest) -> JsonResponse:
    if hasattr(request, "auser"):  # Django 5.0+
        user = await request.auser()
    else:
        user = await sync_to_async(lambda: request.user._setup() or request.user._wrapped)()
    message_id = await segment_mw.atrack("Async Clicked", {"user": user.get_username()})
    return JsonResponse({"messageId": message_id})


def boom(request: HttpRequest) -> HttpResponse:
    raise RuntimeError("the view failed")


def own_cookie(request: HttpRequest) -> HttpResponse:
    response = html("Own cookie")
    response.set_cookie("ajs_anonymous_id", "set-by-the-view")
    return response


def login_view(request: HttpRequest) -> HttpResponse:
    user = authenticate(
        request, username=request.POST.get("username"), password=request.POST.get("password")
    )
    if user is None:
        return HttpResponseBadRequest("no")
    login(request, user)
    return HttpResponseRedirect("/")


def logout_view(request: HttpRequest) -> HttpResponse:
    logout(request)
    return HttpResponseRedirect("/")
