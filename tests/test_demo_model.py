"""medvec-demo-clip, the model trained here on synthetic chest images: its packaged weights are the ones its
script makes, it loads like any Hugging Face SigLIP, and an end-to-end gate shows retrieval far above chance
through the whole Dagster path, falling to chance when vectors are shuffled against their ids."""

from __future__ import annotations

import json

import numpy as np
import pytest

from medvec.settings import Settings

MODEL = "medvec-demo-clip"


def test_packaged_weights_record_the_script_and_seed_that_made_them():
    from safetensors import safe_open

    from medvec.models.demo_clip import WEIGHTS_DIR, train

    path = WEIGHTS_DIR / "model.safetensors"
    assert path.stat().st_size < 5 * 2**20  # "a few MB": it ships in the repository
    with safe_open(str(path), "pt") as weights:
        metadata = weights.metadata()
    # Editing the training recipe without retraining would leave weights no script reproduces.
    assert metadata["script_sha256"] == train.script_sha256(), "retrain: python -m medvec.models.demo_clip.train"
    assert metadata["data_seed"] == str(train.DATA_SEED)
    assert json.loads(metadata["stats"])["steps"] == train.STEPS


def test_demo_model_loads_through_the_registry_and_the_one_factory(tmp_path):
    from medvec.embedders.factory import embedder_config, open_embedder
    from medvec.models.registry import REGISTRY, model_rows

    spec = REGISTRY[MODEL]
    assert "synthetic" in spec.quality_note and not spec.no_retrieval_quality
    assert {row["name"]: row for row in model_rows()}[MODEL]["available"]
    settings = Settings.from_env({"MEDVEC_HOME": str(tmp_path / "home"), "MEDVEC_MODEL": MODEL})
    with open_embedder(embedder_config(settings)) as embedder:
        texts = embedder.embed_texts(["pleural effusion", "cardiomegaly", "no acute cardiopulmonary process"])
    assert texts.shape == (3, spec.dim)
    np.testing.assert_allclose(np.linalg.norm(texts, axis=1), 1.0, atol=1e-5)
    assert float(texts[0] @ texts[1]) < 0.9  # the text tower tells findings apart (random towers barely do)


@pytest.fixture(scope="module")
def gate_collection(tmp_path_factory):
    """A fresh synthetic sample (the painter's patient plans, not the training draws) ingested with the demo
    model through the full Dagster path: sources → WebP → embeddings → LanceDB → index."""
    import dagster as dg

    from medvec.sample.writer import write_sample_data
    from pipelines.ingest import ingest

    root = tmp_path_factory.mktemp("gate")
    settings = Settings.from_env({"MEDVEC_HOME": str(root / "home"), "MEDVEC_PSEUDONYM_KEY": "gate-key", "MEDVEC_ALLOW_DEV_KEY": "1",
                                  "MEDVEC_MODEL": MODEL})
    sample = write_sample_data(root / "sample", count=48)
    with dg.instance_for_test() as instance:
        summary = ingest(str(sample.out_dir), settings, batch_size=16, instance=instance)
    assert summary.embedded >= 48 and summary.indexed, summary.to_json()
    return settings


def _evaluate(settings: Settings, table: str) -> dict:
    from medvec.embedders.factory import embedder_config, open_embedder
    from medvec.evaluation.retrieval import EvalTarget, evaluate_models
    from medvec.tables import database

    target = EvalTarget(model=MODEL, table=table,
                        open_embedder=lambda: open_embedder(embedder_config(settings, MODEL)))
    return evaluate_models(database.connect(settings.lancedb_uri), [target], split="all")["models"][0]


def _chance_levels(section: dict, labels: list[list[str]]) -> tuple[float, float]:
    """Chance from the label frequencies alone: a random ranking's mean AP for a finding is its prevalence
    among the candidates; a random image's precision@10 is the share of other images sharing a label."""
    per_finding = section["text_to_image"]["per_finding"].values()
    text = float(np.mean([f["relevant"] / f["candidates"] for f in per_finding]))
    shared = [np.mean([bool(set(a) & set(b)) for j, b in enumerate(labels) if j != i])
              for i, a in enumerate(labels)]
    return text, float(np.mean(shared))


def _table_labels(settings: Settings, table: str) -> list[list[str]]:
    from medvec.tables import database

    rows = database.connect(settings.lancedb_uri).open_table(table).to_arrow().select(["labels"]).to_pylist()
    return [r["labels"] for r in rows if r["labels"]]


@pytest.mark.slow
def test_demo_model_retrieves_findings_far_above_chance_end_to_end(gate_collection):
    from medvec.home import image_table_name
    from medvec.models.registry import REGISTRY

    table = image_table_name(REGISTRY[MODEL].slug)
    section = _evaluate(gate_collection, table)
    text_chance, image_chance = _chance_levels(section, _table_labels(gate_collection, table))
    text_map = section["text_to_image"]["macro"]["map"]
    image_p10 = section["image_to_image"]["precision@10"]
    assert text_map >= max(text_chance + 0.3, 1.8 * text_chance), (text_map, text_chance)
    assert image_p10 >= image_chance + 0.3, (image_p10, image_chance)
    for finding in ("Pleural Effusion", "Cardiomegaly", "No Finding"):
        assert section["text_to_image"]["per_finding"][finding]["precision@5"] >= 0.8, finding


@pytest.mark.slow
def test_the_gate_falls_to_chance_when_vectors_are_shuffled_against_ids(gate_collection):
    """The gate's twin: the same rows with their vectors permuted. If ids and vectors were ever misaligned
    between normalisation, embedding, the merge and the index, this is what the gate would see."""
    import pyarrow as pa

    from medvec.home import image_table_name
    from medvec.models.registry import REGISTRY
    from medvec.tables import database

    db = database.connect(gate_collection.lancedb_uri)
    rows = db.open_table(image_table_name(REGISTRY[MODEL].slug)).to_arrow()
    order = np.random.default_rng(7).permutation(rows.num_rows)
    vectors = rows.column("vector").take(pa.array(order))
    shuffled = rows.set_column(rows.schema.get_field_index("vector"), "vector", vectors)
    db.create_table("images__shuffled_demo", shuffled, mode="overwrite")

    section = _evaluate(gate_collection, "images__shuffled_demo")
    text_chance, image_chance = _chance_levels(section, _table_labels(gate_collection, "images__shuffled_demo"))
    assert abs(section["text_to_image"]["macro"]["map"] - text_chance) < 0.2
    assert abs(section["image_to_image"]["precision@10"] - image_chance) < 0.2
