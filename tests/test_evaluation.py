"""Retrieval metrics against torchmetrics and by hand; evaluation on perfect, random and leaky
embeddings; label maps; `medvec eval --json`; the Dagster asset; the NIH sample when present."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from medvec.tables import database
from medvec.evaluation.retrieval import (SCHEMA, EvalData, chance, evaluate_table, image_to_image, markdown_table,
                               recall_curve_png, text_to_image)
from medvec.tables.images import image_table_name, open_image_table, upsert_batch
from medvec.datasets.labels import (FINDINGS, chexpert_columns, chexpert_row, labels_from_findings_text, labels_from_terms,
                           map_labels)
from medvec.datasets.metadata_csv import MetadataTable
from medvec.evaluation.metrics import mean_metrics, per_query, rank_relevance
from medvec.tables.records import image_table_schema

from .conftest import SHARED_DATA

torch = pytest.importorskip("torch")
tm = pytest.importorskip("torchmetrics.functional.retrieval")


# --- metrics ---------------------------------------------------------------------------------------

def test_metrics_agree_with_torchmetrics_on_many_random_rankings():
    rng = np.random.default_rng(0)
    checked = 0
    for trial in range(300):
        n = int(rng.integers(1, 60))
        scores = rng.random(n)  # continuous: no ties, so both sides rank identically
        relevant = rng.random(n) < rng.uniform(0.05, 0.6)
        if not relevant.any():
            continue
        ours = per_query(rank_relevance(scores[None], relevant[None]), ks=(1, 3, 5, 10))
        preds, target = torch.tensor(scores), torch.tensor(relevant)
        for k in (1, 3, 5, 10):
            assert ours[f"recall@{k}"][0] == pytest.approx(float(tm.retrieval_recall(preds, target, top_k=k)))
            assert ours[f"precision@{k}"][0] == pytest.approx(float(tm.retrieval_precision(preds, target, top_k=k)))
        assert ours["mrr"][0] == pytest.approx(float(tm.retrieval_reciprocal_rank(preds, target)))
        assert ours["map"][0] == pytest.approx(float(tm.retrieval_average_precision(preds, target)))
        checked += 1
    assert checked > 250


def test_metrics_by_hand():
    ranked = np.array([[False, True, False, True]])  # relevant at ranks 2 and 4
    m = per_query(ranked, ks=(1, 2, 4))
    assert m["recall@1"][0] == 0 and m["recall@2"][0] == 0.5 and m["recall@4"][0] == 1.0
    assert m["precision@2"][0] == 0.5 and m["precision@4"][0] == 0.5
    assert m["mrr"][0] == 0.5
    assert m["map"][0] == pytest.approx((1 / 2 + 2 / 4) / 2)
    # Queries without a relevant candidate have no score and are not averaged in.
    summary = mean_metrics(np.array([[True, False], [False, False]]), ks=(1,))
    assert summary["queries"] == 1 and summary["map"] == 1.0
    # Excluded candidates behave as if absent: the relevant item at score 0.9 is not a candidate.
    ranked = rank_relevance(np.array([[0.9, 0.5, 0.1]]), np.array([[True, False, True]]),
                            np.array([[False, True, True]]))
    assert ranked.tolist() == [[False, True, False]]


# --- evaluation on synthetic tables ------------------------------------------------------------------

def _data(labels, vectors, subjects=None, studies=None, uncertain=None) -> EvalData:
    n = len(labels)
    return EvalData(ids=[f"i{i}" for i in range(n)], vectors=np.asarray(vectors, dtype=np.float32),
                    labels=[set(l) for l in labels], uncertain=[set(u) for u in (uncertain or [[]] * n)],
                    subjects=subjects or [f"s{i}" for i in range(n)], studies=studies or [f"t{i}" for i in range(n)],
                    thumbs=[""] * n, split=None)


FOUR = ("Cardiomegaly", "Pleural Effusion", "Edema", "No Finding")


def _onehot(names, vocab=FOUR):
    v = np.array([[1.0 if f in names else 0.0 for f in vocab]])
    return v / max(np.linalg.norm(v), 1e-9)


def test_perfect_embeddings_score_one_and_random_ones_score_chance():
    rng = np.random.default_rng(1)
    labels = [[FOUR[i % 4]] for i in range(200)]
    perfect = _data(labels, np.concatenate([_onehot(l) for l in labels]))
    prompts = {f: _onehot([f]) for f in FOUR}
    t2i = text_to_image(perfect, prompts)
    for finding, m in t2i["per_finding"].items():
        assert m["map"] == 1.0 and m["mrr"] == 1.0 and m["precision@1"] == 1.0 and m["precision@10"] == 1.0
        assert m["recall@10"] == pytest.approx(10 / m["relevant"])  # the best possible with 50 relevant
    i2i = image_to_image(perfect)
    assert i2i["map"] == 1.0 and i2i["mrr"] == 1.0 and i2i["queries"] == 200

    random = _data(labels, rng.standard_normal((200, 16)))
    random_prompts = {f: rng.standard_normal((3, 16)) for f in FOUR}
    t2i = text_to_image(random, random_prompts)
    expected = chance(random, repeats=200)
    assert t2i["macro"]["map"] == pytest.approx(expected["map"], abs=0.06)
    assert t2i["macro"]["recall@10"] == pytest.approx(10 / 200, abs=0.04)
    assert image_to_image(random)["map"] == pytest.approx(0.25, abs=0.05)  # a quarter share each label


def test_images_of_the_same_subject_or_study_cannot_inflate_image_to_image():
    rng = np.random.default_rng(2)
    # 100 subjects, each imaged twice (identical vectors, same label); labels otherwise random.
    base = rng.standard_normal((100, 32))
    vectors = np.repeat(base, 2, axis=0)
    labels = [[FOUR[int(rng.integers(0, 4))]] for _ in range(100)]
    labels = [l for l in labels for _ in (0, 1)]
    subjects = [f"p{i // 2}" for i in range(200)]
    leaky = image_to_image(_data(labels, vectors))  # no subject info: each image's twin is a candidate
    honest = image_to_image(_data(labels, vectors, subjects=subjects))
    assert leaky["mrr"] > 0.95
    assert honest["mrr"] < 0.7 and honest["excluded_same_subject_or_study"] == 200
    studies = [f"st{i // 2}" for i in range(200)]
    assert image_to_image(_data(labels, vectors, studies=studies))["mrr"] == pytest.approx(honest["mrr"])


def test_uncertain_labels_follow_the_policy():
    # Image 0 looks exactly like Edema but its Edema label is uncertain; it ranks first (ties keep order).
    labels = [[], ["Edema"], [], ["No Finding"]]
    uncertain = [["Edema"], [], [], []]
    vectors = np.concatenate([_onehot(["Edema"]), _onehot(["Edema"]), _onehot(["No Finding"]), _onehot(["No Finding"])])
    data = _data(labels, vectors, uncertain=uncertain)
    prompts = {"Edema": _onehot(["Edema"])}
    exclude = text_to_image(data, prompts, policy="exclude")["per_finding"]["Edema"]
    positive = text_to_image(data, prompts, policy="positive")["per_finding"]["Edema"]
    negative = text_to_image(data, prompts, policy="negative")["per_finding"]["Edema"]
    assert (exclude["relevant"], exclude["candidates"], exclude["mrr"]) == (1, 3, 1.0)  # image 0 left out
    assert (positive["relevant"], positive["candidates"], positive["map"]) == (2, 4, 1.0)  # image 0 counts
    assert (negative["relevant"], negative["candidates"], negative["mrr"]) == (1, 4, 0.5)  # image 0 is a miss


def test_hard_cases_name_the_confused_finding_and_the_worst_images():
    labels = [["Cardiomegaly"]] * 5 + [["Edema"]] * 5
    vectors = np.concatenate([_onehot(["Cardiomegaly"])] * 4 + [_onehot(["Edema"])] + [_onehot(["Edema"])] * 5)
    t2i = text_to_image(_data(labels, vectors), {"Cardiomegaly": _onehot(["Cardiomegaly"])}, ks=(1, 6))
    hard = t2i["hard_cases"]["Cardiomegaly"]
    assert hard["confused_with"] == {"Edema": 1}  # its top 6: five Cardiomegaly images and one Edema
    assert hard["worst_ranked"][0]["image_id"] == "i4"  # the Cardiomegaly image that looks like Edema


def _table(tmp_path, labels, vectors, splits):
    db = database.connect(str(tmp_path / "lancedb"))
    dim = vectors.shape[1]
    table = open_image_table(db, image_table_name("synthetic"), dim)
    rows = [{"image_id": f"img{i}", "batch": "b", "source_uri": f"s{i}", "content_sha256": "x", "image_uri": "",
             "thumb_uri": f"thumbs/{i}.webp", "source_format": "png", "labels": l, "split": s, "extra": "{}",
             "subject_key": f"p{i}", "study_id": f"st{i}", "frames": 1, "width": 1, "height": 1,
             "vector": v.tolist(), "model_id": "synthetic"} for i, (l, v, s) in enumerate(zip(labels, vectors, splits))]
    upsert_batch(table, "b", pa.Table.from_pylist(rows, schema=image_table_schema(dim)))
    return table


def test_evaluate_table_reports_the_documented_schema_for_the_chosen_split(tmp_path):
    labels = [[FOUR[i % 4]] for i in range(40)]
    vectors = np.concatenate([_onehot(l) for l in labels])
    table = _table(tmp_path, labels, vectors, ["test" if i % 2 else "train" for i in range(40)])

    class Encoder:  # the text tower of a perfect model: a finding's prompt is its one-hot
        def embed_texts(self, texts):
            from medvec.datasets.vocabulary import CHEST

            return np.concatenate([_onehot([next(f for f, ps in CHEST.prompts.items() if t in ps)]) for t in texts])

    section = evaluate_table(table, model="synthetic", embedder=Encoder(), split="test")
    assert section["split"] == "test" and section["images"] == 20 and section["labelled_images"] == 20
    assert section["text_to_image"]["macro"]["map"] == 1.0 and section["image_to_image"]["map"] == 1.0
    assert set(section["text_to_image"]["per_finding"]) == {"Pleural Effusion", "No Finding"}  # the test rows' findings
    assert len(section["recall_curve"]["text"]) == 50 and section["recall_curve"]["text"][-1] == 1.0
    no_text = evaluate_table(table, model="synthetic", split=None, text_unavailable="no encoder")
    assert no_text["text_to_image"] is None and no_text["text_to_image_skipped"] == "no encoder"
    assert no_text["images"] == 40 and no_text["split"] is None
    report = {"schema": SCHEMA, "split": "test", "ks": [1, 5, 10], "models": [section]}
    # 10 relevant per finding: R@1 = 0.1 and R@5 = 0.5 are the best possible; R@10, MRR, mAP are 1.
    assert "| synthetic | text → image (macro) | 0.100 | 0.500 | 1.000 | 1.000 | 1.000 | 2 |" in markdown_table(report)
    assert recall_curve_png(report)[:8] == b"\x89PNG\r\n\x1a\n"


# --- labels ------------------------------------------------------------------------------------------

def test_label_maps_into_one_vocabulary():
    assert labels_from_terms("Cardiomegaly|Effusion|Infiltration|Hernia") == (
        ["Cardiomegaly", "Lung Opacity", "Pleural Effusion"], ["Hernia"])
    assert labels_from_terms("No Finding") == (["No Finding"], [])
    assert labels_from_terms("Cardiomegaly/mild;Pulmonary Atelectasis/base/left;normal")[0] == ["Cardiomegaly", "Atelectasis"]
    assert map_labels(["Mass", "Nodule", "Pleural_Thickening"])[0] == ["Lung Lesion", "Pleural Other"]
    text = "Heart size is enlarged. There is cardiomegaly. No pneumothorax. Small left pleural effusion."
    assert labels_from_findings_text(text) == ["Cardiomegaly", "Pleural Effusion"]
    assert labels_from_findings_text("No acute cardiopulmonary process. No effusion or pneumothorax.") == ["No Finding"]
    columns = chexpert_columns(["Path", "Sex", *FINDINGS])
    assert len(columns) == 14
    positive, unsure = chexpert_row({"Cardiomegaly": "1.0", "Edema": "-1.0", "Pneumonia": "0", "Fracture": ""}, columns)
    assert positive == ["Cardiomegaly"] and unsure == ["Edema"]


def test_a_chexpert_csv_keeps_uncertain_findings_apart(pseudonymizer):
    csv_text = ("Path,Sex,Frontal/Lateral,AP/PA,No Finding,Cardiomegaly,Edema,Pleural Effusion,Support Devices\n"
                "train/patient1/study1/view1_frontal.jpg,F,Frontal,AP,,1.0,-1.0,0.0,1.0\n"
                "train/patient2/study1/view1_frontal.jpg,M,Frontal,PA,1.0,,,,\n")
    table = MetadataTable.from_csv_text(csv_text, pseudonymizer)
    first = table.lookup("/data/chexpert/train/patient1/study1/view1_frontal.jpg")
    assert first.labels == ["Cardiomegaly", "Support Devices"] and first.extra["uncertain_labels"] == "Edema"
    second = table.lookup("/data/chexpert/train/patient2/study1/view1_frontal.jpg")
    assert second.labels == ["No Finding"] and "uncertain_labels" not in second.extra


# --- end to end ----------------------------------------------------------------------------------------

MEDVEC = str(Path(sys.executable).with_name("medvec"))


def test_medvec_eval_json_on_the_demo_collection(search_collection, tmp_path):
    import shutil

    home = tmp_path / "home"
    shutil.copytree(search_collection.settings.home, home, ignore=shutil.ignore_patterns("dagster"))
    env = {**os.environ, **search_collection.env, "MEDVEC_HOME": str(home)}
    result = subprocess.run([MEDVEC, "eval", "--split", "all", "--json"], env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["schema"] == SCHEMA and report["split"] is None and report["ks"] == [1, 5, 10]
    [section] = report["models"]
    assert section["model"] == "tiny-siglip" and section["images"] == 38
    t2i = section["text_to_image"]
    assert set(t2i["per_finding"]) == {"No Finding", "Cardiomegaly", "Pleural Effusion"}
    assert {"recall@1", "recall@5", "recall@10", "precision@10", "mrr", "map", "relevant"} <= set(t2i["per_finding"]["Cardiomegaly"])
    assert all(0 <= v <= 1 for k, v in t2i["macro"].items() if k != "findings")
    assert section["image_to_image"]["queries"] > 0 and section["image_to_image"]["excluded_same_subject_or_study"] > 0
    assert (home / "eval" / "report.json").exists() and (home / "eval" / "recall_at_k.png").read_bytes()[:4] == b"\x89PNG"
    human = subprocess.run([MEDVEC, "eval", "--split", "all"], env=env, capture_output=True, text=True, timeout=300)
    assert "| tiny-siglip | text → image (macro) |" in human.stdout and "random weights" in human.stdout


def test_retrieval_evaluation_asset_attaches_the_table_and_plot(tmp_path, settings, dagster_instance):
    import dagster as dg

    from assets.embeddings import embedding_model
    from assets.evaluation import retrieval_evaluation
    from medvec.sample.writer import write_sample_data
    from pipelines.ingest import ingest
    from resources import home_resources
    from resources.embedders import embedder_resource

    sample = write_sample_data(tmp_path / "sample", count=12)
    ingest(str(sample.out_dir), settings, instance=dagster_instance)
    result = dg.materialize([embedding_model, retrieval_evaluation], selection=[retrieval_evaluation],
                            instance=dagster_instance, run_config={"ops": {"retrieval_evaluation": {"config": {"split": "all"}}}},
                            resources={**home_resources(settings),
                                       "embedder": embedder_resource(settings)})
    assert result.success
    [event] = result.asset_materializations_for_node("retrieval_evaluation")
    metadata = event.metadata
    assert "| tiny-siglip | text → image (macro) |" in metadata["metrics"].value
    assert metadata["recall_at_k_plot"].value.startswith("![Recall@K](data:image/png;base64,")
    assert 0 <= metadata["tiny-siglip_text_map"].value <= 1
    assert "| Cardiomegaly |" in metadata["tiny-siglip_per_finding"].value
    assert "tiny-siglip AUC [95% CI]" in metadata["zero_shot_auc"].value
    assert metadata["zero_shot_auc_plot"].value.startswith("![zero-shot AUC](data:image/png;base64,")


@pytest.mark.slow
def test_evaluation_on_the_nih_sample(tmp_path):
    folder = SHARED_DATA / "nih1000"
    if not (folder / "labels.csv").exists():
        pytest.skip(f"{folder} is not here (it sits beside the project in CI and dev checkouts)")
    env = {**os.environ, "MEDVEC_HOME": str(tmp_path / "home"), "MEDVEC_PSEUDONYM_KEY": "k",
           "MEDVEC_MODEL": "tiny-siglip", "DAGSTER_HOME": str(tmp_path / "dagster")}
    ingest = subprocess.run([MEDVEC, "ingest", str(folder), "--json"], env=env, capture_output=True, text=True,
                            timeout=900)
    assert ingest.returncode == 0, ingest.stderr
    assert json.loads(ingest.stdout)["ok"] == 1000
    result = subprocess.run([MEDVEC, "eval", "--json"], env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    section = json.loads(result.stdout)["models"][0]
    assert section["split"] == "test" and section["images"] > 0
    # NIH names arrive in the CheXpert vocabulary: Effusion → Pleural Effusion, Infiltration → Lung Opacity.
    findings = set(section["text_to_image"]["per_finding"])
    assert {"No Finding", "Pleural Effusion"} <= findings and not findings - set(FINDINGS)
    assert section["image_to_image"]["queries"] > 0


def test_several_models_sit_side_by_side_in_one_report(tmp_path):
    from medvec.evaluation.retrieval import EvalTarget, evaluate_models, per_finding_table

    labels = [[FOUR[i % 4]] for i in range(40)]
    perfect = np.concatenate([_onehot(l) for l in labels])
    noisy = np.random.default_rng(3).standard_normal((40, 4))
    db = database.connect(str(tmp_path / "lancedb"))
    for slug, vectors in (("good", perfect), ("noise", noisy)):
        table = open_image_table(db, image_table_name(slug), 4)
        rows = [{"image_id": f"img{i}", "batch": "b", "source_uri": f"s{i}", "content_sha256": "x", "image_uri": "",
                 "thumb_uri": "", "source_format": "png", "labels": l, "split": None, "extra": "{}",
                 "subject_key": f"p{i}", "study_id": f"st{i}", "frames": 1, "width": 1, "height": 1,
                 "vector": (v / np.linalg.norm(v)).tolist(), "model_id": slug} for i, (l, v) in enumerate(zip(labels, vectors))]
        upsert_batch(table, "b", pa.Table.from_pylist(rows, schema=image_table_schema(4)))
    report = evaluate_models(db, [EvalTarget("good", "images__good"), EvalTarget("noise", "images__noise"),
                                  EvalTarget("missing", "images__missing")], split="test")
    good, noise, missing = report["models"]
    assert good["split"] is None  # no split column values: every image, said in the report
    assert good["image_to_image"]["map"] == 1.0 > noise["image_to_image"]["map"]
    assert good["text_to_image"] is None and good["text_to_image_skipped"] == "no text encoder available"
    assert missing == {"model": "missing", "table": "images__missing", "error": "no such table: embed first"}
    table = markdown_table(report)
    assert "| good | image → image | 0.111 | 0.556 | 1.000 | 1.000 | 1.000 | 40 |" in table  # 9 relevant each
    assert "| noise | image → image |" in table and per_finding_table(good) == ""
    assert "| missing | no such table: embed first |" in table
