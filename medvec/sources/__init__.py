"""Where source files come from: a local folder or an S3 prefix, behind one interface."""

from __future__ import annotations

import errno
import os
import time
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator

from medvec.settings import DEFAULT_MAX_FILE_BYTES
from medvec.sources.local_files import (UnsafeSourceFile, entry_stat, path_for_uri,  # noqa: F401
                                        read_regular_file, uri_for_path)
from medvec.storage import aws_region, is_missing_object

#: Files a download leaves beside images that are never images themselves.
IGNORED_SUFFIXES = (".csv", ".done", ".json", ".md5", ".sha256", ".part", ".tmp", ".crdownload")
#: A download's "complete" marker: `<file>.done` beside one file, or `.done` in a folder (every file
#: in that folder and below is complete). Watching takes marked files without waiting for them to settle.
DONE_MARKER = ".done"


@dataclass(frozen=True)
class SourceFile:
    """One listed file: enough to notice later that it changed (size plus mtime or etag)."""

    uri: str
    size: int
    mtime: float | None = None
    etag: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class SourceScan:
    """One look at a source for watching it: candidate files and `.done` markers, in uri order.
    `complete` is False when the look stopped at its deadline; the next look resumes after `last`."""

    files: list[SourceFile] = field(default_factory=list)
    markers: set[str] = field(default_factory=set)
    complete: bool = True
    last: str | None = None


def is_candidate(name: str) -> bool:
    base = name.rsplit("/", 1)[-1]
    return bool(base) and not base.startswith(".") and not base.lower().endswith(IGNORED_SUFFIXES)


class ImageSource(ABC):
    """A place holding source images. `root` is the folder path or `s3://bucket/prefix`."""

    root: str

    @abstractmethod
    def list_files(self) -> Iterator[SourceFile]:
        """Every candidate image file under the root, in a stable (sorted) order."""

    @abstractmethod
    def read_bytes(self, uri: str) -> bytes: ...

    @abstractmethod
    def stat(self, uri: str) -> SourceFile | None:
        """Current size/mtime/etag of one file, or None when it is gone."""

    def find_metadata_csv(self) -> str | None:
        """A metadata CSV at the root (labels.csv, metadata.csv, or the only CSV there)."""
        return None

    def scan(self, start_after: str | None = None, deadline: float | None = None) -> SourceScan:
        """Candidates and `.done` markers in one pass, in uri order, after `start_after`; stops
        (incomplete) once `time.monotonic()` passes `deadline`, so a sensor tick stays bounded."""
        raise NotImplementedError(f"{type(self).__name__} cannot be watched")


class LocalFolderSource(ImageSource):
    """A folder (or one file). Every entry with an image's name lists, whatever it is; only regular files
    inside the root are read (medvec.sources.local_files), so a FIFO, a device, a link loop or a link out
    of the root becomes one read error for its batch instead of a hang or a crash."""

    def __init__(self, root: str | Path, max_file_bytes: int = DEFAULT_MAX_FILE_BYTES):
        self.root = os.path.abspath(os.path.expanduser(str(root)))  # collapses "..", keeps symlinks
        self.max_file_bytes = max_file_bytes
        self._real_root: str | None = None

    @property
    def real_root(self) -> str:
        if self._real_root is None:
            self._real_root = os.path.realpath(self.root)
        return self._real_root

    def list_files(self) -> Iterator[SourceFile]:
        if not os.path.isdir(self.root):
            entry = self.stat(self.root)
            if entry is not None:
                yield entry
            return
        # onerror: an unreadable folder is skipped, not fatal; links to folders are not followed.
        for dirpath, dirnames, filenames in os.walk(self.root, onerror=lambda exc: None):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for name in sorted(filenames):
                if is_candidate(name):
                    entry = self.stat(uri_for_path(os.path.join(dirpath, name)))
                    if entry is not None:
                        yield entry

    def read_bytes(self, uri: str) -> bytes:
        path = path_for_uri(uri)
        root = self.real_root if os.path.isdir(self.real_root) else os.path.realpath(path)
        return read_regular_file(path, root, self.max_file_bytes)

    def stat(self, uri: str) -> SourceFile | None:
        st = entry_stat(path_for_uri(uri))
        return None if st is None else SourceFile(uri=str(uri), size=st.st_size, mtime=st.st_mtime)

    def scan(self, start_after: str | None = None, deadline: float | None = None) -> SourceScan:
        result = SourceScan()
        if not os.path.isdir(self.root):
            entry = self.stat(self.root)
            result.files = [entry] if entry else []
            return result
        for path, name in _walk_in_uri_order(self.root, path_for_uri(start_after) if start_after else None):
            if deadline is not None and time.monotonic() > deadline:
                result.complete = False
                return result
            uri = uri_for_path(path)
            if name.endswith(DONE_MARKER):
                result.markers.add(uri)
            elif is_candidate(name):
                entry = self.stat(uri)
                if entry is not None:  # None: deleted between listing and stat
                    result.files.append(entry)
            result.last = uri
        return result

    def find_metadata_csv(self) -> str | None:
        root = Path(self.root)
        if not root.is_dir():
            return None
        csvs = sorted(root.glob("*.csv"))
        for preferred in ("labels.csv", "metadata.csv"):
            if (root / preferred).is_file():
                return str(root / preferred)
        return str(csvs[0]) if len(csvs) == 1 else None


