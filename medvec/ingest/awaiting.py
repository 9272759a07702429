"""Batches waiting for their run: a marker beside the manifest names the sensor that will launch it,
so a batch opened when the model was not ready yet, or opened beyond what one tick launches, is not lost."""

from __future__ import annotations

import json
import time

from medvec.ingest.batches import batch_dir
from medvec.storage import HomePath, as_path, write_atomic

#: Beside a batch's manifest while the batch waits for its run (the model is not ready yet, more
#: batches opened than one tick launches, or `rescan_job` opened it); holds the launching sensor's name.
AWAITING_LAUNCH = "awaiting_launch.json"


def mark_awaiting(home: HomePath, batch: str, launcher: str) -> None:
    # Readers never see half a marker.
    write_atomic(batch_dir(home, batch) / AWAITING_LAUNCH, json.dumps({"launcher": launcher, "since": time.time()}).encode())


def awaiting_batches(home: HomePath, launcher: str | None = None) -> list[str]:
    """Batches opened but not launched yet, oldest first; only `launcher`'s when given."""
    found = []
    # One listing finds the markers (few batches wait at a time); on S3 a read per batch would make
    # every tick as slow as the number of batches ever opened.
    for path in sorted((as_path(home) / "batches").glob(f"*/{AWAITING_LAUNCH}"), key=lambda p: p.parent.name):
        batch = path.parent.name
        try:
            owner = json.loads(path.read_text()).get("launcher")
        except FileNotFoundError:
            continue
        except ValueError:  # not ours to judge: nobody's launcher
            owner = None
        if launcher is None or owner == launcher:
            found.append(batch)
    return found


def clear_awaiting(home: HomePath, batch: str) -> None:
    (batch_dir(home, batch) / AWAITING_LAUNCH).unlink(missing_ok=True)
