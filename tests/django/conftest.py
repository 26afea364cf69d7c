"""Django for the integration tests: the real project in tests/django_project, set up here
rather than through pyproject because pytest-django would import its settings before the
repository root is importable; every test that takes ``browser`` runs twice, through the
WSGI handler (sync middleware) and the ASGI handler (async middleware)."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import django
import pytest
from asgiref.sync import async_to_sync
from django.test import AsyncClient, Client

if "DJANGO_SETTINGS_MODULE" in os.environ:
    django.setup()
else:
    os.environ["DJANGO_SETTINGS_MODULE"] = "tests.django_project.settings"
    try:
        django.setup()
    finally:
        # Loaded now (pytest-django sees settings.configured); keep the variable from
        # reaching the suite's subprocesses and Celery's Django fix-up.
        del os.environ["DJANGO_SETTINGS_MODULE"]

from django.conf import settings as django_settings
from django.http import HttpResponse

from segment_mw.django.apps import configure_from_settings

CHROME = (
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 "
    "(KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36"
)
GOOGLEBOT = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"
# What a browser sends for a top-level navigation.
NAVIGATION = {
    "User-Agent": CHROME,
    "Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
    "Accept-Language": "en-US,en;q=0.9,fr;q=0.5",
    "Sec-Fetch-Mode": "navigate",
    "Sec-Fetch-Dest": "document",
    "Sec-Fetch-Site": "none",
}
BASE_SETTINGS: dict[str, Any] = dict(django_settings.SEGMENT_MW)


class Browser:
    """Django's test Client or AsyncClient behind one synchronous interface."""

    def __init__(self, mode: str, headers: dict[str, str] | None = None) -> None:
        self.mode = mode
        # Sent with every request rather than given to the client: AsyncClient turns
        # constructor headers into WSGI-style names that ASGI requests do not read.
        self.headers = dict(NAVIGATION if headers is None else headers)
        client_class = AsyncClient if mode == "async" else Client
        self.client = client_class(raise_request_exception=False)

    def _call(self, method: str, path: str, **kwargs: Any) -> HttpResponse:
        call = getattr(self.client, method)
        kwargs["headers"] = {**self.headers, **(kwargs.get("headers") or {})}
        if self.mode == "async":

            async def request() -> HttpResponse:
                return await call(path, **kwargs)  # type: ignore[no-any-return]

            return async_to_sync(request)()
        return call(path, **kwargs)  # type: ignore[no-any-return]

    def get(self, path: str, **kwargs: Any) -> HttpResponse:
        return self._call("get", path, **kwargs)

    def post(self, path: str, data: Any = None, **kwargs: Any) -> HttpResponse:
        return self._call("post", path, data=data, **kwargs)

    def head(self, path: str, **kwargs: Any) -> HttpResponse:
        return self._call("head", path, **kwargs)

    @property
    def cookies(self) -> Any:
        return self.client.cookies

    def force_login(self, user: Any) -> None:
        self.client.force_login(user)


@pytest.fixture(autouse=True)
def _segment_from_django_settings() -> None:
    # The suite's autouse fixture resets the process-wide client around every test;
    # configure it again the way the app does at start-up.
    assert configure_from_settings() is not None


@pytest.fixture(params=["sync", "async"])
def mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def browser(mode: str) -> Browser:
    return Browser(mode)


@pytest.fixture
def make_browser(mode: str) -> Callable[..., Browser]:
    def make(headers: dict[str, str] | None = None) -> Browser:
        return Browser(mode, headers)

    return make


@pytest.fixture
def segment_settings(settings: Any) -> Callable[..., None]:
    """Change SEGMENT_MW for one test (over the project's), as override_settings would."""

    def change(**overrides: Any) -> None:
        settings.SEGMENT_MW = {**BASE_SETTINGS, **overrides}

    return change
