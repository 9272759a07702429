"""Re-ingesting chosen files of a normalised batch: a marker beside the manifest lists the files (by the
manifest's own uris) that the batch's next re-ingest run reads and normalises again; the batch's other
files keep their records and are not read. A date-range backfill writes the marker, a sensor launches the
run, and the run clears the marker it served."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass

from medvec.home import batch_dir
from medvec.ingest.batches import batch_opening_lock
from medvec.storage import HomePath, as_path, write_atomic

#: Beside a batch's manifest while some of its files wait to be read and normalised again.
REINGEST = "reingest.json"


@dataclass(frozen=True)
class Reingest:
    batch: str
    uris: tuple[str, ...]  # as the manifest holds them
    request: str  # names this request: a run key is made of it, so each request launches one run
    launcher: str  # the sensor that launches the run

    def to_json(self) -> str:
        return json.dumps({"uris": list(self.uris), "request": self.request, "launcher": self.launcher})


def load_reingest(home: HomePath, batch: str) -> Reingest | None:
    path = batch_dir(home, batch) / REINGEST
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    return Reingest(batch=batch, uris=tuple(raw["uris"]), request=raw["request"], launcher=raw.get("launcher", ""))


def mark_reingest(home: HomePath, batch: str, uris: list[str], launcher: str) -> Reingest:
    """Ask for `uris` of `batch` to be read and normalised again, added to a request not served yet.
    The caller holds `batch_opening_lock`, so a run finishing meanwhile cannot clear what this adds."""
    current = load_reingest(home, batch)
    merged = sorted({*uris, *(current.uris if current else ())})
    marker = Reingest(batch=batch, uris=tuple(merged), request=uuid.uuid4().hex[:12], launcher=launcher)
    write_atomic(batch_dir(home, batch) / REINGEST, marker.to_json().encode())  # readers never see half
    return marker


def reingest_requests(home: HomePath, launcher: str | None = None) -> list[Reingest]:
    """Re-ingests waiting for their run (`launcher`'s, or anyone's), in batch order."""
    found = []
    # One listing finds the markers, as for awaiting batches: a read per batch would grow with the home.
    for path in sorted((as_path(home) / "batches").glob(f"*/{REINGEST}"), key=lambda p: p.parent.name):
        marker = load_reingest(home, path.parent.name)
        if marker is not None and (launcher is None or marker.launcher == launcher):
            found.append(marker)
    return found


def finish_reingest(home: HomePath, served: Reingest) -> bool:
    """Clear the marker a run served; a marker another request replaced meanwhile stays for its own run."""
    with batch_opening_lock(home):
        current = load_reingest(home, served.batch)
        if current is None or current.request != served.request:
            return False
        (batch_dir(home, served.batch) / REINGEST).unlink(missing_ok=True)
        return True
