"""What a model's files were: the types a resolution returns, and the manifest (`medvec_files.json`) that
records each file's size and sha256 so the next resolution notices a truncated, damaged or edited file."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

from medvec.progress import Listener

log = logging.getLogger(__name__)

MANIFEST_NAME = "medvec_files.json"
MANIFEST_FORMAT = 1
#: `to_metadata` lists at most this many files, so the Dagster event stays small for sharded checkpoints.
METADATA_MAX_FILES = 50

CHUNK_BYTES = 1 << 20
# Filesystem timestamps are coarse (a kernel tick, up to 2 s on some network and FAT filesystems): a file
# rewritten right after it was recorded can keep its size and mtime. Only mtimes this much older than the
# manifest are trusted without hashing (git's "racy clean" rule); younger files are hashed once more.
_RACY_NS = 2_000_000_000


class ModelFilesError(RuntimeError):
    """The model's files could not be made available; the message says what to do next."""


@dataclass(frozen=True)
class ModelFile:
    path: str  # relative to the model folder, forward slashes
    size: int
    sha256: str


@dataclass(frozen=True)
class ResolvedModel:
    """A model's files as resolved: where they are on disk and exactly which bytes they were."""

    model_id: str
    source: str  # hub | s3 | local
    location: str  # Hub repo id, s3://bucket/prefix, or the folder
    local_dir: Path
    revision: str | None  # hub: the commit; s3/local: "sha256:" of the file manifest (content, not place)
    files: tuple[ModelFile, ...]

    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)

    def to_metadata(self) -> dict:
        """Small and JSON-able, for the `embedding_model` asset: where, which revision, which files."""
        shown = self.files[:METADATA_MAX_FILES]
        metadata = {"source": self.source, "location": self.location, "revision": self.revision,
                    "n_files": len(self.files), "total_bytes": self.total_bytes(),
                    "files": [{"path": f.path, "size": f.size, "sha256": f.sha256[:16]} for f in shown]}
        if len(self.files) > len(shown):
            metadata["files_not_shown"] = len(self.files) - len(shown)
        return metadata


def listed_paths(folder: Path) -> list[str]:
    """Every file under `folder` as a sorted relative path, without hidden files and the manifest itself."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        rel_dir = Path(dirpath).relative_to(folder)
        for name in filenames:
            rel = (rel_dir / name).as_posix()
            # isfile follows symlinks: a Hub snapshot's link to a deleted blob is a missing file, not a file.
            if not name.startswith(".") and rel != MANIFEST_NAME and os.path.isfile(os.path.join(dirpath, name)):
                found.append(rel)
    return sorted(found)


def sha256_of(path: Path, on_bytes=None) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(CHUNK_BYTES):
            digest.update(block)
            if on_bytes is not None:
                on_bytes(len(block))
    return digest.hexdigest()


class Manifest:
    """The previous resolution's record of a model folder, when it describes the same thing."""

    def __init__(self, payload: dict):
        self.revision: str | None = payload.get("revision")
        self.recorded_at_ns: int = int(payload.get("recorded_at_ns") or 0)
        self.allow_patterns = payload.get("allow_patterns")  # hub: as requested (None: the defaults)
        self.patterns = payload.get("patterns")  # hub: as used, with the *.bin fallback
        self.entries: dict[str, dict] = {e["path"]: e for e in payload.get("files", [])}

    def files(self) -> dict[str, ModelFile]:
        return {p: ModelFile(p, e["size"], e["sha256"]) for p, e in self.entries.items()}

    def known_sha256(self, rel: str, stat: os.stat_result) -> str | None:
        """The recorded hash when size and mtime say the file is untouched since it was hashed, else None."""
        entry = self.entries.get(rel)
        if (entry and entry.get("size") == stat.st_size and entry.get("mtime_ns") == stat.st_mtime_ns
                and stat.st_mtime_ns < self.recorded_at_ns - _RACY_NS):
            return entry["sha256"]
        return None


