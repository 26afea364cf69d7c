"""The identity rules of the core (who an event is about, set_user, the cookie policy), where
the adapters' tests do not reach."""

from __future__ import annotations

import contextvars
import threading
import uuid

import pytest

import segment_mw
from segment_mw import InvalidEvent, identity, metrics
from segment_mw import scope as scope_mod
from segment_mw.capture import RequestInfo, capture
from segment_mw.config import load_settings
from segment_mw.scope import Scope

BROWSER = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 Chrome/126.0 Safari/537.36"
CONTEXT = {"ip": "203.0.113.1", "page": {"path": "/pay"}}


def request(user: str | None = "u-a", anonymous: str | None = "anon-a", **kw) -> Scope:
    return Scope(user_id=user, anonymous_id=anonymous, context=CONTEXT, **kw)


@pytest.mark.parametrize(
    ("scope", "named", "expected"),
    [
        # (user_id, anonymous_id) named -> (userId, anonymousId, takes the request's context)
        (request(), (None, None), ("u-a", "anon-a", True)),
        (request(), ("u-a", None), ("u-a", "anon-a", True)),  # the request's own user
        (request(), ("u-b", None), ("u-b", None, False)),  # someone else
        (request(), ("u-b", "anon-b"), ("u-b", "anon-b", False)),
        (request(), (None, "anon-b"), (None, "anon-b", False)),  # another browser
        (request(), ("u-a", "anon-b"), ("u-a", "anon-b", True)),
        (request(user=None), ("u-new", None), ("u-new", "anon-a", True)),  # a sign-up
        (request(user=None), ("u-new", "anon-b"), ("u-new", "anon-b", False)),
        (request(user=None), (None, "anon-a"), (None, "anon-a", True)),
        (None, ("u-b", None), ("u-b", None, False)),  # no request at all
    ],
)
def test_who_an_event_is_about(scope, named, expected):
    who = identity.resolve(scope, user_id=named[0], anonymous_id=named[1])
    assert (who.user_id, who.anonymous_id, who.about_request) == expected
    assert who.context == (CONTEXT if expected[2] else {})


def test_the_request_opt_out_covers_only_its_own_visitor():
    opted_out = request(opted_out=True)
    assert identity.resolve(opted_out).opted_out
    assert identity.resolve(opted_out, user_id="u-a").opted_out
    assert not identity.resolve(opted_out, user_id="cust-77").opted_out
    anonymous = request(user=None, opted_out=True)
    assert identity.resolve(anonymous, user_id="u-new").opted_out  # the same visitor


def test_ids_of_the_wrong_type_are_invalid():
    with pytest.raises(InvalidEvent, match="userId"):
        identity.resolve(request(), user_id=object())


def test_the_framework_is_asked_for_the_user_at_each_event():
    answers = iter(["u-1", None, "u-2"])
    scope = Scope(anonymous_id="anon", user_source=lambda: next(answers))
    assert [identity.resolve(scope).user_id for _ in range(3)] == ["u-1", None, "u-2"]


def test_a_failing_user_source_is_counted_not_raised():
    def broken() -> str:
        raise RuntimeError("session store down")

    scope = Scope(anonymous_id="anon", user_source=broken)
    assert identity.resolve(scope).user_id is None
    assert metrics.counts()["user_source_failed"] == 1


def test_set_user_wins_over_the_framework_until_forgotten(configure, segment_events):
    configure()
    scope = Scope(anonymous_id="anon", user_source=lambda: 7)  # an integer primary key
    with segment_mw.bound(scope):
        segment_mw.track("A")
        segment_mw.set_user(uuid.UUID(int=1))
        segment_mw.track("B")
        segment_mw.set_user(None)
        segment_mw.track("C")
    assert [e["userId"] for e in segment_events] == ["7", str(uuid.UUID(int=1)), "7"]


def test_set_user_from_a_thread_pool_reaches_the_request():
    # A plain ``def`` dependency runs in a copied context on another thread; the scope
    # object is shared, so the binding is seen back in the request.
    scope = Scope(anonymous_id="anon")
    with segment_mw.bound(scope):
        context = contextvars.copy_context()
        worker = threading.Thread(target=context.run, args=(segment_mw.set_user, "u-thread"))
        worker.start()
        worker.join()
        assert scope_mod.current() is scope
        assert scope.user_id == "u-thread"


def test_set_user_outside_any_scope_binds_one_for_the_context():
    def body() -> str | None:
        segment_mw.set_user("u-script")
        current = scope_mod.current()
        return current.user_id if current is not None else None

    assert contextvars.copy_context().run(body) == "u-script"
    assert scope_mod.current() is None


@pytest.mark.parametrize("bad", [True, object(), 1.5, ["u"]])
def test_set_user_refuses_what_is_not_an_id(bad):
    with pytest.raises(TypeError, match="set_user"):
        segment_mw.set_user(bad)


# -- the cookie ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("cache_control", "middleware", "stored"),
    [
        (None, False, False),
        ("no-cache", False, False),
        ("private, max-age=600", False, False),
        ("no-store", False, False),
        ("public", False, True),
        ("public, max-age=0", False, True),
        ("s-maxage=60", False, True),
        ("max-age=60", False, True),
        ("max-age=0", False, False),
        ("Max-Age=60, Private", False, False),
        (None, True, True),  # Django's cache middleware stores it with its own max-age
        ("no-store", True, True),  # ... which it does not read
        ("max-age=0, no-cache", True, False),  # never_cache
        ("private", True, False),
    ],
)
def test_shared_cache_may_store(cache_control, middleware, stored):
    assert identity.shared_cache_may_store(cache_control, cache_middleware=middleware) is stored


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("52066f9c-0000", "52066f9c-0000"),
        ("%2252066f9c-0000%22", "52066f9c-0000"),
        ('"52066f9c-0000"', "52066f9c-0000"),
        ("null", None),
        ("has spaces", None),
        ("x" * 101, None),
        ("%22" * 5000, None),  # attacker-sized: refused before any decoding
        ("", None),
    ],
)
def test_parse_id_cookie(raw, expected):
    assert identity.parse_id_cookie(raw) == expected


def test_reprs_show_no_cookie_header_or_id_values():
    info = RequestInfo(
        "GET",
        "https",
        "shop.example",
        "/pay",
        headers={"user-agent": BROWSER, "accept": "text/html"},
        cookies={"ajs_anonymous_id": "anon-secret-1", "sessionid": "sess-secret-2"},
    )
    rc = capture(info, load_settings({}, environ={}))
    rc.scope.user_id = "user-secret-3"
    for text in (repr(info), repr(rc), repr(rc.scope)):
        for secret in ("anon-secret-1", "sess-secret-2", "user-secret-3", BROWSER):
            assert secret not in text, text
    assert "sessionid" in repr(info)  # the names are there to debug with