def _walk_in_uri_order(folder: str, start_after: str | None):
    """(path, name) for every non-directory entry under `folder` in the order of the path strings (a
    folder sorts as `name/`), so a look can resume after any path; folders wholly before `start_after`
    are never opened. Hidden entries are skipped (but `.done` markers kept); like `os.walk`, links to
    folders are not followed, and a folder that cannot be listed is skipped."""
    try:
        with os.scandir(folder) as listing:
            entries = [(e.name + os.sep if e.is_dir(follow_symlinks=False) else e.name, e) for e in listing
                       if not e.name.startswith(".") or e.name == DONE_MARKER]
    except OSError:
        return
    for key, entry in sorted(entries, key=lambda item: item[0]):
        path = os.path.join(folder, key)
        if key.endswith(os.sep):
            if start_after is not None and path < start_after and not start_after.startswith(path):
                continue
            yield from _walk_in_uri_order(path[:-1], start_after if start_after and start_after > path else None)
        elif start_after is not None and path <= start_after:
            continue
        elif not _links_to_folder(entry):
            yield path, entry.name


def _links_to_folder(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir()
    except OSError:
        return False


def split_s3_uri(uri: str) -> tuple[str, str]:
    if not uri.startswith("s3://"):
        raise ValueError(f"not an s3:// URI: {uri}")
    bucket, _, key = uri[5:].partition("/")
    return bucket, key


class S3PrefixSource(ImageSource):
    """An S3 (or S3-compatible: MinIO, moto) prefix. Credentials come from boto3's usual chain."""

    def __init__(self, root: str, endpoint_url: str | None = None, max_file_bytes: int = DEFAULT_MAX_FILE_BYTES):
        self.root = root.rstrip("/")
        self.bucket, self.prefix = split_s3_uri(self.root)
        self.endpoint_url = endpoint_url
        self.max_file_bytes = max_file_bytes
        self._client = None

    def __getstate__(self):  # boto3 clients do not pickle; worker processes make their own
        return {**self.__dict__, "_client": None}

    @property
    def client(self):
        # Its own client, made from the credentials in force when the source is opened (a source is
        # opened per batch or look); the home's paths share one cached client per process instead.
        if self._client is None:
            import boto3
            from botocore.config import Config

            # Bounded waits: a stalled connection fails that one object, never hangs a batch or a tick.
            self._client = boto3.client("s3", endpoint_url=self.endpoint_url, region_name=aws_region(),
                                        config=Config(connect_timeout=10, read_timeout=60,
                                                      retries={"max_attempts": 3, "mode": "standard"}))
        return self._client

    def list_files(self) -> Iterator[SourceFile]:
        prefix = f"{self.prefix}/" if self.prefix else ""
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
            for obj in page.get("Contents", []):  # S3 lists keys in UTF-8 binary order: stable
                if is_candidate(obj["Key"]) and not obj["Key"].endswith("/") and _utf8(obj["Key"]):
                    yield _s3_entry(self.bucket, obj)

    def scan(self, start_after: str | None = None, deadline: float | None = None) -> SourceScan:
        prefix = f"{self.prefix}/" if self.prefix else ""
        request = {"Bucket": self.bucket, "Prefix": prefix}
        if start_after:
            request["StartAfter"] = split_s3_uri(start_after)[1]
        result = SourceScan()
        for page in self.client.get_paginator("list_objects_v2").paginate(**request):
            for obj in page.get("Contents", []):
                key = obj["Key"]
                uri = f"s3://{self.bucket}/{key}"
                if key.endswith(DONE_MARKER):
                    result.markers.add(uri)
                elif is_candidate(key) and not key.endswith("/") and _utf8(key):
                    result.files.append(_s3_entry(self.bucket, obj))
                result.last = uri
            # A page (1,000 keys) is the unit of work: a look stops between pages, never inside one.
            if deadline is not None and page.get("IsTruncated") and time.monotonic() > deadline:
                result.complete = False
                return result
        return result

    def read_bytes(self, uri: str) -> bytes:
        bucket, key = split_s3_uri(uri)
        try:
            answer = self.client.get_object(Bucket=bucket, Key=key)
        except self.client.exceptions.ClientError as exc:
            if is_missing_object(exc):
                raise FileNotFoundError(f"the object is gone (deleted after it was listed): {uri}") from None
            raise
        body = answer["Body"]
        try:
            if answer.get("ContentLength", 0) > self.max_file_bytes:
                raise UnsafeSourceFile(errno.EFBIG, f"{answer['ContentLength']:,} bytes, over the {self.max_file_bytes:,}-byte "
                                           "limit (MEDVEC_MAX_FILE_BYTES); not read")
            data = body.read(self.max_file_bytes + 1)
        finally:
            body.close()
        if len(data) > self.max_file_bytes:
            raise UnsafeSourceFile(errno.EFBIG, f"over the {self.max_file_bytes:,}-byte limit (MEDVEC_MAX_FILE_BYTES); not read")
        return data

    def stat(self, uri: str) -> SourceFile | None:
        bucket, key = split_s3_uri(uri)
        try:
            head = self.client.head_object(Bucket=bucket, Key=key)
        except self.client.exceptions.ClientError as exc:
            if is_missing_object(exc):
                return None
            raise
        return SourceFile(uri=uri, size=head["ContentLength"], mtime=head["LastModified"].timestamp(),
                          etag=head["ETag"].strip('"'))

    def find_metadata_csv(self) -> str | None:
        prefix = f"{self.prefix}/" if self.prefix else ""
        listing = self.client.list_objects_v2(Bucket=self.bucket, Prefix=prefix, Delimiter="/")
        keys = sorted(o["Key"] for o in listing.get("Contents", []) if o["Key"].lower().endswith(".csv"))
        for preferred in ("labels.csv", "metadata.csv"):
            if f"{prefix}{preferred}" in keys:
                return f"s3://{self.bucket}/{prefix}{preferred}"
        return f"s3://{self.bucket}/{keys[0]}" if len(keys) == 1 else None


def _utf8(key: str) -> bool:
    """S3 keys are UTF-8 by the protocol, but a listing decoded leniently can still carry lone surrogates;
    such a key could not be stored (pyarrow) nor asked for again, so it is left out."""
    try:
        key.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def _s3_entry(bucket: str, obj: dict) -> SourceFile:
    return SourceFile(uri=f"s3://{bucket}/{obj['Key']}", size=obj["Size"], mtime=obj["LastModified"].timestamp(),
                      etag=obj["ETag"].strip('"'))


def open_source(root: str, s3_endpoint_url: str | None = None,
                max_file_bytes: int = DEFAULT_MAX_FILE_BYTES) -> ImageSource:
    """The source for a folder path, an `s3://bucket/prefix` URI or a DICOMweb root (`http(s)://…`);
    `max_file_bytes` (MEDVEC_MAX_FILE_BYTES) bounds every read."""
    if root.startswith(("http://", "https://")):
        from medvec.sources.dicomweb import DicomWebSource
        return DicomWebSource(root)
    if root.startswith("s3://"):
        return S3PrefixSource(root, endpoint_url=s3_endpoint_url, max_file_bytes=max_file_bytes)
    return LocalFolderSource(root, max_file_bytes=max_file_bytes)


class SourceUnavailable(Exception):
    """The source as a whole cannot be reached (a server down, credentials refused): the batch stops
    instead of recording every file as failed, and a later run resumes it."""
