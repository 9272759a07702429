"""Writing to a LanceDB table while another writer commits: retry the steps LanceDB does not retry itself."""

from __future__ import annotations

import logging
import time
from typing import Callable, TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")


def retry_on_conflict(step: Callable[[], T], *, what: str, attempts: int = 6, first_wait: float = 0.5) -> T:
    """Run a maintenance step, retrying when a concurrent writer won the commit race."""
    for attempt in range(1, attempts + 1):
        try:
            return step()
        except Exception as exc:  # lance raises RuntimeError/OSError/ValueError depending on the path
            text = str(exc).lower()
            if attempt == attempts or not ("conflict" in text or "retryable" in text or "preempted" in text):
                raise
            wait = first_wait * 2 ** (attempt - 1)
            log.warning("%s: commit conflict with a concurrent writer, retrying in %.1fs (%d/%d)",
                        what, wait, attempt, attempts)
            time.sleep(wait)
    raise AssertionError("unreachable")
