"""A model's files on local disk, from the Hugging Face Hub, an S3 mirror or a folder: resolved, recorded, verified.

Every resolution writes a manifest (`medvec_files.json`: revision, each file's size and sha256) and
checks the next resolution of the same model against it, so a truncated download, a damaged cache or a
quietly edited folder is noticed before it produces embeddings.
"""

from __future__ import annotations

from pathlib import Path

# The types and the manifest's name are re-exported: callers ask this module for a model's files.
from medvec.models.file_manifest import MANIFEST_NAME, ModelFile, ModelFilesError, ResolvedModel, sha256_of  # noqa: F401
from medvec.models.hub_files import resolve_hub
from medvec.models.local_files import resolve_local
from medvec.models.s3_files import resolve_s3
from medvec.progress import Listener, report

SOURCES = ("hub", "s3", "local")


def resolve_model_files(model_id: str, *, source: str, location: str | None = None, revision: str | None = None,
                        cache_dir: Path, token: str | None = None, s3_endpoint_url: str | None = None,
                        allow_patterns: list[str] | None = None, progress: Listener | None = None) -> ResolvedModel:
    """Make `model_id`'s files available on local disk and record what they are.

    source="hub": `location` is unused (the repo is `model_id`, an "hf-hub:" prefix is dropped); files land in
    the Hugging Face cache at `cache_dir/hub`; `revision` pins a branch, tag or commit and the resolved commit
    is recorded. A pinned full commit whose verified copy is cached is reused without asking the Hub.
    source="s3": `location` is s3://bucket/prefix, mirrored into `cache_dir/s3/<bucket>/<prefix>`.
    source="local": `location` is a folder, used in place and never written to.
    `revision` is only used by the Hub; `allow_patterns` (Hub only) replaces the default file patterns;
    `progress(what, done_bytes, total_bytes)` hears about downloads and hashing (default: medvec.progress).
    """
    if source not in SOURCES:
        raise ModelFilesError(f"unknown model source {source!r} for {model_id}: use one of {', '.join(SOURCES)} "
                              "(MEDVEC_MODEL_SOURCE)")
    cache_dir = Path(cache_dir).expanduser()
    progress = progress or report
    if source == "local":
        return resolve_local(model_id, location, cache_dir, progress)
    if source == "s3":
        return resolve_s3(model_id, location, cache_dir, s3_endpoint_url, progress)
    return resolve_hub(model_id, revision, cache_dir, token, allow_patterns, progress)


def verify_model_files(resolved: ResolvedModel) -> list[str]:
    """Plain-words problems with the resolved files on disk now (missing, resized, changed); [] when intact.

    Every file is hashed in full: this is the thorough check, unlike the size-and-mtime shortcut of a
    repeated resolution.
    """
    problems = []
    for f in resolved.files:
        path = resolved.local_dir / f.path
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            problems.append(f"{f.path} is missing from {resolved.local_dir}")
            continue
        if size != f.size:
            problems.append(f"{f.path} changed size: {f.size} bytes when resolved, {size} now")
        elif sha256_of(path) != f.sha256:
            problems.append(f"{f.path} changed content: its sha256 no longer matches the one recorded")
    return problems

