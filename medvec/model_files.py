"""Model files on local disk: from the Hugging Face Hub, an S3 mirror, or a folder; recorded
(revision, file list, sizes, sha256) and verified on reuse.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path

log = logging.getLogger(__name__)

MANIFEST = "medvec_files.json"
# Weights as safetensors, plus open_clip checkpoints (BiomedCLIP ships only open_clip_pytorch_model.bin).
HUB_PATTERNS = ["*.json", "*.safetensors", "*.txt", "*.model", "tokenizer*", "vocab*", "merges*", "open_clip_*"]


class ModelFilesError(RuntimeError):
    """The model's files could not be made available; the message says what to do."""


@dataclass(frozen=True)
class ModelFile:
    path: str  # relative, forward slashes
    size: int
    sha256: str


@dataclass(frozen=True)
class ResolvedModel:
    model_id: str
    source: str  # hub | s3 | local
    location: str
    local_dir: Path
    revision: str | None  # hub: the commit; s3/local: "sha256:" of the file manifest
    files: tuple[ModelFile, ...]

    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)

    def to_metadata(self) -> dict:
        return {"source": self.source, "location": self.location, "revision": self.revision,
                "n_files": len(self.files), "total_bytes": self.total_bytes(),
                "files": [{"path": f.path, "size": f.size, "sha256": f.sha256[:16]} for f in self.files[:50]]}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _listing(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST
                  and not any(part.startswith(".") for part in p.relative_to(folder).parts))


def hash_folder(folder: Path, previous: dict | None = None) -> tuple[ModelFile, ...]:
    """Hash every file; a file whose size and mtime match the previous manifest keeps its hash."""
    known = {f["path"]: f for f in (previous or {}).get("files", [])}
    files = []
    for path in _listing(folder):
        rel, stat = path.relative_to(folder).as_posix(), path.stat()
        old = known.get(rel)
        if old and old["size"] == stat.st_size and old.get("mtime_ns") == stat.st_mtime_ns:
            files.append(ModelFile(rel, stat.st_size, old["sha256"]))
        else:
            files.append(ModelFile(rel, stat.st_size, _sha256(path)))
    return tuple(files)


def _manifest_revision(files: tuple[ModelFile, ...]) -> str:
    text = "\n".join(f"{f.path} {f.size} {f.sha256}" for f in files)
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def _write_manifest(where: Path, resolved: ResolvedModel) -> None:
    where.mkdir(parents=True, exist_ok=True)
    files = []
    for f in resolved.files:
        stat = (resolved.local_dir / f.path).stat()
        files.append({**asdict(f), "mtime_ns": stat.st_mtime_ns})
    payload = {"model_id": resolved.model_id, "source": resolved.source, "location": resolved.location,
               "revision": resolved.revision, "files": files}
    tmp = where / f".{MANIFEST}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(payload, indent=1))
    os.replace(tmp, where / MANIFEST)


