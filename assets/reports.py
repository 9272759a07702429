"""Report assets on the same batches as the images: parsed and scrubbed reports, then their text
embeddings and full-text index in the model's reports table."""

import dagster as dg

from assets.ingest import normalized_images, source_manifest
from medvec.tables import database
from medvec.ingest.batches import load_batch_records
from medvec.reports.tables import (REPORT_STAGES, label_agreement, load_batch_reports, open_report_table,
                                 read_batch_reports, refresh_report_index, report_embedding_text, report_table_name,
                                 upsert_batch_reports, write_batch_reports)
from assets.metadata import GPU_TAGS, OWNERS, TAGS, table_metadata
from assets.partitions import batch_partitions
from resources import MedvecHomeResource
from resources.embedders import EmbedderResource, ModelArtifact


@dg.asset(partitions_def=batch_partitions, group_name="reports", deps=[source_manifest, normalized_images],
          kinds={"parquet"}, owners=OWNERS, tags=TAGS)
def report_records(context: dg.AssetExecutionContext, medvec: MedvecHomeResource) -> dg.MaterializeResult:
    """The batch's radiology reports (MIMIC-CXR .txt, Open-I XML, Indiana CSV pair) split into
    sections, scrubbed of identifiers and dates, with findings read from the text."""
    from medvec.ingest.batches import load_manifest

    manifest = load_manifest(medvec.home_path, context.partition_key)
    records, errors = read_batch_reports(manifest, medvec.s3_endpoint_url)
    write_batch_reports(medvec.home_path, manifest.batch, records)
    database.replace_batch_errors(database.connect(medvec.lancedb_uri), manifest.batch, errors, stages=REPORT_STAGES)
    if errors:
        context.log.warning(f"{len(errors)} report file(s) could not be parsed (see the ingest_errors table)")
    agreement = label_agreement(records, load_batch_records(medvec.home_path, manifest.batch))
    layouts, labels = {}, {}
    for record in records:
        layouts[record.layout] = layouts.get(record.layout, 0) + 1
        for label in record.labels:
            labels[label] = labels.get(label, 0) + 1
    return dg.MaterializeResult(metadata={
        "reports": len(records), "errors": len(errors), "by_layout": dg.MetadataValue.json(layouts),
        "labels_read": dg.MetadataValue.json(labels),
        "redactions": sum(r.redactions for r in records),
        "label_agreement": dg.MetadataValue.json(agreement)})


@dg.asset(partitions_def=batch_partitions, group_name="reports", deps=[report_records], pool="gpu",
          kinds={"lancedb", "pytorch"}, owners=OWNERS, tags=GPU_TAGS,
          backfill_policy=dg.BackfillPolicy.multi_run(max_partitions_per_run=8))
def report_embeddings(context: dg.AssetExecutionContext, embedder: EmbedderResource, medvec: MedvecHomeResource,
                      embedding_model: ModelArtifact) -> dg.MaterializeResult:
    """Each batch's reports embedded with the model's text tower (the images' space) into
    `reports__<model>`, keyed by report, with a full-text index on the scrubbed text."""
    spec = embedder.spec()
    db = database.connect(medvec.lancedb_uri)
    table = open_report_table(db, report_table_name(spec.slug), embedding_model.dim)
    written = 0
    try:
        with embedder.load(embedding_model, medvec.model_cache) as model:
            for batch in context.partition_keys:
                records = load_batch_reports(medvec.home_path, batch)
                texts = [report_embedding_text(r) for r in records]
                vectors = model.embed_texts(texts) if texts else []
                upsert_batch_reports(table, batch, records, vectors, embedding_model.model_id)
                written += len(records)
    finally:  # once per run, not per batch; the batches written before a failure are searchable too
        refresh_report_index(table)
    return dg.MaterializeResult(metadata={"reports_written": written, "table": table.name,
                                          "table_rows": table.count_rows(), "model": embedding_model.name,
                                          **table_metadata(table)})
