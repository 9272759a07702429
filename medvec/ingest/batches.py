"""Batches: fixed lists of source files (manifests), and normalising one batch in worker processes.

Where each batch's files live under the Medvec home: `medvec.home`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
import os
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Callable, Collection, Iterable

from medvec.home import batch_dir, batches_dir
from medvec.imaging.dicom import UnreadableImage
from medvec.datasets.adapters import is_dataset_metadata_file, load_dataset_metadata
from medvec.datasets.metadata_csv import MetadataTable
from medvec.ingest.duplicates import ImageHolder, keep_first_holders
from medvec.imaging.normalize import NormalizeOptions, normalize_bytes
from medvec.phi import Pseudonymizer
from medvec.reports.parse import is_report_file
from medvec.tables.records import ImageRecord, IngestError, image_records_table, ingest_errors_table
from medvec.settings import DEFAULT_MAX_FILE_BYTES
from medvec.sources import ImageSource, SourceFile, SourceUnavailable, UnsafeSourceFile, open_source
from medvec.sources.local_files import uri_for_path
from medvec.storage import (HomePath, as_path, concurrent_writes, create_exclusive, exclusive_lock, is_remote,
                            map_paths, read_parquet, write_parquet)

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]


@dataclass
class BatchManifest:
    batch: str
    source: str  # root the files were listed from (folder or s3:// prefix)
    created_at: str
    files: list[SourceFile]
    metadata_csv: str | None = None
    dataset: str | None = None  # a dataset adapter's name (medvec.datasets.adapters); wins over metadata_csv

    def to_json(self) -> str:
        return json.dumps({"batch": self.batch, "source": self.source, "created_at": self.created_at,
                           "metadata_csv": self.metadata_csv, "dataset": self.dataset, "files": [f.to_dict() for f in self.files]},
                          indent=1)

    @classmethod
    def from_json(cls, text: str) -> "BatchManifest":
        raw = json.loads(text)
        return cls(batch=raw["batch"], source=raw["source"], created_at=raw["created_at"],
                   metadata_csv=raw.get("metadata_csv"), dataset=raw.get("dataset"),
                   files=[_stored_form(SourceFile(**f)) for f in raw["files"]])


def _stored_form(entry: SourceFile) -> SourceFile:
    """A manifest written before local paths were escaped may hold a non-UTF-8 name (lone surrogates):
    read back as its `file://` form, which pyarrow can store and the source still reads."""
    uri = uri_for_path(entry.uri)
    return entry if uri == entry.uri else SourceFile(uri, entry.size, entry.mtime, entry.etag)


def load_manifest(home: HomePath, batch: str) -> BatchManifest:
    path = batch_dir(home, batch) / "manifest.json"
    if not path.exists():
        raise FileNotFoundError(
            f"batch {batch!r} has no manifest at {path}; open batches with `medvec ingest SOURCE` "
            "(or the sensor) rather than adding partitions by hand")
    return BatchManifest.from_json(path.read_text())


def list_batches(home: HomePath) -> list[str]:
    # One listing (not a lookup per folder): on S3 each lookup is a request.
    return sorted(p.parent.name for p in batches_dir(home).glob("*/manifest.json"))


def plan_batches(source: ImageSource, home: HomePath, *, batch_size: int, limit: int | None = None,
                 metadata_csv: str | None = None, now: datetime | None = None,
                 existing: list[BatchManifest] | None = None, dataset: str | None = None) -> list[BatchManifest]:
    """Group the source's unclaimed files into batches of at most `batch_size` (nothing written).
    `existing` is every manifest already under `home`, when the caller has read them."""
    if batch_size < 1:
        raise ValueError("batch size must be at least 1")
    if existing is None:
        existing = [load_manifest(home, b) for b in list_batches(home)]
    claimed = {f.uri for m in existing for f in m.files}
    fresh: list[SourceFile] = []
    for entry in source.list_files():
        if entry.uri not in claimed and entry.uri != metadata_csv and not is_dataset_metadata_file(entry.uri):
            fresh.append(entry)
            if limit is not None and len(fresh) >= limit:
                break
    now = now or datetime.now(timezone.utc)
    stamp = now.strftime("%Y%m%dT%H%M%S")
    taken = {m.batch for m in existing}
    manifests, seq = [], 0
    for start in range(0, len(fresh), batch_size):
        seq += 1
        while f"b{stamp}-{seq:03d}" in taken:
            seq += 1
        manifests.append(BatchManifest(batch=f"b{stamp}-{seq:03d}", source=source.root,
                                       created_at=now.isoformat(timespec="seconds"),
                                       files=fresh[start:start + batch_size], metadata_csv=metadata_csv,
                                       dataset=dataset))
    return manifests


def write_manifest(home: HomePath, manifest: BatchManifest) -> HomePath:
    """Create the manifest; never replace one (a batch's file list never changes)."""
    path = batch_dir(home, manifest.batch) / "manifest.json"
    if not create_exclusive(path, manifest.to_json().encode()):  # another writer got there first
        raise FileExistsError(f"batch {manifest.batch} already exists; a batch's file list never changes")
    return path


@contextmanager
def batch_opening_lock(home: HomePath):
    """Serialises planning and writing manifests between processes (two ingests, CLI and sensor), so
    no file is planned into two batches."""
    with exclusive_lock(batches_dir(home) / ".open.lock"):
        yield


# --- normalising one batch -------------------------------------------------------------------

@dataclass
class BatchResult:
    batch: str
    records: list[ImageRecord]
    errors: list[IngestError]
    normalized: int = 0  # decoded and written in this run
    unchanged: int = 0  # skipped: same content hash as the stored record, files present
    kept: int = 0  # records or errors left as stored, their files not read: outside a re-ingest
    duplicates: list[str] = field(default_factory=list)  # source uris whose image_id another file holds
    changed: list[str] = field(default_factory=list)  # files whose size differs from the manifest
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def images_per_second(self) -> float:
        return self.normalized / self.seconds if self.seconds > 0 else 0.0


class _Worker:
    """Per-process state: the source client, the pseudonymiser and the CSV, built once."""

    def __init__(self, source_root: str, s3_endpoint_url: str | None, pseudonym_key: str | None,
                 options: NormalizeOptions, metadata_csv_text: str | None, allow_columns: tuple[str, ...],
                 batch: str, max_file_bytes: int = DEFAULT_MAX_FILE_BYTES, allow_dev_key: bool = False):
        self.source = open_source(source_root, s3_endpoint_url, max_file_bytes)
        # normalize_batch already refused or warned in the parent; workers stay quiet.
        self.pseudonymizer = Pseudonymizer(pseudonym_key, warn=False, allow_dev_key=allow_dev_key)
        self.options = options
        self.batch = batch
        if isinstance(metadata_csv_text, MetadataTable):  # a dataset adapter's table, built once by the parent
            self.metadata = metadata_csv_text
        else:
            self.metadata = (MetadataTable.from_csv_text(metadata_csv_text, self.pseudonymizer, allow_columns)
                             if metadata_csv_text else None)

    def run(self, index: int, entry: SourceFile, known_sha: str | None):
        try:
            data = self.source.read_bytes(entry.uri)
        except SourceUnavailable:  # the server is down: stop the batch, a later run resumes it
            raise
        except (UnsafeSourceFile, FileNotFoundError) as exc:  # a FIFO, a loop, too large, gone: said plainly
            return index, IngestError(entry.uri, self.batch, "read", type(exc).__name__,
                                      exc.strerror or "the file is gone"), None
        except Exception as exc:  # noqa: BLE001 - any failure to fetch (disk, network) is a per-file error
            return index, IngestError(entry.uri, self.batch, "read", type(exc).__name__,
                                      f"could not read the file ({str(exc)[:200]})"), None
        sha = hashlib.sha256(data).hexdigest()
        changed = entry.size >= 0 and len(data) != entry.size  # a DICOMweb listing has no size (-1)
        if known_sha == sha:
            return index, "unchanged", changed
        meta = self.metadata.lookup(entry.uri) if self.metadata else None
        try:
            result = normalize_bytes(data, entry.uri, batch=self.batch, options=self.options,
                                     pseudonymizer=self.pseudonymizer, metadata=meta, content_sha256=sha)
        except UnreadableImage as exc:
            return index, IngestError(entry.uri, self.batch, exc.stage, exc.error, exc.reason), changed
        except Exception as exc:  # noqa: BLE001 - a decoder bug on one file must not stop the batch
            log.exception("unexpected failure normalising one file")
            return index, IngestError(entry.uri, self.batch, "decode", type(exc).__name__,
                                      f"unexpected failure while decoding ({str(exc)[:200]})"), changed
        return index, result, changed


_WORKER: _Worker | None = None


def _init_worker(*args) -> None:
    global _WORKER
    _WORKER = _Worker(*args)


def _run_in_worker(index: int, entry: SourceFile, known_sha: str | None):
    return _WORKER.run(index, entry, known_sha)


def is_normalized(home: HomePath, batch: str) -> bool:
    return (batch_dir(home, batch) / "records.parquet").exists()


def load_batch_records(home: HomePath, batch: str) -> list[ImageRecord]:
    path = batch_dir(home, batch) / "records.parquet"
    if not path.exists():
        return []
    return [ImageRecord.from_row(row) for row in read_parquet(path).to_pylist()]


def load_batch_errors(home: HomePath, batch: str) -> list[IngestError]:
    path = batch_dir(home, batch) / "errors.parquet"
    if not path.exists():
        return []
    return [IngestError(**row) for row in read_parquet(path).to_pylist()]


def normalize_batch(manifest: BatchManifest, home: HomePath, *, options: NormalizeOptions = NormalizeOptions(),
                    pseudonym_key: str | None = None, allow_dev_key: bool = False, s3_endpoint_url: str | None = None,
                    workers: int | None = None, allow_columns: tuple[str, ...] = (),
                    progress: Progress | None = None, max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
                    only: Collection[str] | None = None) -> BatchResult:
    """Normalise every file of a batch; re-running gives the same records and files.

    Files whose content hash matches the stored record (and whose WebP files exist) are skipped. With
    `only` (a re-ingest): just those uris are read and normalised again, unchanged or not; the others are not read.
    Failures become `IngestError` records; the rest of the batch goes on. An image id's WebP files are
    written only by its holder (the earliest file in manifest order, or the batch that held it first).
    Without `pseudonym_key`: `MissingPseudonymKey` before anything is read, unless `allow_dev_key`.
    """
    # Refused or warned here, in the parent process, where the caller sees it (workers stay quiet).
    parent_pseudonymizer = Pseudonymizer(pseudonym_key, allow_dev_key=allow_dev_key)
    home = as_path(home)
    started = time.perf_counter()
    metadata_text = _batch_metadata(manifest, parent_pseudonymizer, allow_columns, s3_endpoint_url, max_file_bytes)
    previous = {r.source_uri: r for r in load_batch_records(home, manifest.batch)}
    known = _reusable_hashes(home, previous)
    init_args = (manifest.source, s3_endpoint_url, pseudonym_key, options, metadata_text, allow_columns,
                 manifest.batch, max_file_bytes, allow_dev_key)
    # Report files (medvec.reports.parse) travel in the same batches; the report assets read them.
    outcomes, tasks = _kept_outcomes(home, manifest, previous, known, only)
    workers = max(1, min(workers or os.cpu_count() or 1, len(tasks)))
    view_shas: dict[int, str] = {}
    result = BatchResult(batch=manifest.batch, records=[], errors=[], kept=len(outcomes))
    owners = image_owners(home, exclude=manifest.batch)
    index_of = {entry.uri: i for i, entry in enumerate(manifest.files)}
    # image id -> manifest index whose WebP files are on disk: the holder kept from the last run, then
    # whichever earlier file arrives; a later file with the same id never overwrites them.
    writers = {r.image_id: index_of[uri] for uri, r in previous.items() if uri in known and uri in index_of}
    with concurrent_writes(is_remote(home)) as write:
        for index, outcome, changed in _execute(tasks, init_args, workers, progress):
            entry = manifest.files[index]
            if changed:
                result.changed.append(entry.uri)
            if outcome == "unchanged":
                outcomes[index] = previous[entry.uri]
                result.unchanged += 1
            elif isinstance(outcome, IngestError):
                outcomes[index] = outcome
            else:
                # Written as results arrive so memory stays flat in batch size.
                image_id = outcome.record.image_id
                view_shas[index] = hashlib.sha256(outcome.view_webp).hexdigest()
                if image_id not in owners and index <= writers.get(image_id, index):
                    writers[image_id] = index
                    write(home / outcome.record.image_uri, outcome.view_webp)
                    write(home / outcome.record.thumb_uri, outcome.thumb_webp)
                result.notes.extend(f"{_name(entry.uri)}: {note}" for note in outcome.notes)
                outcomes[index] = outcome.record
                result.normalized += 1

    keep_first_holders(home, outcomes, view_shas, owners, result)
    directory = batch_dir(home, manifest.batch)
    write_parquet(directory / "records.parquet", image_records_table(result.records))
    write_parquet(directory / "errors.parquet", ingest_errors_table(result.errors))
    result.seconds = time.perf_counter() - started
    return result


def _kept_outcomes(home: HomePath, manifest: BatchManifest, previous: dict[str, ImageRecord], known: dict[str, str],
                   only: Collection[str] | None) -> tuple[dict[int, object], list[tuple]]:
    """(manifest index → the stored record or error of each file a re-ingest leaves alone, the tasks to run)."""
    files = [(i, entry) for i, entry in enumerate(manifest.files) if not is_report_file(entry.uri)]
    if only is None:
        return {}, [(i, entry, known.get(entry.uri)) for i, entry in files]
    wanted = set(only)
    errors = {e.source_uri: e for e in load_batch_errors(home, manifest.batch)}
    kept = {i: previous.get(entry.uri) or errors.get(entry.uri) for i, entry in files if entry.uri not in wanted}
    # No known hash for the chosen files: they are normalised again even when unchanged.
    tasks = [(i, entry, None) for i, entry in files if entry.uri in wanted]
    return {i: outcome for i, outcome in kept.items() if outcome is not None}, tasks


def _batch_metadata(manifest: BatchManifest, pseudonymizer: Pseudonymizer, allow_columns: tuple[str, ...],
                    s3_endpoint_url: str | None, max_file_bytes: int):
    """A dataset adapter's table, the metadata CSV's text, or None."""
    if manifest.dataset:
        return load_dataset_metadata(manifest.dataset, manifest.source, pseudonymizer,
                                     allow_columns=allow_columns, s3_endpoint_url=s3_endpoint_url)
    if manifest.metadata_csv:
        csv_source = open_source(manifest.metadata_csv, s3_endpoint_url, max_file_bytes)
        return csv_source.read_bytes(manifest.metadata_csv).decode("utf-8-sig")
    return None


def _reusable_hashes(home: HomePath, previous: dict[str, ImageRecord]) -> dict[str, str]:
    """source uri → content hash, for stored records whose WebP files still exist: an unchanged file is skipped."""
    stored = map_paths(lambda r: (home / r.image_uri).exists() and (home / r.thumb_uri).exists(),
                       list(previous.values()))
    return {uri: r.content_sha256 for (uri, r), present in zip(previous.items(), stored) if present}


def _name(uri: str) -> str:
    return uri.rsplit("/", 1)[-1]


def image_owners(home: HomePath, exclude: str | None = None) -> dict[str, ImageHolder]:
    """image_id → the record holding it, over every normalised batch but `exclude`; batches are read in
    name (creation) order so the earliest holder wins."""
    owners: dict[str, ImageHolder] = {}
    columns = ["image_id", "source_uri", "content_sha256", "image_uri"]
    for batch in list_batches(home):
        path = batch_dir(home, batch) / "records.parquet"
        if batch == exclude or not path.exists():
            continue
        for row in read_parquet(path, columns=columns).to_pylist():
            owners.setdefault(row["image_id"], ImageHolder(batch, row["source_uri"], row["content_sha256"],
                                                           row["image_uri"]))
    return owners


def _execute(tasks: list, init_args: tuple, workers: int, progress: Progress | None) -> Iterable[tuple]:
    """Yield task outcomes as they finish, in worker processes when more than one is asked for."""
    total, done = len(tasks), 0
    if workers == 1 or total <= 2:
        worker = _Worker(*init_args)
        for task in tasks:
            yield worker.run(*task)
            done += 1
            if progress:
                progress(done, total)
        return
    # spawn, not fork: LanceDB, gRPC (Dagster) and torch threads do not survive a fork.
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker, initargs=init_args) as pool:
        pending, queue = set(), iter(tasks)
        # Bounded in-flight work: results (encoded WebP) never pile up beyond a few per worker.
        for task in queue:
            pending.add(pool.submit(_run_in_worker, *task))
            if len(pending) >= workers * 4:
                break
        while pending:
            finished, pending = wait(pending, return_when=FIRST_COMPLETED)
            for future in finished:
                yield future.result()
                done += 1
                if progress:
                    progress(done, total)
                task = next(queue, None)
                if task is not None:
                    pending.add(pool.submit(_run_in_worker, *task))
