from __future__ import annotations

from django.urls import include, path

from . import views

shop = (
    [path("product/<int:pk>/", views.product, name="product")],
    "shop",
)

urlpatterns = [
    path("", views.home, name="home"),
    path("unnamed/", views.plain),
    path("shop/", include(shop)),
    path("json/", views.json_view, name="json"),
    path("form/", views.form, name="form"),
    path("stream/", views.stream, name="stream"),
    path("checkout/", views.checkout, name="checkout"),
    path("skipped/", views.skipped, name="skipped"),
    path("about/", views.About.as_view(), name="about"),
    path("dynamic/", views.dynamic, name="dynamic"),
    path("whoami/", views.whoami, name="whoami"),
    path("session/", views.session_view, name="session"),
    path("track/", views.track_view, name="track"),
    path("async/", views.async_home, name="async-home"),
    path("async/track/", views.async_track, name="async-track"),
    path("boom/", views.boom, name="boom"),
    path("own-cookie/", views.own_cookie, name="own-cookie"),
    path("login/", views.login_view, name="login"),
    path("logout/", views.logout_view, name="logout"),
    path("login-and-track/", views.login_and_track, name="login-and-track"),
    path("logout-and-track/", views.logout_and_track, name="logout-and-track"),
    path("token/", views.token_auth, name="token"),
    path("set-user/", views.set_user_view, name="set-user"),
    path("tracked-page/", views.tracked_page, name="tracked-page"),
    path("private/", views.private_page, name="private"),
    path("public/", views.public_page, name="public"),
    path("cdn/", views.cdn_page, name="cdn"),
    path("staff/", views.staff_acts_for_customers, name="staff"),
    path("async/plain-track/", views.async_plain_track, name="async-plain-track"),
    path("static/app.html", views.plain, name="static-page"),
    path("media/page.html", views.plain, name="media-page"),
    path("healthz", views.plain, name="health"),
]
