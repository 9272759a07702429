"""The serverless search bundle: a static folder that answers searches in the visitor's browser."""

import dagster as dg

from assets.embeddings import NO_QUALITY_NOTE
from assets.metadata import OWNERS, TAGS
from assets.search import fallback_queries, similar_images, table_search
from medvec.bundle import BundleOptions, build_bundle
from medvec.bundle.build import latest_evaluation
from medvec.storage import as_path
from resources import MedvecHomeResource
from resources.embedders import EmbedderResource, ModelArtifact


class SearchBundleConfig(dg.Config):
    precision: str = "float16"  # float16 | int8 (half the size; recall@10 cost measured in the metadata)
    thumbnails: bool = True
    out_dir: str = ""  # default: $MEDVEC_HOME/bundles/<model>


@dg.asset(group_name="search", deps=[fallback_queries, similar_images], kinds={"onnx", "webp"}, owners=OWNERS,
          tags=TAGS)
def search_bundle(context: dg.AssetExecutionContext, config: SearchBundleConfig, medvec: MedvecHomeResource,
                  embedder: EmbedderResource, embedding_model: ModelArtifact) -> dg.MaterializeResult:
    """A static folder any file server can host: the text tower as ONNX with its tokenizer, the packed
    image vectors, thumbnails, the fallback answers and neighbour lists, and the latest evaluation; its
    page searches in the browser, so no query leaves the visitor's device."""
    spec = embedder.spec()
    search = table_search(medvec, embedder)
    out_dir = as_path(config.out_dir, medvec.s3_endpoint_url) if config.out_dir else medvec.home_path / "bundles" / spec.slug
    report, plot = latest_evaluation(medvec.home_path)
    if report is None:
        context.log.info("no evaluation report yet: the bundle's metrics tab will say so")
    with embedder.load(embedding_model, medvec.model_cache) as model:
        summary = build_bundle(search, model, out_dir, home=medvec.home_path, eval_report=report, eval_plot=plot,
                               options=BundleOptions(precision=config.precision, thumbnails=config.thumbnails),
                               progress=context.log.info)
    sizes, checks = summary["sizes"], summary["checks"]
    packing = checks["packing"][summary["precision"]]
    size_rows = "\n".join(f"| {part} | {size / 1e6:.3f} |" for part, size in sizes.items())
    metadata = {
        "bundle": dg.MetadataValue.path(summary["out_dir"]), "images": summary["images"],
        "table_version": summary["table_version"], "precision": summary["precision"],
        "size_mb": dg.MetadataValue.float(round(sizes["total"] / 1e6, 3)),
        "sizes": dg.MetadataValue.md("| part | MB |\n|---|---:|\n" + size_rows),
        "onnx_min_cosine": dg.MetadataValue.float(checks["onnx"]["min_cosine"]),
        "tokenizer_check": dg.MetadataValue.json(checks["tokenizer"]),
        "text_recall_at_10_vs_float32": dg.MetadataValue.float(packing["text_queries"]["recall"] or 0.0),
        "image_recall_at_10_vs_float32": dg.MetadataValue.float(packing["image_queries"]["recall"] or 0.0),
        "packing": dg.MetadataValue.json(checks["packing"]),
        "evaluation_included": report is not None,
        "seconds": dg.MetadataValue.float(summary["seconds"]),
    }
    if spec.no_retrieval_quality:
        metadata["warning"] = NO_QUALITY_NOTE
    return dg.MaterializeResult(metadata=metadata)
