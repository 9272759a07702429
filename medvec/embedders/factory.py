"""The one embedder factory: `embedder_config` turns Settings into an `EmbedderConfig` (the only place
that knows how a configured model is served), `resolve_model_artifact` makes its files available, and
`open_embedder` opens the right implementation. The Dagster resource, the search service, `medvec
embed-server`, `medvec bundle` and the evaluation all come through here; nobody else branches on the kind."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

from medvec.embedders.base import Embedder, EmbedderError
from medvec.models.files import ResolvedModel, resolve_model_files
from medvec.models.registry import PACKAGED_MODELS, REGISTRY, ModelSpec, resolve_model
from medvec.settings import DEFAULT_MODEL, Settings, get_settings

#: What a NIM serves when no model is named (MEDVEC_MODEL left at the offline default).
DEFAULT_NIM_MODEL = "nvclip"


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


@dataclass(frozen=True)
class EmbedderConfig:
    """Everything needed to open one embedder: the resolved model spec and where and how it runs."""

    kind: Literal["local", "nim"]
    spec: ModelSpec
    device: str = "auto"  # auto | cuda | mps | cpu
    dtype: str = "auto"  # auto | fp32 | bf16 | fp16
    batch_size: int = 32
    model_source: str = "hub"  # hub | s3 | local (tiny models are always built locally)
    model_location: str | None = None
    revision: str | None = None  # a pinned Hub revision; the resolved commit is recorded either way
    s3_endpoint_url: str | None = None
    cache_dir: Path | None = None  # where this machine keeps model files (None: given at resolve/open)
    nim_url: str | None = None
    nim_model: str = "nvidia/nvclip"
    nim_concurrency: int = 4
    nim_timeout_s: float = 60.0
    hf_token: str | None = field(default=None, repr=False)
    api_key: str | None = field(default=None, repr=False)

    def __post_init__(self):
        if self.kind not in ("local", "nim"):
            raise ValueError(f"embedder kind must be 'local' or 'nim', not {self.kind!r}")
        if self.kind == "nim" and not self.nim_url:
            raise ValueError("MEDVEC_EMBEDDER=nim needs MEDVEC_NIM_URL (e.g. http://gpu-box:8000)")

    @property
    def runs_in_process(self) -> bool:
        """Whether the model runs here (needs this machine's GPU), rather than behind HTTP."""
        return self.kind == "local"

    @property
    def loader(self) -> str:
        """How the model is served, as `embedding_model` records it: nim, transformers or open_clip."""
        return "nim" if self.kind == "nim" else self.spec.loader


def embedder_config(settings: Settings, model: str | None = None, *, kind: str | None = None,
                    device: str = "auto") -> EmbedderConfig:
    """The embedder Settings describe (for `model` instead of MEDVEC_MODEL when given; `kind` overrides
    MEDVEC_EMBEDDER). A NIM asked for the offline default model serves nvclip; a registry model that only
    a NIM serves is opened as one."""
    name = model or settings.model
    kind = kind or settings.embedder
    if model is None and kind == "nim" and name == DEFAULT_MODEL:
        name = DEFAULT_NIM_MODEL
    if kind == "local" and name in REGISTRY and REGISTRY[name].loader == "nim":
        kind = "nim"
    overrides = {k: v for k, v in (("dim", settings.model_dim), ("image_size", settings.model_image_size)) if v}
    return EmbedderConfig(
        kind=kind, spec=resolve_model(name, **overrides), device=device, model_source=settings.model_source,
        model_location=settings.model_location, revision=settings.model_revision,
        s3_endpoint_url=settings.s3_endpoint_url, cache_dir=settings.model_cache, nim_url=settings.nim_url,
        nim_model=settings.nim_model, nim_concurrency=settings.nim_concurrency,
        nim_timeout_s=settings.nim_timeout_s, hf_token=_secret(settings.hf_token),
        api_key=_secret(settings.nvidia_api_key))


def resolve_model_artifact(config: EmbedderConfig, cache_dir: Path | None = None) -> ModelArtifact:
    """Make the model available (download, mirror, build, or probe the NIM) and describe it."""
    if config.kind == "nim":
        return _probe_nim(config)
    resolved = _local_files(config, _cache(config, cache_dir), config.revision)
    return ModelArtifact(name=config.spec.name, model_id=config.spec.model_id, loader=config.spec.loader,
                         dim=config.spec.dim, revision=resolved.revision, local_dir=str(resolved.local_dir),
                         metadata=resolved.to_metadata())


def open_embedder(config: EmbedderConfig, artifact: ModelArtifact | None = None,
                  cache_dir: Path | None = None) -> Embedder:
    """A ready embedder; close it when done. `artifact` is what `resolve_model_artifact` recorded (maybe on
    another machine); without one the model is resolved here first."""
    if config.kind == "nim":
        return _nim_client(config, dim=artifact.dim if artifact else None)
    artifact = artifact or resolve_model_artifact(config, cache_dir)
    local_dir = Path(artifact.local_dir)
    if not local_dir.is_dir():
        # Resolved on another machine (a Kubernetes pod, another worker): fetch the same revision here,
        # and refuse files that differ from those recorded (a mirror changed since embedding_model ran).
        resolved = _local_files(config, _cache(config, cache_dir), artifact.revision or config.revision)
        if artifact.revision and resolved.revision != artifact.revision:
            raise EmbedderError(f"{artifact.name}: the model files here are revision {resolved.revision}, "
                                f"embedding_model recorded {artifact.revision}; materialise embedding_model again")
        local_dir = resolved.local_dir
    spec = config.spec
    if spec.loader == "open_clip":
        from medvec.embedders.open_clip_local import OpenClipEmbedder

        return OpenClipEmbedder(spec, local_dir, device=config.device, batch_size=config.batch_size,
                                revision=artifact.revision)
    from medvec.embedders.transformers_local import TransformersEmbedder

    return TransformersEmbedder(spec, local_dir, device=config.device, dtype=config.dtype,
                                batch_size=config.batch_size, revision=artifact.revision)


def local_config(config: EmbedderConfig, **changes) -> EmbedderConfig:
    """The same model opened in this process (`medvec bundle` exports the text tower from local files)."""
    return replace(config, kind="local", **changes)


def _local_files(config: EmbedderConfig, cache_dir: Path, revision: str | None) -> ResolvedModel:
    """The model's files on disk: built here for the tiny offline models, else hub / s3 / local."""
    spec = config.spec
    if spec.name in PACKAGED_MODELS:
        return resolve_model_files(spec.model_id, source="local", location=str(PACKAGED_MODELS[spec.name]),
                                   cache_dir=cache_dir)
    if spec.no_retrieval_quality:
        from medvec.models.tiny import TINY_BUILDERS

        local_dir = TINY_BUILDERS[spec.name](Path(cache_dir) / "tiny" / spec.name)
        return resolve_model_files(spec.model_id, source="local", location=str(local_dir), cache_dir=cache_dir)
    return resolve_model_files(spec.model_id, source=config.model_source, location=config.model_location,
                               revision=revision or spec.revision, cache_dir=cache_dir, token=config.hf_token,
                               s3_endpoint_url=config.s3_endpoint_url)


def _probe_nim(config: EmbedderConfig) -> ModelArtifact:
    from medvec.embedders.nim import without_credentials

    shown_url = without_credentials(config.nim_url)  # a URL may carry user:password; never show it
    with _nim_client(config, dim=None) as embedder:
        ready, detail = embedder.ready(timeout=config.nim_timeout_s)
        if not ready:
            raise EmbedderError(f"NIM at {shown_url} is not ready ({detail}); start it or fix MEDVEC_NIM_URL")
        dim = embedder.embed_texts(["chest x-ray"]).shape[1]
    return ModelArtifact(name=config.spec.name, model_id=config.nim_model, loader="nim", dim=dim, revision=None,
                         local_dir=None, metadata={"url": shown_url, "ready": detail, "dim": dim})


def _nim_client(config: EmbedderConfig, dim: int | None) -> Embedder:
    from medvec.embedders.nim import NimEmbedder

    return NimEmbedder(config.nim_url, config.nim_model, api_key=config.api_key, dim=dim, name=config.spec.name,
                       timeout_s=config.nim_timeout_s, concurrency=config.nim_concurrency)


def _cache(config: EmbedderConfig, cache_dir: Path | None) -> Path:
    if cache_dir is not None:
        return Path(cache_dir)
    if config.cache_dir is not None:
        return config.cache_dir
    return get_settings().model_cache


def _secret(value) -> str | None:
    return value.get_secret_value() if value is not None else None
