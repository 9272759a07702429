"""Jobs over the asset graph, and the one place that binds a job to resources for the CLI's
in-process runs (so they show in the UI under the job's name, with the checks that belong to it)."""

import warnings

import dagster as dg

from assets.bundle import search_bundle
from assets.checks import CHECKS
from assets.embeddings import embedding_model, image_embeddings
from assets.evaluation import finding_probes, retrieval_evaluation
from assets.ingest import normalized_images, source_manifest
from assets.partitions import batch_partitions
from assets.reports import report_embeddings, report_records
from assets.search import fallback_queries, image_index, similar_images
from medvec.ingest.watch import rescan
from medvec.settings import get_settings
from medvec.sources import open_source
from resources import MedvecHomeResource

ASSETS = [source_manifest, normalized_images, report_records, embedding_model, image_embeddings, report_embeddings,
          image_index, fallback_queries, similar_images, retrieval_evaluation, finding_probes, search_bundle]
#: The sensors that launch batches: rescan_job hands the batches it opens to the one for its source.
FOLDER_SENSOR, S3_SENSOR = "incoming_folder_sensor", "s3_prefix_sensor"

# ingest_job and the source sensors' targets mix the per-batch assets (no policy) with the embedding
# assets (multi-run), so Dagster warns that their backfills run one batch per run. That is the intent:
# an ingest run is one batch; multi-batch embedding runs go through embed_batches_job or a backfill
# from the asset graph, which group each asset by its own policy. Exactly that warning is silenced.
warnings.filterwarnings("ignore", category=UserWarning, message=r"Asset job \S+ materializes assets with varying "
                                                                r"BackfillPolicies")

# Asset selections include the checks on the selected assets, so every run of these jobs checks what it wrote.
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

embedding_model_job = dg.define_asset_job(
    "embedding_model_job", selection=dg.AssetSelection.assets(embedding_model),
    description="Resolve the configured model to files (or probe the NIM) before any batch embeds.")

embed_batches_job = dg.define_asset_job(
    "embed_batches_job", selection=dg.AssetSelection.assets(image_embeddings, report_embeddings),
    description="image_embeddings and report_embeddings over a range of batches in one run (the model loads "
                "once): what `medvec backfill` runs after normalising.")


class RescanConfig(dg.Config):
    source: str = ""  # a folder or s3://bucket/prefix; default: MEDVEC_SOURCE
    batch_size: int = 2000
    min_age_seconds: float = 60.0  # files modified more recently may still be downloading (unless marked .done)


@dg.op
def rescan_source(context: dg.OpExecutionContext, config: RescanConfig, medvec: MedvecHomeResource) -> list[str]:
    """Open batches for every file on the source that no batch holds; the sensor watching that kind of
    source (folder or S3) launches them on its next tick."""
    root = config.source or get_settings().source
    launcher = S3_SENSOR if root.startswith("s3://") else FOLDER_SENSOR
    opened, young = rescan(open_source(root, medvec.s3_endpoint_url), medvec.home_path,
                           batch_size=config.batch_size, min_age_s=config.min_age_seconds, launcher=launcher)
    batches, files = [m.batch for m in opened], sum(len(m.files) for m in opened)
    context.instance.add_dynamic_partitions(batch_partitions.name, batches)
    context.log.info(f"opened {len(batches)} batch(es) of {files} file(s); {young} file(s) modified in the last "
                     f"{config.min_age_seconds:.0f}s left for later; {launcher} launches the batches on its next "
                     "tick (turn it on), or backfill them")
    context.add_output_metadata({"batches": dg.MetadataValue.json(batches), "files": files, "too_young": young,
                                 "launched_by": launcher})
    return batches


@dg.job(description="Open batches for files on the source that no batch holds (after the sensors were off, "
                    "or for another source); the source's sensor launches them.")
def rescan_job():
    rescan_source()


JOBS = [ingest_job, search_refresh_job, embedding_model_job, embed_batches_job, rescan_job]


def in_process(job, resources: dict) -> dg.JobDefinition:
    """`job` over the whole asset graph with these resources, ready for `execute_in_process`: the
    run carries the job's name, its asset checks run, and upstream values load from the home."""
    # A normalise-only run has no embedder configured (none may be): the assets and checks that need one
    # are not selected then, so a placeholder completes the graph and is never opened.
    resources = {"embedder": dg.ResourceDefinition.none_resource(description="no embedder: this run does not embed"),
                 **resources}
    return dg.Definitions(assets=ASSETS, asset_checks=CHECKS, jobs=[job], resources=resources).resolve_job_def(job.name)
