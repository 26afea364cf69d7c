"""``@tracked`` in processes without Django: it never imports it, and with Django imported
but not configured it queues at once (each case in a fresh interpreter)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = """
import os, sys
os.environ.pop("DJANGO_SETTINGS_MODULE", None)
{prelude}
import segment_mw
client = segment_mw.configure(QUEUE_URL="memory://", IN_PROCESS_FLUSHER=False)
sent = []
client.listeners.append(sent.append)

@segment_mw.tracked("Charge Completed", user_id="u1")
def charge():
    return "ok"

assert charge() == "ok"
assert len(sent) == 1, sent
{check}
print("ok")
"""


def run(prelude: str, check: str) -> None:
    code = textwrap.dedent(SCRIPT).format(prelude=prelude, check=check)
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


def test_django_is_never_imported_when_the_app_does_not_use_it():
    run("", "assert not any(m == 'django' or m.startswith('django.') for m in sys.modules)")


def test_django_imported_but_not_configured_queues_at_once():
    run(
        "from django.db import transaction",
        "from django.conf import settings\nassert not settings.configured",
    )
