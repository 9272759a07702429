"""Jobs over the asset graph."""

import dagster as dg

from assets.embeddings import image_embeddings
from assets.ingest import normalized_images, source_manifest

ingest_job = dg.define_asset_job(
    "ingest_job",
    selection=dg.AssetSelection.assets(source_manifest, normalized_images, image_embeddings),
    description="One batch end to end: manifest → WebP images and records → vectors in LanceDB.",
)
