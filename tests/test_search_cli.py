"""`medvec search / similar / stats / reset` as a user runs them, and the search assets in Dagster."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest

from medvec.tables import database
from medvec.tables.inventory import collection_stats
from medvec.search.precompute import FALLBACK_QUERIES
from medvec.sample.writer import write_sample_data
from medvec.settings import Settings
from pipelines.ingest import ingest

MEDVEC = str(Path(sys.executable).with_name("medvec"))


def _run(args, env, check=True):
    result = subprocess.run([MEDVEC, *args], env={**os.environ, **env}, capture_output=True, text=True, timeout=300)
    if check:
        assert result.returncode == 0, result.stderr
    return result


def test_search_and_similar_json_give_ids_scores_and_metadata(search_collection):
    env = search_collection.env
    out = json.loads(_run(["search", "pleural", "effusion", "--k", "4", "--view", "PA", "--json"], env).stdout)
    assert out["model"] == "tiny-siglip" and out["table"] == "images__tiny_siglip" and len(out["hits"]) == 4
    assert all({"image_id", "score", "view_position", "labels", "study_id"} <= set(h) for h in out["hits"])
    assert all(h["view_position"] == "PA" for h in out["hits"])
    assert out["route"] == "fallback_vector+index"
    first = out["hits"][0]["image_id"]
    similar = json.loads(_run(["similar", first, "--k", "3", "--json"], env).stdout)
    assert similar["route"] == "similar_images" and len(similar["hits"]) == 3
    assert first not in [h["image_id"] for h in similar["hits"]]
    dicom = sorted((search_collection.sample_dir / "synthetic").rglob("*.dcm"))[0]
    by_image = json.loads(_run(["search", "--image", str(dicom), "--k", "1", "--json"], env).stdout)
    assert by_image["hits"][0]["score"] == pytest.approx(1.0, abs=1e-3)
    human = _run(["search", "cardiomegaly", "--k", "2"], env).stdout
    assert "hit(s) from images__tiny_siglip" in human and "score" in human


def test_search_errors_are_plain_and_exit_2(search_collection, tmp_path):
    env = search_collection.env
    for args, message in ((["search"], "either TEXT or --image"),
                          (["search", "--image", str(tmp_path / "missing.dcm")], "no file"),
                          (["search", "--image", str(search_collection.sample_dir / "broken" / "notes.txt")],
                           "could not be read"),
                          (["similar", "no-such-id"], "no image"),
                          (["search", "edema", "--k", "0"], "k must")):
        result = _run(args, env, check=False)
        assert result.returncode == 2 and message in result.stderr, (args, result.stderr)
        assert "Traceback" not in result.stderr
    empty = {**env, "MEDVEC_HOME": str(tmp_path / "empty_home")}
    result = _run(["search", "edema"], empty, check=False)
    assert result.returncode == 2 and "nothing has been embedded" in result.stderr


def test_stats_counts_what_the_sample_holds(search_collection):
    stats = json.loads(_run(["stats", "--json"], search_collection.env).stdout)
    assert stats["images"] == 38 and stats["by_view"] == {"PA": 16, "LATERAL": 12, "AP": 10}
    assert sum(stats["by_modality"].values()) == 38 and stats["studies"] > 0 and stats["subjects"] > 0
    assert stats["errors"] == 2 and stats["errors_by_stage"] == {"parse": 1, "decode": 1}
    [model] = stats["models"]
    assert model["table"] == "images__tiny_siglip" and model["rows"] == 38 and model["dim"] == 64
    assert "view_position_idx" in model["indexes"]
    assert "38 image(s)" in _run(["stats"], search_collection.env).stdout


def test_reset_needs_yes_and_ingest_rebuilds_everything(tmp_path):
    env = {"MEDVEC_HOME": str(tmp_path / "home"), "MEDVEC_PSEUDONYM_KEY": "k", "MEDVEC_MODEL": "tiny-siglip",
           "DAGSTER_HOME": str(tmp_path / "dagster")}
    sample = write_sample_data(tmp_path / "sample", count=6)
    _run(["ingest", str(sample.out_dir), "--json"], env)
    settings = Settings.from_env(env)
    before = collection_stats(settings.lancedb_uri)["images"]
    assert before == 8

    refused = _run(["reset"], env, check=False)
    assert refused.returncode == 2 and "Nothing was changed" in refused.stderr
    assert collection_stats(settings.lancedb_uri)["images"] == before

    done = _run(["reset", "--yes"], env)
    assert "images__tiny_siglip" in done.stdout
    assert collection_stats(settings.lancedb_uri)["models"] == []
    assert not (settings.home / "indexes" / "images__tiny_siglip").exists()

    # The batches are still there; ingest sees the model's table is empty and embeds them again.
    again = json.loads(_run(["ingest", str(sample.out_dir), "--json"], env).stdout)
    assert again["embedded"] == before and again["indexed"] and again["batches"]
    assert collection_stats(settings.lancedb_uri)["images"] == before
    assert json.loads(_run(["search", "edema", "--json"], env).stdout)["hits"]


def test_search_assets_record_their_numbers_and_rerun_without_duplicates(tmp_path, settings, dagster_instance):
    sample = write_sample_data(tmp_path / "sample", count=6)
    summary = ingest(str(sample.out_dir), settings, instance=dagster_instance)
    assert summary.indexed

    def latest(key):
        event = dagster_instance.get_latest_materialization_event(dg.AssetKey(key))
        return event.asset_materialization.metadata

    index = latest("image_index")
    assert index["rows"].value == 8 and index["search_index"].value == "exact"
    assert index["search_recall_at_10"].value == 1.0 and index["search_p50_ms"].value > 0
    assert "none" in index["lancedb_index"].value  # 8 rows: exact search, no ANN index
    assert latest("fallback_queries")["queries"].value == len(FALLBACK_QUERIES)
    assert latest("similar_images")["images"].value == 8

    from assets.embeddings import embedding_model
    from assets.search import fallback_queries, image_index, similar_images
    from resources import home_resources
    from resources.embedders import embedder_resource

    resources = {**home_resources(settings), "embedder": embedder_resource(settings)}
    for _ in range(2):
        result = dg.materialize([embedding_model, image_index, fallback_queries, similar_images],
                                selection=[image_index, fallback_queries, similar_images],
                                instance=dagster_instance, resources=resources)
        assert result.success
    db = database.connect(settings.lancedb_uri)
    assert db.open_table("fallback_queries__tiny_siglip").count_rows() == len(FALLBACK_QUERIES)
    assert db.open_table("similar_images__tiny_siglip").count_rows() == 8
    assert db.open_table("images__tiny_siglip").count_rows() == 8


def test_image_index_without_a_table_fails_clearly(settings, dagster_instance):
    from assets.search import image_index
    from resources import home_resources
    from resources.embedders import embedder_resource

    result = dg.materialize([image_index], instance=dagster_instance, raise_on_error=False,
                            resources={**home_resources(settings),
                                       "embedder": embedder_resource(settings)})
    assert not result.success
    failure = [e for e in result.all_events if e.is_step_failure][0]
    assert "materialise image_embeddings first" in str(failure.step_failure_data.error.message)
