"""Watching a source for new downloads: which files are settled, which are new, which changed after
their batch was opened; opening bounded batches from the settled new files. No Dagster here: the
sensors in `pipelines/sensors.py` call `watch_source` once per tick and turn its answer into runs.

A file is *settled* when it carries a `.done` marker (`<file>.done`, or `.done` in its folder or a
folder above), or when its modification time is older than the start of the previous complete look
at the source: it cannot have changed, so its size cannot either, since that look. This needs no
per-file state between ticks (a cursor holding 100,000 sizes would be megabytes in Dagster's
database) and a half-written download, whose mtime moves with every write, never qualifies.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone

from medvec.datasets.adapters import choose_metadata
from medvec.home import INGEST_ERRORS_TABLE, batch_dir, batches_dir
from medvec.ingest.awaiting import (AWAITING_LAUNCH, awaiting_batches, clear_awaiting,  # noqa: F401 - re-exported
                                    mark_awaiting)
from medvec.ingest.batches import (BatchManifest, batch_opening_lock, list_batches, plan_batches,
                            write_manifest)
from medvec.tables.records import INGEST_ERROR_SCHEMA, IngestError, ingest_errors_table
from medvec.settings import DEFAULT_BATCH_SIZE, Settings, get_settings
from medvec.sources import DONE_MARKER, ImageSource, SourceFile, SourceScan
from medvec.storage import HomePath, is_remote, write_atomic

#: The stage under which a file that changed after its batch was opened is reported in `ingest_errors`.
CHANGED_STAGE = "changed"


@dataclass(frozen=True)
class WatchOptions:
    """How much one tick may do. Environment: MEDVEC_WATCH_BATCH_SIZE, MEDVEC_WATCH_BATCHES_PER_TICK,
    MEDVEC_WATCH_MAX_BATCHES_PER_TICK, MEDVEC_WATCH_TICK_BUDGET_S, MEDVEC_WATCH_RUNS_PER_TICK,
    MEDVEC_WATCH_PARTIAL_WAIT_S, MEDVEC_WATCH_LISTING_BUDGET_S, MEDVEC_WATCH_INTERVAL_S,
    MEDVEC_WATCH_SETTLE_MARGIN_S, MEDVEC_REFRESH_QUIET_S.

    Batches per tick adapt to the backlog: a tick always opens up to `batches_per_tick`, then keeps
    opening while the tick is younger than `tick_budget_s` (listing included), up to
    `max_batches_per_tick`. A fixed 4 a tick made a 377,000-file backlog take 48 ticks (24 min at
    30 s); writing a 2,000-file manifest takes tens of milliseconds, so one tick can open hundreds."""

    batch_size: int = DEFAULT_BATCH_SIZE
    batches_per_tick: int = 4  # batches a tick opens whatever its clock says (the floor)
    max_batches_per_tick: int = 400  # the ceiling: 800,000 files at the default batch size
    # Dagster stops a sensor tick at 60 s; the launch step (partitions, run requests) comes after this.
    tick_budget_s: float = 20.0
    runs_per_tick: int = 8  # batch runs requested per tick at least (more when a tick opened more)
    # A batch smaller than batch_size opens once the source is quiet (nothing unsettled) or after this
    # long: a slow trickle of downloads must not become one tiny partition per tick.
    partial_wait_s: float = 300.0
    listing_budget_s: float = 15.0  # a look stops here and the next tick resumes (S3: page granularity)
    settle_margin_s: float = 2.0  # clock skew allowed between the file server and this machine
    interval_s: int = 30  # sensor minimum_interval_seconds
    refresh_quiet_s: float = 60.0  # search refresh waits this long after the last embedding landed
    model_retry_s: float = 300.0  # after a failed embedding_model run, wait this long before retrying

    @classmethod
    def from_settings(cls, settings: Settings) -> "WatchOptions":
        """The MEDVEC_WATCH_* variables (and MEDVEC_REFRESH_QUIET_S), checked where Settings are built."""
        return cls(batch_size=settings.watch_batch_size, batches_per_tick=settings.watch_batches_per_tick,
                   max_batches_per_tick=settings.watch_max_batches_per_tick,
                   tick_budget_s=settings.watch_tick_budget_s, runs_per_tick=settings.watch_runs_per_tick, partial_wait_s=settings.watch_partial_wait_s,
                   listing_budget_s=settings.watch_listing_budget_s,
                   settle_margin_s=settings.watch_settle_margin_s, interval_s=settings.watch_interval_s,
                   refresh_quiet_s=settings.refresh_quiet_s)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "WatchOptions":
        """From `environ` (default: this process's Settings)."""
        return cls.from_settings(get_settings() if environ is None else Settings.from_env(environ))

    def runs_for(self, opened: int) -> int:
        """Runs to request this tick: never fewer than the tick opened, so awaiting batches do not pile up
        behind a fixed launch rate (Dagster's run queue, not the sensor, paces them)."""
        return max(self.runs_per_tick, opened)


@dataclass
class WatchCursor:
    """What a sensor remembers between ticks (a few numbers: it lives in Dagster's database).

    A *pass* is one complete look at the source, possibly over several ticks (`resume_after`).
    """

    pass_started: float | None = None  # wall-clock start of the pass in progress
    previous_pass_started: float | None = None  # start of the last complete pass: the settle reference
    resume_after: str | None = None  # the pass in progress continues after this uri
    held_since: float | None = None  # a partial batch has been held back since
    pass_unsettled: int = 0  # unsettled files seen so far in the pass in progress
    last_pass_quiet: bool = False  # the last complete pass saw nothing still being written
    model_attempt: int = 0  # embedding_model runs this sensor requested
    model_requested_at: float | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | None) -> "WatchCursor":
        if not text:
            return cls()
        raw = json.loads(text)
        return cls(**{k: v for k, v in raw.items() if k in cls.__dataclass_fields__})


