"""One file over HTTP(S), resumed and checked: fetched to `<name>.part` with ranged requests (a cut
connection resumes where it stopped), checked against what the publisher lists for it (SHA-256, MD5
and/or size), then renamed into place. A file that fails its check is deleted, never kept."""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import httpx

log = logging.getLogger(__name__)

Progress = Callable[[str, int, int | None], None]  # (file, bytes so far, total bytes or None)
CHUNK = 1 << 20
MAX_ATTEMPTS = 5  # per file: each dropped connection resumes from the bytes already on disk
# Byte ranges count stored bytes: a server compressing on the fly would shift them (and the checksums).
IDENTITY = {"Accept-Encoding": "identity"}


class FetchError(Exception):
    """A download that cannot go on; the message says what to do next."""


class CorruptFile(FetchError):
    """The bytes do not match what the publisher lists; the file was deleted."""


@dataclass(frozen=True)
class Wanted:
    """A file to fetch and what it must match; `listed_by` names the list the checks come from."""

    path: str  # relative, POSIX
    sha256: str | None = None  # hex
    md5: str | None = None  # hex
    size: int | None = None
    listed_by: str = "the listing"


def raise_for(response: httpx.Response, url: str) -> None:
    if response.status_code in (401, 403):
        raise FetchError(f"{url}: the server refused access ({response.status_code}); check PHYSIONET_USERNAME / "
                         "PHYSIONET_PASSWORD and that this account has signed the project's data use agreement")
    if response.status_code >= 400:
        raise FetchError(f"{url}: HTTP {response.status_code}")


def mismatch(path: Path, wanted: Wanted) -> str | None:
    """Why the file at `path` is not the one `wanted` lists (None when it is): size first (free), then
    the digests in one read."""
    size = path.stat().st_size
    if wanted.size is not None and size != wanted.size:
        return f"{size} bytes where {wanted.listed_by} lists {wanted.size}"
    digests = {name: hashlib.new(name) for name, value in (("sha256", wanted.sha256), ("md5", wanted.md5)) if value}
    if not digests:
        return None
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK):
            for digest in digests.values():
                digest.update(chunk)
    for name, digest in digests.items():
        expected, actual = getattr(wanted, name), digest.hexdigest()
        if actual != expected:
            return f"{name.upper()} {actual[:12]}… does not match {wanted.listed_by} ({expected[:12]}…)"
    return None


def _short_of(path: Path, announced: int | None) -> str | None:
    size = path.stat().st_size
    return None if announced is None or size == announced else f"{size} bytes where the server announced {announced}"


def is_complete(dest: Path, wanted: Wanted) -> bool:
    return dest.exists() and mismatch(dest, wanted) is None


def download_file(client: httpx.Client, url: str, dest: Path, wanted: Wanted, auth=None,
                  progress: Progress | None = None) -> int:
    """Fetch one file to `dest` via `dest.part`, resuming a partial one; returns the bytes downloaded.
    Raises `CorruptFile` (and deletes the part) when the bytes do not match `wanted`, or the size the
    server announced when `wanted` lists nothing."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    if wanted.size is not None and part.exists() and part.stat().st_size > wanted.size:
        part.unlink()  # left by another version of the file: longer than this one can be
    downloaded, total = 0, wanted.size
    for attempt in range(1, MAX_ATTEMPTS + 1):
        offset = part.stat().st_size if part.exists() else 0
        try:
            got, announced, finished = _request_range(client, url, part, offset, auth, progress, dest.name)
            downloaded += got
            total = total if total is not None else announced
            if finished:
                break
        except httpx.TransportError as exc:  # dropped mid-file: the bytes on disk stay, the next try resumes
            log.warning("%s: connection lost after %d bytes (try %d of %d): %s", dest.name,
                        part.stat().st_size if part.exists() else 0, attempt, MAX_ATTEMPTS, type(exc).__name__)
    else:
        raise FetchError(f"{url}: gave up after {MAX_ATTEMPTS} tries; run the same command again to resume")
    problem = mismatch(part, wanted) or _short_of(part, total if wanted.size is None else None)
    if problem:
        part.unlink()
        raise CorruptFile(f"{dest.name}: {problem}; the file was deleted, run the fetch again")
    os.replace(part, dest)  # appears whole, under its own name, in one step
    return downloaded


def _request_range(client, url, part: Path, offset: int, auth, progress, name) -> tuple[int, int | None, bool]:
    """One request from `offset`; (bytes written, full size, finished)."""
    headers = {**IDENTITY, "Range": f"bytes={offset}-"} if offset else IDENTITY
    with client.stream("GET", url, headers=headers, auth=auth) as response:
        if response.status_code == 416:  # nothing after offset: the part is already whole
            return 0, None, True
        raise_for(response, url)
        resumed = response.status_code == 206
        if not resumed:
            offset = 0  # the server ignored Range: start again from the first byte
        length = response.headers.get("Content-Length")
        total = offset + int(length) if length is not None else None
        written = 0
        with open(part, "ab" if resumed else "wb") as handle:
            # No chunk_size: httpx would hold bytes back to fill a chunk and lose them if the line drops.
            for chunk in response.iter_raw():
                handle.write(chunk)
                written += len(chunk)
                if progress:
                    progress(name, offset + written, total)
    return written, total, total is None or offset + written >= total
