"""The Medvec code location: every asset, job and resource, configured from the environment."""

import dagster as dg

from assets.ingest import normalized_images, source_manifest
from pipelines.jobs import ingest_job
from resources import MedvecHomeResource

defs = dg.Definitions(
    assets=[source_manifest, normalized_images],
    jobs=[ingest_job],
    resources={"medvec": MedvecHomeResource.from_env()},
)
