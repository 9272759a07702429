"""Configuration read once from the environment into a typed object that callers pass down."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from medvec.storage import HomePath, as_path, is_remote

DEFAULT_HOME = "./medvec_home"
DEFAULT_BATCH_SIZE = 2000
#: Offline default: a random-weights model built locally (no retrieval quality, said wherever it shows).
DEFAULT_MODEL = "tiny-siglip"


@dataclass(frozen=True)
class Settings:
    """Where Medvec keeps its state and where it reads new files from.

    `home` holds WebP files, batch manifests and per-batch records: a folder, or an `s3://` prefix
    (`medvec.storage.S3Path`) so workers on several machines share it; `lancedb_uri` the tables (a folder
    or `s3://`); `source` is what `dagster dev` watches. `s3_endpoint_url` points boto3 and LanceDB at an
    S3-compatible server (MinIO, moto) when set.
    """

    home: HomePath
    lancedb_uri: str
    source: str
    s3_endpoint_url: str | None = None
    pseudonym_key: str | None = field(default=None, repr=False)
    model: str = DEFAULT_MODEL  # registry name or Hugging Face id
    embedder: str = "local"  # "local" | "nim"
    nim_url: str | None = None
    nim_model: str | None = None
    model_source: str = "hub"  # where local model files come from: hub | s3 | local
    model_location: str | None = None  # s3://bucket/prefix or a folder, for the s3 and local sources
    model_revision: str | None = None
    model_dim: int | None = None  # for a Hugging Face id outside the registry
    model_image_size: int | None = None

    @property
    def model_cache(self) -> Path:
        return model_cache(self.home)

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> "Settings":
        env = os.environ if environ is None else environ
        endpoint = env.get("MEDVEC_S3_ENDPOINT_URL") or None
        home_text = env.get("MEDVEC_HOME") or DEFAULT_HOME
        home = as_path(home_text, endpoint) if is_remote(home_text) else Path(home_text).expanduser().absolute()
        return cls(
            home=home,
            lancedb_uri=env.get("MEDVEC_LANCEDB_URI") or str(home / "lancedb"),
            source=env.get("MEDVEC_SOURCE") or str(home / "incoming"),
            s3_endpoint_url=endpoint,
            pseudonym_key=env.get("MEDVEC_PSEUDONYM_KEY") or None,
            model=env.get("MEDVEC_MODEL") or DEFAULT_MODEL,
            embedder=(env.get("MEDVEC_EMBEDDER") or "local").lower(),
            nim_url=env.get("MEDVEC_NIM_URL") or None,
            nim_model=env.get("MEDVEC_NIM_MODEL") or None,
            model_source=env.get("MEDVEC_MODEL_SOURCE") or "hub",
            model_location=env.get("MEDVEC_MODEL_LOCATION") or None,
            model_revision=env.get("MEDVEC_MODEL_REVISION") or None,
            model_dim=int(env["MEDVEC_MODEL_DIM"]) if env.get("MEDVEC_MODEL_DIM") else None,
            model_image_size=int(env["MEDVEC_MODEL_IMAGE_SIZE"]) if env.get("MEDVEC_MODEL_IMAGE_SIZE") else None,
        )


def local_state_dir(settings: "Settings") -> Path:
    """A local folder for what must sit on a local disk (Dagster's SQLite instance, generated sample data):
    the home itself, or the local cache when the home is on S3."""
    return settings.model_cache.parent if is_remote(settings.home) else Path(settings.home)


def model_cache(home: HomePath) -> Path:
    """Where model snapshots, S3 mirrors and built tiny models are kept: under a local Medvec home, or in
    a local cache (MEDVEC_CACHE_DIR, else ~/.cache/medvec) when the home is on S3, since model loaders
    read local files."""
    if is_remote(home):
        return Path(os.environ.get("MEDVEC_CACHE_DIR") or Path.home() / ".cache" / "medvec").expanduser() / "models"
    return Path(home) / "models"
