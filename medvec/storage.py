"""Where Medvec's files live: a local folder or an S3 prefix, behind the few path operations the code uses.

The Medvec home (WebP files, batch manifests, records, saved indexes, evaluation reports) is either a
`pathlib.Path` or an `S3Path`. `S3Path` implements the subset of `pathlib` the code calls (`/`, `name`,
`parent`, `exists`, `read_bytes`, `write_bytes`, `iterdir`, `glob`, `unlink`, ...), so the domain code
reads the same for both. What differs between a file system and an object store (atomic replace,
exclusive create, locks, parquet I/O) has one function each here.

S3 notes. A PUT is atomic (readers see the old or the new object, never half of one), so "write to a temp
file and rename" is just a PUT. Exclusive create is a conditional PUT (`If-None-Match: *`, supported by
AWS S3 since 2024, MinIO and moto). A lock is an object created exclusively, refreshed by its holder every
`LOCK_STALE_S / 4` and deleted on release; one left by a killed process is taken over (by one waiter: a
conditional PUT on the stale version) after `LOCK_STALE_S`. `mkdir` is a no-op: S3 has no folders.
"""

from __future__ import annotations

import fcntl
import fnmatch
import json
import logging
import mimetypes
import os
import posixpath
import shutil
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

log = logging.getLogger(__name__)

#: A lock object older than this is taken to belong to a killed process.
LOCK_STALE_S = 120.0

_CLIENTS: dict[str | None, object] = {}
_CLIENTS_LOCK = threading.Lock()


def s3_client(endpoint_url: str | None = None):
    """One boto3 client per endpoint and process (clients are thread-safe; they do not pickle)."""
    with _CLIENTS_LOCK:
        if endpoint_url not in _CLIENTS:
            import boto3
            from botocore.config import Config

            _CLIENTS[endpoint_url] = boto3.client(
                "s3", endpoint_url=endpoint_url, region_name=aws_region(),
                config=Config(retries={"max_attempts": 8, "mode": "adaptive"}, max_pool_connections=32))
        return _CLIENTS[endpoint_url]


def aws_region() -> str:
    from medvec.settings import get_settings  # settings builds home paths with this module: no cycle at import

    return get_settings().aws_region


def is_missing_object(error) -> bool:
    """Whether a boto3 error says the object does not exist."""
    return getattr(error, "response", {}).get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound")


