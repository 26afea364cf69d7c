"""The Django app (label ``segment_mw``): configures the process-wide client from the
``SEGMENT_MW`` setting at start-up and again whenever it changes (so ``override_settings``
works), registers the system checks and, with ``AUTH_SIGNALS``, the login/logout events.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from django.apps import AppConfig
from django.conf import settings
from django.core.signals import setting_changed

from ..client import Client, configure
from ..errors import ConfigurationError

log = logging.getLogger("segment_mw.django")


class _State:
    # Why SEGMENT_MW could not be used, or None; the middleware stands aside while it is
    # set and the system checks report it.
    configuration_error: str | None = None


state = _State()


def raw_settings() -> Any:
    return getattr(settings, "SEGMENT_MW", None) or {}


def configure_from_settings() -> Client | None:
    """(Re)configure the process-wide client from ``settings.SEGMENT_MW``.

    An invalid setting is logged rather than raised, so that ``manage.py check`` can run
    and explain it; until it is fixed the middleware passes requests through untouched.
    """
    from .signals import connect_auth_signals

    raw = raw_settings()
    try:
        if not isinstance(raw, Mapping):
            raise ConfigurationError("SEGMENT_MW: expected a dict of settings")
        client = configure(raw)
    except ConfigurationError as exc:
        state.configuration_error = str(exc)
        log.error("SEGMENT_MW is invalid, analytics are off: %s (see manage.py check)", exc)
        connect_auth_signals(False)
        return None
    state.configuration_error = None
    connect_auth_signals(client.settings.auth_signals)
    return client


def _setting_changed(*, setting: str, **kwargs: Any) -> None:
    if setting == "SEGMENT_MW":
        configure_from_settings()


class SegmentConfig(AppConfig):
    name = "segment_mw.django"
    label = "segment_mw"
    verbose_name = "Segment analytics"
    default = True

    def ready(self) -> None:
        from . import checks  # noqa: F401  (registers the system checks)

        configure_from_settings()
        setting_changed.connect(_setting_changed, dispatch_uid="segment_mw.setting_changed")
