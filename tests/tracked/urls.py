"""URLs of the tiny Django project that sends a task from a view."""

from __future__ import annotations

from django.http import HttpRequest, JsonResponse
from django.urls import path

from . import tasks


def checkout(request: HttpRequest) -> JsonResponse:
    result = tasks.bill.delay(request.GET.get("invoice", "inv-1"))
    return JsonResponse({"task_id": result.id})


urlpatterns = [path("checkout/", checkout, name="checkout")]