def _read_manifest(where: Path) -> dict | None:
    try:
        return json.loads((where / MANIFEST).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def verify_model_files(resolved: ResolvedModel) -> list[str]:
    """Plain-words problems (missing, resized or changed files); [] when intact."""
    problems = []
    for f in resolved.files:
        path = resolved.local_dir / f.path
        if not path.exists():
            problems.append(f"{f.path} is missing")
        elif path.stat().st_size != f.size:
            problems.append(f"{f.path} changed size ({f.size} → {path.stat().st_size} bytes)")
        elif _sha256(path) != f.sha256:
            problems.append(f"{f.path} changed content (sha256 differs)")
    return problems


def resolve_model_files(model_id: str, *, source: str, location: str | None = None, revision: str | None = None,
                        cache_dir: Path, token: str | None = None, s3_endpoint_url: str | None = None,
                        allow_patterns: list[str] | None = None) -> ResolvedModel:
    cache_dir = Path(cache_dir)
    if source == "local":
        return _resolve_local(model_id, Path(location or model_id), cache_dir)
    if source == "s3":
        if not location or not location.startswith("s3://"):
            raise ModelFilesError(f"source=s3 needs an s3://bucket/prefix location for {model_id}")
        return _resolve_s3(model_id, location, cache_dir, s3_endpoint_url)
    if source == "hub":
        return _resolve_hub(model_id, revision, cache_dir, token, allow_patterns)
    raise ModelFilesError(f"unknown model source {source!r}: use hub, s3 or local")


def _resolve_local(model_id: str, folder: Path, cache_dir: Path) -> ResolvedModel:
    folder = folder.expanduser().absolute()
    if not folder.is_dir():
        raise ModelFilesError(f"model folder {folder} for {model_id} does not exist")
    # The user's folder is never written to: its manifest lives in the cache.
    record_dir = cache_dir / "local" / hashlib.sha1(str(folder).encode()).hexdigest()[:16]
    previous = _read_manifest(record_dir)
    files = hash_folder(folder, previous)
    resolved = ResolvedModel(model_id, "local", str(folder), folder, _manifest_revision(files), files)
    if previous and previous.get("revision") != resolved.revision:
        log.warning("model files in %s changed since they were last resolved", folder)
    _write_manifest(record_dir, resolved)
    return resolved


def _resolve_s3(model_id: str, location: str, cache_dir: Path, endpoint_url: str | None) -> ResolvedModel:
    import boto3

    bucket, _, prefix = location[5:].partition("/")
    prefix = prefix.strip("/")
    local_dir = cache_dir / "s3" / bucket / prefix
    previous = _read_manifest(local_dir) or {}
    known = {f["path"]: f for f in previous.get("files", [])}
    client = boto3.client("s3", endpoint_url=endpoint_url,
                          region_name=os.environ.get("AWS_DEFAULT_REGION", "us-east-1"))
    listed = []
    try:
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=f"{prefix}/" if prefix else ""):
            listed.extend(o for o in page.get("Contents", []) if not o["Key"].endswith("/"))
    except Exception as exc:  # noqa: BLE001 - any S3 failure gets the same advice
        raise ModelFilesError(f"could not list the model mirror {location} for {model_id}: {exc}") from exc
    if not listed:
        raise ModelFilesError(f"the model mirror {location} for {model_id} is empty")
    for obj in listed:
        rel = obj["Key"][len(prefix) + 1:] if prefix else obj["Key"]
        target = local_dir / rel
        old = known.get(rel)
        if (target.exists() and old and target.stat().st_size == obj["Size"] == old["size"]
                and target.stat().st_mtime_ns == old.get("mtime_ns")):
            continue  # unchanged since the last verified download
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        client.download_file(bucket, obj["Key"], str(tmp))
        os.replace(tmp, target)
    files = hash_folder(local_dir, _read_manifest(local_dir))
    resolved = ResolvedModel(model_id, "s3", location, local_dir, _manifest_revision(files), files)
    _write_manifest(local_dir, resolved)
    return resolved


def _resolve_hub(model_id: str, revision: str | None, cache_dir: Path, token: str | None,
                 allow_patterns: list[str] | None) -> ResolvedModel:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, LocalEntryNotFoundError

    repo = model_id.removeprefix("hf-hub:")
    try:
        path = Path(snapshot_download(repo_id=repo, revision=revision, cache_dir=cache_dir / "hub", token=token,
                                      allow_patterns=allow_patterns or HUB_PATTERNS))
    except GatedRepoError as exc:
        raise ModelFilesError(f"{repo} is gated: accept its terms on huggingface.co and set HF_TOKEN") from exc
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError) as exc:
        raise ModelFilesError(
            f"could not reach the Hugging Face Hub for {repo} ({type(exc).__name__}); mirror the model to S3 or a "
            "folder and set MEDVEC_MODEL_SOURCE=s3|local with MEDVEC_MODEL_LOCATION, or populate the cache "
            "and set HF_HUB_OFFLINE=1") from exc
    commit = path.name if re.fullmatch(r"[0-9a-f]{40}", path.name) else revision
    previous = _read_manifest(cache_dir / "hub_manifests" / repo.replace("/", "--"))
    files = hash_folder(path, previous)
    resolved = ResolvedModel(model_id, "hub", repo, path, commit, files)
    if previous and previous.get("revision") == commit:
        problems = [f"{f['path']} differs" for f in previous["files"]
                    if ModelFile(f["path"], f["size"], f["sha256"]) not in files]
        if problems:
            raise ModelFilesError(f"cached files of {repo}@{commit} changed: {'; '.join(problems[:5])}; "
                                  "delete the cache folder to download them again")
    _write_manifest(cache_dir / "hub_manifests" / repo.replace("/", "--"), resolved)
    return resolved
