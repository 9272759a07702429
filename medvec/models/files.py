"""A model's files on local disk, from the Hugging Face Hub, an S3 mirror or a folder: resolved, recorded, verified.

Every resolution writes a manifest (`medvec_files.json`: revision, each file's size and sha256) and
checks the next resolution of the same model against it, so a truncated download, a damaged cache or a
quietly edited folder is noticed before it produces embeddings.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import re
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Sequence

from medvec.progress import Listener, report

log = logging.getLogger(__name__)

MANIFEST_NAME = "medvec_files.json"
MANIFEST_FORMAT = 1
SOURCES = ("hub", "s3", "local")
#: What a transformers or open_clip model needs from a Hub repo: configs, weights, tokenizer and vocab files.
DEFAULT_HUB_PATTERNS = ("*.json", "*.safetensors", "*.txt", "*.model", "tokenizer*")
#: Pickled PyTorch weights: fetched only from a repo without safetensors, where they are the only weights
#: (older repos and some open_clip checkpoints). Beside safetensors they would double the download.
LEGACY_WEIGHT_PATTERNS = ("*.bin",)
#: `to_metadata` lists at most this many files, so the Dagster event stays small for sharded checkpoints.
METADATA_MAX_FILES = 50

_CHUNK = 1 << 20
_COMMIT = re.compile(r"[0-9a-f]{40}")
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


def resolve_model_files(model_id: str, *, source: str, location: str | None = None, revision: str | None = None,
                        cache_dir: Path, token: str | None = None, s3_endpoint_url: str | None = None,
                        allow_patterns: list[str] | None = None, progress: Listener | None = None) -> ResolvedModel:
    """Make `model_id`'s files available on local disk and record what they are.

    source="hub": `location` is unused (the repo is `model_id`, an "hf-hub:" prefix is dropped); files land in
    the Hugging Face cache at `cache_dir/hub`; `revision` pins a branch, tag or commit and the resolved commit
    is recorded. A pinned full commit whose verified copy is cached is reused without asking the Hub.
    source="s3": `location` is s3://bucket/prefix, mirrored into `cache_dir/s3/<bucket>/<prefix>`.
    source="local": `location` is a folder, used in place and never written to.
    `revision` is only used by the Hub; `allow_patterns` (Hub only) replaces the default file patterns;
    `progress(what, done_bytes, total_bytes)` hears about downloads and hashing (default: medvec.progress).
    """
    if source not in SOURCES:
        raise ModelFilesError(f"unknown model source {source!r} for {model_id}: use one of {', '.join(SOURCES)} "
                              "(MEDVEC_MODEL_SOURCE)")
    cache_dir = Path(cache_dir).expanduser()
    progress = progress or report
    if source == "local":
        return _resolve_local(model_id, location, cache_dir, progress)
    if source == "s3":
        return _resolve_s3(model_id, location, cache_dir, s3_endpoint_url, progress)
    return _resolve_hub(model_id, revision, cache_dir, token, allow_patterns, progress)


def verify_model_files(resolved: ResolvedModel) -> list[str]:
    """Plain-words problems with the resolved files on disk now (missing, resized, changed); [] when intact.

    Every file is hashed in full: this is the thorough check, unlike the size-and-mtime shortcut of a
    repeated resolution.
    """
    problems = []
    for f in resolved.files:
        path = resolved.local_dir / f.path
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            problems.append(f"{f.path} is missing from {resolved.local_dir}")
            continue
        if size != f.size:
            problems.append(f"{f.path} changed size: {f.size} bytes when resolved, {size} now")
        elif _sha256(path) != f.sha256:
            problems.append(f"{f.path} changed content: its sha256 no longer matches the one recorded")
    return problems


# --- shared: listing, hashing, the manifest ---------------------------------------------------------------

def _listed_paths(folder: Path) -> list[str]:
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


def _sha256(path: Path, on_bytes=None) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(_CHUNK):
            digest.update(block)
            if on_bytes is not None:
                on_bytes(len(block))
    return digest.hexdigest()


class _Manifest:
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


def _read_manifest(record_dir: Path, source: str, location: str) -> _Manifest | None:
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
        return _Manifest(payload)
    except (KeyError, TypeError, ValueError):
        log.warning("ignoring malformed model manifest %s; the files will be hashed again", path)
        return None


def _write_manifest(record_dir: Path, resolved: ResolvedModel, mtimes: dict[str, int],
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


def _manifest_revision(files: Iterable[ModelFile]) -> str:
    lines = "".join(f"{f.path}\t{f.size}\t{f.sha256}\n" for f in sorted(files, key=lambda f: f.path))
    return "sha256:" + hashlib.sha256(lines.encode()).hexdigest()


class _ByteProgress:
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


def _fingerprint(folder: Path, paths: Sequence[str], previous: _Manifest | None,
                 progress: Listener) -> tuple[tuple[ModelFile, ...], dict[str, int]]:
    """Size and sha256 of each file (the recorded hash where the file is provably untouched), and mtimes."""
    stats = {rel: (folder / rel).stat() for rel in paths}
    known = {rel: previous.known_sha256(rel, st) if previous else None for rel, st in stats.items()}
    counter = _ByteProgress(progress, "hashing model files",
                            sum(st.st_size for rel, st in stats.items() if known[rel] is None))
    files = tuple(ModelFile(rel, stats[rel].st_size, known[rel] or _sha256(folder / rel, counter)) for rel in paths)
    return files, {rel: st.st_mtime_ns for rel, st in stats.items()}


def _differences(before: dict[str, ModelFile], after: Iterable[ModelFile]) -> list[str]:
    after = {f.path: f for f in after}
    changed = [f"{p} changed" for p in sorted(before.keys() & after.keys()) if before[p] != after[p]]
    added = [f"{p} added" for p in sorted(after.keys() - before.keys())]
    removed = [f"{p} removed" for p in sorted(before.keys() - after.keys())]
    return changed + added + removed


def _summary(items: Sequence[str], limit: int = 5) -> str:
    return ", ".join(items[:limit]) + (f" and {len(items) - limit} more" if len(items) > limit else "")


# --- local folder -----------------------------------------------------------------------------------------

def _resolve_local(model_id: str, location: str | None, cache_dir: Path, progress: Listener) -> ResolvedModel:
    if not location:
        raise ModelFilesError(f"source=local needs the folder holding {model_id}'s files: set MEDVEC_MODEL_LOCATION")
    folder = Path(os.path.abspath(os.path.expanduser(location)))  # like LocalFolderSource: keeps symlinks
    if not folder.is_dir():
        raise ModelFilesError(f"the model folder {folder} for {model_id} does not exist or is not a folder; "
                              "fix MEDVEC_MODEL_LOCATION")
    # The user's folder is never written to: its manifest lives in the cache, keyed by the folder's path.
    record_dir = cache_dir / "local" / hashlib.sha256(str(folder).encode()).hexdigest()[:16]
    previous = _read_manifest(record_dir, "local", str(folder))
    paths = _listed_paths(folder)
    if not paths:
        raise ModelFilesError(f"the model folder {folder} for {model_id} holds no files; fix MEDVEC_MODEL_LOCATION")
    files, mtimes = _fingerprint(folder, paths, previous, progress)
    resolved = ResolvedModel(model_id, "local", str(folder), folder, _manifest_revision(files), files)
    if previous is not None and previous.revision != resolved.revision:
        # Accepted, not refused: a local folder is the user's to edit. The new revision is what gets recorded.
        log.warning("model files changed since last resolution: %s in %s (%s); now revision %s", model_id, folder,
                    _summary(_differences(previous.files(), files)), resolved.revision)
    _write_manifest(record_dir, resolved, mtimes)
    return resolved


# --- S3 mirror --------------------------------------------------------------------------------------------

def _resolve_s3(model_id: str, location: str | None, cache_dir: Path, endpoint_url: str | None,
                progress: Listener) -> ResolvedModel:
    from botocore.exceptions import BotoCoreError, ClientError

    from medvec.sources import S3PrefixSource

    if not location or not location.startswith("s3://") or not location[5:].split("/", 1)[0]:
        raise ModelFilesError(f"source=s3 needs an s3://bucket/prefix location for {model_id}, not {location!r}: "
                              "set MEDVEC_MODEL_LOCATION")
    mirror = S3PrefixSource(location, endpoint_url=endpoint_url)  # the project's one way to make an S3 client
    prefix = mirror.prefix.strip("/")
    location = f"s3://{mirror.bucket}/{prefix}" if prefix else f"s3://{mirror.bucket}"
    local_dir = cache_dir / "s3" / mirror.bucket / prefix if prefix else cache_dir / "s3" / mirror.bucket
    advice = "check the bucket and prefix (MEDVEC_MODEL_LOCATION), the credentials and MEDVEC_S3_ENDPOINT_URL"

    try:
        objects = _mirror_objects(mirror.client, mirror.bucket, f"{prefix}/" if prefix else "")
    except (BotoCoreError, ClientError) as exc:
        raise ModelFilesError(f"could not list the model mirror {location} for {model_id}: {exc}; {advice}") from exc
    if not objects:
        raise ModelFilesError(f"the model mirror {location} for {model_id} holds no model files; {advice}")

    previous = _read_manifest(local_dir, "s3", location)
    recorded = previous.entries if previous else {}
    kept: dict[str, ModelFile] = {}
    to_fetch: list[tuple[str, dict]] = []
    for rel, obj in objects.items():
        target, entry = local_dir / rel, recorded.get(rel)
        # The ETag changes when the mirror's object is replaced, even by one of the same size.
        if entry and entry.get("etag") == obj["etag"] and entry["size"] == obj["size"] and target.is_file():
            stat = target.stat()
            if stat.st_size == obj["size"]:
                sha = previous.known_sha256(rel, stat) or _sha256(target)
                if sha == entry["sha256"]:
                    kept[rel] = ModelFile(rel, obj["size"], sha)
                    continue
            log.warning("the local copy of %s in %s is damaged; downloading it again", rel, local_dir)
        to_fetch.append((rel, obj))

    counter = _ByteProgress(progress, "downloading model files", sum(obj["size"] for _, obj in to_fetch))
    fetched = {}
    for rel, obj in to_fetch:
        try:
            fetched[rel] = _download_object(mirror.client, mirror.bucket, rel, obj, local_dir, counter)
        except (BotoCoreError, ClientError) as exc:
            raise ModelFilesError(f"could not download s3://{mirror.bucket}/{obj['key']} for {model_id}: {exc}; "
                                  f"{advice}, then run again") from exc
    for rel in sorted(recorded.keys() - objects.keys()):  # gone from the mirror: the copy must not linger
        (local_dir / rel).unlink(missing_ok=True)
        log.info("removed %s from %s: it is no longer in %s", rel, local_dir, location)

    files = tuple(sorted({**kept, **fetched}.values(), key=lambda f: f.path))
    resolved = ResolvedModel(model_id, "s3", location, local_dir, _manifest_revision(files), files)
    if to_fetch:
        log.info("downloaded %d of %d model files (%d bytes) for %s from %s", len(to_fetch), len(files),
                 counter.total, model_id, location)
    _write_manifest(local_dir, resolved, {f.path: (local_dir / f.path).stat().st_mtime_ns for f in files},
                    per_file={rel: {"etag": obj["etag"]} for rel, obj in objects.items()})
    return resolved


def _mirror_objects(client, bucket: str, key_prefix: str) -> dict[str, dict]:
    """The mirror's files by relative path: no folder markers, hidden files, unsafe paths or stray manifest."""
    objects = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=key_prefix):
        for obj in page.get("Contents", []):
            rel = obj["Key"][len(key_prefix):]
            parts = rel.split("/")
            if not rel or rel.endswith("/") or rel == MANIFEST_NAME:
                continue  # a mirror synced from a resolved folder carries our manifest: ours is rebuilt here
            if any(p in ("", ".", "..") for p in parts):
                log.warning("skipping s3://%s/%s: its key does not map to a safe local path", bucket, obj["Key"])
                continue
            if not any(p.startswith(".") for p in parts):
                objects[rel] = {"key": obj["Key"], "size": obj["Size"], "etag": obj["ETag"].strip('"')}
    return objects


