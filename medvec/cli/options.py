"""Argument groups that more than one command shares (`normalize` and `ingest` render alike; every
command that works in the home takes `--collection`)."""

from __future__ import annotations

import argparse
import contextlib
import os

from medvec.home import check_collection_name
from medvec.settings import SettingsError, env_var

COLLECTION_HELP = ("work in this collection of the home: its own tables, batches and evaluation under "
                   "$MEDVEC_HOME/collections/NAME (default: $MEDVEC_COLLECTION, else the home itself)")


def add_collection_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--collection", metavar="NAME", help=COLLECTION_HELP)


@contextlib.contextmanager
def chosen_collection(name: str | None):
    """While a command runs, `--collection NAME` is MEDVEC_COLLECTION: every Settings this process builds,
    and every process it starts (Dagster's step workers), then works in that collection."""
    if name is None:
        yield
        return
    try:
        check_collection_name(name)
    except ValueError as exc:
        raise SettingsError(f"--collection {exc}") from None
    variable = env_var("collection")
    before = os.environ.get(variable)
    os.environ[variable] = name
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(variable, None)
        else:
            os.environ[variable] = before


def add_render_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--size", type=int, default=512, help="long side of the viewing WebP in px (default 512)")
    parser.add_argument("--thumb-size", type=int, default=256, help="long side of the thumbnail (default 256)")
    parser.add_argument("--pad-square", action="store_true", help="pad to a square before resizing")
    parser.add_argument("--window", choices=("header", "percentile"), default="header",
                        help="grey window: the file's own (default) or always a robust percentile window")
    parser.add_argument("--allow-tag", action="append", default=[], metavar="KEYWORD",
                        help="also keep this DICOM attribute (e.g. StationName); identifying tags only if you must")
    parser.add_argument("--allow-column", action="append", default=[], metavar="NAME",
                        help="keep this metadata-CSV column even though its name looks identifying")
