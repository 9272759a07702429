"""Exclusive create and a lock between machines on S3, both by conditional PUT (`If-None-Match: *`, supported
by AWS S3 since 2024, MinIO and moto).

A lock is an object created exclusively, refreshed by its holder every `LOCK_STALE_S / 4` and deleted on
release; one left by a killed process is taken over (by one waiter: a conditional PUT on the stale version)
after `LOCK_STALE_S`.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime

from medvec.s3_path import S3Path, is_missing_object

log = logging.getLogger(__name__)

#: A lock object older than this is taken to belong to a killed process.
LOCK_STALE_S = 120.0


def precondition_failed(error) -> bool:
    code = getattr(error, "response", {}).get("Error", {}).get("Code")
    return code in ("PreconditionFailed", "412", "ConditionalRequestConflict")


def conditional_put(path: S3Path, data: bytes, **condition) -> str | None:
    """PUT when the condition (IfNoneMatch="*" or IfMatch=etag) holds: the new ETag, or None."""
    try:
        return path.client.put_object(Bucket=path.bucket, Key=path.key, Body=data, **condition)["ETag"]
    except Exception as error:  # noqa: BLE001 - botocore raises ClientError subclasses per code
        if precondition_failed(error):
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


class S3Lock:
    """A lock object: created exclusively, kept fresh by a heartbeat while held, taken over only through a
    conditional PUT on the stale version (so two waiters never both take it), deleted only if still ours."""

    def __init__(self, path: S3Path, stale_after_s: float, poll_s: float, age_s=None):
        self.path, self.stale_after_s, self.poll_s = path, stale_after_s, poll_s
        self.age_s = age_s or _age_s  # the lock's clock: a test gives locks their ages instead of sleeping
        self.token = f"{socket.gethostname()}:{os.getpid()}:{threading.get_ident()}:{time.time_ns()}"
        self.etag: str | None = None
        self._stop = threading.Event()
        self._heartbeat: threading.Thread | None = None

    def _body(self) -> bytes:
        return json.dumps({"token": self.token, "at": time.time()}).encode()

    def acquire(self) -> None:
        while True:
            self.etag = conditional_put(self.path, self._body(), IfNoneMatch="*")
            if self.etag is not None:
                break
            try:
                held = self.path.client.get_object(Bucket=self.path.bucket, Key=self.path.key)
            except Exception as error:  # noqa: BLE001
                if is_missing_object(error):
                    continue  # released between our attempt and the read
                raise
            if self.age_s(held) > self.stale_after_s:
                # Its holder stopped beating (killed): replace exactly the version we judged stale.
                self.etag = conditional_put(self.path, self._body(), IfMatch=held["ETag"])
                if self.etag is not None:
                    break
            time.sleep(self.poll_s)
        self._heartbeat = threading.Thread(target=self._beat, name="medvec-lock-heartbeat", daemon=True)
        self._heartbeat.start()

    def _beat(self) -> None:
        while not self._stop.wait(max(self.stale_after_s / 4, 1.0)):
            try:
                etag = conditional_put(self.path, self._body(), IfMatch=self.etag)
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
            self.path.client.delete_object(Bucket=self.path.bucket, Key=self.path.key, IfMatch=self.etag)
        except Exception as error:  # noqa: BLE001
            if not (precondition_failed(error) or is_missing_object(error)):  # taken over: not ours to delete
                raise
