"""How every `medvec` command prints: JSON for `--json` (a stable contract), plain lines for people,
the per-file error table, plain-words refusals on stderr, and progress bars on stderr.

This is the CLI's presentation layer: the only place in `medvec/` that prints.
"""

from __future__ import annotations

import json
import sys
from typing import Callable, Iterable

MAX_ERRORS_SHOWN = 20


def print_json(value) -> None:
    """A `--json` answer: one indented document on stdout."""
    print(json.dumps(value, indent=2))


def refuse(message: str) -> int:
    """Bad input or a state the user must fix first: one line on stderr, exit code 2."""
    print(message, file=sys.stderr)
    return 2


def stderr_messages(quiet: bool) -> Callable[[str], None]:
    """A `progress(message)` callback for long domain work: silent under `--json`, else on stderr."""
    if quiet:
        return lambda message: None
    return lambda message: print(message, file=sys.stderr)


def print_errors(errors: Iterable) -> None:
    """The files that could not be normalised, the first twenty with their stage and reason."""
    errors = list(errors)
    if not errors:
        return
    print(f"{len(errors)} file(s) could not be normalised:")
    for error in errors[:MAX_ERRORS_SHOWN]:
        print(f"  {error.source_uri}\n    {error.stage}: {error.message}")
    if len(errors) > MAX_ERRORS_SHOWN:
        print(f"  ... and {len(errors) - MAX_ERRORS_SHOWN} more (see the ingest_errors table or --json)")


def bar(total: int, desc: str, enabled: bool, unit: str = "img"):
    """A tqdm bar on stderr; none when disabled or when stderr is not a terminal."""
    from tqdm import tqdm

    # Not a terminal (CI logs, pipes): no bar; the summary that follows says what happened.
    return tqdm(total=total, desc=desc, unit=unit, unit_scale=unit == "B", file=sys.stderr, leave=False,
                disable=not enabled or not sys.stderr.isatty(), mininterval=0.5)


def progress_bars(enabled: bool) -> Callable[[str, int, int], None]:
    """A `medvec.progress` listener that keeps one bar per reported task (a batch, an embedding pass,
    a model download) and closes it when the task is done."""
    bars: dict[str, object] = {}

    def on_progress(what: str, done: int, total: int) -> None:
        if not enabled:
            return
        current = bars.get(what)
        if current is None:
            # Batches report images; model downloads and hashing report bytes.
            unit = "img" if what.startswith(("batch", "embed")) else "B"
            current = bars[what] = bar(total, what, True, unit)
        current.n = done
        current.refresh()
        if done == total:
            current.close()

    return on_progress
