"""Retrieval evaluation: how well each model's table finds images by finding (in the table's vocabulary), in
numbers and plots (with zero-shot AUC); and the finding probes fitted on each table's train split."""

import base64

import dagster as dg

from assets.metadata import OWNERS, TAGS
from assets.search import image_index
from medvec.tables import database
from medvec.evaluation.retrieval import evaluate_models, markdown_table, per_finding_table, recall_curve_png, save_report
from medvec.evaluation.extras import add_zero_shot, fit_and_save_probes
from medvec.evaluation.probes import probes_markdown
from medvec.evaluation.targets import eval_targets
from medvec.evaluation.zero_shot import auc_markdown
from medvec.settings import get_settings
from resources import MedvecHomeResource
from resources.embedders import EmbedderResource, ModelArtifact


def _home_settings(medvec: MedvecHomeResource):
    """This process's settings for the resource's home: its tables and its vocabulary setting."""
    return get_settings().model_copy(update={"home": medvec.home_path, "lancedb_uri": medvec.lancedb_uri,
                                             "vocabulary": medvec.vocabulary})


class EvaluationConfig(dg.Config):
    split: str = "test"  # evaluate this split; all images when the table carries no splits
    uncertain: str = "exclude"  # CheXpert -1 labels: exclude | positive | negative
    models: list[str] = []  # registry names; empty = every model table in the database
    zero_shot: bool = True  # also zero-shot ROC AUC per finding with patient-bootstrap 95% CIs
    bootstrap: int = 1000  # bootstrap replicates over patients (zero-shot and probe intervals)


@dg.asset(group_name="evaluate", deps=[image_index], kinds={"numpy", "matplotlib"}, owners=OWNERS, tags=TAGS)
def retrieval_evaluation(context: dg.AssetExecutionContext, config: EvaluationConfig, medvec: MedvecHomeResource,
                         embedder: EmbedderResource, embedding_model: ModelArtifact) -> dg.MaterializeResult:
    """Recall@1/5/10, precision, MRR and mAP for text → image (per finding) and image → image (same
    subject and study excluded) per model, side by side, with a Recall@K plot and the hard cases."""
    settings = _home_settings(medvec)
    targets = eval_targets(settings, config.models or None)
    configured = embedder.spec().name
    for target in targets:
        if target.model == configured:  # encode with the resource, exactly as the table was embedded
            target.open_embedder = lambda: embedder.load(embedding_model, medvec.model_cache)
    result = evaluate_models(database.connect(medvec.lancedb_uri), targets, split=config.split,
                             policy=config.uncertain, progress=context.log.info)
    zero_shot_png = None
    if config.zero_shot:
        zero_shot_png = add_zero_shot(result, database.connect(medvec.lancedb_uri), targets, medvec.home_path,
                                      replicates=config.bootstrap, progress=context.log.info)
    png = recall_curve_png(result)
    paths = save_report(medvec.home_path, result, png)
    plot = base64.b64encode(png).decode()
    metadata = {"models": len(result["models"]), "split": result["split"] or "all",
                "report": dg.MetadataValue.path(paths["json"]),
                "metrics": dg.MetadataValue.md(markdown_table(result)),
                "recall_at_k_plot": dg.MetadataValue.md(f"![Recall@K](data:image/png;base64,{plot})")}
    if zero_shot_png is not None:
        metadata["zero_shot_auc"] = dg.MetadataValue.md(auc_markdown(result["zero_shot"]))
        metadata["zero_shot_auc_plot"] = dg.MetadataValue.md(
            f"![zero-shot AUC](data:image/png;base64,{base64.b64encode(zero_shot_png).decode()})")
    for section in result["models"]:
        if "error" in section:
            continue
        t2i = section.get("text_to_image") or {}
        metadata[f"{section['model']}_text_map"] = dg.MetadataValue.float(t2i.get("macro", {}).get("map") or 0.0)
        metadata[f"{section['model']}_image_map"] = dg.MetadataValue.float(section["image_to_image"]["map"] or 0.0)
        if t2i:
            metadata[f"{section['model']}_per_finding"] = dg.MetadataValue.md(per_finding_table(section))
    return dg.MaterializeResult(metadata=metadata)


class ProbesConfig(dg.Config):
    uncertain: str = "exclude"  # CheXpert -1 labels: exclude | positive | negative
    models: list[str] = []  # registry names; empty = every model table in the database
    bootstrap: int = 1000  # bootstrap replicates over test-split patients


@dg.asset(group_name="evaluate", deps=[image_index], kinds={"sklearn", "json"}, owners=OWNERS, tags=TAGS)
def finding_probes(context: dg.AssetExecutionContext, config: ProbesConfig,
                   medvec: MedvecHomeResource) -> dg.MaterializeResult:
    """One logistic-regression probe per finding on each model's stored train-split embeddings, saved in
    the home (search re-ranks finding queries with them: `rerank=probe`), with test-split AUC and 95% CIs."""
    settings = _home_settings(medvec)
    sections = fit_and_save_probes(database.connect(medvec.lancedb_uri), eval_targets(settings, config.models or None),
                                   medvec.home_path, policy=config.uncertain, replicates=config.bootstrap,
                                   progress=context.log.info)
    metadata = {"models": len(sections)}
    for section in sections:
        if "error" in section:
            metadata[f"{section['model']}_error"] = section["error"]
            continue
        metadata[f"{section['model']}_probe_auc"] = dg.MetadataValue.md(probes_markdown(section))
        metadata[f"{section['model']}_macro_auc"] = dg.MetadataValue.float(section["macro"].get("auc") or 0.0)
        metadata[f"{section['model']}_probes"] = dg.MetadataValue.path(section["saved"])
    return dg.MaterializeResult(metadata=metadata)
