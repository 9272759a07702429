"""Labels are a per-collection vocabulary: a dermatology collection (SCIN's published layout) gets fallback
queries, evaluation targets, zero-shot prompts and probes over its own conditions; the chest sample keeps
the CheXpert findings; MEDVEC_VOCABULARY=chest forces them, and a bad value is one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import dagster as dg
import numpy as np
import pytest

from medvec.datasets.labels import FINDINGS
from medvec.datasets.vocabulary import CHEST, MAX_LABELS, choose_vocabulary, table_vocabulary
from medvec.tables import database

from .test_dataset_adapters import write_csv, write_image

MEDVEC = str(Path(sys.executable).with_name("medvec"))
CONDITIONS = ("Eczema", "Psoriasis", "Acne", "Urticaria")


def write_scin_cases(root, cases: int = 12) -> None:
    """`cases` SCIN cases in the published layout (dataset/scin_cases.csv + scin_labels.csv + images), one
    photograph each, their conditions taking turns; every case a different person."""
    cases_header = ["case_id", "source", "release", "year", "age_group", "sex_at_birth", "fitzpatrick_skin_type",
                    "image_1_path", "image_2_path", "image_3_path", "image_1_shot_type", "image_2_shot_type",
                    "image_3_shot_type"]
    labels_header = ["case_id", "dermatologist_skin_condition_on_label_name", "weighted_skin_condition_label"]
    case_rows, label_rows = [], []
    for n in range(cases):
        case_id, image = f"-{1000600354148496558 + n}", f"-{3205742176803893704 + n}"
        condition = CONDITIONS[n % len(CONDITIONS)]
        case_rows.append([case_id, "USER", "SCIN", "2023", "AGE_30_TO_39", "FEMALE" if n % 2 else "MALE", "FST3",
                          f"dataset/images/{image}.png", "", "", "CLOSE_UP", "", ""])
        label_rows.append([case_id, f"['{condition}']", f"{{'{condition}': 1.0}}"])
        write_image(root / "dataset" / "images" / f"{image}.png", n, "PNG-RGB")
    write_csv(root / "dataset" / "scin_cases.csv", cases_header, case_rows)
    write_csv(root / "dataset" / "scin_labels.csv", labels_header, label_rows)


def _fallback_queries(settings) -> set[str]:
    table = database.connect(settings.lancedb_uri).open_table("fallback_queries__tiny_siglip")
    return set(table.to_arrow().column("query").to_pylist())


def _materialize_fallbacks(settings, instance) -> dict:
    from assets.embeddings import embedding_model
    from assets.search import fallback_queries
    from resources import home_resources
    from resources.embedders import embedder_resource

    result = dg.materialize([embedding_model, fallback_queries], selection=[fallback_queries], instance=instance,
                            resources={**home_resources(settings), "embedder": embedder_resource(settings)})
    assert result.success
    [event] = result.asset_materializations_for_node("fallback_queries")
    return {k: v.value for k, v in event.metadata.items()}


def _evaluate(settings) -> dict:
    from medvec.evaluation.extras import add_zero_shot
    from medvec.evaluation.retrieval import evaluate_models
    from medvec.evaluation.targets import eval_targets

    db = database.connect(settings.lancedb_uri)
    targets = eval_targets(settings)
    result = evaluate_models(db, targets, split="all")
    add_zero_shot(result, db, targets, settings.home, replicates=20)
    return result


def test_a_dermatology_collection_is_searched_and_evaluated_over_its_conditions(tmp_path, settings, dagster_instance):
    from medvec.search.images import ImageSearch
    from pipelines.ingest import ingest

    write_scin_cases(tmp_path / "scin")
    summary = ingest(str(tmp_path / "scin"), settings, instance=dagster_instance, workers=1)
    assert summary.indexed and not summary.errors

    queries = _fallback_queries(settings)
    assert {"eczema", "a clinical photograph of eczema", "psoriasis", "a clinical photograph of urticaria"} <= queries
    assert not queries & set(CHEST.queries)  # no chest finding among a skin collection's common queries
    answer = ImageSearch(settings.lancedb_uri, "tiny_siglip").search_text("Eczema", k=3)  # no encoder to load
    assert answer.route == "fallback" and len(answer.hits) == 3

    result = _evaluate(settings)
    assert result["vocabulary"] == "labels" and sorted(result["findings"]) == sorted(CONDITIONS)
    [section] = result["models"]
    assert section["vocabulary"] == "labels" and section["labelled_images"] == 12
    assert set(section["text_to_image"]["per_finding"]) == set(CONDITIONS)
    assert section["text_to_image"]["per_finding"]["Eczema"]["relevant"] == 3
    assert section["image_to_image"]["queries"] == 12  # each photograph finds its condition's other cases
    zero_shot = result["zero_shot"]
    assert set(zero_shot["prompts"]) == set(CONDITIONS) == set(zero_shot["models"][0]["per_finding"])
    assert zero_shot["prompts"]["Acne"] == {"positive": ["a clinical photograph of acne"],
                                           "negative": ["a clinical photograph with no acne"]}

    # MEDVEC_VOCABULARY=chest: the same collection is answered and judged in the chest findings.
    chest = settings.model_copy(update={"vocabulary": "chest"})
    metadata = _materialize_fallbacks(chest, dagster_instance)
    assert metadata["vocabulary"] == "chest" and _fallback_queries(chest) == set(CHEST.queries)
    forced = _evaluate(chest)
    assert forced["vocabulary"] == "chest" and forced["findings"] == list(FINDINGS)
    assert forced["models"][0]["text_to_image"]["per_finding"] == {}  # no skin photograph carries a chest finding


def test_the_chest_sample_keeps_the_chexpert_queries_and_targets(tmp_path, settings, dagster_instance):
    from medvec.sample.writer import write_sample_data
    from pipelines.ingest import ingest

    sample = write_sample_data(tmp_path / "sample", count=6)
    assert ingest(str(sample.out_dir), settings, instance=dagster_instance, workers=1).indexed
    assert _fallback_queries(settings) == set(CHEST.queries)
    table = database.connect(settings.lancedb_uri).open_table("images__tiny_siglip")
    assert table_vocabulary(table) is CHEST and table_vocabulary(table, "labels").name == "labels"
    result = _evaluate(settings)
    assert result["vocabulary"] == "chest" and result["findings"] == list(FINDINGS)
    assert set(result["models"][0]["text_to_image"]["per_finding"]) <= set(FINDINGS)
    assert set(result["zero_shot"]["prompts"]) <= set(FINDINGS)


def test_auto_picks_chest_only_when_every_label_is_a_chest_finding():
    assert choose_vocabulary(Counter()) is CHEST  # unlabelled (or report-labelled) collections: as before
    assert choose_vocabulary(Counter({"Cardiomegaly": 3, "No Finding": 5})) is CHEST
    mixed = choose_vocabulary(Counter({"Eczema": 4, "Cardiomegaly": 1}))
    assert mixed.name == "labels" and mixed.labels == ("Eczema", "Cardiomegaly")  # most frequent first
    assert mixed.prompts["Cardiomegaly"] == CHEST.prompts["Cardiomegaly"]  # a chest finding keeps its words
    assert choose_vocabulary(Counter({"Eczema": 1}), "chest") is CHEST
    assert choose_vocabulary(Counter({"Cardiomegaly": 1}), "labels").name == "labels"
    many = choose_vocabulary(Counter({f"condition {i:04d}": 1 + i % 7 for i in range(MAX_LABELS + 50)}))
    assert len(many.labels) == MAX_LABELS and len(many.queries) == 2 * MAX_LABELS
    with pytest.raises(ValueError, match="one of auto, chest, labels"):
        choose_vocabulary(Counter(), "derm")


def test_the_chest_vocabulary_lists_the_chexpert_findings_in_their_order():
    assert CHEST.labels == FINDINGS and set(CHEST.negatives) == set(FINDINGS)


def test_probes_fit_a_collection_s_conditions_and_rerank_a_query_naming_one(tmp_path):
    from medvec.evaluation.probes import fit_probes, load_probes, probe_prompts, save_probes
    from medvec.search.probe_rerank import finding_of_query

    from .test_evaluation import _table

    rng = np.random.default_rng(5)
    sick = rng.random(120) < 0.5
    vectors = rng.normal(size=(120, 16))
    vectors[:, 2] += 5.0 * sick
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    labels = [["Psoriasis"] if s else ["Eczema"] for s in sick]
    table = _table(tmp_path, labels, vectors.astype(np.float32), ["train" if i < 80 else "test" for i in range(120)])
    fitted = fit_probes(table, replicates=50)
    assert fitted["vocabulary"] == "labels" and set(fitted["probes"]) == {"Psoriasis", "Eczema"}
    assert fitted["per_finding"]["Psoriasis"]["auc"] > 0.9
    save_probes(tmp_path / "home", fitted)
    known = probe_prompts(load_probes(tmp_path / "home", table.name))
    assert set(known) == {"Psoriasis", "Eczema"}  # no chest finding offered for a skin collection
    assert finding_of_query("A clinical photograph of psoriasis.", known) == "Psoriasis"
    assert finding_of_query("cardiomegaly", known) is None


def test_a_bad_vocabulary_is_refused_with_one_line(tmp_path):
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("MEDVEC_")},
           "MEDVEC_HOME": str(tmp_path / "home"), "MEDVEC_VOCABULARY": "derm"}
    proc = subprocess.run([MEDVEC, "eval", "--json"], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.strip() == "medvec: MEDVEC_VOCABULARY='derm' is not allowed: one of 'auto', 'chest' or 'labels'"
