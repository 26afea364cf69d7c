"""Settings of the example shop: segment_mw added to a plain Django project.

Run it with the embedded queue (no server needed) or point it at Redis and Segment with
``SEGMENT_MW_QUEUE_URL=redis://localhost:6379/0`` and ``SEGMENT_WRITE_KEY=...``.
The benchmarks run it as is, with two switches: ``SHOP_SEGMENT_MIDDLEWARE=0`` leaves the
middleware out (the bare baseline) and ``SHOP_WEBHOOK_URL`` sends events to that URL
instead of the archive file.
"""

import os
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent
SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "example-shop-not-secret")
DEBUG = True
ALLOWED_HOSTS = ["*"]

INSTALLED_APPS = [
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "segment_mw.django",
    "shop",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    # After authentication, so pageviews carry the signed-in user's id.
    "segment_mw.django.SegmentMiddleware",
]
if os.environ.get("SHOP_SEGMENT_MIDDLEWARE") == "0":
    MIDDLEWARE.remove("segment_mw.django.SegmentMiddleware")

ROOT_URLCONF = "django_shop.urls"
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {"context_processors": ["django.template.context_processors.request"]},
    }
]
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ.get("SHOP_DB", str(BASE_DIR / "shop.sqlite3")),
    }
}
STATIC_URL = "/static/"
USE_TZ = True
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

SEGMENT_MW = {
    # Unset: the embedded SQLite queue. Production: "redis://localhost:6379/0".
    "QUEUE_URL": os.environ.get("SEGMENT_MW_QUEUE_URL"),
    "DESTINATIONS": (
        {"webhook": {"type": "http", "url": os.environ["SHOP_WEBHOOK_URL"]}}
        if os.environ.get("SHOP_WEBHOOK_URL")
        else {
            "archive": {
                "type": "jsonl",
                "path": os.environ.get("SHOP_EVENTS_FILE", str(BASE_DIR / "events.jsonl")),
            },
        }
    ),
    # Facebook Pixel runs in the browser; keep server copies of events away from it.
    "INTEGRATIONS": {"Facebook Pixel": False},
    "AUTH_SIGNALS": True,
}

CELERY_BROKER_URL = os.environ.get("CELERY_BROKER_URL", "redis://localhost:6379/1")
# Without a broker (the demo), tasks run in the calling process.
CELERY_TASK_ALWAYS_EAGER = os.environ.get("CELERY_TASK_ALWAYS_EAGER") == "1"
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
