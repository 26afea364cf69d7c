"""``manage.py segment_mw status [--json] | flush | replay [--destination NAME]``: the
``segment-mw`` command line, run against the client configured from ``SEGMENT_MW``.
"""

from __future__ import annotations

import argparse
from typing import Any, TextIO, cast

from django.core.management.base import BaseCommand, CommandError, CommandParser

from ....cli import main
from ....client import get_client
from ...apps import state


class Command(BaseCommand):
    help = (
        "Queue status, flush and dead-letter replay for segment_mw: "
        "status [--json] | flush | replay [--destination NAME]"
    )
    # Delivery needs no database and no URL configuration.
    requires_system_checks: list[str] = []

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "cli_args",
            nargs=argparse.REMAINDER,
            metavar="COMMAND",
            help="status [--json] | flush [--timeout S] | replay [--destination NAME]",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        if state.configuration_error is not None:
            raise CommandError(f"SEGMENT_MW is invalid: {state.configuration_error}")
        argv = list(options["cli_args"]) or ["status"]
        code = main(argv, client=get_client(), stdout=cast(TextIO, self.stdout))
        if code:
            raise CommandError(f"segment_mw {argv[0]} exited with status {code}", returncode=code)
