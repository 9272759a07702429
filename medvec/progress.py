"""A progress hook that long domain work reports to, and that a caller (the CLI) may listen on.

Assets run in the CLI's own thread when `medvec ingest` materialises in process, so a context
variable carries the CLI's progress bar down to the batch runner without Dagster knowing.
"""

from __future__ import annotations

from contextlib import contextmanager
from contextvars import ContextVar
from typing import Callable, Iterator

Listener = Callable[[str, int, int], None]  # (what, done, total)

_listener: ContextVar[Listener | None] = ContextVar("medvec_progress_listener", default=None)


@contextmanager
def listening(listener: Listener) -> Iterator[None]:
    token = _listener.set(listener)
    try:
        yield
    finally:
        _listener.reset(token)


def report(what: str, done: int, total: int) -> None:
    listener = _listener.get()
    if listener is not None:
        listener(what, done, total)
