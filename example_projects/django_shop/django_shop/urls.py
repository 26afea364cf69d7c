from django.urls import path
from shop import views

urlpatterns = [
    path("", views.home, name="home"),
    path("products/<int:product_id>/", views.product, name="product"),
    path("checkout/", views.checkout, name="checkout"),
    path("api/cart/", views.cart, name="cart"),
]
