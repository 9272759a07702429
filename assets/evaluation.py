"""Retrieval evaluation: how well each model's table finds images by finding, in numbers and a plot."""

import base64

import dagster as dg

from assets.metadata import OWNERS, TAGS
from assets.search import image_index
from medvec.tables import database
from medvec.evaluation.retrieval import evaluate_models, markdown_table, per_finding_table, recall_curve_png, save_report
from medvec.evaluation.targets import eval_targets
from medvec.settings import get_settings
from resources import MedvecHomeResource
from resources.embedders import EmbedderResource, ModelArtifact


class EvaluationConfig(dg.Config):
    split: str = "test"  # evaluate this split; all images when the table carries no splits
    uncertain: str = "exclude"  # CheXpert -1 labels: exclude | positive | negative
    models: list[str] = []  # registry names; empty = every model table in the database


@dg.asset(group_name="evaluate", deps=[image_index], kinds={"numpy", "matplotlib"}, owners=OWNERS, tags=TAGS)
def retrieval_evaluation(context: dg.AssetExecutionContext, config: EvaluationConfig, medvec: MedvecHomeResource,
                         embedder: EmbedderResource, embedding_model: ModelArtifact) -> dg.MaterializeResult:
    """Recall@1/5/10, precision, MRR and mAP for text → image (per finding) and image → image (same
    subject and study excluded) per model, side by side, with a Recall@K plot and the hard cases."""
    settings = get_settings().model_copy(update={"home": medvec.home_path, "lancedb_uri": medvec.lancedb_uri})
    targets = eval_targets(settings, config.models or None)
    configured = embedder.spec().name
    for target in targets:
        if target.model == configured:  # encode with the resource, exactly as the table was embedded
            target.open_embedder = lambda: embedder.load(embedding_model, medvec.model_cache)
    result = evaluate_models(database.connect(medvec.lancedb_uri), targets, split=config.split,
                             policy=config.uncertain, progress=context.log.info)
    png = recall_curve_png(result)
    paths = save_report(medvec.home_path, result, png)
    plot = base64.b64encode(png).decode()
    metadata = {"models": len(result["models"]), "split": result["split"] or "all",
                "report": dg.MetadataValue.path(paths["json"]),
                "metrics": dg.MetadataValue.md(markdown_table(result)),
                "recall_at_k_plot": dg.MetadataValue.md(f"![Recall@K](data:image/png;base64,{plot})")}
    for section in result["models"]:
        if "error" in section:
            continue
        t2i = section.get("text_to_image") or {}
        metadata[f"{section['model']}_text_map"] = dg.MetadataValue.float(t2i.get("macro", {}).get("map") or 0.0)
        metadata[f"{section['model']}_image_map"] = dg.MetadataValue.float(section["image_to_image"]["map"] or 0.0)
        if t2i:
            metadata[f"{section['model']}_per_finding"] = dg.MetadataValue.md(per_finding_table(section))
    return dg.MaterializeResult(metadata=metadata)