class S3Path:
    """`s3://bucket/key` with the pathlib operations Medvec uses. Pickles as (uri, endpoint)."""

    def __init__(self, uri: str, endpoint_url: str | None = None):
        if not uri.startswith("s3://"):
            raise ValueError(f"not an s3:// URI: {uri}")
        bucket, _, key = uri[5:].partition("/")
        if not bucket:
            raise ValueError(f"no bucket in {uri!r}")
        self.bucket = bucket
        self.key = posixpath.normpath(key).lstrip("/") if key.strip("/") else ""
        self.endpoint_url = endpoint_url

    # --- path arithmetic ---
    def __truediv__(self, other) -> "S3Path":
        other = str(other).strip("/")
        return S3Path(f"s3://{self.bucket}/{posixpath.join(self.key, other) if self.key else other}",
                      self.endpoint_url)

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.key}" if self.key else f"s3://{self.bucket}"

    def __repr__(self) -> str:
        return f"S3Path({str(self)!r})"

    def __eq__(self, other) -> bool:
        return isinstance(other, S3Path) and (self.bucket, self.key) == (other.bucket, other.key)

    def __hash__(self) -> int:
        return hash((self.bucket, self.key))

    def __reduce__(self):
        return (S3Path, (str(self), self.endpoint_url))

    @property
    def name(self) -> str:
        return posixpath.basename(self.key)

    @property
    def stem(self) -> str:
        return posixpath.splitext(self.name)[0]

    @property
    def parent(self) -> "S3Path":
        return S3Path(f"s3://{self.bucket}/{posixpath.dirname(self.key)}", self.endpoint_url)

    def resolve(self) -> "S3Path":
        return self

    def is_relative_to(self, other) -> bool:
        return (isinstance(other, S3Path) and self.bucket == other.bucket
                and (not other.key or self.key == other.key or self.key.startswith(other.key + "/")))

    def relative_to(self, other: "S3Path") -> str:
        if not self.is_relative_to(other):
            raise ValueError(f"{self} is not under {other}")
        return self.key[len(other.key):].lstrip("/")

    # --- object operations ---
    @property
    def _client(self):
        return s3_client(self.endpoint_url)

    def _prefix(self) -> str:
        return self.key + "/" if self.key else ""

    def is_file(self) -> bool:
        if not self.key:  # the bucket itself
            return False
        try:
            self._client.head_object(Bucket=self.bucket, Key=self.key)
            return True
        except Exception as error:  # noqa: BLE001 - botocore raises ClientError subclasses per code
            if is_missing_object(error):
                return False
            raise

    def is_dir(self) -> bool:
        page = self._client.list_objects_v2(Bucket=self.bucket, Prefix=self._prefix(), MaxKeys=1)
        return page.get("KeyCount", 0) > 0

    def exists(self) -> bool:
        return self.is_file() or self.is_dir()

    def read_bytes(self) -> bytes:
        try:
            return self._client.get_object(Bucket=self.bucket, Key=self.key)["Body"].read()
        except Exception as error:  # noqa: BLE001
            if is_missing_object(error):
                raise FileNotFoundError(str(self)) from None
            raise

    def read_text(self, encoding: str = "utf-8") -> str:
        return self.read_bytes().decode(encoding)

    def write_bytes(self, data: bytes) -> int:
        self._client.put_object(Bucket=self.bucket, Key=self.key, Body=bytes(data))
        return len(data)

    def write_text(self, text: str, encoding: str = "utf-8") -> int:
        return self.write_bytes(text.encode(encoding))

    def unlink(self, missing_ok: bool = False) -> None:
        if not missing_ok and not self.is_file():
            raise FileNotFoundError(str(self))
        self._client.delete_object(Bucket=self.bucket, Key=self.key)

    def mkdir(self, mode: int = 0o777, parents: bool = False, exist_ok: bool = False) -> None:
        """S3 has no folders: a prefix exists once an object is written under it."""

    def _keys(self, delimiter: str | None = None):
        request = {"Bucket": self.bucket, "Prefix": self._prefix()}
        if delimiter:
            request["Delimiter"] = delimiter
        for page in self._client.get_paginator("list_objects_v2").paginate(**request):
            for common in page.get("CommonPrefixes", []):
                yield common["Prefix"].rstrip("/")
            for obj in page.get("Contents", []):
                yield obj["Key"]

    def iterdir(self):
        for key in self._keys(delimiter="/"):
            yield S3Path(f"s3://{self.bucket}/{key}", self.endpoint_url)

    def glob(self, pattern: str):
        """Keys under this prefix matching `pattern` (`*` stays within one path segment, as in pathlib)."""
        parts = pattern.split("/")
        for key in self._keys():
            relative = key[len(self._prefix()):].split("/")
            if len(relative) == len(parts) and all(fnmatch.fnmatchcase(r, p) for r, p in zip(relative, parts)):
                yield S3Path(f"s3://{self.bucket}/{key}", self.endpoint_url)

    def rglob(self, pattern: str):
        for key in self._keys():
            if fnmatch.fnmatchcase(posixpath.basename(key), pattern):
                yield S3Path(f"s3://{self.bucket}/{key}", self.endpoint_url)


HomePath = Path | S3Path


def as_path(location, endpoint_url: str | None = None) -> HomePath:
    """A local path or an `S3Path` for a folder path, an `s3://` URI, or a path object already made."""
    if isinstance(location, S3Path):
        return location
    text = str(location)
    if text.startswith("s3://"):
        return S3Path(text.rstrip("/"), endpoint_url or _configured_endpoint())
    return Path(location)


def _configured_endpoint() -> str | None:
    from medvec.settings import get_settings

    return get_settings().s3_endpoint_url


def is_remote(path) -> bool:
    return isinstance(path, S3Path) or str(path).startswith("s3://")


