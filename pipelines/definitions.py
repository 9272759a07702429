"""The Medvec code location: every asset, job and resource, configured from the environment.

MEDVEC_PROFILE (`pipelines/profiles.py`) picks where runs execute: the assets are the same in every
profile; only the executor and the embedder's defaults change."""

import dagster as dg

from assets.bundle import search_bundle
from assets.embeddings import embedding_model, image_embeddings
from assets.evaluation import finding_probes, retrieval_evaluation
from assets.ingest import normalized_images, source_manifest
from assets.reports import report_embeddings, report_records
from assets.search import fallback_queries, image_index, similar_images
from medvec.settings import Settings
from pipelines.dicomweb_sensor import dicomweb_backfill_job, dicomweb_sensor
from pipelines.jobs import ingest_job, search_refresh_job
from pipelines.profiles import gpu_steps, profile_from_env
from pipelines.sensors import incoming_folder_sensor, rescan_job, s3_prefix_sensor, search_refresh_sensor
from resources import home_resources

ASSETS = [source_manifest, normalized_images, report_records, embedding_model, image_embeddings, report_embeddings,
          image_index, fallback_queries, similar_images, retrieval_evaluation, finding_probes, search_bundle]

settings = Settings.from_env()
profile = profile_from_env()
embedder = profile.embedder(settings)

defs = dg.Definitions(
    assets=ASSETS,
    jobs=[ingest_job, search_refresh_job, rescan_job, dicomweb_backfill_job],
    sensors=[incoming_folder_sensor, s3_prefix_sensor, search_refresh_sensor, dicomweb_sensor],
    # The home and the IO manager that keeps asset values in it: steps in other pods read them there.
    resources={**home_resources(settings), "embedder": embedder},
    # Every job runs on the profile's executor; on the cluster the gpu-pool steps ask for a GPU.
    executor=profile.executor(gpu_steps(ASSETS, embedder)),
)
