"""Search assets over a model's table: its indexes, precomputed common queries, and neighbours."""

from datetime import timedelta

import dagster as dg

from assets.embeddings import NO_QUALITY_NOTE, image_embeddings
from assets.metadata import OWNERS, TAGS, table_metadata
from medvec.datasets.vocabulary import table_vocabulary
from medvec.tables import database
from medvec.tables.images import image_table_name
from medvec.search.precompute import compute_fallbacks, compute_similar, stored_query_vectors
from medvec.search.images import ImageSearch, fallback_table_name, similar_table_name
from medvec.search.maintenance import IndexOptions, maintain_table
from resources import MedvecHomeResource
from resources.embedders import EmbedderResource, ModelArtifact


class ImageIndexConfig(dg.Config):
    min_rows_for_ann: int = 50_000  # LanceDB vector index at or above this; exact search below
    target_recall: float = 0.98  # recall@10 against exact search that tuning must reach
    keep_versions_hours: float = 1.0  # older table versions are cleaned up


def table_search(medvec: MedvecHomeResource, embedder: EmbedderResource) -> ImageSearch:
    """The configured model's table, searched as the server searches it."""
    spec = embedder.spec()
    return ImageSearch(medvec.lancedb_uri, spec.slug, model_name=spec.name, home=medvec.home_path)


def _derived_table_metadata(search: ImageSearch, name: str) -> dict:
    return table_metadata(database.connect(search.lancedb_uri).open_table(name))


@dg.asset(group_name="search", deps=[image_embeddings], kinds={"lancedb", "faiss"}, owners=OWNERS, tags=TAGS)
def image_index(context: dg.AssetExecutionContext, config: ImageIndexConfig, medvec: MedvecHomeResource,
                embedder: EmbedderResource) -> dg.MaterializeResult:
    """The model's table compacted, with scalar indexes for the filters, a vector index once it is
    large, old versions cleaned up, and the search path's in-memory index saved for this version."""
    spec = embedder.spec()
    table = database.open_table_if_exists(database.connect(medvec.lancedb_uri), image_table_name(spec.slug))
    if table is None:
        raise dg.Failure(f"no table {image_table_name(spec.slug)} yet: materialise image_embeddings first")
    options = IndexOptions(min_rows_for_ann=config.min_rows_for_ann, target_recall=config.target_recall,
                           keep_versions_for=timedelta(hours=config.keep_versions_hours))
    report = maintain_table(table, medvec.home_path, options, log_step=context.log.info,
                            tuning_queries=stored_query_vectors(medvec.lancedb_uri, spec.slug))
    search = report.search_index
    return dg.MaterializeResult(metadata={
        "table": report.table, "rows": report.rows, "dim": report.dim, "table_version": report.version,
        "lancedb_index": report.lancedb_index.get("type", "none"),
        "lancedb_index_details": dg.MetadataValue.json(report.lancedb_index),
        "search_index": search["kind"], "search_index_details": dg.MetadataValue.json(search),
        "search_recall_at_10": dg.MetadataValue.float(search["recall_at_10"] or 0.0),
        "search_p50_ms": dg.MetadataValue.float(search["p50_ms"] or 0.0),
        "scalar_indexes": dg.MetadataValue.json(report.scalar_indexes),
        "compaction": dg.MetadataValue.json(report.compaction),
        "build_seconds": dg.MetadataValue.float(report.seconds),
        **table_metadata(table),
    })


@dg.asset(group_name="search", deps=[image_index], kinds={"lancedb", "pytorch"}, owners=OWNERS, tags=TAGS)
def fallback_queries(context: dg.AssetExecutionContext, medvec: MedvecHomeResource, embedder: EmbedderResource,
                     embedding_model: ModelArtifact) -> dg.MaterializeResult:
    """The collection vocabulary's common queries (about 50 chest X-ray phrasings, or each label of the
    table and its prompt) embedded and answered ahead of time, so they answer without a text encoder."""
    search = table_search(medvec, embedder)
    table = database.open_table_if_exists(database.connect(medvec.lancedb_uri), search.table_name)
    vocabulary = table_vocabulary(table, medvec.vocabulary)
    with embedder.load(embedding_model, medvec.model_cache) as model:
        summary = compute_fallbacks(search, model, queries=vocabulary.queries)
    rows = "\n".join(f"| {query} | {', '.join(f'`{i[:16]}`' for i in ids)} |" for query, ids in summary["examples"].items())
    metadata = {**_derived_table_metadata(search, fallback_table_name(search.model_slug)),
                "table": fallback_table_name(embedder.spec().slug), "queries": summary["queries"], "k": summary["k"],
                "vocabulary": vocabulary.name, "labels": len(vocabulary.labels),
                "image_table_version": summary["table_version"], "seconds": dg.MetadataValue.float(summary["seconds"]),
                "examples": dg.MetadataValue.md("| query | top 3 |\n|---|---|\n" + rows)}
    if embedder.spec().no_retrieval_quality:
        metadata["warning"] = NO_QUALITY_NOTE
    return dg.MaterializeResult(metadata=metadata)


@dg.asset(group_name="search", deps=[image_index], kinds={"lancedb", "faiss"}, owners=OWNERS, tags=TAGS)
def similar_images(context: dg.AssetExecutionContext, medvec: MedvecHomeResource,
                   embedder: EmbedderResource) -> dg.MaterializeResult:
    """The 20 nearest neighbours of every image, so find-similar is a lookup."""
    search = table_search(medvec, embedder)
    summary = compute_similar(search)
    return dg.MaterializeResult(metadata={
        **_derived_table_metadata(search, similar_table_name(search.model_slug)),
        "table": similar_table_name(embedder.spec().slug), "images": summary["images"], "k": summary["k"],
        "image_table_version": summary["table_version"],
        "mean_top1_score": dg.MetadataValue.float(summary["mean_top1_score"]),
        "seconds": dg.MetadataValue.float(summary["seconds"])})
