"""Embedding assets: the model resolved to files, and each batch's images embedded into LanceDB."""

import time

import dagster as dg

from assets.ingest import normalized_images
from medvec import progress
from medvec.tables import database
from medvec.ingest.batches import is_normalized, load_batch_records
from medvec.embedders.base import EmbedderError
from medvec.ingest.embed import check_vectors, embed_missing
from medvec.tables.images import image_rows, image_table_name, open_image_table, stored_embeddings, upsert_batch
from assets.metadata import GPU_TAGS, OWNERS, TAGS, table_metadata
from assets.partitions import batch_partitions
from resources import MedvecHomeResource
from resources.embedders import EmbedderResource, ModelArtifact

NO_QUALITY_NOTE = "random weights: no retrieval quality (offline demo and tests only)"


@dg.asset(group_name="embed", kinds={"huggingface"}, owners=OWNERS, tags=TAGS)
def embedding_model(context: dg.AssetExecutionContext, embedder: EmbedderResource,
                    medvec: MedvecHomeResource) -> dg.Output[ModelArtifact]:
    """The configured model as files on disk (Hub snapshot, S3 mirror, local folder or the built
    tiny model), with revision and file hashes; for a NIM, its model id and readiness."""
    artifact = embedder.resolve(medvec.model_cache)
    spec = embedder.spec()
    metadata = {"model": artifact.name, "model_id": artifact.model_id, "loader": artifact.loader,
                "dim": artifact.dim, "revision": artifact.revision or "n/a",
                "table": image_table_name(spec.slug), "details": dg.MetadataValue.json(artifact.metadata)}
    if spec.no_retrieval_quality:
        metadata["warning"] = NO_QUALITY_NOTE
        context.log.warning(f"{artifact.name}: {NO_QUALITY_NOTE}")
    return dg.Output(artifact, metadata=metadata)


@dg.asset(partitions_def=batch_partitions, group_name="embed", deps=[normalized_images], pool="gpu",
          kinds={"lancedb", "pytorch"}, owners=OWNERS, tags=GPU_TAGS,
          backfill_policy=dg.BackfillPolicy.multi_run(max_partitions_per_run=8))
def image_embeddings(context: dg.AssetExecutionContext, embedder: EmbedderResource, medvec: MedvecHomeResource,
                     embedding_model: ModelArtifact) -> dg.MaterializeResult:
    """Each batch's normalised images embedded and upserted into the model's table
    (`images__<model>`, keyed by `image_id`). A backfill loads the model once for several batches.
    An image the table already holds with the same content hash and model revision keeps its vector
    and is not embedded again (`skipped`), so re-runs and overlapping batches cost no model call."""
    spec = embedder.spec()
    if (embedding_model.name, embedding_model.model_id) != (spec.name, spec.model_id):
        # The stored artifact is from another model: embedding with it would fill the wrong table.
        raise EmbedderError(f"embedding_model holds {embedding_model.name} but the embedder is configured for "
                            f"{spec.name}: materialise embedding_model again first")
    missing = [b for b in context.partition_keys if not is_normalized(medvec.home_path, b)]
    if missing:
        raise EmbedderError(f"batch(es) {', '.join(missing)} have no normalised images yet: "
                            "materialise normalized_images for them first")
    db = database.connect(medvec.lancedb_uri)
    table_name = image_table_name(spec.slug)
    table = open_image_table(db, table_name, embedding_model.dim)  # a dimension mismatch stops here
    written, embedded, skipped, errors_total, seconds = 0, 0, 0, 0, 0.0
    with embedder.load(embedding_model, medvec.model_cache) as model:
        for batch in context.partition_keys:
            records = load_batch_records(medvec.home_path, batch)
            started = time.perf_counter()
            stored = stored_embeddings(table, [r.image_id for r in records])
            result = embed_missing(records, medvec.home_path, model, stored, model_id=embedding_model.model_id,
                                   revision=embedding_model.revision,
                                   progress=lambda done, total, b=batch: progress.report(f"embed {b}", done, total))
            problems = check_vectors(result.vectors, embedding_model.dim)
            if problems:
                raise EmbedderError(f"batch {batch}: {'; '.join(problems)}; nothing was written")
            rows = image_rows(result.records, result.vectors, dim=embedding_model.dim,
                              model_id=embedding_model.model_id, revision=embedding_model.revision,
                              embedded_at=result.embedded_at)
            upsert_batch(table, batch, rows)
            database.replace_batch_errors(db, batch, result.errors, stages=database.EMBED_STAGES)
            if result.errors:  # file paths may hold identifiers: the details live in ingest_errors
                context.log.warning(f"batch {batch}: {len(result.errors)} image(s) could not be embedded "
                                    "(see the ingest_errors table)")
            written += len(result.records)
            embedded += result.embedded
            skipped += result.skipped
            errors_total += len(result.errors)
            seconds += time.perf_counter() - started
            context.log.info(f"batch {batch}: {result.embedded} vector(s) embedded in {result.seconds:.1f}s, "
                             f"{result.skipped} already in the table")
        runtime = model.runtime()
    metadata = {"rows_written": written, "embedded": embedded, "skipped": skipped, "errors": errors_total, "batches": len(context.partition_keys),
                "table": table_name, "table_rows": table.count_rows(), **table_metadata(table),
                "images_per_second": dg.MetadataValue.float(round(embedded / seconds, 2) if seconds else 0.0),
                "model": embedding_model.name, "model_revision": embedding_model.revision or "n/a",
                **{key: str(value) for key, value in runtime.items()}}
    if spec.no_retrieval_quality:
        metadata["warning"] = NO_QUALITY_NOTE
    return dg.MaterializeResult(metadata=metadata)
