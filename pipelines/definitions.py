"""The Medvec code location: every asset, job and resource, configured from the environment."""

import dagster as dg

from assets.embeddings import embedding_model, image_embeddings
from assets.evaluation import retrieval_evaluation
from assets.ingest import normalized_images, source_manifest
from assets.search import fallback_queries, image_index, similar_images
from pipelines.jobs import ingest_job, search_refresh_job
from resources import MedvecHomeResource
from resources.embedders import embedder_from_env

defs = dg.Definitions(
    assets=[source_manifest, normalized_images, embedding_model, image_embeddings,
            image_index, fallback_queries, similar_images, retrieval_evaluation],
    jobs=[ingest_job, search_refresh_job],
    resources={"medvec": MedvecHomeResource.from_env(), "embedder": embedder_from_env()},
)