def read_manifest(record_dir: Path, source: str, location: str) -> Manifest | None:
    path = record_dir / MANIFEST_NAME
    try:
        payload = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        log.warning("ignoring unreadable model manifest %s (%s); the files will be hashed again", path, exc)
        return None
    if (not isinstance(payload, dict) or payload.get("format") != MANIFEST_FORMAT
            or payload.get("source") != source or payload.get("location") != location):
        return None
    try:
        return Manifest(payload)
    except (KeyError, TypeError, ValueError):
        log.warning("ignoring malformed model manifest %s; the files will be hashed again", path)
        return None


def write_manifest(record_dir: Path, resolved: ResolvedModel, mtimes: dict[str, int],
                    per_file: dict[str, dict] | None = None, **extra) -> None:
    files = [{"path": f.path, "size": f.size, "sha256": f.sha256, "mtime_ns": mtimes.get(f.path),
              **(per_file or {}).get(f.path, {})} for f in resolved.files]
    payload = {"format": MANIFEST_FORMAT, "model_id": resolved.model_id, "source": resolved.source,
               "location": resolved.location, "revision": resolved.revision, **extra,
               "recorded_at_ns": time.time_ns(), "files": files}
    tmp = record_dir / f".{MANIFEST_NAME}.{uuid.uuid4().hex}.tmp"
    try:
        record_dir.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps(payload, indent=1))
        os.replace(tmp, record_dir / MANIFEST_NAME)
    except OSError as exc:
        # A read-only shared cache still serves the model; only the shortcut on the next run is lost.
        tmp.unlink(missing_ok=True)
        log.warning("could not record the model files of %s in %s (%s); the next resolution will hash them again",
                    resolved.model_id, record_dir, exc.strerror or exc)


def manifest_revision(files: Iterable[ModelFile]) -> str:
    lines = "".join(f"{f.path}\t{f.size}\t{f.sha256}\n" for f in sorted(files, key=lambda f: f.path))
    return "sha256:" + hashlib.sha256(lines.encode()).hexdigest()


class ByteProgress:
    """Adds up bytes (from any thread: boto3 calls back from its transfer threads) for a progress listener."""

    def __init__(self, progress: Listener, what: str, total: int):
        self.progress, self.what, self.total, self.done = progress, what, total, 0
        self._lock = threading.Lock()
        if total:
            progress(what, 0, total)

    def __call__(self, n: int) -> None:
        with self._lock:
            self.done += n
            done = self.done
        self.progress(self.what, done, self.total)


def fingerprint(folder: Path, paths: Sequence[str], previous: Manifest | None,
                 progress: Listener) -> tuple[tuple[ModelFile, ...], dict[str, int]]:
    """Size and sha256 of each file (the recorded hash where the file is provably untouched), and mtimes."""
    stats = {rel: (folder / rel).stat() for rel in paths}
    known = {rel: previous.known_sha256(rel, st) if previous else None for rel, st in stats.items()}
    counter = ByteProgress(progress, "hashing model files",
                            sum(st.st_size for rel, st in stats.items() if known[rel] is None))
    files = tuple(ModelFile(rel, stats[rel].st_size, known[rel] or sha256_of(folder / rel, counter)) for rel in paths)
    return files, {rel: st.st_mtime_ns for rel, st in stats.items()}


def differences(before: dict[str, ModelFile], after: Iterable[ModelFile]) -> list[str]:
    after = {f.path: f for f in after}
    changed = [f"{p} changed" for p in sorted(before.keys() & after.keys()) if before[p] != after[p]]
    added = [f"{p} added" for p in sorted(after.keys() - before.keys())]
    removed = [f"{p} removed" for p in sorted(before.keys() - after.keys())]
    return changed + added + removed


def summarize(items: Sequence[str], limit: int = 5) -> str:
    return ", ".join(items[:limit]) + (f" and {len(items) - limit} more" if len(items) > limit else "")


def damaged_files(previous: Manifest, files: Iterable[ModelFile], expected: Iterable[str]) -> list[str]:
    """Recorded files (of those still expected) that are now missing or different."""
    now, before = {f.path: f for f in files}, previous.files()
    return [p for p in expected if p in before and now.get(p) != before[p]]

