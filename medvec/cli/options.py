"""Argument groups that more than one command shares (`normalize` and `ingest` render alike)."""

from __future__ import annotations

import argparse


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
