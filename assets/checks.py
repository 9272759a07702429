"""Asset checks: each asks the domain (`medvec.checks`) for one number and reports what it saw.

Blocking checks stop the assets downstream of theirs in the same run: bad vectors, missing or
duplicate rows and identifying columns must never reach the index, the precomputed answers or a
bundle. The checks are not partitioned (Dagster's partitioned checks are a preview that warns on
every load); the per-batch one reads the run's batches from its partition tags instead.
"""

import dagster as dg

from assets.embeddings import image_embeddings
from assets.partitions import batch_partitions
from assets.search import fallback_queries, image_index
from medvec.search.images import fallback_table_name
from medvec.tables import database
from medvec.checks import (answered_versions, batch_rows, count_bad_vectors, duplicate_image_ids,
                           identifying_columns)
from medvec.tables.images import image_table_name
from resources import MedvecHomeResource
from resources.embedders import EmbedderResource, ModelArtifact

#: The recall@10 (against exact search) the search index must reach; image_index measures it.
MIN_RECALL_AT_10 = 0.98
LISTED = 20  # ids or batches named in a check's metadata; the counts cover the rest


def _image_table(medvec: MedvecHomeResource, embedder: EmbedderResource):
    return database.open_table_if_exists(database.connect(medvec.lancedb_uri), image_table_name(embedder.spec().slug))


def run_batches(context: dg.AssetCheckExecutionContext) -> list[str]:
    """The batches this run materialised (one, or a backfill's range); every batch when the check
    runs on its own."""
    tags = context.run.tags
    if "dagster/partition" in tags:
        return [tags["dagster/partition"]]
    known = context.instance.get_dynamic_partitions(batch_partitions.name)
    start, end = tags.get("dagster/asset_partition_range_start"), tags.get("dagster/asset_partition_range_end")
    if start in known and end in known:
        return known[known.index(start):known.index(end) + 1]
    return known


@dg.asset_check(asset=image_embeddings, blocking=True)
def check_embedded_rows_match_normalized(context: dg.AssetCheckExecutionContext, medvec: MedvecHomeResource,
                                         embedder: EmbedderResource) -> dg.AssetCheckResult:
    """Each batch's rows in the model's table equal its normalised images minus those that failed to embed."""
    counts = batch_rows(database.connect(medvec.lancedb_uri), _image_table(medvec, embedder), medvec.home_path,
                        run_batches(context))
    wrong = [c for c in counts if not c.matches]
    rows = "\n".join(f"| {c.batch} | {c.normalized} | {c.embed_errors} | {c.embedded} |" for c in wrong[:LISTED])
    metadata = {"batches": len(counts), "mismatched_batches": len(wrong),
                "normalized": sum(c.normalized for c in counts), "embedded": sum(c.embedded for c in counts)}
    if wrong:
        metadata["mismatches"] = dg.MetadataValue.md(
            "| batch | normalised | embed errors | rows |\n|---|---:|---:|---:|\n" + rows)
    return dg.AssetCheckResult(passed=not wrong, metadata=metadata)


@dg.asset_check(asset=image_embeddings, blocking=True, additional_ins={"model": dg.AssetIn("embedding_model")})
def check_vectors_finite(model: ModelArtifact, medvec: MedvecHomeResource,
                         embedder: EmbedderResource) -> dg.AssetCheckResult:
    """No vector in the model's table holds NaN/inf or has zero length, and its width is the model's (as
    `embedding_model` resolved it: a NIM's width is what it answers, not the registry's guess)."""
    table = _image_table(medvec, embedder)
    expected = model.dim
    if table is None:
        return dg.AssetCheckResult(passed=True, metadata={"rows": 0, "expected_dim": expected})
    seen = count_bad_vectors(table, expected)
    return dg.AssetCheckResult(passed=seen.ok, metadata={
        "rows": seen.rows, "nan_rows": seen.nan_rows, "zero_norm_rows": seen.zero_norm_rows,
        "table_dim": seen.table_dim, "expected_dim": seen.expected_dim})


@dg.asset_check(asset=image_embeddings, blocking=True)
def check_image_ids_unique(medvec: MedvecHomeResource, embedder: EmbedderResource) -> dg.AssetCheckResult:
    """Each image_id is one row of the model's table (LanceDB does not enforce the key)."""
    table = _image_table(medvec, embedder)
    repeated = duplicate_image_ids(table) if table is not None else {}
    metadata = {"duplicated_ids": len(repeated), "extra_rows": sum(n - 1 for n in repeated.values())}
    if repeated:
        # image_ids are keyed replacements of the UIDs, never the UIDs themselves: safe to show.
        metadata["examples"] = dg.MetadataValue.json(dict(list(repeated.items())[:LISTED]))
    return dg.AssetCheckResult(passed=not repeated, metadata=metadata)


@dg.asset_check(asset=image_index, blocking=True)
def check_index_recall(context: dg.AssetCheckExecutionContext) -> dg.AssetCheckResult:
    """The search index finds at least 98% of the exact top 10 on held-out queries (the figure
    image_index measured when it built the index)."""
    event = context.instance.get_latest_materialization_event(image_index.key)
    found = event.asset_materialization.metadata if event and event.asset_materialization else {}
    recall, rows = found.get("search_recall_at_10"), found.get("rows")
    if recall is None or rows is None:
        return dg.AssetCheckResult(passed=False, metadata={"reason": "image_index has not measured its recall yet"})
    metadata = {"recall_at_10": dg.MetadataValue.float(recall.value), "minimum": MIN_RECALL_AT_10,
                "rows": rows.value, "search_index": found["search_index"].value if "search_index" in found else "?"}
    # An empty table has nothing to find: no recall to measure.
    return dg.AssetCheckResult(passed=rows.value == 0 or recall.value >= MIN_RECALL_AT_10, metadata=metadata)


@dg.asset_check(asset=image_index, blocking=True)
def check_no_identifying_columns(medvec: MedvecHomeResource) -> dg.AssetCheckResult:
    """No table in the database has a column `medvec.phi` counts as identifying (a name, birth date,
    address, accession number, …): nothing downstream may publish one."""
    db = database.connect(medvec.lancedb_uri)
    found = identifying_columns(db)
    return dg.AssetCheckResult(passed=not found, metadata={
        "tables_with_identifying_columns": len(found), "columns": dg.MetadataValue.json(found)})


@dg.asset_check(asset=fallback_queries)
def check_fallbacks_current(medvec: MedvecHomeResource, embedder: EmbedderResource) -> dg.AssetCheckResult:
    """The precomputed answers were made from the image table's current version (else they may miss
    new images or name removed ones)."""
    db = database.connect(medvec.lancedb_uri)
    images, answers = (database.open_table_if_exists(db, name) for name in
                       (image_table_name(embedder.spec().slug), fallback_table_name(embedder.spec().slug)))
    current = images.version if images is not None else None
    made_from = answered_versions(answers) if answers is not None else []
    return dg.AssetCheckResult(passed=current is not None and made_from == [current], metadata={
        "image_table_version": current if current is not None else "no table",
        "answers_made_from": dg.MetadataValue.json(made_from)})


CHECKS = [check_embedded_rows_match_normalized, check_vectors_finite, check_image_ids_unique, check_index_recall,
          check_no_identifying_columns, check_fallbacks_current]
