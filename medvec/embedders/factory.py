"""Resolve a local model's files and open the right embedder for it: one path for the Dagster
resource, the search service and `medvec embed-server`."""

from __future__ import annotations

import os
from pathlib import Path

from medvec.embedders.base import Embedder
from medvec.models.files import ResolvedModel, resolve_model_files
from medvec.models.registry import ModelSpec


def resolve_local_files(spec: ModelSpec, cache_dir: Path, *, source: str = "hub", location: str | None = None,
                        revision: str | None = None, token: str | None = None,
                        s3_endpoint_url: str | None = None) -> ResolvedModel:
    """The model's files on disk: built here for the tiny offline models, else hub / s3 / local."""
    if spec.no_retrieval_quality:
        from medvec.models.tiny import TINY_BUILDERS

        local_dir = TINY_BUILDERS[spec.name](Path(cache_dir) / "tiny" / spec.name)
        return resolve_model_files(spec.model_id, source="local", location=str(local_dir), cache_dir=cache_dir)
    return resolve_model_files(spec.model_id, source=source, location=location, revision=revision or spec.revision,
                               cache_dir=cache_dir, token=token, s3_endpoint_url=s3_endpoint_url)


def open_local(spec: ModelSpec, local_dir: Path, *, revision: str | None, device: str = "auto", dtype: str = "auto",
               batch_size: int = 32) -> Embedder:
    if spec.loader == "open_clip":
        from medvec.embedders.open_clip_local import OpenClipEmbedder

        return OpenClipEmbedder(spec, Path(local_dir), device=device, batch_size=batch_size, revision=revision)
    from medvec.embedders.transformers_local import TransformersEmbedder

    return TransformersEmbedder(spec, Path(local_dir), device=device, dtype=dtype, batch_size=batch_size,
                                revision=revision)


def embedder_from_settings(settings, *, device: str = "auto") -> Embedder:
    """The configured model as a ready embedder (for query encoding outside Dagster)."""
    from medvec.models.registry import resolve_model

    overrides = {k: v for k, v in (("dim", settings.model_dim), ("image_size", settings.model_image_size)) if v}
    if settings.embedder == "nim":
        from medvec.embedders.nim import NimEmbedder

        if not settings.nim_url:
            raise ValueError("MEDVEC_EMBEDDER=nim needs MEDVEC_NIM_URL (e.g. http://gpu-box:8000)")
        name = settings.model if settings.model != "tiny-siglip" else "nvclip"
        return NimEmbedder(settings.nim_url, settings.nim_model or "nvidia/nvclip",
                           api_key=os.environ.get("NVIDIA_API_KEY") or None, dim=None, name=name)
    spec = resolve_model(settings.model, **overrides)
    resolved = resolve_local_files(spec, settings.model_cache, source=settings.model_source,
                                   location=settings.model_location, revision=settings.model_revision,
                                   token=os.environ.get("HF_TOKEN") or None, s3_endpoint_url=settings.s3_endpoint_url)
    return open_local(spec, resolved.local_dir, revision=resolved.revision, device=device)
