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
from django.views.decorators.cache import cache_control, never_cache

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


def login_and_track(request: HttpRequest) -> JsonResponse:
    segment_mw.track("Before Login")
    user = authenticate(
        request, username=request.POST.get("username"), password=request.POST.get("password")
    )
    assert user is not None
    login(request, user)
    segment_mw.track("After Login")
    return JsonResponse({"ok": True})


def logout_and_track(request: HttpRequest) -> JsonResponse:
    segment_mw.track("Before Logout")
    logout(request)
    segment_mw.track("After Logout")
    return JsonResponse({"ok": True})


def token_auth(request: HttpRequest) -> JsonResponse:
    """What Django REST framework's token authentication does: the view sets the user."""
    from django.contrib.auth.models import User

    request.user = User.objects.get(username=request.headers["X-Token"])
    segment_mw.track("Token Used")
    return JsonResponse({"ok": True})


def set_user_view(request: HttpRequest) -> HttpResponse:
    segment_mw.set_user("ext-42")  # an authentication Django does not know about
    segment_mw.track("Linked")
    return html("Linked")


@segment_mw.tracked(
    "Refund Issued", user_id=lambda customer: customer, properties={"amount": "12.50"}
)
def refund(customer: str) -> None:
    return None


def staff_acts_for_customers(request: HttpRequest) -> HttpResponse:
    request.user.is_authenticated  # noqa: B018  (an admin page looks at its user)
    segment_mw.track("Order Completed", {"revenue": 99}, user_id="cust-77")
    refund("cust-78")
    segment_mw.track("Report Viewed", user_id=str(request.user.pk))  # the staff member
    return html("Back office")


async def async_plain_track(request: HttpRequest) -> JsonResponse:
    """An async view that never looks at its user."""
    return JsonResponse({"messageId": segment_mw.track("Async Plain")})


def tracked_page(request: HttpRequest) -> HttpResponse:
    segment_mw.track("Page Rendered")
    return html("Tracked")


@never_cache
def private_page(request: HttpRequest) -> HttpResponse:
    return html("Private")


@cache_control(public=True, max_age=300)
def public_page(request: HttpRequest) -> HttpResponse:
    return html("Public")


@cache_control(s_maxage=300)
def cdn_page(request: HttpRequest) -> HttpResponse:
    return html("CDN")