@dataclass(frozen=True)
class ChangedFile:
    """A file that differs from what its batch's manifest recorded when the batch opened."""

    uri: str
    batch: str
    message: str


@dataclass
class WatchTick:
    """What one look found and did."""

    opened: list[BatchManifest]
    cursor: WatchCursor
    listed: int = 0  # candidate files seen in this look
    new_settled: int = 0  # unclaimed and settled
    unsettled: int = 0  # unclaimed, still being written (or not looked at twice yet)
    held: int = 0  # settled, but held back for a fuller batch
    changed: list[ChangedFile] = field(default_factory=list)
    complete: bool = True  # this look reached the end of the source
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def files_opened(self) -> int:
        return sum(len(m.files) for m in self.opened)

    def summary(self) -> str:
        return (f"listed {self.listed} file(s){'' if self.complete else ' (partial look, continues next tick)'}; "
                f"{self.new_settled} new and settled, {self.unsettled} still settling, {self.held} held for a "
                f"fuller batch; opened {len(self.opened)} batch(es) of {self.files_opened} file(s); "
                f"{len(self.changed)} changed after ingest")


# --- which files a batch already holds -----------------------------------------------------------

_claims_cache: dict[str, tuple[tuple[int, int], str, list[SourceFile]]] = {}


def claimed_files(home: HomePath, batches: list[str]) -> dict[str, tuple[str, SourceFile]]:
    """uri → (batch, the file as listed when its batch opened), over the manifests of `batches`.

    Manifests never change after they are written, so each is parsed once per process (keyed by its
    inode and mtime): a tick over 100,000 claimed files stays a dictionary build, not 50 JSON parses.
    """
    claims: dict[str, tuple[str, SourceFile]] = {}
    for batch in batches:
        path = batch_dir(home, batch) / "manifest.json"
        key = _file_version(path)
        cached = _claims_cache.get(str(path))
        if cached is None or cached[0] != key:
            manifest = BatchManifest.from_json(path.read_text())
            cached = _claims_cache[str(path)] = (key, manifest.batch, manifest.files)
        for entry in cached[2]:
            claims.setdefault(entry.uri, (cached[1], entry))
    return claims


