"""A model's files from an S3 mirror (s3://bucket/prefix), copied into the local cache and kept in step with
the mirror by ETag: a replaced object is fetched again, a removed one deleted."""

from __future__ import annotations

import logging
import os
import uuid
from pathlib import Path

from medvec.models.file_manifest import (MANIFEST_NAME, ByteProgress, ModelFile, ModelFilesError, ResolvedModel,
                                         manifest_revision, read_manifest, sha256_of, write_manifest)
from medvec.progress import Listener

log = logging.getLogger(__name__)


def resolve_s3(model_id: str, location: str | None, cache_dir: Path, endpoint_url: str | None,
                progress: Listener) -> ResolvedModel:
    from botocore.exceptions import BotoCoreError, ClientError

    from medvec.sources import S3PrefixSource

    if not location or not location.startswith("s3://") or not location[5:].split("/", 1)[0]:
        raise ModelFilesError(f"source=s3 needs an s3://bucket/prefix location for {model_id}, not {location!r}: "
                              "set MEDVEC_MODEL_LOCATION")
    mirror = S3PrefixSource(location, endpoint_url=endpoint_url)  # the project's one way to make an S3 client
    prefix = mirror.prefix.strip("/")
    location = f"s3://{mirror.bucket}/{prefix}" if prefix else f"s3://{mirror.bucket}"
    local_dir = cache_dir / "s3" / mirror.bucket / prefix if prefix else cache_dir / "s3" / mirror.bucket
    advice = "check the bucket and prefix (MEDVEC_MODEL_LOCATION), the credentials and MEDVEC_S3_ENDPOINT_URL"

    try:
        objects = _mirror_objects(mirror.client, mirror.bucket, f"{prefix}/" if prefix else "")
    except (BotoCoreError, ClientError) as exc:
        raise ModelFilesError(f"could not list the model mirror {location} for {model_id}: {exc}; {advice}") from exc
    if not objects:
        raise ModelFilesError(f"the model mirror {location} for {model_id} holds no model files; {advice}")

    previous = read_manifest(local_dir, "s3", location)
    recorded = previous.entries if previous else {}
    kept: dict[str, ModelFile] = {}
    to_fetch: list[tuple[str, dict]] = []
    for rel, obj in objects.items():
        target, entry = local_dir / rel, recorded.get(rel)
        # The ETag changes when the mirror's object is replaced, even by one of the same size.
        if entry and entry.get("etag") == obj["etag"] and entry["size"] == obj["size"] and target.is_file():
            stat = target.stat()
            if stat.st_size == obj["size"]:
                sha = previous.known_sha256(rel, stat) or sha256_of(target)
                if sha == entry["sha256"]:
                    kept[rel] = ModelFile(rel, obj["size"], sha)
                    continue
            log.warning("the local copy of %s in %s is damaged; downloading it again", rel, local_dir)
        to_fetch.append((rel, obj))

    counter = ByteProgress(progress, "downloading model files", sum(obj["size"] for _, obj in to_fetch))
    fetched = {}
    for rel, obj in to_fetch:
        try:
            fetched[rel] = _download_object(mirror.client, mirror.bucket, rel, obj, local_dir, counter)
        except (BotoCoreError, ClientError) as exc:
            raise ModelFilesError(f"could not download s3://{mirror.bucket}/{obj['key']} for {model_id}: {exc}; "
                                  f"{advice}, then run again") from exc
    for rel in sorted(recorded.keys() - objects.keys()):  # gone from the mirror: the copy must not linger
        (local_dir / rel).unlink(missing_ok=True)
        log.info("removed %s from %s: it is no longer in %s", rel, local_dir, location)

    files = tuple(sorted({**kept, **fetched}.values(), key=lambda f: f.path))
    resolved = ResolvedModel(model_id, "s3", location, local_dir, manifest_revision(files), files)
    if to_fetch:
        log.info("downloaded %d of %d model files (%d bytes) for %s from %s", len(to_fetch), len(files),
                 counter.total, model_id, location)
    write_manifest(local_dir, resolved, {f.path: (local_dir / f.path).stat().st_mtime_ns for f in files},
                    per_file={rel: {"etag": obj["etag"]} for rel, obj in objects.items()})
    return resolved


def _mirror_objects(client, bucket: str, key_prefix: str) -> dict[str, dict]:
    """The mirror's files by relative path: no folder markers, hidden files, unsafe paths or stray manifest."""
    objects = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=key_prefix):
        for obj in page.get("Contents", []):
            rel = obj["Key"][len(key_prefix):]
            parts = rel.split("/")
            if not rel or rel.endswith("/") or rel == MANIFEST_NAME:
                continue  # a mirror synced from a resolved folder carries our manifest: ours is rebuilt here
            if any(p in ("", ".", "..") for p in parts):
                log.warning("skipping s3://%s/%s: its key does not map to a safe local path", bucket, obj["Key"])
                continue
            if not any(p.startswith(".") for p in parts):
                objects[rel] = {"key": obj["Key"], "size": obj["Size"], "etag": obj["ETag"].strip('"')}
    return objects


def _download_object(client, bucket: str, rel: str, obj: dict, local_dir: Path,
                     counter: ByteProgress) -> ModelFile:
    """One object into `local_dir/rel`, whole or not at all: a temp file beside it, checked, then renamed."""
    target = local_dir / rel
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.part")
    try:
        client.download_file(bucket, obj["key"], str(tmp), Callback=counter)
        size = tmp.stat().st_size
        if size != obj["size"]:
            raise ModelFilesError(f"s3://{bucket}/{obj['key']} changed while it was downloaded ({obj['size']} "
                                  f"bytes listed, {size} received); run again")
        sha = sha256_of(tmp)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return ModelFile(rel, size, sha)