def write_atomic(path: HomePath, data: bytes) -> None:
    """Readers see the old file or the new one, never part of one."""
    if isinstance(path, S3Path):
        path.write_bytes(data)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def create_exclusive(path: HomePath, data: bytes) -> bool:
    """Create `path` holding `data` unless it exists; False when another writer got there first."""
    if isinstance(path, S3Path):
        return _conditional_put(path, data, IfNoneMatch="*") is not None
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.write_bytes(data)
    try:
        os.link(tmp, path)  # atomic and exclusive, and the file is complete when it appears
        return True
    except FileExistsError:
        return False
    finally:
        tmp.unlink()


@contextmanager
def exclusive_lock(path: HomePath, *, stale_after_s: float = LOCK_STALE_S, poll_s: float = 0.2):
    """Hold `path` as a lock between processes (and machines, on S3)."""
    if not isinstance(path, S3Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)
        return
    lock = _S3Lock(path, stale_after_s, poll_s)
    lock.acquire()
    try:
        yield
    finally:
        lock.release()


def _precondition_failed(error) -> bool:
    code = getattr(error, "response", {}).get("Error", {}).get("Code")
    return code in ("PreconditionFailed", "412", "ConditionalRequestConflict")


def _conditional_put(path: S3Path, data: bytes, **condition) -> str | None:
    """PUT when the condition (IfNoneMatch="*" or IfMatch=etag) holds: the new ETag, or None."""
    try:
        return path._client.put_object(Bucket=path.bucket, Key=path.key, Body=data, **condition)["ETag"]
    except Exception as error:  # noqa: BLE001 - botocore raises ClientError subclasses per code
        if _precondition_failed(error):
            return None
        raise


def _age_s(response) -> float:
    """How long ago the object in a GET/HEAD response was last written, by the server's own clock (the
    response's Date), so clock skew between machines never makes a live lock look stale."""
    try:
        now = parsedate_to_datetime(response["ResponseMetadata"]["HTTPHeaders"]["date"])
    except (KeyError, TypeError, ValueError):
        now = datetime.now(timezone.utc)
    return (now - response["LastModified"]).total_seconds()


class _S3Lock:
    """A lock object: created exclusively, kept fresh by a heartbeat while held, taken over only through a
    conditional PUT on the stale version (so two waiters never both take it), deleted only if still ours."""

    def __init__(self, path: S3Path, stale_after_s: float, poll_s: float):
        self.path, self.stale_after_s, self.poll_s = path, stale_after_s, poll_s
        self.token = f"{socket.gethostname()}:{os.getpid()}:{threading.get_ident()}:{time.time_ns()}"
        self.etag: str | None = None
        self._stop = threading.Event()
        self._heartbeat: threading.Thread | None = None

    def _body(self) -> bytes:
        return json.dumps({"token": self.token, "at": time.time()}).encode()

    def acquire(self) -> None:
        while True:
            self.etag = _conditional_put(self.path, self._body(), IfNoneMatch="*")
            if self.etag is not None:
                break
            try:
                held = self.path._client.get_object(Bucket=self.path.bucket, Key=self.path.key)
            except Exception as error:  # noqa: BLE001
                if is_missing_object(error):
                    continue  # released between our attempt and the read
                raise
            if _age_s(held) > self.stale_after_s:
                # Its holder stopped beating (killed): replace exactly the version we judged stale.
                self.etag = _conditional_put(self.path, self._body(), IfMatch=held["ETag"])
                if self.etag is not None:
                    break
            time.sleep(self.poll_s)
        self._heartbeat = threading.Thread(target=self._beat, name="medvec-lock-heartbeat", daemon=True)
        self._heartbeat.start()

    def _beat(self) -> None:
        while not self._stop.wait(max(self.stale_after_s / 4, 1.0)):
            try:
                etag = _conditional_put(self.path, self._body(), IfMatch=self.etag)
            except Exception as error:  # noqa: BLE001 - a network blip: the next beat tries again
                log.warning("could not refresh the lock %s (%s); retrying", self.path, type(error).__name__)
                continue
            if etag is None:
                log.warning("lost the lock %s to another process (held past %.0f s without a heartbeat?)",
                            self.path, self.stale_after_s)
                return
            self.etag = etag

    def release(self) -> None:
        self._stop.set()
        if self._heartbeat is not None:
            self._heartbeat.join()
        try:
            self.path._client.delete_object(Bucket=self.path.bucket, Key=self.path.key, IfMatch=self.etag)
        except Exception as error:  # noqa: BLE001
            if not (_precondition_failed(error) or is_missing_object(error)):  # taken over: not ours to delete
                raise


