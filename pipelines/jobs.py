"""Jobs over the asset graph."""

import dagster as dg

from assets.ingest import normalized_images, source_manifest

ingest_job = dg.define_asset_job(
    "ingest_job",
    selection=dg.AssetSelection.assets(source_manifest, normalized_images),
    description="Normalise the files of one batch: manifest → WebP images and records.",
)
