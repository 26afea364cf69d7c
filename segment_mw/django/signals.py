"""Login and logout as Segment events (setting ``AUTH_SIGNALS``): ``user_logged_in`` sends
``identify`` and a ``Signed In`` track, ``user_logged_out`` a ``Signed Out`` track. Within
a request they carry its anonymous id and context, which is what joins the two identities.
"""

from __future__ import annotations

import logging
from typing import Any

from django.contrib.auth.signals import user_logged_in, user_logged_out

from .. import api, metrics
from ..scope import as_user_id

log = logging.getLogger("segment_mw.django")

_LOGIN_UID = "segment_mw.user_logged_in"
_LOGOUT_UID = "segment_mw.user_logged_out"


def _user_id(user: Any) -> str | None:
    return as_user_id(getattr(user, "pk", None))


def _failed() -> None:
    metrics.count("django_signal_failed")
    metrics.warn_once_per_interval(
        "django_signal_failed", "login/logout event failed", logger=log, exc_info=True
    )


def on_login(sender: Any, request: Any = None, user: Any = None, **kwargs: Any) -> None:
    try:
        user_id = _user_id(user)
        if user_id is not None:
            api.identify(user_id)
            api.track("Signed In", user_id=user_id)
    except Exception:
        _failed()


def on_logout(sender: Any, request: Any = None, user: Any = None, **kwargs: Any) -> None:
    try:
        user_id = _user_id(user)
        if user_id is not None:
            api.track("Signed Out", user_id=user_id)
    except Exception:
        _failed()


def connect_auth_signals(enabled: bool) -> None:
    """Connect the receivers when ``AUTH_SIGNALS`` is on, disconnect them when it is off."""
    if enabled:
        user_logged_in.connect(on_login, dispatch_uid=_LOGIN_UID)
        user_logged_out.connect(on_logout, dispatch_uid=_LOGOUT_UID)
    else:
        user_logged_in.disconnect(dispatch_uid=_LOGIN_UID)
        user_logged_out.disconnect(dispatch_uid=_LOGOUT_UID)
