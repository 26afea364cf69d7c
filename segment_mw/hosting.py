"""What the server hosting this process allows: whether a background thread ever runs.

uWSGI without ``enable-threads`` (nor ``threads``) runs no thread but the one serving
requests, so a writer or flusher thread would be started and never scheduled. The
check is the one uWSGI documents: its ``uwsgi`` module is importable only inside it, and
``uwsgi.opt`` holds the options it was started with.
"""

from __future__ import annotations

import importlib
from typing import Any

_FALSE = ("", "0", "false", "no", "off", "n")


def _option(value: Any) -> str:
    if value is True:
        return "true"
    if isinstance(value, bytes):
        value = value.decode(errors="replace")
    if isinstance(value, (list, tuple)):  # an option given more than once
        value = value[-1] if value else ""
        return _option(value)
    return str(value).strip().lower()


def background_threads_run() -> bool:
    """False in a uWSGI process started without threads; True anywhere else."""
    try:
        uwsgi = importlib.import_module("uwsgi")  # only importable inside uWSGI
    except ImportError:
        return True
    opt = getattr(uwsgi, "opt", None) or {}
    # ``threads`` implies enable-threads.
    if _option(opt.get("threads", "")) not in _FALSE:
        return True
    return _option(opt.get("enable-threads", "")) not in _FALSE
