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


class ProgressView:
    """A `medvec.progress` listener decided once, in the CLI process, before Dagster captures output.

    Dagster's compute-log capture points file descriptor 2 at a file while a step runs, so a terminal
    check made there fails and a bar written there lands in the run log. This view checks the terminal
    once and writes to its own duplicate of the terminal's descriptor: in a terminal, one tqdm bar per
    reported task (a batch, an embedding pass, a model download); elsewhere, log lines with counts and
    rates every `every` seconds and when a task finishes."""

    def __init__(self, enabled: bool, stream=None, tty: bool | None = None, every: float = 5.0,
                 clock: Callable[[], float] | None = None):
        import time

        self.enabled = enabled
        self.stream = stream or _private_stderr()
        self.tty = self.stream.isatty() if tty is None else tty
        self.every = every
        self.clock = clock or time.monotonic
        self.bars: dict[str, object] = {}
        self.started: dict[str, tuple[float, float]] = {}  # what -> (start time, last line time)

    def __call__(self, what: str, done: int, total: int) -> None:
        if not self.enabled:
            return
        if self.tty:
            self._bar(what, done, total)
        else:
            self._line(what, done, total)

    def _bar(self, what: str, done: int, total: int) -> None:
        from tqdm import tqdm

        current = self.bars.get(what)
        if current is None:
            unit = _unit(what)
            current = self.bars[what] = tqdm(total=total, desc=what, unit=unit, unit_scale=unit == "B",
                                             file=self.stream, leave=False, mininterval=0.2)
        current.n = done
        current.refresh()
        if done >= total:
            current.close()
            self.bars.pop(what, None)

    def _line(self, what: str, done: int, total: int) -> None:
        now = self.clock()
        began, last = self.started.setdefault(what, (now, now - self.every))
        finished = done >= total
        if not finished and now - last < self.every:
            return
        self.started[what] = (began, now)
        seconds = now - began
        rate = f", {done / seconds:.1f} {_unit(what)}/s" if seconds > 0 and done else ""
        state = f"done in {seconds:.1f}s" if finished else "..."
        print(f"{what}: {done}/{total}{rate} {state}", file=self.stream, flush=True)
        if finished:
            self.started.pop(what, None)


def _unit(what: str) -> str:
    # Batches and embedding passes report images; model downloads and hashing report bytes; the rest steps.
    if what.startswith(("batch", "embed")):
        return "img"
    return "B" if "model files" in what else "step"


def _private_stderr():
    """A stream on a duplicate of stderr's descriptor: Dagster may redirect descriptor 2, not this one."""
    import os

    try:
        return os.fdopen(os.dup(sys.stderr.fileno()), "w", buffering=1)
    except (AttributeError, OSError, ValueError):  # stderr replaced by an object with no descriptor
        return sys.stderr


def progress_bars(enabled: bool) -> Callable[[str, int, int], None]:
    """The CLI's `medvec.progress` listener (see ProgressView)."""
    return ProgressView(enabled)
