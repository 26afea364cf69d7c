"""What the server hosting this process allows: whether a background thread ever runs.

A uWSGI that has not enabled threads (older releases, without ``enable-threads`` or
``threads``; recent ones always enable them) runs no thread but the one serving
requests, so a writer or flusher thread would be started and never scheduled. Its
``uwsgi`` module, importable only inside it, says so in ``has_threads``; where that is
missing, ``uwsgi.opt`` holds the options it was started with.
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
        return _option(value[-1]) if value else ""
    return str(value).strip().lower()


def background_threads_run() -> bool:
    """False in a uWSGI process that runs no Python thread but its own; True anywhere else."""
    try:
        uwsgi = importlib.import_module("uwsgi")  # only importable inside uWSGI
    except ImportError:
        return True
    has_threads = getattr(uwsgi, "has_threads", None)
    if has_threads is not None:
        return bool(has_threads)
    opt = getattr(uwsgi, "opt", None) or {}
    # ``threads`` implies enable-threads.
    if _option(opt.get("threads", "")) not in _FALSE:
        return True
    return _option(opt.get("enable-threads", "")) not in _FALSE
