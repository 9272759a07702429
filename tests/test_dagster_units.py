"""Cheap unit tests in the style of Dagster's example projects: a sensor tick is a function call with
a built context, an asset body runs with `build_asset_context`, and loading the code location is
checked for warnings. The end-to-end runs live in test_dagster.py and test_sensors.py."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pytest

from assets.embeddings import embedding_model
from assets.ingest import source_manifest
from medvec.ingest.batches import plan_batches, write_manifest
from medvec.sources import open_source
from pipelines.sensors import BATCH_CHECK_KEYS, incoming_folder_sensor
from resources import MedvecHomeResource, home_resources
from resources.embedders import LocalEmbedderResource

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def resources(settings):
    return {**home_resources(settings), "embedder": LocalEmbedderResource(model="tiny-siglip")}


def _settled(folder: Path, names: list[str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_bytes(b"DICM" + name.encode())
        os.utime(folder / name, (time.time() - 120,) * 2)


def test_a_tick_with_no_folder_skips_and_keeps_an_empty_cursor(resources):
    context = dg.build_sensor_context(cursor=None, instance=dg.DagsterInstance.ephemeral(), resources=resources)
    result = incoming_folder_sensor(context)
    assert result.run_requests == [] and "does not exist yet" in result.skip_reason.skip_message
    assert json.loads(result.cursor)["model_attempt"] == 0


def test_a_first_tick_over_settled_files_asks_for_the_model_first(settings, resources, monkeypatch):
    monkeypatch.setenv("MEDVEC_WATCH_SETTLE_MARGIN_S", "0")
    _settled(settings.home / "incoming", ["a.dcm", "b.dcm"])
    context = dg.build_sensor_context(cursor=None, instance=dg.DagsterInstance.ephemeral(), resources=resources)
    result = incoming_folder_sensor(context)
    [request] = result.run_requests
    assert request.asset_selection == [embedding_model.key]
    assert request.run_key == "embedding_model:tiny-siglip:1"
    assert json.loads(result.cursor)["model_attempt"] == 1


def test_the_same_tick_with_the_model_requested_recently_asks_again_only_after_the_retry_wait(settings, resources,
                                                                                            monkeypatch):
    monkeypatch.setenv("MEDVEC_WATCH_SETTLE_MARGIN_S", "0")
    _settled(settings.home / "incoming", ["a.dcm"])
    instance = dg.DagsterInstance.ephemeral()
    first = incoming_folder_sensor(dg.build_sensor_context(cursor=None, instance=instance, resources=resources))
    again = incoming_folder_sensor(dg.build_sensor_context(cursor=first.cursor, instance=instance,
                                                           resources=resources))
    assert again.run_requests == []  # model_retry_s has not passed: no second model run
    assert json.loads(again.cursor)["model_attempt"] == 1


def test_batch_run_requests_carry_the_batch_checks():
    names = sorted(key.name for key in BATCH_CHECK_KEYS)
    assert names == ["check_embedded_rows_match_normalized", "check_image_ids_unique", "check_vectors_finite"]


def test_source_manifest_body_reports_the_batch_files(settings, tmp_path):
    _settled(tmp_path / "src", ["a.dcm", "b.dcm", "c.dcm"])
    [manifest] = plan_batches(open_source(str(tmp_path / "src")), settings.home, batch_size=10)
    write_manifest(settings.home, manifest)
    medvec = MedvecHomeResource(home=str(settings.home), lancedb_uri=settings.lancedb_uri)
    output = source_manifest(dg.build_asset_context(partition_key=manifest.batch), medvec=medvec)
    assert [f.uri.rsplit("/", 1)[-1] for f in output.value.files] == ["a.dcm", "b.dcm", "c.dcm"]
    assert output.metadata["files"].value == 3 and output.metadata["dagster/row_count"].value == 3


def test_every_asset_names_its_kinds_and_owners():
    from pipelines.definitions import defs

    graph = defs.get_repository_def().asset_graph
    for key in graph.get_all_asset_keys():
        spec = graph.get(key)
        assert spec.kinds and spec.owners == ["team:medvec"], key


def test_loading_the_definitions_warns_about_nothing_medvec_causes(tmp_path):
    """A fresh process loads the code location and resolves every job, as `dagster dev` does, with
    every warning recorded; only third-party import noise (SWIG's, from faiss) may remain."""
    script = (
        "import json, warnings\n"
        "with warnings.catch_warnings(record=True) as seen:\n"
        "    warnings.simplefilter('always')\n"
        "    from pipelines.definitions import defs\n"
        "    repo = defs.get_repository_def()\n"
        "    [repo.get_job(name) for name in repo.job_names]\n"
        "    repo.sensor_defs\n"
        "print(json.dumps([[w.category.__name__, str(w.message), w.filename] for w in seen]))\n")
    env = {**os.environ, "MEDVEC_HOME": str(tmp_path / "home"), "DAGSTER_HOME": str(tmp_path)}
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=180)
    assert proc.returncode == 0, proc.stderr
    warned = [w for w in json.loads(proc.stdout.splitlines()[-1]) if "Swig" not in w[1] and "swig" not in w[1]]
    assert warned == []
