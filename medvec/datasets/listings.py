"""What a publisher lists for its files: PhysioNet's `SHA256SUMS.txt`, a public Google Cloud Storage
bucket's object listing (size and MD5 per object), or only the size a server announces."""

from __future__ import annotations

import base64
from urllib.parse import urlsplit

import httpx

from medvec.datasets.download import FetchError, Wanted, raise_for

SHA256SUMS = "SHA256SUMS.txt"
#: Only the fields a download checks, so a page of a 10,000-object listing stays small.
GCS_FIELDS = "items(name,size,md5Hash),nextPageToken"


def parse_sha256sums(text: str) -> list[Wanted]:
    """`<hex>  <path>` lines (sha256sum's format; `*` marks binary mode)."""
    wanted = []
    for line in text.splitlines():
        parts = line.strip().split(None, 1)
        if len(parts) == 2 and len(parts[0]) == 64:
            wanted.append(Wanted(parts[1].lstrip("*").lstrip("./"), sha256=parts[0].lower(), listed_by=SHA256SUMS))
    return wanted


def sha256sums_listing(client: httpx.Client, base: str, auth=None) -> list[Wanted]:
    response = client.get(base + SHA256SUMS, auth=auth)
    raise_for(response, base + SHA256SUMS)
    return [Wanted(SHA256SUMS), *parse_sha256sums(response.text)]


def gcs_listing_url(base: str) -> str:
    """`https://host/BUCKET/` (where objects are read) → the JSON API's object list of BUCKET on that host."""
    parts = urlsplit(base)
    bucket = parts.path.strip("/").split("/")[-1]
    return f"{parts.scheme}://{parts.netloc}/storage/v1/b/{bucket}/o"


def bucket_listing(client: httpx.Client, base: str, prefixes: tuple[str, ...]) -> list[Wanted]:
    """Every object under `prefixes` in the bucket `base` reads from, page by page, with its size and
    MD5 (the JSON API gives it base64-encoded; composite objects have none, and are checked by size)."""
    url, wanted = gcs_listing_url(base), []
    for prefix in prefixes:
        token = None
        while True:
            params = {"prefix": prefix, "fields": GCS_FIELDS, **({"pageToken": token} if token else {})}
            response = client.get(url, params=params)
            raise_for(response, url)
            page = response.json()
            for item in page.get("items", []):
                if item["name"].endswith("/"):
                    continue  # a console-made "folder" placeholder, not a file
                md5 = base64.b64decode(item["md5Hash"]).hex() if item.get("md5Hash") else None
                wanted.append(Wanted(item["name"], md5=md5, size=int(item["size"]),
                                     listed_by="the bucket's listing"))
            token = page.get("nextPageToken")
            if not token:
                break
    if not wanted:
        raise FetchError(f"{url}: no objects under {', '.join(prefixes)}; check the prefix (--only)")
    return wanted


def announced_sizes(client: httpx.Client, base: str, paths: tuple[str, ...]) -> list[Wanted]:
    """Files with no published checksum: each is checked against the size the server announces for it
    (a HEAD's Content-Length), which also covers a part that an earlier run already finished."""
    wanted = []
    for path in paths:
        response = client.head(base + path, headers={"Accept-Encoding": "identity"})
        if response.status_code in (405, 501):  # no HEAD here: the GET's own Content-Length is checked instead
            wanted.append(Wanted(path))
            continue
        raise_for(response, base + path)
        length = response.headers.get("Content-Length")
        wanted.append(Wanted(path, size=int(length) if length is not None else None,
                             listed_by="the server's Content-Length"))
    return wanted
