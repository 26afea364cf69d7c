"""The example shop as a Starlette app: the ASGI middleware and a tracked charge.

Run it with ``uvicorn example_projects.starlette_shop:app`` after ``segment_mw.configure``
(the demo does that), or import ``build_app`` to wrap it yourself;
``build_app(middleware=False)`` is the same shop without segment_mw's middleware (the
benchmarks' baseline; ``SHOP_SEGMENT_MIDDLEWARE=0`` does that for ``app``).
"""

from __future__ import annotations

import os
import uuid
from decimal import Decimal

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse
from starlette.routing import Route

import segment_mw
from segment_mw.asgi import SegmentMiddleware
from segment_mw.pageviews import pageview

PRICES = {1: Decimal("19.99"), 2: Decimal("5.00")}


def _page(title: str, body: str) -> HTMLResponse:
    return HTMLResponse(f"<!doctype html><title>{title}</title><h1>{title}</h1><p>{body}</p>")


async def home(request: Request) -> HTMLResponse:
    return _page("Example Shop", "Welcome!")


@pageview("Product", category="Catalog")
async def product(request: Request) -> HTMLResponse:
    product_id = int(request.path_params["product_id"])
    return _page(f"Product {product_id}", f"Price: {PRICES.get(product_id)}")


@segment_mw.tracked(
    "Order Completed",
    properties=lambda order, *args, **kwargs: {
        "order_id": order["order_id"],
        "revenue": order["total"],
        "currency": "EUR",
    },
)
def charge(product_id: int) -> dict[str, object]:
    return {"order_id": uuid.uuid4().hex[:12], "total": PRICES[product_id]}


async def checkout(request: Request) -> JSONResponse:
    payload = await request.json()
    order = charge(int(payload.get("product", 1)))
    return JSONResponse({"order": order["order_id"]})


async def cart(request: Request) -> JSONResponse:
    return JSONResponse({"items": []})


def build_app(*, middleware: bool = True) -> SegmentMiddleware | Starlette:
    routes = [
        Route("/", home, name="home"),
        Route("/products/{product_id:int}", product, name="product"),
        Route("/checkout", checkout, methods=["POST"], name="checkout"),
        Route("/api/cart", cart, name="cart"),
    ]
    shop = Starlette(routes=routes)
    return SegmentMiddleware(shop) if middleware else shop


app = build_app(middleware=os.environ.get("SHOP_SEGMENT_MIDDLEWARE") != "0")
