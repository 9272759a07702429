"""Downloads of public datasets that resume and verify: PhysioNet (MIMIC-CXR, MIMIC-CXR-JPG, VinDr-CXR)
with the user's credentials, SCIN from its public Google Cloud Storage bucket, Open-I's tarballs from NLM.

Each file is fetched and checked by `medvec.datasets.download` against what its publisher lists
(`medvec.datasets.listings`); a folder gets a `.done` marker once every listed file in it and below is
complete, so the folder sensor takes files only whole. Open-I's tarballs download to the hidden
`.downloads/` and are unpacked, each into its own folder that appears complete in one rename.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from urllib.parse import quote

import httpx

from medvec.datasets.download import (CorruptFile, FetchError, Progress, Wanted, download_file, is_complete)
from medvec.datasets.listings import announced_sizes, bucket_listing, sha256sums_listing
from medvec.datasets.tarballs import unpack_tarball
from medvec.sources import DONE_MARKER

__all__ = ["REMOTES", "FetchError", "FetchSummary", "Remote", "fetch_dataset"]

log = logging.getLogger(__name__)
#: Where tarballs wait to be unpacked: hidden, so the folder sensor never takes an archive for an image.
DOWNLOADS = ".downloads"


@dataclass(frozen=True)
class Remote:
    """Where a dataset is published, how its files are listed, and whether they are tarballs to unpack."""

    name: str
    base_url: str
    listing: str  # "sha256sums" (PhysioNet), "bucket" (a public GCS bucket) or "sizes" (the files below)
    credentials: bool = False  # PhysioNet's credentialed projects: HTTP basic auth, like `wget --user`
    files: tuple[str, ...] = ()  # "bucket": the prefixes listed; "sizes": the files
    unpack: bool = False  # tarballs, each unpacked into a folder named after it


REMOTES = {r.name: r for r in (
    Remote("mimic-cxr", "https://physionet.org/files/mimic-cxr/2.0.0/", "sha256sums", True),
    Remote("mimic-cxr-jpg", "https://physionet.org/files/mimic-cxr-jpg/2.1.0/", "sha256sums", True),
    Remote("vindr-cxr", "https://physionet.org/files/vindr-cxr/1.0.0/", "sha256sums", True),
    Remote("scin", "https://storage.googleapis.com/dx-scin-public-data/", "bucket", files=("dataset/",)),
    Remote("open-i", "https://openi.nlm.nih.gov/imgs/collections/", "sizes",
           files=("NLMCXR_png.tgz", "NLMCXR_reports.tgz"), unpack=True),
)}


@dataclass
class FetchSummary:
    dataset: str
    fetched: list[str] = field(default_factory=list)
    already_complete: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)  # failed their check (or unsafe to unpack); deleted
    unpacked: list[str] = field(default_factory=list)  # folders unpacked from tarballs
    bytes_downloaded: int = 0


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
        wanted = _listing(client, base, remote, only, auth)
        wanted = [w for w in wanted if not only or w.path.startswith(only)]
        if remote.unpack:
            return _fetch_and_unpack(client, base, target, dataset, wanted, progress)
        return _fetch_all(client, base, auth, target, dataset, wanted, progress)
    finally:
        if own:
            client.close()


def _listing(client: httpx.Client, base: str, remote: Remote, only: tuple[str, ...], auth) -> list[Wanted]:
    if remote.listing == "sha256sums":
        return sha256sums_listing(client, base, auth)
    if remote.listing == "bucket":  # list only what --only asks for: the bucket filters by prefix itself
        return bucket_listing(client, base, tuple(p for p in only if p.startswith(remote.files)) or remote.files)
    return announced_sizes(client, base, remote.files)


def _fetch_all(client, base, auth, target: Path, dataset: str, wanted: list[Wanted],
               progress: Progress | None) -> FetchSummary:
    summary = FetchSummary(dataset)
    remaining = Counter(folder for w in wanted for folder in _folders(w.path))
    for item in sorted(wanted, key=lambda w: w.path):
        _fetch_one(client, base + quote(item.path), target / item.path, item, auth, progress, summary)
        for folder in _folders(item.path):
            remaining[folder] -= 1
            if remaining[folder] == 0 and not _refused_under(folder, summary.refused):
                (target / folder / DONE_MARKER).touch()
    return summary


def _fetch_one(client, url: str, dest: Path, item: Wanted, auth, progress: Progress | None,
               summary: FetchSummary) -> bool:
    """Fetch `item` unless it is already complete; False when it was refused (and deleted)."""
    if is_complete(dest, item):
        summary.already_complete.append(item.path)
        return True
    try:
        summary.bytes_downloaded += download_file(client, url, dest, item, auth, progress)
    except CorruptFile as exc:
        log.error("%s", exc)
        summary.refused.append(item.path)
        return False
    summary.fetched.append(item.path)
    return True


def _fetch_and_unpack(client, base, target: Path, dataset: str, wanted: list[Wanted],
                      progress: Progress | None) -> FetchSummary:
    """Each tarball into the folder named after it (`NLMCXR_png.tgz` → `NLMCXR_png/`); a folder already
    unpacked whole (it holds `.done`) is not fetched again, and its tarball is deleted once unpacked."""
    summary = FetchSummary(dataset)
    for item in sorted(wanted, key=lambda w: w.path):
        folder = target / _unpacked_name(item.path)
        if (folder / DONE_MARKER).exists():
            summary.already_complete.append(item.path)
            continue
        tarball = target / DOWNLOADS / item.path
        if not _fetch_one(client, base + quote(item.path), tarball, item, None, progress, summary):
            continue
        try:
            files = unpack_tarball(tarball, folder, progress)
        except CorruptFile as exc:  # unreadable or unsafe: no use keeping it (a disk error keeps it, and stops)
            log.error("%s", exc)
            summary.refused.append(item.path)
            tarball.unlink()
            continue
        tarball.unlink()
        summary.unpacked.append(folder.name)
        log.info("%s: %d files unpacked into %s", item.path, files, folder.name)
    return summary


def _unpacked_name(path: str) -> str:
    name = PurePosixPath(path).name
    for suffix in (".tar.gz", ".tgz", ".tar"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def _folders(path: str) -> list[str]:
    """Every folder holding `path`, deepest first, the target itself as ''."""
    parents = [str(p) for p in PurePosixPath(path).parents]
    return ["" if p == "." else p for p in parents]


def _refused_under(folder: str, refused: list[str]) -> bool:
    return any(folder == "" or r.startswith(folder + "/") for r in refused)
