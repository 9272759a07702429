"""Where Medvec's files live: a local folder or an S3 prefix, behind the few path operations the code uses.

The Medvec home (WebP files, batch manifests, records, saved indexes, evaluation reports) is either a
`pathlib.Path` or an `S3Path` (`medvec.s3_path`), so the domain code reads the same for both. What differs
between a file system and an object store (atomic replace, exclusive create, locks, parquet I/O) has one
function each here; on S3 a PUT is the atomic replace, and exclusive create and locks are conditional PUTs
(`medvec.s3_lock`).
"""

from __future__ import annotations

import fcntl
import mimetypes
import os
import shutil
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

# S3Path, the client and the missing-object rule are re-exported: callers ask this module for storage.
from medvec.s3_lock import LOCK_STALE_S, S3Lock, conditional_put
from medvec.s3_path import S3Path, aws_region, is_missing_object, s3_client  # noqa: F401


HomePath = Path | S3Path


def as_path(location, endpoint_url: str | None = None) -> HomePath:
    """A local path or an `S3Path` for a folder path, an `s3://` URI, or a path object already made."""
    if isinstance(location, S3Path):
        return location
    text = str(location)
    if text.startswith("s3://"):
        return S3Path(text.rstrip("/"), endpoint_url or _configured_endpoint())
    return Path(location)


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
        return conditional_put(path, data, IfNoneMatch="*") is not None
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
def exclusive_lock(path: HomePath, *, stale_after_s: float = LOCK_STALE_S, poll_s: float = 0.2, age_s=None):
    """Hold `path` as a lock between processes (and machines, on S3). `age_s(held object)` judges an S3
    lock's age (default: by the server's clock)."""
    if not isinstance(path, S3Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)
        return
    lock = S3Lock(path, stale_after_s, poll_s, age_s)
    lock.acquire()
    try:
        yield
    finally:
        lock.release()


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
    keys = list(path.keys())
    for start in range(0, len(keys), 1000):
        answer = path.client.delete_objects(
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
            target.client.put_object(Bucket=destination.bucket, Key=destination.key, Body=file.read_bytes(),
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


def _configured_endpoint() -> str | None:
    from medvec.settings import get_settings  # settings builds home paths with this module: no cycle at import

    return get_settings().s3_endpoint_url
