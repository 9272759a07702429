"""Where Medvec keeps its state (home, LanceDB, S3 endpoint) and the pseudonym key."""

from __future__ import annotations

from pathlib import Path

import dagster as dg

from medvec.settings import DEFAULT_MAX_FILE_BYTES, DEFAULT_MAX_PIXELS, Settings, model_cache
from medvec.storage import HomePath, as_path


class MedvecHomeResource(dg.ConfigurableResource):
    """The Medvec home (WebP files, batch manifests and records) and the LanceDB URI."""

    home: str
    lancedb_uri: str
    collection: str | None = None  # MEDVEC_COLLECTION: `home` is its sub-home; model files stay in the root home
    s3_endpoint_url: str | None = None
    # Secret: an EnvVar in the definitions, so the UI shows the variable's name, never its value.
    pseudonym_key: str | None = None
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES  # MEDVEC_MAX_FILE_BYTES: largest source file read
    max_pixels: int = DEFAULT_MAX_PIXELS  # MEDVEC_MAX_PIXELS: largest frame decoded
    # De-identification policy (docs/privacy.md); without a key, ingest refuses unless allow_dev_key.
    allow_dev_key: bool = False
    date_policy: str = "remove"
    allow_burned_in: bool = False
    burned_in_modalities: list[str] = ["US", "SC", "XA"]
    vocabulary: str = "auto"  # MEDVEC_VOCABULARY: auto | chest | labels (medvec/datasets/vocabulary.py)

    @classmethod
    def from_settings(cls, settings: Settings) -> "MedvecHomeResource":
        # The key goes in as an EnvVar, never its value: Dagster stores resource values in every run's
        # snapshot ($DAGSTER_HOME/history), where a raw key would sit in plain text.
        key = dg.EnvVar("MEDVEC_PSEUDONYM_KEY") if settings.exported("pseudonym_key") else None
        return cls(home=str(settings.home), lancedb_uri=settings.lancedb_uri, collection=settings.collection,
                   s3_endpoint_url=settings.s3_endpoint_url, pseudonym_key=key,
                   max_file_bytes=settings.max_file_bytes, max_pixels=settings.max_pixels,
                   allow_dev_key=settings.allow_dev_key, date_policy=settings.date_policy,
                   allow_burned_in=settings.allow_burned_in,
                   burned_in_modalities=list(settings.burned_in_modality_list),
                   vocabulary=settings.vocabulary)

    @property
    def home_path(self) -> HomePath:
        """A local folder, or an `S3Path` when `home` is an `s3://` prefix."""
        return as_path(self.home, self.s3_endpoint_url)

    @property
    def model_cache(self) -> Path:
        return model_cache(self.home_path, collection=self.collection)