def _file_version(path) -> tuple:
    """What tells a re-created local manifest from the one parsed before; on S3 manifests are created
    exclusively and never rewritten, so the key alone identifies one (and a stat would be a request)."""
    if is_remote(path):
        return ()
    st = path.stat()
    return (st.st_ino, st.st_mtime_ns)


def describe_change(was: SourceFile, now: SourceFile) -> str | None:
    """Why `now` is not the file the batch opened with, in plain words, or None when it is."""
    if was.etag and now.etag and was.etag != now.etag:
        return f"content changed after its batch was opened (ETag differs; {was.size:,} → {now.size:,} bytes)"
    if was.size != now.size:
        return f"size changed after its batch was opened ({was.size:,} → {now.size:,} bytes)"
    if not was.etag and was.mtime is not None and now.mtime is not None and abs(was.mtime - now.mtime) > 1e-3:
        return f"rewritten after its batch was opened (same size, {now.size:,} bytes, newer modification time)"
    return None


# --- settling ------------------------------------------------------------------------------------

def _folder_markers(uri: str, root: str):
    """The `.done` markers that would settle `uri`: those of its folders, innermost first, up to `root`."""
    folder = uri.rsplit("/", 1)[0]
    while len(folder) >= len(root):
        yield f"{folder}/{DONE_MARKER}"
        if "/" not in folder:
            break
        folder = folder.rsplit("/", 1)[0]


def _marked_done(uri: str, markers: set[str], root: str) -> bool:
    if not markers:
        return False
    return uri + DONE_MARKER in markers or any(marker in markers for marker in _folder_markers(uri, root))


def is_settled(entry: SourceFile, markers: set[str], root: str, reference: float | None, margin_s: float) -> bool:
    """Marked done, or unchanged since the previous complete look began (`reference`)."""
    if _marked_done(entry.uri, markers, root.rstrip("/")):
        return True
    return reference is not None and entry.mtime is not None and entry.mtime < reference - margin_s


# --- one look --------------------------------------------------------------------------------------

class _Chosen(ImageSource):
    """The files one look chose, posing as a source so `plan_batches` names and cuts the batches."""

    def __init__(self, root: str, files: list[SourceFile]):
        self.root, self._files = root, files

    def list_files(self):
        return iter(self._files)

    def read_bytes(self, uri: str) -> bytes:
        raise NotImplementedError

    def stat(self, uri: str):
        raise NotImplementedError


def open_batches(source: ImageSource, home: HomePath, files: list[SourceFile], batch_size: int, launcher: str,
          now: float, batches: list[str], more: Callable[[int], bool] = lambda opened: True) -> list[BatchManifest]:
    """Write manifests (and awaiting markers) for `files`, in order, while `more(batches opened so far)`
    says so; the caller holds the opening lock and has listed the `batches` already there."""
    if not files:
        return []
    taken = [BatchManifest(batch=b, source="", created_at="", files=[]) for b in batches]
    dataset, metadata_csv = choose_metadata(source)
    manifests = plan_batches(_Chosen(source.root, files), home, batch_size=batch_size, existing=taken,
                             metadata_csv=metadata_csv, dataset=dataset,
                             now=datetime.fromtimestamp(now, timezone.utc))
    opened = []
    for manifest in manifests:
        if not more(len(opened)):
            break
        write_manifest(home, manifest)
        mark_awaiting(home, manifest.batch, launcher)
        opened.append(manifest)
    return opened