@contextmanager
def concurrent_writes(remote: bool, *, threads: int = 16, max_in_flight: int = 64):
    """Yields `write(path, data)`: inline on a local disk; on S3 from a pool of threads, because each PUT
    waits tens of milliseconds on the network and one writer at a time would cap a batch at a few dozen
    images a second whatever the cores. At most `max_in_flight` writes are held in memory; the first
    failed write is raised by the next `write` call or when the block ends."""
    if not remote:
        yield write_atomic
        return
    slots = threading.BoundedSemaphore(max_in_flight)
    failures: list[BaseException] = []

    def settle(future) -> None:
        slots.release()
        if future.exception() is not None:
            failures.append(future.exception())

    with ThreadPoolExecutor(threads, thread_name_prefix="medvec-put") as pool:
        def write(path: HomePath, data: bytes) -> None:
            if failures:  # stop the batch at the first failed upload, not after normalising all of it
                raise failures[0]
            slots.acquire()
            pool.submit(write_atomic, path, data).add_done_callback(settle)

        yield write
    if failures:
        raise failures[0]


def map_paths(function, paths: list, *, threads: int = 16) -> list:
    """`function` over paths, in order: from a pool of threads when they are S3 objects (each request
    waits on the network), in this thread on a local disk."""
    if not any(isinstance(p, S3Path) for p in paths):  # None entries are the function's to handle
        return [function(p) for p in paths]
    with ThreadPoolExecutor(threads, thread_name_prefix="medvec-s3") as pool:
        return list(pool.map(function, paths))


def write_parquet(path: HomePath, table: pa.Table) -> None:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    write_atomic(path, sink.getvalue().to_pybytes())


def read_parquet(path: HomePath, columns: list[str] | None = None) -> pa.Table:
    if isinstance(path, S3Path):
        return pq.read_table(pa.BufferReader(path.read_bytes()), columns=columns)
    return pq.read_table(path, columns=columns)


def remove_tree(path: HomePath) -> None:
    if not isinstance(path, S3Path):
        shutil.rmtree(path, ignore_errors=True)
        return
    keys = list(path._keys())
    for start in range(0, len(keys), 1000):
        answer = path._client.delete_objects(
            Bucket=path.bucket, Delete={"Objects": [{"Key": k} for k in keys[start:start + 1000]]})
        if answer.get("Errors"):
            first = answer["Errors"][0]
            raise OSError(f"could not delete {len(answer['Errors'])} object(s) under {path}: "
                          f"{first.get('Key')}: {first.get('Code')} {first.get('Message')}")


#: Static hosting needs the right types: browsers refuse modules and WebAssembly served as octet-stream.
_CONTENT_TYPES = {".wasm": "application/wasm", ".js": "text/javascript", ".mjs": "text/javascript",
                  ".json": "application/json", ".webp": "image/webp", ".html": "text/html; charset=utf-8"}


def upload_tree(local: Path, target: HomePath) -> None:
    """Copy a local folder to `target` (a folder, or an S3 prefix with each object's Content-Type set)."""
    for file in sorted(p for p in Path(local).rglob("*") if p.is_file()):
        relative = file.relative_to(local).as_posix()
        if isinstance(target, S3Path):
            kind = _CONTENT_TYPES.get(file.suffix.lower()) or mimetypes.guess_type(file.name)[0] \
                or "application/octet-stream"
            destination = target / relative
            target._client.put_object(Bucket=destination.bucket, Key=destination.key, Body=file.read_bytes(),
                                      ContentType=kind)
        else:
            (target / relative).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(file, target / relative)


def lancedb_storage_options(uri: str, endpoint_url: str | None = None) -> dict[str, str] | None:
    """LanceDB's object-store options for an `s3://` URI pointed at an S3-compatible endpoint (MinIO, moto).

    Credentials and region come from the usual AWS environment; only the endpoint is ours to pass."""
    endpoint_url = endpoint_url or _configured_endpoint()
    if not uri.startswith("s3://") or not endpoint_url:
        return None
    options = {"endpoint": endpoint_url, "region": aws_region()}
    if endpoint_url.startswith("http://"):
        options["allow_http"] = "true"
    return options
