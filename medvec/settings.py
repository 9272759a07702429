"""Configuration read once from the environment into a typed object that callers pass down."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_HOME = "./medvec_home"
DEFAULT_BATCH_SIZE = 2000


@dataclass(frozen=True)
class Settings:
    """Where Medvec keeps its state and where it reads new files from.

    `home` holds WebP files, batch manifests and per-batch records; `lancedb_uri` the tables;
    `source` is what `dagster dev` watches. `s3_endpoint_url` points boto3 at an
    S3-compatible server (MinIO, moto) when set.
    """

    home: Path
    lancedb_uri: str
    source: str
    s3_endpoint_url: str | None = None
    pseudonym_key: str | None = field(default=None, repr=False)

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> "Settings":
        env = os.environ if environ is None else environ
        home = Path(env.get("MEDVEC_HOME") or DEFAULT_HOME).expanduser().absolute()
        return cls(
            home=home,
            lancedb_uri=env.get("MEDVEC_LANCEDB_URI") or str(home / "lancedb"),
            source=env.get("MEDVEC_SOURCE") or str(home / "incoming"),
            s3_endpoint_url=env.get("MEDVEC_S3_ENDPOINT_URL") or None,
            pseudonym_key=env.get("MEDVEC_PSEUDONYM_KEY") or None,
        )