def _download_object(client, bucket: str, rel: str, obj: dict, local_dir: Path,
                     counter: _ByteProgress) -> ModelFile:
    """One object into `local_dir/rel`, whole or not at all: a temp file beside it, checked, then renamed."""
    target = local_dir / rel
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.part")
    try:
        client.download_file(bucket, obj["key"], str(tmp), Callback=counter)
        size = tmp.stat().st_size
        if size != obj["size"]:
            raise ModelFilesError(f"s3://{bucket}/{obj['key']} changed while it was downloaded ({obj['size']} "
                                  f"bytes listed, {size} received); run again")
        sha = _sha256(tmp)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return ModelFile(rel, size, sha)


# --- Hugging Face Hub -------------------------------------------------------------------------------------

def _resolve_hub(model_id: str, revision: str | None, cache_dir: Path, token: str | None,
                 allow_patterns: list[str] | None, progress: Listener) -> ResolvedModel:
    try:
        from huggingface_hub import hf_hub_download, snapshot_download
        from huggingface_hub.file_download import repo_folder_name
        from huggingface_hub.utils import filter_repo_objects
    except ImportError as exc:
        raise ModelFilesError("source=hub needs huggingface_hub (it comes with transformers): "
                              "pip install -e . in Medvec's environment") from exc

    repo = model_id.removeprefix("hf-hub:")  # open_clip's spelling of a Hub id
    # The Hub's own cache layout under cache_dir/hub: `medvec models` looks there, and so can transformers.
    hub_cache = cache_dir / "hub"
    requested = list(allow_patterns) if allow_patterns else None
    offline = _hub_offline()

    if revision and _COMMIT.fullmatch(revision):
        pinned = hub_cache / repo_folder_name(repo_id=repo, repo_type="model") / "snapshots" / revision
        reused = _reuse_pinned_snapshot(model_id, repo, pinned, requested, progress)
        if reused is not None:
            return reused

    def matching(paths: Iterable[str], patterns: list[str]) -> list[str]:
        return sorted(filter_repo_objects(paths, allow_patterns=patterns))

    patterns = requested or list(DEFAULT_HUB_PATTERNS)
    with _hub_errors(repo, revision, hub_cache, offline, token):
        snapshot = Path(snapshot_download(repo_id=repo, revision=revision, cache_dir=hub_cache, token=token,
                                          allow_patterns=patterns, local_files_only=offline))
        if requested is None and not any(p.endswith(".safetensors") for p in matching(_listed_paths(snapshot),
                                                                                     patterns)):
            patterns += LEGACY_WEIGHT_PATTERNS
            # Pinned to the commit just resolved, so both passes describe the same snapshot.
            snapshot = Path(snapshot_download(repo_id=repo, revision=snapshot.name, cache_dir=hub_cache, token=token,
                                              allow_patterns=patterns, local_files_only=offline))
    commit = snapshot.name if _COMMIT.fullmatch(snapshot.name) else None

    previous = _read_manifest(snapshot, "hub", repo)
    if previous is not None and previous.revision != commit:
        previous = None
    paths = matching(_listed_paths(snapshot), patterns)
    if not paths:
        raise ModelFilesError(f"no files of {repo} at commit {commit} match {patterns}; check the model id "
                              "(MEDVEC_MODEL) or the file patterns")
    files, mtimes = _fingerprint(snapshot, paths, previous, progress)

    # The Hub cache trusts a file once it exists; the record says what its bytes were when it arrived.
    damaged = [] if previous is None else _damaged(previous, files, matching(previous.entries, patterns))
    if damaged:
        if offline:
            raise ModelFilesError(f"cached files of {repo} at commit {commit} are missing or changed since they "
                                  f"were downloaded ({_summary(damaged)}) and HF_HUB_OFFLINE is set: unset it to "
                                  f"download them again, or delete {snapshot.parent.parent} and download the model "
                                  "once more")
        log.warning("cached files of %s at commit %s are missing or changed since they were downloaded (%s); "
                    "downloading them again", repo, commit, _summary(damaged))
        with _hub_errors(repo, revision, hub_cache, offline, token):
            for rel in damaged:
                hf_hub_download(repo_id=repo, filename=rel, revision=commit, cache_dir=hub_cache, token=token,
                                force_download=True)
        paths = matching(_listed_paths(snapshot), patterns)
        files, mtimes = _fingerprint(snapshot, paths, previous, progress)
        still = _damaged(previous, files, damaged)
        if still:
            log.warning("the Hub's copy of %s at commit %s differs from the one recorded (%s); recording the Hub's",
                        repo, commit, _summary(still))

    resolved = ResolvedModel(model_id, "hub", repo, snapshot, commit or _manifest_revision(files), files)
    _write_manifest(snapshot, resolved, mtimes, allow_patterns=requested, patterns=patterns)
    log.info("resolved %s at commit %s: %d files, %d bytes", repo, commit, len(files), resolved.total_bytes())
    return resolved


