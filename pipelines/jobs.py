"""Jobs over the asset graph."""

import dagster as dg

from assets.embeddings import image_embeddings
from assets.ingest import normalized_images, source_manifest
from assets.reports import report_embeddings, report_records
from assets.search import fallback_queries, image_index, similar_images

ingest_job = dg.define_asset_job(
    "ingest_job",
    selection=dg.AssetSelection.assets(source_manifest, normalized_images, image_embeddings, report_records,
                                       report_embeddings),
    description="One batch end to end: manifest → WebP images and records → vectors in LanceDB; its reports "
                "parsed, scrubbed and embedded beside them.",
)

search_refresh_job = dg.define_asset_job(
    "search_refresh_job",
    selection=dg.AssetSelection.assets(image_index, fallback_queries, similar_images),
    description="After new batches: compact and index the model's table, then recompute the common queries "
                "and every image's neighbours.",
)
