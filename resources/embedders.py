"""Embedder resources: assets ask for `EmbedderResource`; it holds configuration (shown in the UI, secrets
as `dg.EnvVar`) and hands it to the domain's one factory (`medvec.embedders.factory`)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from functools import cached_property
from pathlib import Path

import dagster as dg

from medvec.embedders.base import Embedder
from medvec.embedders.factory import (DEFAULT_NIM_MODEL, EmbedderConfig, ModelArtifact, embedder_config, open_embedder,
                                      resolve_model_artifact)
from medvec.models.registry import ModelSpec, resolve_model
from medvec.settings import DEFAULT_MODEL, Settings

__all__ = ["EmbedderResource", "LocalEmbedderResource", "ModelArtifact", "NimEmbedderResource", "embedder_resource"]


class EmbedderResource(dg.ConfigurableResource, ABC):
    """Which model embeds and where it runs. `model` is a registry name or a Hugging Face id; an id
    outside the registry names its embedding `dim` and `image_size` (or is already in the cache)."""

    model: str
    dim: int | None = None
    image_size: int | None = None

    @abstractmethod
    def _make_config(self) -> EmbedderConfig:
        """This resource's configuration, as the factory takes it."""

    @cached_property
    def _config(self) -> EmbedderConfig:
        # Resolved once per resource instance: the spec is one immutable value for the whole run.
        return self._make_config()

    def config(self) -> EmbedderConfig:
        return self._config

    def spec(self) -> ModelSpec:
        return self._config.spec

    def _model_spec(self) -> ModelSpec:
        overrides = {k: v for k, v in (("dim", self.dim), ("image_size", self.image_size)) if v is not None}
        return resolve_model(self.model, **overrides)

    def resolve(self, cache_dir: Path) -> ModelArtifact:
        """Make the model available (download, mirror, build, or probe) and describe it."""
        return resolve_model_artifact(self.config(), cache_dir)

    def load(self, artifact: ModelArtifact, cache_dir: Path | None = None) -> Embedder:
        """An embedder for the resolved model; close it when done. `cache_dir` is where this machine keeps
        model files, for when the model was resolved on another one."""
        return open_embedder(self.config(), artifact, cache_dir)


class LocalEmbedderResource(EmbedderResource):
    """A model run in this process: transformers (SigLIP, MedSigLIP, CLIP) or open_clip (BiomedCLIP)."""

    model: str = DEFAULT_MODEL
    model_source: str = "hub"  # hub | s3 | local (tiny models are always built locally)
    model_location: str | None = None  # s3://bucket/prefix or a folder, for s3 and local sources
    revision: str | None = None  # pin a Hub revision; the resolved commit is recorded either way
    hf_token: str | None = None  # an EnvVar("HF_TOKEN") in the definitions: never shown
    s3_endpoint_url: str | None = None
    device: str = "auto"  # auto | cuda | mps | cpu
    dtype: str = "auto"  # auto | fp32 | bf16 | fp16
    batch_size: int = 32

    def _make_config(self) -> EmbedderConfig:
        return EmbedderConfig(kind="local", spec=self._model_spec(), device=self.device, dtype=self.dtype,
                              batch_size=self.batch_size, model_source=self.model_source,
                              model_location=self.model_location, revision=self.revision,
                              s3_endpoint_url=self.s3_endpoint_url, hf_token=self.hf_token)


class NimEmbedderResource(EmbedderResource):
    """A remote NVIDIA NIM (or `medvec embed-server`) speaking `POST /v1/embeddings`."""

    model: str = DEFAULT_NIM_MODEL
    url: str
    nim_model: str = "nvidia/nvclip"
    api_key: str | None = None  # an EnvVar("NVIDIA_API_KEY") in the definitions: never shown
    concurrency: int = 4
    timeout_s: float = 60.0

    def _make_config(self) -> EmbedderConfig:
        return EmbedderConfig(kind="nim", spec=self._model_spec(), nim_url=self.url, nim_model=self.nim_model,
                              nim_concurrency=self.concurrency, nim_timeout_s=self.timeout_s, api_key=self.api_key)


def embedder_resource(settings: Settings, *, kind: str | None = None, device: str = "auto") -> EmbedderResource:
    """The resource Settings describe (`kind` and `device` as a profile sets them). Values come from the
    factory's `embedder_config`; secrets go in as `dg.EnvVar`, never their values: Dagster stores resource
    values in every run's snapshot, where a raw key would sit in plain text."""
    config = embedder_config(settings, kind=kind, device=device)
    shared = {"model": config.spec.name, "dim": settings.model_dim, "image_size": settings.model_image_size}
    if not config.runs_in_process:
        return NimEmbedderResource(**shared, url=config.nim_url, nim_model=config.nim_model,
                                   concurrency=config.nim_concurrency, timeout_s=config.nim_timeout_s,
                                   api_key=dg.EnvVar("NVIDIA_API_KEY") if settings.exported("nvidia_api_key") else None)
    return LocalEmbedderResource(**shared, model_source=config.model_source, model_location=config.model_location,
                                 revision=config.revision, s3_endpoint_url=config.s3_endpoint_url,
                                 device=config.device, hf_token=dg.EnvVar("HF_TOKEN") if settings.exported("hf_token") else None)