def _damaged(previous: _Manifest, files: Iterable[ModelFile], expected: Iterable[str]) -> list[str]:
    """Recorded files (of those still expected) that are now missing or different."""
    now, before = {f.path: f for f in files}, previous.files()
    return [p for p in expected if p in before and now.get(p) != before[p]]


def _reuse_pinned_snapshot(model_id: str, repo: str, snapshot: Path, requested: list[str] | None,
                           progress: Listener) -> ResolvedModel | None:
    """A pinned commit's cached copy, when it still matches its record: no request to the Hub at all."""
    previous = _read_manifest(snapshot, "hub", repo)
    if previous is None or previous.revision != snapshot.name or previous.allow_patterns != requested:
        return None
    paths = sorted(previous.entries)
    if not all((snapshot / p).is_file() for p in paths):
        return None
    files, mtimes = _fingerprint(snapshot, paths, previous, progress)
    if {f.path: f for f in files} != previous.files():
        return None  # the full path below asks the Hub and repairs it
    resolved = ResolvedModel(model_id, "hub", repo, snapshot, snapshot.name, files)
    _write_manifest(snapshot, resolved, mtimes, allow_patterns=requested, patterns=previous.patterns)
    log.info("reusing %s at pinned commit %s from the cache: verified, the Hub was not asked", repo, snapshot.name)
    return resolved


