"""Reading a local source folder as a shared drive really is: names that are not UTF-8, links that loop or
lead elsewhere, FIFOs and devices under image names, files larger than any image.

A path whose bytes are not valid UTF-8 gets a `file://` URI with those bytes percent-encoded (RFC 8089),
so manifests, records and the errors table (pyarrow: UTF-8 only) hold it and it still names the same
file; every other path is its own URI, as before. Reads open regular files only, inside the root,
without blocking (a FIFO never hangs), and never past `max_bytes`.
"""

from __future__ import annotations

import errno
import os
import stat as stat_kind
from urllib.parse import quote, unquote_to_bytes

FILE_SCHEME = "file://"
_READ_CHUNK = 1 << 20


class UnsafeSourceFile(OSError):
    """A listed entry that is not something to read (a FIFO, a device, a loop, a link out of the root, a
    file over the size limit): its message is the plain reason recorded for it."""


def uri_for_path(path: str) -> str:
    """The URI stored for `path`: the path itself when it is valid UTF-8, else a `file://` URI."""
    try:
        path.encode("utf-8")
        return path
    except UnicodeEncodeError:  # os.fsdecode kept the undecodable bytes as lone surrogates
        return FILE_SCHEME + quote(os.fsencode(path), safe="/")


def path_for_uri(uri: str) -> str:
    """The inverse of `uri_for_path`: the path (with surrogate escapes) a URI names."""
    if uri.startswith(FILE_SCHEME):
        return os.fsdecode(unquote_to_bytes(uri[len(FILE_SCHEME):]))
    return uri


def is_inside(path: str, real_root: str) -> bool:
    return path == real_root or path.startswith(real_root.rstrip(os.sep) + os.sep)


def _kind(mode: int) -> str:
    if stat_kind.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat_kind.S_ISCHR(mode) or stat_kind.S_ISBLK(mode):
        return "a device"
    if stat_kind.S_ISDIR(mode):
        return "a directory"
    if stat_kind.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def resolve_inside(path: str, real_root: str) -> str:
    """The real path of `path`, which must be a regular file inside `real_root` (links followed)."""
    try:
        real = os.path.realpath(path, strict=True)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UnsafeSourceFile(exc.errno, "a symbolic link that loops back on itself; not read") from None
        if isinstance(exc, FileNotFoundError) and os.path.islink(path):
            raise UnsafeSourceFile(exc.errno, "a symbolic link whose target does not exist; not read") from None
        raise
    if not is_inside(real, real_root):
        raise UnsafeSourceFile(errno.EACCES, "a symbolic link that leads outside the source folder; not read")
    return real


def read_regular_file(path: str, real_root: str, max_bytes: int) -> bytes:
    """The bytes of a regular file inside the root, at most `max_bytes` of them."""
    real = resolve_inside(path, real_root)
    # O_NONBLOCK: opening a FIFO swapped in since the listing returns at once instead of waiting for a writer.
    fd = os.open(real, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0))
    try:
        st = os.fstat(fd)
        if not stat_kind.S_ISREG(st.st_mode):
            raise UnsafeSourceFile(errno.EINVAL, f"{_kind(st.st_mode)}, not a regular file; not read")
        if st.st_size > max_bytes:
            raise UnsafeSourceFile(errno.EFBIG, f"{st.st_size:,} bytes, over the {max_bytes:,}-byte limit "
                                                "(MEDVEC_MAX_FILE_BYTES); not read")
        chunks, total = [], 0
        while total <= max_bytes:
            chunk = os.read(fd, min(_READ_CHUNK, max_bytes + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
        if total > max_bytes:  # it grew while being read
            raise UnsafeSourceFile(errno.EFBIG, f"grew past the {max_bytes:,}-byte limit (MEDVEC_MAX_FILE_BYTES) "
                                                "while being read; not read")
        return b"".join(chunks)
    finally:
        os.close(fd)


def entry_stat(path: str) -> os.stat_result | None:
    """The stat of a listed entry: its target's for a link that resolves, the link's own otherwise (a loop, a
    dangling link), so an entry that cannot be read still lists (and is reported once when read);
    None when it is gone."""
    try:
        return os.stat(path)
    except FileNotFoundError:
        pass
    except OSError:  # ELOOP, EACCES, ENAMETOOLONG ...: the entry exists but cannot be followed
        pass
    try:
        return os.lstat(path)
    except OSError:
        return None
