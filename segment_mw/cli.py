"""The ``segment-mw`` command line (and the Django ``segment_mw`` management command).

``status [--json]`` names the queue in use (its password hidden) and shows its depth, the
oldest undelivered message's age, what the server puts at risk and, per destination,
delivered / retrying / dead-lettered counts (and what the dead-letter caps dropped) and
the last error; ``flush`` delivers now; ``replay [--destination NAME]`` puts dead letters
back and delivers them. Configuration comes from the environment or from ``--config
module:attribute``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Mapping
from typing import TextIO

from .client import Client, configure
from .config import hide_password, import_string
from .errors import ConfigurationError
from .queue import QueueStatus


def build_parser(prog: str = "segment-mw") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog, description="Inspect and drive segment_mw's delivery queue."
    )
    parser.add_argument(
        "--config",
        metavar="MODULE:ATTRIBUTE",
        help="a settings dict instead of the environment, e.g. myproject.settings:SEGMENT_MW",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    status = sub.add_parser("status", help="queue depth, oldest message, per-destination counts")
    status.add_argument("--json", action="store_true", help="print one JSON object")
    flush = sub.add_parser("flush", help="deliver everything queued now")
    flush.add_argument("--timeout", type=float, default=60.0, help="seconds (default 60)")
    replay = sub.add_parser("replay", help="put dead letters back into delivery")
    replay.add_argument("--destination", metavar="NAME", help="only this destination")
    replay.add_argument("--timeout", type=float, default=60.0, help="seconds to deliver them")
    forget = sub.add_parser(
        "forget", help="drop the queue's state for a destination removed from the settings"
    )
    forget.add_argument("destination", metavar="NAME")
    return parser


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.1f}s"
    if seconds < 7200:
        return f"{seconds / 60:.1f}m"
    return f"{seconds / 3600:.1f}h"


def format_status(status: QueueStatus, queue: str, *, enabled: bool = True) -> str:
    lines = [f"queue: {queue}"]
    if not enabled:
        lines.append("disabled (ENABLED: False or SEGMENT_MW_ENABLED=0): nothing is queued or sent")
    lines.extend(f"warning: {warning}" for warning in status.warnings)
    lines += [
        f"depth: {status.depth}",
        f"stored: {status.stored}",
        f"oldest undelivered: {_age(status.oldest_age)}",
    ]
    if status.counters:
        counters = ", ".join(f"{k}={v}" for k, v in sorted(status.counters.items()))
        lines.append(f"counters: {counters}")
    if not status.destinations:
        lines.append("no destinations configured")
    for name in status.unconfigured:
        lines.append(
            f"{name}: not in the settings any more, but the queue keeps messages for it "
            f"(segment-mw forget {name})"
        )
    now = time.time()
    for name, dest in status.destinations.items():
        dropped = f" (dropped by the caps: {dest.dead_dropped})" if dest.dead_dropped else ""
        lines.append(
            f"{name}: queued={dest.queued} delivered={dest.delivered} "
            f"retrying={dest.retrying} dead={dest.dead}{dropped}"
        )
        if dest.backoff_until:
            lines.append(f"  backing off for {_age(dest.backoff_until - now)}")
        if dest.last_error:
            lines.append(
                f"  last error ({_age(now - (dest.last_error_at or now))} ago): {dest.last_error}"
            )
    return "\n".join(lines)


def _client_from(config: str | None) -> Client:
    if not config:
        return configure()
    settings = import_string(config, "--config")
    if not isinstance(settings, Mapping):
        raise ConfigurationError(f"--config: {config!r} is not a settings dict")
    return configure(settings)


def main(
    argv: list[str] | None = None,
    *,
    client: Client | None = None,
    stdout: TextIO | None = None,
    prog: str = "segment-mw",
) -> int:
    """Run a command; returns the exit status (0 ok, 1 something left undelivered, 2 error)."""
    out = stdout or sys.stdout
    args = build_parser(prog).parse_args(argv)
    try:
        client = client or _client_from(args.config)
    except ConfigurationError as exc:
        sys.stderr.write(f"{prog}: {exc}\n")
        return 2
    try:
        if args.command == "status":
            status = client.status()
            if args.json:
                data = {
                    **status.as_dict(),
                    "queue": {
                        "url": hide_password(client.settings.queue_url),
                        "prefix": client.settings.queue_prefix,
                        "source": client.settings.queue_url_source,
                    },
                    "enabled": client.settings.enabled,
                }
                out.write(json.dumps(data, sort_keys=True) + "\n")
            else:
                out.write(_format(client, status) + "\n")
            return 0
        if args.command == "flush":
            done = client.flush(args.timeout)
            out.write(_format(client, client.status()) + "\n")
            return 0 if done else 1
        if args.command == "forget":
            client.forget(args.destination)
            out.write(f"{args.destination}: forgotten\n")
            return 0
        if args.command == "replay":
            moved = client.replay(args.destination)
            for name, count in moved.items():
                out.write(f"{name}: {count} dead letter(s) put back\n")
            done = client.flush(args.timeout) if any(moved.values()) else True
            return 0 if done else 1
    except ConfigurationError as exc:
        sys.stderr.write(f"{prog}: {exc} (queue: {_describe(client)})\n")
        return 2
    except Exception as exc:  # the queue did not answer: say which one, without a traceback
        sys.stderr.write(
            f"{prog}: cannot reach the queue {_describe(client)}: {type(exc).__name__}: {exc}\n"
        )
        return 2
    return 2


def _format(client: Client, status: QueueStatus) -> str:
    return format_status(status, _describe(client), enabled=client.settings.enabled)


def _describe(client: Client) -> str:
    url = hide_password(client.settings.queue_url)  # never print the queue's credentials
    source = client.settings.queue_url_source
    where = " (the default: QUEUE_URL is not set)" if source == "default" else ""
    return f"{url} (prefix {client.settings.queue_prefix}){where}"


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
