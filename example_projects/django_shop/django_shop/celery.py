"""Celery for the example shop: one explicit ``install`` wires segment_mw into the app."""

import os

from celery import Celery

import segment_mw.celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "django_shop.settings")

app = Celery("django_shop")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
segment_mw.celery.install(app)
