from __future__ import annotations

import importlib
import sys

import pytest


def test_without_django_the_import_error_names_the_extra(monkeypatch):
    for name in list(sys.modules):
        if name == "segment_mw.django" or name.startswith("segment_mw.django."):
            monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "django", None)
    with pytest.raises(ImportError, match=r"pip install 'segment-mw\[django\]'"):
        importlib.import_module("segment_mw.django")


def test_the_middleware_is_exported():
    from segment_mw.django import SegmentMiddleware
    from segment_mw.django.middleware import SegmentMiddleware as defined

    assert SegmentMiddleware is defined
