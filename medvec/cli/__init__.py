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
from medvec.cli.options import chosen_collection

COMMAND_GROUP = "medvec.commands"
DOMAIN_COMMANDS = (normalize, collection, servers, search, evaluate, bundle, sample, fetch, receive)

log = logging.getLogger("medvec")


# The order a new user meets the commands in; any command not named here follows, in its own order.
WORKFLOW = ("demo", "ingest", "search", "similar", "serve", "eval", "mcp", "bundle", "stats", "collections",
            "models", "fetch", "receive", "backfill", "normalize", "sample-data", "embed-server", "reset")

DESCRIPTION = """Medvec turns medical images (DICOM) into searchable embeddings.

Start with `medvec demo` (offline sample data, about a minute), then ingest your own files and search."""

EXAMPLES = """examples:
  medvec demo                                   sample data -> embeddings -> a few searches, offline
  medvec ingest /path/to/dicoms --limit 100     normalise and embed your own files
  medvec search "pleural effusion" --view PA    search from the terminal
  medvec serve                                  the search page and HTTP API on http://127.0.0.1:8080
  medvec eval --split all                       measure retrieval (Recall@K) for the configured model

`medvec COMMAND --help` shows a command's options."""


def version() -> str:
    from importlib.metadata import PackageNotFoundError, version as installed_version

    try:
        return installed_version("medvec")
    except PackageNotFoundError:  # running from a checkout that was never installed
        return "unknown (not installed)"


class MedvecParser(argparse.ArgumentParser):
    """An argparse parser whose "invalid choice" also says which command extensions could not load."""

    missing_extensions: list[str] = []

    def error(self, message: str):
        hints = "".join(f"\n{hint}" for hint in self.missing_extensions)
        super().error(message + hints)


def build_parser() -> argparse.ArgumentParser:
    parser = MedvecParser(prog="medvec", description=DESCRIPTION, epilog=EXAMPLES,
                          formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true", help="log more")
    parser.add_argument("--version", action="version", version=f"medvec {version()}",
                        help="print the installed version and exit")
    sub = parser.add_subparsers(dest="command", title="commands, in the order you will use them",
                                metavar="COMMAND", parser_class=argparse.ArgumentParser)
    for module in DOMAIN_COMMANDS:
        module.register(sub)
    parser.missing_extensions = load_extensions(sub)
    if parser.missing_extensions:
        parser.epilog += "\n\n" + "\n".join(parser.missing_extensions)
    _in_workflow_order(sub)
    return parser


def _in_workflow_order(sub) -> None:
    """List commands in WORKFLOW order in `medvec --help` (argparse lists them in registration order)."""
    rank = {name: i for i, name in enumerate(WORKFLOW)}
    sub._choices_actions.sort(key=lambda action: rank.get(action.dest, len(rank)))


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
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:  # `medvec` alone: the short help, not an argparse error
        parser.print_help()
        return 0
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        with chosen_collection(getattr(args, "collection", None)):
            code = args.func(args)
        sys.stdout.flush()  # a pipe's buffered output fails here, not in the interpreter's exit
        return code
    except SettingsError as exc:  # a bad variable: its one line, not a traceback
        print(f"medvec: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        return _reader_went_away()


def _reader_went_away() -> int:
    """`medvec search ... | head`: the reader closed the pipe. Stop quietly, as Unix tools do; point
    stdout at /dev/null so the interpreter's final flush does not raise again."""
    import os

    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    return 141  # 128 + SIGPIPE, what a shell reports for a tool killed by the closed pipe
