"""The middleware with segment_mw disabled: requests work as ever, nothing is queued."""

from __future__ import annotations

from segment_mw import metrics
from segment_mw.client import get_client


def test_the_middleware_works_and_queues_nothing(browser, segment_settings, monkeypatch):
    monkeypatch.setenv("SEGMENT_MW_ENABLED", "0")
    segment_settings()
    response = browser.get("/")
    assert response.status_code == 200
    assert browser.get("/track/").status_code == 200  # a view calling track()
    client = get_client()
    assert client.settings.enabled is False
    assert client.queue.status(["log"]).stored == 0
    assert metrics.counts()["disabled"] == 2  # the pageview and the view's event