def watch_source(source: ImageSource, home: HomePath, cursor: WatchCursor, options: WatchOptions, *,
                 launcher: str, now: float | None = None, clock: Callable[[], float] = time.monotonic) -> WatchTick:
    """Look at the source once (resuming a partial look), open batches of settled new files, and
    say which claimed files changed. Every opened batch is marked as awaiting `launcher`'s run.
    `clock` times the tick's budgets (tests pass their own)."""
    now = time.time() if now is None else now
    started = clock()
    pass_started = cursor.pass_started if cursor.resume_after and cursor.pass_started else now
    # The listing deadline is the source's own (monotonic) clock; the tick budget below is `clock`'s.
    scan: SourceScan = source.scan(start_after=cursor.resume_after,
                                   deadline=time.monotonic() + options.listing_budget_s)
    if cursor.resume_after:
        scan.markers |= _folder_markers_before(source, cursor.resume_after)
    listed_at = clock()
    tick = WatchTick(opened=[], cursor=WatchCursor(**asdict(cursor)), listed=len(scan.files), complete=scan.complete)
    with batch_opening_lock(home):
        batches = list_batches(home)
        claims = claimed_files(home, batches)
        fresh: list[SourceFile] = []
        for entry in scan.files:
            claim = claims.get(entry.uri)
            if claim is not None:
                message = describe_change(claim[1], entry)
                if message:
                    tick.changed.append(ChangedFile(entry.uri, claim[0], message))
            elif is_settled(entry, scan.markers, source.root, cursor.previous_pass_started, options.settle_margin_s):
                fresh.append(entry)
            else:
                tick.unsettled += 1
        tick.new_settled = len(fresh)
        take, capped, held_since = _choose(fresh, tick, cursor, options, now)
        deadline = started + options.tick_budget_s
        tick.opened = open_batches(source, home, take, options.batch_size, launcher, now, batches,
                            more=lambda opened: opened < options.batches_per_tick or clock() < deadline)
        last = tick.opened[-1].files[-1].uri if tick.opened else None
        if take and last != take[-1].uri:  # the budget ran out: the rest opens next tick, in order
            take, capped, held_since = take[:[f.uri for f in take].index(last) + 1], True, None
        tick.held = len(fresh) - len(take) if not capped else 0
    next_cursor = tick.cursor
    next_cursor.held_since = held_since
    next_cursor.pass_unsettled = (cursor.pass_unsettled if cursor.resume_after else 0) + tick.unsettled
    if capped:  # more settled files than one tick opens: continue right after the last one taken
        next_cursor.pass_started, next_cursor.resume_after = pass_started, take[-1].uri
    elif not scan.complete:
        next_cursor.pass_started, next_cursor.resume_after = pass_started, scan.last
    else:
        next_cursor.previous_pass_started, next_cursor.pass_started, next_cursor.resume_after = pass_started, None, None
        next_cursor.last_pass_quiet, next_cursor.pass_unsettled = next_cursor.pass_unsettled == 0, 0
    tick.seconds = {"list": round(listed_at - started, 3), "total": round(clock() - started, 3)}
    return tick


def _folder_markers_before(source: ImageSource, resume_after: str) -> set[str]:
    """`.done` markers of the folders holding the resume point: they sort before it, so a resumed look
    never lists them, yet they settle every file after it in those folders."""
    return {m for m in _folder_markers(resume_after, source.root.rstrip("/")) if source.stat(m) is not None}


def _choose(fresh: list[SourceFile], tick: WatchTick, cursor: WatchCursor, options: WatchOptions,
            now: float) -> tuple[list[SourceFile], bool, float | None]:
    """(files to open now, whether the per-tick ceiling cut the list, held_since for the cursor)."""
    size, cap = options.batch_size, max(options.batches_per_tick, options.max_batches_per_tick)
    if len(fresh) >= size * cap:
        return fresh[:size * cap], len(fresh) > size * cap, None
    full = len(fresh) - len(fresh) % size
    if full == len(fresh):
        return fresh, False, None
    # Quiet: no download in progress. A look spread over several ticks knows that only at its end, so
    # the remainders of its earlier slices open on the next pass, which starts from a quiet verdict.
    quiet = (tick.complete and cursor.pass_unsettled + tick.unsettled == 0) or cursor.last_pass_quiet
    waited = cursor.held_since is not None and now - cursor.held_since >= options.partial_wait_s
    if quiet or waited:
        return fresh, False, None
    return fresh[:full], False, cursor.held_since or now


