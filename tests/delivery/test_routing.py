"""Routing by the integrations object across several destinations, and one of them down."""

from __future__ import annotations

import contextlib

import pytest

import segment_mw

from .conftest import free_port, message_ids, sink_on_port, wait_until

# Per-event integrations objects, over the default INTEGRATIONS {"B": False}, and the
# destinations each one reaches. "All": false does not switch off a Segment destination
# (Segment applies it to the destinations behind it); "Segment.io": false does.
CASES = [
    (None, {"A", "Segment"}),
    ({"B": True}, {"A", "B", "Segment"}),
    ({"All": False, "A": True}, {"A", "Segment"}),
    ({"all": False, "B": {"session_id": 123}}, {"B", "Segment"}),
    ({"Segment.io": False}, {"A"}),
    ({"Segment": False, "All": False}, set()),
    ({"a": True, "All": False}, {"Segment"}),  # names match case-sensitively
]


def test_three_destinations_get_exactly_their_events(setup, sinks, worker):
    sink_a, sink_b, sink_seg = sinks(), sinks(), sinks()
    client = setup(
        INTEGRATIONS={"B": False},
        DESTINATIONS={
            "A": {"type": "http", "url": f"{sink_a.url}/a"},
            "B": {"type": "http", "url": f"{sink_b.url}/b"},
            "Segment": {"type": "segment", "write_key": "wk_route", "host": sink_seg.url},
        },
    )
    expected: dict[str, set[str]] = {"A": set(), "B": set(), "Segment": set()}
    sent_integrations = {}
    with worker():
        for i, (integrations, targets) in enumerate(CASES):
            for n in range(5):
                mid = segment_mw.track(
                    "Routed", {"case": i, "n": n}, user_id="u1", integrations=integrations
                )
                sent_integrations[mid] = {"B": False, **(integrations or {})}
                for name in targets:
                    expected[name].add(mid)
        by_name = {"A": sink_a, "B": sink_b, "Segment": sink_seg}
        wait_until(
            lambda: all(len(message_ids(by_name[n])) >= len(expected[n]) for n in expected),
            15.0,
            "every destination to receive its events",
        )
        wait_until(lambda: client.status().depth == 0, 10.0, "the queue to drain")

    for name, sink in by_name.items():
        got = message_ids(sink)
        assert sorted(got) == sorted(expected[name]), name  # exact: no extra, none twice
        assert client.status().destinations[name].delivered == len(expected[name])
    # Segment gets the (merged) integrations object unchanged, to apply it downstream.
    for event in sink_seg.events:
        assert event["integrations"] == sent_integrations[event["messageId"]]


@pytest.mark.parametrize("failure", ["closed_port", "http_500"])
def test_one_destination_down_others_unaffected_and_it_catches_up(failure, setup, sinks, worker):
    healthy_a, healthy_b = sinks(), sinks()
    port = free_port()
    with contextlib.ExitStack() as stack:
        down = None
        if failure == "http_500":
            down = stack.enter_context(sink_on_port(port))
            down.fail(500, times=10_000)
        client = setup(
            DESTINATIONS={
                "A": {"type": "http", "url": f"{healthy_a.url}/a"},
                "Segment": {"type": "segment", "write_key": "wk_down", "host": healthy_b.url},
                "down": {"type": "http", "url": f"http://127.0.0.1:{port}/down", "timeout": 2},
            }
        )
        with worker():
            first = [segment_mw.track("Before", {"n": n}, user_id="u") for n in range(20)]
            wait_until(
                lambda: len(message_ids(healthy_a)) >= 20 and len(message_ids(healthy_b)) >= 20,
                10.0,
                "the healthy destinations to get the first events",
            )
            wait_until(
                lambda: client.status().destinations["down"].retrying > 0,
                10.0,
                "the failing destination to park its batch for retry",
            )
            # More traffic while it is down: the healthy ones keep receiving.
            second = [segment_mw.track("During", {"n": n}, user_id="u") for n in range(20)]
            wait_until(
                lambda: len(message_ids(healthy_a)) >= 40 and len(message_ids(healthy_b)) >= 40,
                10.0,
                "the healthy destinations to get the events sent while one is down",
            )
            status = client.status().destinations["down"]
            assert status.delivered == 0
            assert status.last_error
            assert status.queued == 40

            # It comes back.
            if down is None:
                down = stack.enter_context(sink_on_port(port))
            else:
                with down.lock:
                    down.failures.clear()
            wait_until(
                lambda: len(set(message_ids(down))) >= 40,
                20.0,
                "the destination that came back to catch up",
            )
            wait_until(lambda: client.status().depth == 0, 10.0, "the queue to drain")

        assert set(message_ids(down)) == set(first + second)
        # The healthy destinations were never sent anything twice.
        assert sorted(message_ids(healthy_a)) == sorted(first + second)
        assert sorted(message_ids(healthy_b)) == sorted(first + second)
        # Retries of the failed one carry X-Retry-Count.
        retried = [r for r in down.requests if "X-Retry-Count" in r.headers]
        assert retried, [r.headers for r in down.requests]
        status = client.status().destinations["down"]
        assert status.delivered == 40
        assert status.retrying == 0
        assert status.backoff_until is None
