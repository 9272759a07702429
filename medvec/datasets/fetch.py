"""Downloads of public datasets that resume and verify: PhysioNet (MIMIC-CXR, MIMIC-CXR-JPG) with the
user's credentials, SCIN from its public bucket, Open-I from NLM.

A file is fetched to `<name>.part` with ranged requests (a cut connection resumes where it stopped),
checked against the dataset's `SHA256SUMS.txt` (or the size the server states when that is all there
is), then renamed into place; a folder gets a `.done` marker once every listed file in it and below is
complete, so the folder sensor takes files only whole. A file that fails its check is deleted.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Callable

import httpx

from medvec.sources import DONE_MARKER

log = logging.getLogger(__name__)

Progress = Callable[[str, int, int | None], None]  # (file, bytes so far, total bytes or None)
CHUNK = 1 << 20
MAX_ATTEMPTS = 5  # per file: each dropped connection resumes from the bytes already on disk


@dataclass(frozen=True)
class Remote:
    """Where a dataset is published and how its files are listed and checked."""

    name: str
    base_url: str
    credentials: bool  # PhysioNet's credentialed projects: HTTP basic auth, like `wget --user`
    checksums: str | None = None  # a SHA256SUMS.txt listing every file
    files: tuple[str, ...] = ()  # fixed file list when there is no checksum list


REMOTES = {r.name: r for r in (
    Remote("mimic-cxr", "https://physionet.org/files/mimic-cxr/2.0.0/", True, "SHA256SUMS.txt"),
    Remote("mimic-cxr-jpg", "https://physionet.org/files/mimic-cxr-jpg/2.1.0/", True, "SHA256SUMS.txt"),
    Remote("vindr-cxr", "https://physionet.org/files/vindr-cxr/1.0.0/", True, "SHA256SUMS.txt"),
    Remote("scin", "https://storage.googleapis.com/dx-scin-public-data/", False, None,
           ("dataset/scin_cases.csv", "dataset/scin_labels.csv")),
    Remote("open-i", "https://openi.nlm.nih.gov/imgs/collections/", False, None,
           ("NLMCXR_png.tgz", "NLMCXR_reports.tgz")),
)}


class FetchError(Exception):
    """A download that cannot go on; the message says what to do next."""


@dataclass
class FetchSummary:
    dataset: str
    fetched: list[str] = field(default_factory=list)
    already_complete: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)  # failed their check; deleted
    bytes_downloaded: int = 0


@dataclass(frozen=True)
class Wanted:
    path: str  # relative, POSIX
    sha256: str | None = None


def parse_sha256sums(text: str) -> list[Wanted]:
    """`<hex>  <path>` lines (sha256sum's format; `*` marks binary mode)."""
    wanted = []
    for line in text.splitlines():
        parts = line.strip().split(None, 1)
        if len(parts) == 2 and len(parts[0]) == 64:
            wanted.append(Wanted(parts[1].lstrip("*").lstrip("./"), parts[0].lower()))
    return wanted


def fetch_dataset(dataset: str, target: str | Path, *, base_url: str | None = None,
                  username: str | None = None, password: str | None = None, only: tuple[str, ...] = (),
                  progress: Progress | None = None, client: httpx.Client | None = None) -> FetchSummary:
    """Fetch `dataset` into `target`; files already complete are checked, not fetched again.
    `only` limits the fetch to paths starting with one of these prefixes (e.g. `files/p10/`)."""
    if dataset not in REMOTES:
        raise FetchError(f"unknown dataset {dataset!r}; fetchable: {', '.join(REMOTES)}")
    remote = REMOTES[dataset]
    if remote.credentials and not (username and password):
        raise FetchError(f"{dataset} is credentialed on PhysioNet: set PHYSIONET_USERNAME and PHYSIONET_PASSWORD")
    auth = httpx.BasicAuth(username, password) if remote.credentials else None
    own = client is None
    client = client or httpx.Client(auth=auth, follow_redirects=True, timeout=httpx.Timeout(60.0, connect=20.0))
    target = Path(target)
    base = (base_url or remote.base_url).rstrip("/") + "/"
    try:
        wanted = _listing(client, base, remote, auth)
        wanted = [w for w in wanted if not only or w.path.startswith(only)]
        return _fetch_all(client, base, auth, target, dataset, wanted, progress)
    finally:
        if own:
            client.close()


def _listing(client: httpx.Client, base: str, remote: Remote, auth) -> list[Wanted]:
    if remote.checksums:
        return [Wanted(remote.checksums), *parse_sha256sums(_get_text(client, base + remote.checksums, auth))]
    wanted = [Wanted(p) for p in remote.files]
    if remote.name == "scin":  # the cases file names every photograph
        import csv
        import io

        cases = csv.DictReader(io.StringIO(_get_text(client, base + "dataset/scin_cases.csv", auth)))
        wanted += [Wanted(row[c]) for row in cases for c in ("image_1_path", "image_2_path", "image_3_path")
                   if (row.get(c) or "").strip()]
    return wanted


def _get_text(client: httpx.Client, url: str, auth) -> str:
    response = client.get(url, auth=auth)
    _raise_for(response, url)
    return response.text


def _raise_for(response: httpx.Response, url: str) -> None:
    if response.status_code in (401, 403):
        raise FetchError(f"{url}: the server refused access ({response.status_code}); check PHYSIONET_USERNAME / "
                         "PHYSIONET_PASSWORD and that this account has signed the project's data use agreement")
    if response.status_code >= 400:
        raise FetchError(f"{url}: HTTP {response.status_code}")


def _fetch_all(client, base, auth, target: Path, dataset: str, wanted: list[Wanted],
               progress: Progress | None) -> FetchSummary:
    summary = FetchSummary(dataset)
    remaining = Counter(folder for w in wanted for folder in _folders(w.path))
    for item in sorted(wanted, key=lambda w: w.path):
        dest = target / item.path
        if _complete(dest, item):
            summary.already_complete.append(item.path)
        else:
            try:
                summary.bytes_downloaded += download_file(client, base + item.path, dest, item.sha256, auth, progress)
            except CorruptFile as exc:
                log.error("%s", exc)
                summary.refused.append(item.path)
                continue
            summary.fetched.append(item.path)
        for folder in _folders(item.path):
            remaining[folder] -= 1
            if remaining[folder] == 0 and not _refused_under(folder, summary.refused):
                (target / folder / DONE_MARKER).touch()
    return summary


def _folders(path: str) -> list[str]:
    """Every folder holding `path`, deepest first, the target itself as ''."""
    parents = [str(p) for p in PurePosixPath(path).parents]
    return ["" if p == "." else p for p in parents]


def _refused_under(folder: str, refused: list[str]) -> bool:
    return any(folder == "" or r.startswith(folder + "/") for r in refused)


def _complete(dest: Path, item: Wanted) -> bool:
    if not dest.exists():
        return False
    return item.sha256 is None or _sha256_of(dest) == item.sha256


def _sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


class CorruptFile(FetchError):
    pass


def download_file(client: httpx.Client, url: str, dest: Path, sha256: str | None = None, auth=None,
                  progress: Progress | None = None) -> int:
    """Fetch one file to `dest` via `dest.part`, resuming a partial one; returns the bytes downloaded.
    Raises `CorruptFile` (and deletes the part) when the bytes do not match the checksum or size."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    downloaded, total = 0, None
    for attempt in range(1, MAX_ATTEMPTS + 1):
        offset = part.stat().st_size if part.exists() else 0
        try:
            got, total, finished = _request_range(client, url, part, offset, auth, progress, dest.name)
            downloaded += got
            if finished:
                break
        except httpx.TransportError as exc:  # dropped mid-file: the bytes on disk stay, the next try resumes
            log.warning("%s: connection lost after %d bytes (try %d of %d): %s", dest.name,
                        part.stat().st_size if part.exists() else 0, attempt, MAX_ATTEMPTS, type(exc).__name__)
    else:
        raise FetchError(f"{url}: gave up after {MAX_ATTEMPTS} tries; run the same command again to resume")
    _verify(part, dest, sha256, total)
    os.replace(part, dest)  # appears whole, under its own name, in one step
    return downloaded


def _request_range(client, url, part: Path, offset: int, auth, progress, name) -> tuple[int, int | None, bool]:
    """One request from `offset`; (bytes written, full size, finished)."""
    headers = {"Range": f"bytes={offset}-"} if offset else {}
    with client.stream("GET", url, headers=headers, auth=auth) as response:
        if response.status_code == 416:  # nothing after offset: the part is already whole
            return 0, offset, True
        _raise_for(response, url)
        resumed = response.status_code == 206
        if not resumed:
            offset = 0  # the server ignored Range: start again from the first byte
        length = response.headers.get("Content-Length")
        total = offset + int(length) if length is not None else None
        written = 0
        with open(part, "ab" if resumed else "wb") as handle:
            # No chunk_size: httpx would hold bytes back to fill a chunk and lose them if the line drops.
            for chunk in response.iter_bytes():
                handle.write(chunk)
                written += len(chunk)
                if progress:
                    progress(name, offset + written, total)
    return written, total, total is None or offset + written >= total


def _verify(part: Path, dest: Path, sha256: str | None, total: int | None) -> None:
    size = part.stat().st_size
    if sha256 is not None:
        actual = _sha256_of(part)
        if actual != sha256:
            part.unlink()
            raise CorruptFile(f"{dest.name}: SHA-256 {actual[:12]}… does not match SHA256SUMS.txt ({sha256[:12]}…); "
                              "the file was deleted, run the fetch again")
    elif total is not None and size != total:
        part.unlink()
        raise CorruptFile(f"{dest.name}: {size} bytes where the server announced {total}; the file was deleted")
