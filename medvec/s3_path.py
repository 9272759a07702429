"""`S3Path`: an S3 prefix behind the subset of `pathlib` Medvec's code calls (`/`, `name`, `parent`, `exists`,
`read_bytes`, `write_bytes`, `iterdir`, `glob`, `unlink`, ...), and the one boto3 client per endpoint.

A PUT is atomic (readers see the old or the new object, never half of one). `mkdir` is a no-op: S3 has no
folders.
"""

from __future__ import annotations

import fnmatch
import posixpath
import threading

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
    from medvec.settings import get_settings  # settings builds home paths with storage: no cycle at import

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
    def client(self):
        return s3_client(self.endpoint_url)

    def _prefix(self) -> str:
        return self.key + "/" if self.key else ""

    def is_file(self) -> bool:
        if not self.key:  # the bucket itself
            return False
        try:
            self.client.head_object(Bucket=self.bucket, Key=self.key)
            return True
        except Exception as error:  # noqa: BLE001 - botocore raises ClientError subclasses per code
            if is_missing_object(error):
                return False
            raise

    def is_dir(self) -> bool:
        page = self.client.list_objects_v2(Bucket=self.bucket, Prefix=self._prefix(), MaxKeys=1)
        return page.get("KeyCount", 0) > 0

    def exists(self) -> bool:
        return self.is_file() or self.is_dir()

    def read_bytes(self) -> bytes:
        try:
            return self.client.get_object(Bucket=self.bucket, Key=self.key)["Body"].read()
        except Exception as error:  # noqa: BLE001
            if is_missing_object(error):
                raise FileNotFoundError(str(self)) from None
            raise

    def read_text(self, encoding: str = "utf-8") -> str:
        return self.read_bytes().decode(encoding)

    def write_bytes(self, data: bytes) -> int:
        self.client.put_object(Bucket=self.bucket, Key=self.key, Body=bytes(data))
        return len(data)

    def write_text(self, text: str, encoding: str = "utf-8") -> int:
        return self.write_bytes(text.encode(encoding))

    def unlink(self, missing_ok: bool = False) -> None:
        if not missing_ok and not self.is_file():
            raise FileNotFoundError(str(self))
        self.client.delete_object(Bucket=self.bucket, Key=self.key)

    def mkdir(self, mode: int = 0o777, parents: bool = False, exist_ok: bool = False) -> None:
        """S3 has no folders: a prefix exists once an object is written under it."""

    def keys(self, delimiter: str | None = None):
        request = {"Bucket": self.bucket, "Prefix": self._prefix()}
        if delimiter:
            request["Delimiter"] = delimiter
        for page in self.client.get_paginator("list_objects_v2").paginate(**request):
            for common in page.get("CommonPrefixes", []):
                yield common["Prefix"].rstrip("/")
            for obj in page.get("Contents", []):
                yield obj["Key"]

    def iterdir(self):
        for key in self.keys(delimiter="/"):
            yield S3Path(f"s3://{self.bucket}/{key}", self.endpoint_url)

    def glob(self, pattern: str):
        """Keys under this prefix matching `pattern` (`*` stays within one path segment, as in pathlib)."""
        parts = pattern.split("/")
        for key in self.keys():
            relative = key[len(self._prefix()):].split("/")
            if len(relative) == len(parts) and all(fnmatch.fnmatchcase(r, p) for r, p in zip(relative, parts)):
                yield S3Path(f"s3://{self.bucket}/{key}", self.endpoint_url)

    def rglob(self, pattern: str):
        for key in self.keys():
            if fnmatch.fnmatchcase(posixpath.basename(key), pattern):
                yield S3Path(f"s3://{self.bucket}/{key}", self.endpoint_url)