def _hub_offline() -> bool:
    from huggingface_hub import constants

    # huggingface_hub reads HF_HUB_OFFLINE once, when first imported; a value set later (a Dagster run's
    # environment, a test) must count too, or a "switched off" Hub is still asked and times out.
    from medvec.settings import get_settings

    return bool(constants.HF_HUB_OFFLINE) or get_settings().hf_hub_offline


def _transport_errors() -> tuple[type[BaseException], ...]:
    """The HTTP client's network errors; huggingface_hub lets some (proxy errors) through unwrapped."""
    import sys

    found = [getattr(sys.modules.get(name), "TransportError", None) for name in ("httpx2", "httpx")]
    return tuple(e for e in found if isinstance(e, type)) or (ConnectionError,)


@contextmanager
def _hub_errors(repo: str, revision: str | None, hub_cache: Path, offline: bool, token: str | None) -> Iterator[None]:
    """Hub failures as `ModelFilesError`s that say what to do; never with the token in them."""
    from huggingface_hub.errors import (GatedRepoError, HfHubHTTPError, HFValidationError, RepositoryNotFoundError,
                                        RevisionNotFoundError)

    def reason(exc: BaseException) -> str:
        text = (str(exc).strip().splitlines() or [type(exc).__name__])[0].removeprefix("Got: ")[:200]
        return text.replace(token, "***") if token else text

    mirror = "mirror it to S3 or a local folder and set MEDVEC_MODEL_SOURCE=s3 or local with MEDVEC_MODEL_LOCATION"
    gated = f"{repo} is gated: accept its terms on huggingface.co and set HF_TOKEN" + (
        "" if token is None else " (the token in use has no access yet: accept the terms with its account)")

    def unreachable(exc: BaseException) -> ModelFilesError:
        if offline:
            at = f" at revision {revision}" if revision else ""
            return ModelFilesError(f"could not reach the Hugging Face Hub for {repo}: HF_HUB_OFFLINE is set and "
                                   f"{hub_cache} holds no complete copy of it{at}; download it there once with "
                                   f"network access, or {mirror}")
        return ModelFilesError(f"could not reach the Hugging Face Hub for {repo}: {reason(exc)}; {mirror}, or set "
                               f"HF_HUB_OFFLINE=1 with a populated cache ({hub_cache})")

    try:
        yield
    except GatedRepoError as exc:
        raise ModelFilesError(gated) from exc
    except RevisionNotFoundError as exc:
        raise ModelFilesError(f"revision {revision!r} of {repo} does not exist on the Hugging Face Hub; "
                              "fix MEDVEC_MODEL_REVISION") from exc
    except RepositoryNotFoundError as exc:
        raise ModelFilesError(f"{repo} was not found on the Hugging Face Hub, or it is private: check MEDVEC_MODEL, "
                              "or set HF_TOKEN to a token that can read it") from exc
    except HfHubHTTPError as exc:
        if getattr(exc.response, "status_code", None) in (401, 403):
            raise ModelFilesError(gated) from exc
        raise unreachable(exc) from exc
    except HFValidationError as exc:
        raise ModelFilesError(f"{repo!r} is not a Hugging Face model id (org/name): {reason(exc)}; "
                              "fix MEDVEC_MODEL") from exc
    except OSError as exc:
        if not isinstance(exc, ConnectionError) and exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC):
            raise ModelFilesError(f"could not store the files of {repo} in {hub_cache}: {exc.strerror}; free space "
                                  "there or make it writable (it lives under MEDVEC_HOME)") from exc
        raise unreachable(exc) from exc  # LocalEntryNotFoundError and friends: no network, no cached copy
    except _transport_errors() as exc:
        raise unreachable(exc) from exc
