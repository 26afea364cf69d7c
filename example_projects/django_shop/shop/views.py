from __future__ import annotations

from decimal import Decimal

from django.db import transaction
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render

from segment_mw.pageviews import pageview

from .billing import charge
from .tasks import send_receipt

PRICES = {1: Decimal("19.99"), 2: Decimal("5.00")}


def home(request: HttpRequest) -> HttpResponse:
    return render(request, "shop/page.html", {"title": "Example Shop", "body": "Welcome!"})


@pageview("Product", category="Catalog")
def product(request: HttpRequest, product_id: int) -> HttpResponse:
    return render(
        request,
        "shop/page.html",
        {"title": f"Product {product_id}", "body": f"Price: {PRICES.get(product_id)}"},
    )


def checkout(request: HttpRequest) -> HttpResponse:
    if request.method != "POST":
        return render(request, "shop/page.html", {"title": "Checkout", "body": "Pay now"})
    product_id = int(request.POST.get("product", "1"))
    with transaction.atomic():
        order = charge(product_id, PRICES[product_id])
        # Sent on commit too; the task's "Receipt Sent" carries this request's user.
        transaction.on_commit(lambda: send_receipt.delay(order.order_id))
    return JsonResponse({"order": order.order_id})


def cart(request: HttpRequest) -> HttpResponse:
    return JsonResponse({"items": []})