def rescan(source: ImageSource, home: HomePath, *, batch_size: int = DEFAULT_BATCH_SIZE, min_age_s: float = 60.0,
           launcher: str, now: float | None = None) -> tuple[list[BatchManifest], int]:
    """Open batches for every file on the source that no batch holds, whatever the sensors' cursors
    say: files marked done or unmodified for `min_age_s`. Returns (batches opened, files too young)."""
    now = time.time() if now is None else now
    scan = source.scan()
    with batch_opening_lock(home):
        batches = list_batches(home)
        claims = claimed_files(home, batches)
        unclaimed = [e for e in scan.files if e.uri not in claims]
        take = [e for e in unclaimed if is_settled(e, scan.markers, source.root, now - min_age_s, 0.0)]
        return open_batches(source, home, take, batch_size, launcher, now, batches), len(unclaimed) - len(take)


# --- reporting changed files -----------------------------------------------------------------------

def report_changed(db, changed: list[ChangedFile]) -> int:
    """Record changed files in `ingest_errors` (stage `changed`), once per file and message; returns
    how many rows were new. The file is never put into another batch: its batch keeps it."""
    if not changed:
        return 0

    table = db.create_table(INGEST_ERRORS_TABLE, schema=INGEST_ERROR_SCHEMA, exist_ok=True)
    known = {(r["batch"], r["source_uri"]): r["message"] for r in
             table.search().where(f"stage = '{CHANGED_STAGE}'").select(["batch", "source_uri", "message"])
             .limit(None).to_arrow().to_pylist()}
    new = [error for error in (IngestError(c.uri, c.batch, CHANGED_STAGE, "ChangedAfterIngest",
                                           f"{c.message}: it stays in batch {c.batch} and is not batched again; "
                                           f"to use the new content, re-run the batch "
                                           f"(medvec backfill --batches {c.batch})") for c in changed)
           if known.get((error.batch, error.source_uri)) != error.message]
    if new:
        (table.merge_insert(["batch", "source_uri", "stage"]).when_matched_update_all()
         .when_not_matched_insert_all().execute(ingest_errors_table(new)))
    return len(new)


# --- refreshing search after a wave --------------------------------------------------------------

def refresh_decision(*, last_embedded_at: float | None, indexed_from: float | None, embedding_in_flight: int,
                     refresh_in_flight: bool, awaiting: Callable[[], int], now: float,
                     quiet_s: float) -> tuple[bool, str]:
    """Whether the search assets should refresh now, and why (not). Once after a wave: new vectors
    landed since the last refresh began, nothing is still embedding or waiting to, and no vector
    landed for `quiet_s`. `awaiting` counts the batches awaiting launch; it reads the home, so it is
    called only when the cheaper checks leave the question open (not on the idle ticks)."""
    if last_embedded_at is None:
        return False, "no embeddings yet"
    if indexed_from is not None and last_embedded_at <= indexed_from:
        return False, "the search assets already cover the latest embeddings"
    if refresh_in_flight:
        return False, "a search refresh is already running"
    pending = awaiting()
    if embedding_in_flight or pending:
        return False, (f"waiting for the wave to finish: {embedding_in_flight} embedding run(s) in flight, "
                       f"{pending} batch(es) awaiting launch (by their sensor, or backfill them)")
    if now - last_embedded_at < quiet_s:
        return False, f"debouncing: last embeddings landed {now - last_embedded_at:.0f}s ago (waits {quiet_s:.0f}s)"
    return True, "new embeddings since the last refresh, and the wave is over"
