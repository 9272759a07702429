"""Watching a DICOMweb archive: each look asks QIDO-RS for instances from the cursor's study date on
(minus a lookback, for studies that reach the archive late), drops every instance a batch already holds
(by SOPInstanceUID) and opens bounded batches of the rest. No Dagster here: `pipelines/dicomweb_sensor.py`
calls `watch_dicomweb` once per tick, and `backfill_range` for a date-range backfill.

Instances are new when no manifest holds their SOPInstanceUID, so an outage at any point (listing,
opening, retrieving) loses nothing and fetches nothing twice: the cursor only narrows the query.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from datetime import date, timedelta

from medvec.ingest.batches import BatchManifest, batch_opening_lock, is_normalized, list_batches
from medvec.ingest.reingest import mark_reingest
from medvec.ingest.watch import claimed_files, open_batches
from medvec.sources.dicomweb import DicomWebInstance, DicomWebSource, InstanceQuery, sop_uid_of
from medvec.storage import HomePath


@dataclass
class DicomWebCursor:
    """What the sensor remembers: the newest study date of a complete look (the query's floor), the
    batches it opened that are not normalised yet (to resume them after a failed run), and the folder
    sensor's cursor fields for the model request."""

    # YYYYMM, not the day: study dates are identifying (PS3.15), the month of the newest study is the
    # coarsest floor that still keeps each look to about a month of the archive.
    study_date_floor: str | None = None
    open_batches: list[str] = field(default_factory=list)
    resumed: dict[str, int] = field(default_factory=dict)  # batch → runs requested again after a failure
    watch: dict = field(default_factory=dict)  # medvec.ingest.watch.WatchCursor, for the model request

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | None) -> "DicomWebCursor":
        if not text:
            return cls()
        raw = json.loads(text)
        return cls(**{k: v for k, v in raw.items() if k in cls.__dataclass_fields__})


@dataclass
class DicomWebTick:
    opened: list[BatchManifest]
    cursor: DicomWebCursor
    listed: int = 0
    new: int = 0
    left_for_next_tick: int = 0
    seconds: float = 0.0

    def summary(self) -> str:
        files = sum(len(m.files) for m in self.opened)
        return (f"listed {self.listed} instance(s), {self.new} new; opened {len(self.opened)} batch(es) of {files} "
                f"instance(s); {self.left_for_next_tick} left for the next tick")


def claimed_instances(home: HomePath, batches: list[str]) -> set[str]:
    """SOPInstanceUIDs every manifest holds (whatever the server's address was when it opened)."""
    return {sop_uid_of(uri) for uri in claimed_files(home, batches)}


@dataclass
class RangeBackfill:
    """What a date-range backfill set in motion, as counts of instances per batch."""

    opened: list[BatchManifest]  # new batches for the range's instances no batch held
    reingest: dict[str, int] = field(default_factory=dict)  # normalised batches: these instances read again
    pending: dict[str, int] = field(default_factory=dict)  # batches whose first run has not normalised them yet

    @property
    def instances(self) -> int:
        return sum(len(m.files) for m in self.opened) + sum(self.reingest.values()) + sum(self.pending.values())


def backfill_range(source: DicomWebSource, home: HomePath, instances: list[DicomWebInstance], *, batch_size: int,
                   launcher: str, now: float | None = None) -> RangeBackfill:
    """Ingest exactly `instances` (a study date range's listing) again: batches opened for those no batch
    holds, and a re-ingest marker on each normalised batch naming the ones it holds, so its next run reads
    and normalises just those (its other files, outside the range, are left alone). `launcher` runs both."""
    with batch_opening_lock(home):
        batches = list_batches(home)
        holder: dict[str, tuple[str, str]] = {}  # SOPInstanceUID → (batch, uri in its manifest); first batch wins
        for uri, (batch, _) in claimed_files(home, batches).items():
            holder.setdefault(sop_uid_of(uri), (batch, uri))
        held: dict[str, set[str]] = {}
        fresh: dict[str, DicomWebInstance] = {}
        for instance in instances:
            if instance.sop_uid in holder:
                batch, uri = holder[instance.sop_uid]
                held.setdefault(batch, set()).add(uri)
            else:
                fresh.setdefault(instance.sop_uid, instance)
        chosen = [i.source_file() for i in sorted(fresh.values(), key=lambda i: (i.study_date, i.uri))]
        plan = RangeBackfill(opened=open_batches(source, home, chosen, batch_size, launcher, now or time.time(), batches))
        for batch, uris in held.items():
            if is_normalized(home, batch):
                mark_reingest(home, batch, sorted(uris), launcher)
                plan.reingest[batch] = len(uris)
            else:  # its first run (awaiting launch, running or resumed after a failure) reads every file anyway
                plan.pending[batch] = len(uris)
    return plan


def query_floor(cursor: DicomWebCursor, lookback_days: int) -> str | None:
    if not cursor.study_date_floor:
        return None
    floor = date(int(cursor.study_date_floor[:4]), int(cursor.study_date_floor[4:6]), 1)
    return (floor - timedelta(days=max(0, lookback_days))).strftime("%Y%m%d")


def open_instances(source: DicomWebSource, home: HomePath, instances: list[DicomWebInstance], *, limit: int,
                   batch_size: int, launcher: str, now: float | None = None) -> tuple[list[BatchManifest], int]:
    """Open batches for the first `limit` instances no batch holds (oldest study first); the count of
    new instances left over."""
    with batch_opening_lock(home):
        batches = list_batches(home)
        claimed = claimed_instances(home, batches)
        fresh = sorted((i for i in instances if i.sop_uid not in claimed), key=lambda i: (i.study_date, i.uri))
        chosen = [i.source_file() for i in fresh[:limit]]
        opened = open_batches(source, home, chosen, batch_size, launcher, now or time.time(), batches)
    return opened, len(fresh) - len(chosen)


def watch_dicomweb(source: DicomWebSource, home: HomePath, cursor: DicomWebCursor, *, launcher: str,
                   batch_size: int, now: float | None = None) -> DicomWebTick:
    """One look: list from the floor, open at most `max_per_tick` new instances, move the floor to the
    newest study date once a look left nothing behind. Raises SourceUnavailable when the server is down
    (the cursor is then unchanged)."""
    started = time.perf_counter()
    settings = source.settings
    query = InstanceQuery(modalities=settings.modalities, filters=settings.query,
                          date_from=query_floor(cursor, settings.lookback_days))
    instances = list(source.search_instances(query))
    opened, left = open_instances(source, home, instances, limit=settings.max_per_tick, batch_size=batch_size,
                                  launcher=launcher, now=now)
    new = sum(len(m.files) for m in opened) + left
    if left == 0:
        dates = [i.study_date for i in instances if len(i.study_date) == 8 and i.study_date.isdigit()]
        if dates:
            cursor.study_date_floor = max([*(d[:6] for d in dates), cursor.study_date_floor or ""])
    cursor.open_batches = [*cursor.open_batches, *(m.batch for m in opened)]
    return DicomWebTick(opened=opened, cursor=cursor, listed=len(instances), new=new, left_for_next_tick=left,
                        seconds=time.perf_counter() - started)
