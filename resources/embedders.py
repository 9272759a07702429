"""Embedder resources: assets ask for `EmbedderResource`; local models or a remote NIM plug in."""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path

import dagster as dg

from medvec.embedders.base import Embedder
from medvec.models.registry import ModelSpec, resolve_model
from medvec.settings import Settings


@dataclass(frozen=True)
class ModelArtifact:
    """What the `embedding_model` asset resolved: enough to load the same model anywhere."""

    name: str
    model_id: str
    loader: str
    dim: int
    revision: str | None
    local_dir: str | None  # None for a remote NIM
    metadata: dict = field(default_factory=dict)


class EmbedderResource(dg.ConfigurableResource, ABC):
    """Which model embeds and where it runs. `model` is a registry name or a Hugging Face id; an id
    outside the registry names its embedding `dim` and `image_size` (or is already in the cache)."""

    model: str
    dim: int | None = None
    image_size: int | None = None

    def spec(self) -> ModelSpec:
        overrides = {k: v for k, v in (("dim", self.dim), ("image_size", self.image_size)) if v is not None}
        return resolve_model(self.model, **overrides)

    @abstractmethod
    def resolve(self, cache_dir: Path) -> ModelArtifact:
        """Make the model available (download, mirror, build, or probe) and describe it."""

    @abstractmethod
    def load(self, artifact: ModelArtifact, cache_dir: Path | None = None) -> Embedder:
        """An embedder for the resolved model; close it when done. `cache_dir` is where this machine keeps
        model files, for when the model was resolved on another one."""


class LocalEmbedderResource(EmbedderResource):
    """A model run in this process: transformers (SigLIP, MedSigLIP, CLIP) or open_clip (BiomedCLIP)."""

    model: str = "tiny-siglip"
    model_source: str = "hub"  # hub | s3 | local (tiny models are always built locally)
    model_location: str | None = None  # s3://bucket/prefix or a folder, for s3 and local sources
    revision: str | None = None  # pin a Hub revision; the resolved commit is recorded either way
    hf_token: str | None = None  # an EnvVar("HF_TOKEN") in the definitions: never shown
    s3_endpoint_url: str | None = None
    device: str = "auto"  # auto | cuda | mps | cpu
    dtype: str = "auto"  # auto | fp32 | bf16 | fp16
    batch_size: int = 32

    def resolve(self, cache_dir: Path) -> ModelArtifact:
        spec = self.spec()
        resolved = self._files(cache_dir, self.revision)
        return ModelArtifact(name=spec.name, model_id=spec.model_id, loader=spec.loader, dim=spec.dim,
                             revision=resolved.revision, local_dir=str(resolved.local_dir),
                             metadata=resolved.to_metadata())

    def load(self, artifact: ModelArtifact, cache_dir: Path | None = None) -> Embedder:
        from medvec.embedders.factory import open_local

        local_dir = Path(artifact.local_dir)
        if not local_dir.is_dir():
            # Resolved on another machine (a Kubernetes pod, another worker): fetch the same revision here,
            # and refuse files that differ from those recorded (a mirror changed since embedding_model ran).
            resolved = self._files(cache_dir or Settings.from_env().model_cache, artifact.revision or self.revision)
            if artifact.revision and resolved.revision != artifact.revision:
                from medvec.embedders.base import EmbedderError

                raise EmbedderError(f"{artifact.name}: the model files here are revision {resolved.revision}, "
                                    f"embedding_model recorded {artifact.revision}; materialise embedding_model again")
            local_dir = resolved.local_dir
        return open_local(self.spec(), Path(local_dir), revision=artifact.revision, device=self.device,
                          dtype=self.dtype, batch_size=self.batch_size)

    def _files(self, cache_dir: Path, revision: str | None):
        from medvec.embedders.factory import resolve_local_files

        return resolve_local_files(self.spec(), cache_dir, source=self.model_source, location=self.model_location,
                                   revision=revision, token=self.hf_token, s3_endpoint_url=self.s3_endpoint_url)


class NimEmbedderResource(EmbedderResource):
    """A remote NVIDIA NIM (or `medvec embed-server`) speaking `POST /v1/embeddings`."""

    model: str = "nvclip"
    url: str
    nim_model: str = "nvidia/nvclip"
    api_key: str | None = None  # an EnvVar("NVIDIA_API_KEY") in the definitions: never shown
    concurrency: int = 4
    timeout_s: float = 60.0

    def resolve(self, cache_dir: Path) -> ModelArtifact:
        from medvec.embedders.base import EmbedderError
        from medvec.embedders.nim import without_credentials

        shown_url = without_credentials(self.url)  # a URL may carry user:password; never show it
        with self._client(dim=None) as embedder:
            ready, detail = embedder.ready(timeout=self.timeout_s)
            if not ready:
                raise EmbedderError(f"NIM at {shown_url} is not ready ({detail}); start it or fix MEDVEC_NIM_URL")
            dim = embedder.embed_texts(["chest x-ray"]).shape[1]
        return ModelArtifact(name=self.model, model_id=self.nim_model, loader="nim", dim=dim, revision=None,
                             local_dir=None, metadata={"url": shown_url, "ready": detail, "dim": dim})

    def load(self, artifact: ModelArtifact, cache_dir: Path | None = None) -> Embedder:
        return self._client(dim=artifact.dim)

    def _client(self, dim: int | None):
        from medvec.embedders.nim import NimEmbedder

        return NimEmbedder(self.url, self.nim_model, api_key=self.api_key, dim=dim, name=self.model,
                           timeout_s=self.timeout_s, concurrency=self.concurrency)


def embedder_from_env(settings: Settings | None = None) -> EmbedderResource:
    """MEDVEC_EMBEDDER picks the kind; MEDVEC_MODEL, MEDVEC_NIM_URL, MEDVEC_NIM_MODEL configure it."""
    settings = settings or Settings.from_env()
    if settings.embedder == "nim":
        if not settings.nim_url:
            raise ValueError("MEDVEC_EMBEDDER=nim needs MEDVEC_NIM_URL (e.g. http://gpu-box:8000)")
        api_key = dg.EnvVar("NVIDIA_API_KEY") if os.environ.get("NVIDIA_API_KEY") else None
        model = settings.model if settings.model != "tiny-siglip" else "nvclip"
        return NimEmbedderResource(model=model, url=settings.nim_url,
                                   nim_model=settings.nim_model or "nvidia/nvclip", api_key=api_key)
    if settings.embedder != "local":
        raise ValueError(f"MEDVEC_EMBEDDER must be 'local' or 'nim', not {settings.embedder!r}")
    token = dg.EnvVar("HF_TOKEN") if os.environ.get("HF_TOKEN") else None
    return LocalEmbedderResource(model=settings.model, hf_token=token, s3_endpoint_url=settings.s3_endpoint_url,
                                 dim=settings.model_dim, image_size=settings.model_image_size,
                                 model_source=settings.model_source, model_location=settings.model_location,
                                 revision=settings.model_revision)
