"""Instructions per Django pageview, counted by valgrind: a figure that does not move with
the machine's speed, for telling small changes of the request path apart.

``bench_pageview.py`` times the pageview; on this VM its verdict moves by a third between
rounds of one run (our middleware's own CPU per request ranged 49-88 µs within a run while
the bare view's stayed put), far more than most single changes weigh. Counting the
instructions the CPU executes instead (valgrind's cachegrind, ``--cache-sim=no``) gives
the same figure to within about 1 % run after run. Each variant below runs in a child
process under valgrind twice, with no requests and with N; the difference over N is its
count per request (start-up and the warm-up cancel). The variants are the bare Django
view, segment_mw's middleware, and the middleware with one part replaced by a stand-in
that does nothing, so that each part's share is shown beside the whole, in one run.

The garbage collector is off while the requests run (a collection lands in one run and
not the other); the producer's pushes to Redis are real unless a variant stubs them.
Requires valgrind (``apt-get install valgrind``); about 20 s of machine time per child.

    .venv/bin/python benchmarks/bench_instructions.py [--requests 2000] [--parts all]
"""

from __future__ import annotations

import argparse
import gc
import os
import re
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

# What a stand-in replaces; each part's cost is the count it saves.
PARTS = {
    "push": "the producer's hand-off and push to Redis (Producer.submit)",
    "emit": "queueing the page event: identity, build, serialise, hand-off (emit_pageview)",
    "begin": "describing and capturing the request (request_info, capture) *",
    "skip": "the pageview decision (skip_reason)",
    "title": "reading the <title> from the response (_title)",
}


def _stub(part: str) -> None:
    from segment_mw import pageviews, producer, scope
    from segment_mw.django import middleware

    if part == "push":
        producer.Producer.submit = lambda self, entry, durable=False: None
    elif part == "emit":
        pageviews.emit_pageview = lambda *args, **kwargs: None
    elif part == "skip":
        pageviews.skip_reason = lambda *args, **kwargs: None
    elif part == "title":
        middleware._title = lambda *args: ""
    elif part == "begin":
        begin, kept = middleware._begin, []

        def first_capture(request, settings, user_id):
            if not kept:
                kept.append(begin(request, settings, user_id))
            c = kept[0]
            return middleware._Captured(c.info, c.rc, c.settings, scope.bind(c.rc.scope))

        middleware._begin = first_capture
    else:
        raise SystemExit(f"unknown part {part!r}")


def child(variant: str, n: int) -> None:
    """Serve ``n`` requests after a warm-up (run under valgrind by the parent)."""
    import bench_pageview as pv
    from _common import delete_prefix, running_sink, unique_prefix

    import segment_mw

    with running_sink() as sink:
        prefix = unique_prefix("instructions")
        pv.setup_django(prefix, sink.url)
        sys.modules["__main__"].urlpatterns = pv.urlpatterns
        if variant not in ("bare", "ours"):
            _stub(variant)
        ours = ["segment_mw.django.SegmentMiddleware"]
        handler = pv.wsgi_handler([] if variant == "bare" else ours)
        try:
            pv.run_wsgi(handler, 300)
            pv.wait_producer_idle()
            gc.collect()
            gc.disable()
            pv.run_wsgi(handler, n)
            pv.wait_producer_idle()
            gc.enable()
        finally:
            segment_mw.get_client().close()
            delete_prefix(prefix)


def instructions(variant: str, n: int) -> int:
    """Instructions the process executed, serving ``n`` requests of ``variant``."""
    command = [
        "valgrind",
        "--tool=cachegrind",
        "--cache-sim=no",
        "--cachegrind-out-file=/dev/null",
        sys.executable,
        os.path.abspath(__file__),
        "--child",
        variant,
        str(n),
    ]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    found = re.search(r"I\s+refs:\s+([\d,]+)", done.stderr)
    if done.returncode != 0 or found is None:
        raise RuntimeError(f"{variant}: valgrind failed:\n{done.stderr[-2000:]}")
    return int(found.group(1).replace(",", ""))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--parts", default="all", help="comma-separated: " + ",".join(PARTS))
    parser.add_argument("--child", nargs=2, metavar=("VARIANT", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], int(args.child[1]))
        return
    if shutil.which("valgrind") is None:
        raise SystemExit("bench_instructions: valgrind is not installed (apt-get install valgrind)")
    from _common import environment, table

    parts = list(PARTS) if args.parts == "all" else args.parts.split(",")
    variants = ["bare", "ours", *parts]
    n = args.requests
    print(f"bench_instructions: Django pageview, {n:,} requests per variant, under valgrind")
    print(environment())
    runs = [(variant, count) for variant in variants for count in (0, n)]
    with ThreadPoolExecutor(max_workers=max(1, min(2, os.cpu_count() or 1))) as pool:
        counted = dict(zip(runs, pool.map(lambda run: instructions(*run), runs), strict=True))
    per_request = {v: (counted[(v, n)] - counted[(v, 0)]) / n for v in variants}
    bare, ours = per_request["bare"], per_request["ours"]
    added = ours - bare
    rows = [
        ["bare Django view (WSGIHandler)", bare, "-", "-"],
        ["+ segment_mw.django.SegmentMiddleware", ours, f"{added:+,.0f}", "100 %"],
    ]
    for part in parts:
        saved = ours - per_request[part]
        rows.append([f"  of which {PARTS[part]}", "", f"{saved:,.0f}", f"{saved / added:.0%}"])
    print()
    print(table(["variant", "instructions/request", "added", "share of ours"], rows))
    if "begin" in parts:
        print(
            "* its stand-in hands every request the first one's scope, whose facts are then "
            "serialised once: the shares overlap"
        )
    print(
        "A whole count repeats to within about 1 % between runs; a part's, the difference "
        "of two, to within ~8,000."
    )


if __name__ == "__main__":
    main()
