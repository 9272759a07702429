"""Unpacking a downloaded tarball safely and atomically: only regular files and folders, only inside the
target (no absolute path, no `..`, no link, device or fifo), written to a hidden temporary folder that
gets its `.done` marker and is then renamed into place, so a watcher sees the whole folder or nothing."""

from __future__ import annotations

import os
import shutil
import tarfile
from pathlib import Path, PurePosixPath

from medvec.datasets.download import CorruptFile, FetchError, Progress
from medvec.sources import DONE_MARKER


class BadArchive(CorruptFile):
    """A tarball that cannot be read, or whose member would land outside the target or is not a plain
    file or folder; nothing was unpacked."""


def unpack_tarball(tarball: Path, dest: Path, progress: Progress | None = None) -> int:
    """Unpack `tarball` into the new folder `dest`; returns the number of files. `dest` appears in one
    rename, holding its `.done` marker; on any refusal the temporary folder is removed."""
    if dest.exists():
        raise FetchError(f"{dest} already exists but was not unpacked whole by medvec fetch (no {DONE_MARKER}); "
                         "move it away and run the fetch again")
    staging = dest.with_name(f".{dest.name}.unpacking")
    shutil.rmtree(staging, ignore_errors=True)  # an earlier run stopped mid-unpack
    staging.mkdir(parents=True)
    files = unpacked = 0
    try:
        with tarfile.open(tarball, "r:*") as archive:
            for member in archive:  # one pass: a .tgz is read as a stream, never seeked back
                _refuse_unsafe(member, tarball.name)
                # The "data" filter repeats the checks above and drops permission bits a download must not set.
                archive.extract(member, staging, filter="data")
                if member.isfile():
                    files, unpacked = files + 1, unpacked + member.size
                    if progress:
                        progress(f"unpack {dest.name}", unpacked, None)
        (staging / DONE_MARKER).touch()
        os.rename(staging, dest)
    except (tarfile.TarError, EOFError) as exc:
        shutil.rmtree(staging, ignore_errors=True)
        raise BadArchive(f"{tarball.name}: cannot be unpacked ({type(exc).__name__}: {exc}); it was deleted, "
                         "run the fetch again") from exc
    except OSError as exc:  # the disk, not the archive: the tarball stays and the next run unpacks it again
        shutil.rmtree(staging, ignore_errors=True)
        raise FetchError(f"{tarball.name}: unpacking into {dest.parent} failed ({exc.strerror or exc}); "
                         "free space or fix permissions, then run the fetch again") from exc
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return files


def _refuse_unsafe(member: tarfile.TarInfo, archive: str) -> None:
    name = PurePosixPath(member.name)
    if name.is_absolute() or ".." in name.parts or "\\" in member.name:
        raise BadArchive(f"{archive}: member {member.name!r} would land outside the target folder; "
                            "nothing was unpacked and the tarball was deleted")
    if not (member.isfile() or member.isdir()):
        kind = "link" if member.issym() or member.islnk() else "device or fifo"
        raise BadArchive(f"{archive}: member {member.name!r} is a {kind}, not a file; nothing was "
                            "unpacked and the tarball was deleted")
