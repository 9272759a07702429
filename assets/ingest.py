"""Ingest assets: a batch's fixed file list, and its files normalised to WebP plus metadata records."""


import base64
import time

import dagster as dg

from medvec import progress
from medvec.tables import database
from medvec.ingest.batches import BatchManifest, BatchResult, load_manifest, normalize_batch
from medvec.ingest.reingest import Reingest, finish_reingest, load_reingest
from medvec.imaging.normalize import NormalizeOptions
from medvec.tables.records import IMAGE_RECORD_SCHEMA, ImageRecord
from medvec.imaging.webp import thumbnail_strip
from assets.metadata import OWNERS, TAGS, column_schema
from assets.partitions import batch_partitions
from resources import MedvecHomeResource

ERRORS_SHOWN = 10
#: On a run that re-ingests chosen files of its batch (the batch's `reingest.json` names them).
REINGEST_TAG = "medvec/reingest"


class NormalizeConfig(dg.Config):
    size: int = 512  # long side of the viewing WebP, px
    thumb_size: int = 256
    pad_square: bool = False
    window: str = "header"  # or "percentile": ignore header windows (some span the whole bit range)
    workers: int = 0  # 0: one process per CPU core
    allow_columns: list[str] = []  # identifying metadata-CSV columns the user chooses to keep
    allow_tags: list[str] = []  # extra DICOM keywords the user chooses to keep


@dg.asset(partitions_def=batch_partitions, group_name="ingest", kinds={"json"}, owners=OWNERS, tags=TAGS)
def source_manifest(context: dg.AssetExecutionContext, medvec: MedvecHomeResource) -> dg.Output[BatchManifest]:
    """The batch's source files (uri, size, mtime or etag), fixed when the batch was opened."""
    manifest = load_manifest(medvec.home_path, context.partition_key)
    return dg.Output(manifest, metadata={
        "files": len(manifest.files), "dagster/row_count": len(manifest.files),
        "bytes": sum(f.size for f in manifest.files),
        "source": manifest.source,
        "metadata_csv": manifest.metadata_csv or "none",
        "created_at": manifest.created_at,
    })


@dg.asset(partitions_def=batch_partitions, group_name="ingest", kinds={"pydicom", "webp", "parquet"}, owners=OWNERS,
          tags=TAGS)
def normalized_images(context: dg.AssetExecutionContext, config: NormalizeConfig, medvec: MedvecHomeResource,
                      source_manifest: BatchManifest) -> dg.Output[list[ImageRecord]]:
    """Each file decoded, rendered to 8-bit grey and written as WebP (viewing size and thumbnail),
    with an allow-listed metadata record; failures go to the `ingest_errors` table. A run tagged
    `medvec/reingest` reads and normalises again only the files its batch's re-ingest marker names."""
    options = NormalizeOptions(size=config.size, thumb_size=config.thumb_size, pad_square=config.pad_square,
                               window=config.window, allow_tags=tuple(config.allow_tags), max_pixels=medvec.max_pixels,
                               date_policy=medvec.date_policy, allow_burned_in=medvec.allow_burned_in,
                               burned_in_modalities=tuple(medvec.burned_in_modalities))
    reingest = _reingest_of(context, medvec)
    if not medvec.pseudonym_key and medvec.allow_dev_key:  # said here: worker processes stay quiet
        context.log.warning("MEDVEC_PSEUDONYM_KEY is not set: the development key is in use (demo/test only)")
    result = normalize_batch(source_manifest, medvec.home_path, options=options, max_file_bytes=medvec.max_file_bytes,
                             pseudonym_key=medvec.pseudonym_key, allow_dev_key=medvec.allow_dev_key,
                             s3_endpoint_url=medvec.s3_endpoint_url,
                             workers=config.workers or None, allow_columns=tuple(config.allow_columns),
                             progress=_progress_logger(context, source_manifest.batch),
                             only=None if reingest is None else reingest.uris)
    database.replace_batch_errors(database.connect(medvec.lancedb_uri), result.batch, result.errors)
    if result.errors:  # file paths may hold identifiers: the details live in ingest_errors
        stages = ", ".join(sorted({e.stage for e in result.errors}))
        context.log.warning(f"{len(result.errors)} file(s) failed ({stages}); see first_errors and ingest_errors")
    if result.changed:
        context.log.warning(f"{len(result.changed)} file(s) changed size since the batch was opened")
    metadata = _summary_metadata(result, medvec)
    if reingest is not None:
        finish_reingest(medvec.home_path, reingest)
        metadata.update({"reingested": len(reingest.uris), "kept_unread": result.kept})
    return dg.Output(result.records, metadata=metadata)


def _reingest_of(context: dg.AssetExecutionContext, medvec: MedvecHomeResource) -> Reingest | None:
    """The re-ingest this run serves; one already served (a re-executed run) re-ingests no file."""
    if REINGEST_TAG not in context.run.tags:
        return None
    batch = context.partition_key
    return load_reingest(medvec.home_path, batch) or Reingest(batch=batch, uris=(), request="", launcher="")


def _progress_logger(context: dg.AssetExecutionContext, batch: str):
    last = {"at": 0.0}

    def report(done: int, total: int) -> None:
        progress.report(f"batch {batch}", done, total)
        now = time.monotonic()
        if done == total or now - last["at"] > 10:
            last["at"] = now
            context.log.info(f"normalised {done}/{total} files")

    return report


def _summary_metadata(result: BatchResult, medvec: MedvecHomeResource) -> dict:
    metadata = {
        "ok": len(result.records),
        # The batch's records (records.parquet under the home): one row per normalised image.
        "dagster/row_count": len(result.records), "dagster/column_schema": column_schema(IMAGE_RECORD_SCHEMA),
        "errors": len(result.errors),
        "skipped_unchanged": result.unchanged,
        "skipped_duplicates": len(result.duplicates),
        "changed_since_opened": len(result.changed),
        "normalized_this_run": result.normalized,
        "images_per_second": dg.MetadataValue.float(round(result.images_per_second, 2)),
        "seconds": dg.MetadataValue.float(round(result.seconds, 2)),
        "output": dg.MetadataValue.path(str(medvec.home_path / "images")),
    }
    if result.errors:
        rows = "\n".join(f"| `{e.source_uri.rsplit('/', 1)[-1]}` | {e.stage} | {e.error} | {e.message} |"
                         for e in result.errors[:ERRORS_SHOWN])
        metadata["first_errors"] = dg.MetadataValue.md(
            f"| file | stage | error | reason |\n|---|---|---|---|\n{rows}")
    if result.notes:
        metadata["notes"] = dg.MetadataValue.md("\n".join(f"- {n}" for n in result.notes[:ERRORS_SHOWN]))
    strip = thumbnail_strip([(medvec.home_path / r.thumb_uri).read_bytes() for r in result.records[:8]])
    if strip:
        # Dagster renders markdown images from data URIs: the operator sees the batch at a glance.
        metadata["thumbnails"] = dg.MetadataValue.md(
            f"![thumbnails](data:image/png;base64,{base64.b64encode(strip).decode()})")
    return metadata
