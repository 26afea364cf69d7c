"""Run every benchmark in sequence, each in its own process (``make bench``).

Each script prints its figures beside the baseline it measured in the same run and says
whether its target was met. ``--quick`` uses smaller sizes: a smoke run, not figures to
quote.

    .venv/bin/python benchmarks/run_all.py [--quick]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))

SCRIPTS = {
    "bench_pageview.py": ([], ["--requests", "1000", "--runs", "3"]),
    "bench_delivery.py": ([], ["--events", "20000", "--runs", "1"]),
    "bench_memory.py": ([], ["--events", "40000"]),
    "bench_status.py": ([], ["--sizes", "1000,100000", "--runs", "10"]),
    "bench_async.py": ([], ["--calls", "500", "--runs", "1"]),
    "bench_warehouse.py": ([], ["--events", "2000", "--runs", "1"]),
    "bench_tracked.py": ([], ["--quick"]),
    "bench_latency.py": ([], ["--quick"]),
    "bench_servers.py": ([], ["--quick"]),
    "bench_tools.py": ([], ["--events", "2000", "--runs", "1"]),
    "bench_scale.py": ([], ["--events", "6000", "--producers", "2"]),
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    args = parser.parse_args()
    failed = []
    started = time.monotonic()
    for script, (full, quick) in SCRIPTS.items():
        print(f"\n=== {script} " + "=" * (76 - len(script)), flush=True)
        t0 = time.monotonic()
        code = subprocess.call(
            [sys.executable, os.path.join(HERE, script), *(quick if args.quick else full)]
        )
        print(f"--- {script}: {time.monotonic() - t0:.0f}s, exit {code}", flush=True)
        if code != 0:
            failed.append(script)
    print(f"\nall benchmarks: {time.monotonic() - started:.0f}s", end="")
    print(f"; failed: {', '.join(failed)}" if failed else "")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
