"""The `medvec` command line: argument parsing and presentation only; work happens in the domain.

`--json` output is a stable contract (README, "Command line"); everything else is for humans.
Each command lives in its own module here; commands that drive Dagster (`ingest`, `backfill`, `demo`)
come from the Dagster side through the `medvec.commands` entry-point group, so this package runs
without Dagster installed.
"""

from __future__ import annotations

import argparse
import logging
import sys
from importlib.metadata import entry_points

from medvec.settings import SettingsError
from medvec.cli import bundle, collection, evaluate, fetch, normalize, receive, sample, search, servers

COMMAND_GROUP = "medvec.commands"
DOMAIN_COMMANDS = (normalize, collection, servers, search, evaluate, bundle, sample, fetch, receive)

log = logging.getLogger("medvec")


class MedvecParser(argparse.ArgumentParser):
    """An argparse parser whose "invalid choice" also says which command extensions could not load."""

    missing_extensions: list[str] = []

    def error(self, message: str):
        hints = "".join(f"\n{hint}" for hint in self.missing_extensions)
        super().error(message + hints)


def build_parser() -> argparse.ArgumentParser:
    parser = MedvecParser(prog="medvec", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="log more")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=argparse.ArgumentParser)
    for module in DOMAIN_COMMANDS:
        module.register(sub)
    parser.missing_extensions = load_extensions(sub)
    if parser.missing_extensions:
        parser.epilog = "\n".join(parser.missing_extensions)
    return parser


def load_extensions(sub) -> list[str]:
    """Let each installed `medvec.commands` entry point add its commands; return one plain-words hint per
    extension that could not load (its entry point's name is the extra that brings it)."""
    entries = entry_points(group=COMMAND_GROUP)
    if not entries:
        # The group is read from the installed package's metadata: an editable checkout installed before
        # the group existed has none until it is installed again.
        return ["the commands that drive Dagster (ingest, backfill, demo) are not registered: "
                "pip install 'medvec[dagster]' (in a checkout: pip install -e '.[dagster]')"]
    hints = []
    for entry in entries:
        try:
            register = entry.load()
        except ImportError as exc:
            hints.append(f"the '{entry.name}' commands are not available ({exc}): "
                         f"pip install 'medvec[{entry.name}]'")
            continue
        register(sub)
    return hints


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except SettingsError as exc:  # a bad variable: its one line, not a traceback
        print(f"medvec: {exc}", file=sys.stderr)
        return 2
