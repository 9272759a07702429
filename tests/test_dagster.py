"""The code location loads, and batches materialise in process against a real Dagster instance."""

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import dagster as dg

from assets.ingest import normalized_images, source_manifest
from medvec.tables import database
from medvec.ingest.batches import load_batch_records
from pipelines.ingest import ingest
from tests.conftest import dicom_testfile

ROOT = Path(__file__).resolve().parents[1]


def test_definitions_load_with_the_ingest_assets_and_job():
    from pipelines.definitions import defs

    repo = defs.get_repository_def()
    keys = {key.to_user_string() for key in repo.assets_defs_by_key}
    assert {"source_manifest", "normalized_images"} <= keys
    assert repo.get_job("ingest_job").partitions_def.name == "batch"


def test_dagster_definitions_validate_passes(tmp_path):
    env = {**os.environ, "MEDVEC_HOME": str(tmp_path / "home"), "DAGSTER_HOME": str(tmp_path / "dg")}
    (tmp_path / "dg").mkdir()
    proc = subprocess.run([str(Path(sys.executable).parent / "dagster"), "definitions", "validate",
                           "-w", "workspace.yaml"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _incoming(tmp_path) -> Path:
    folder = tmp_path / "incoming"
    folder.mkdir()
    for name in ("CT_small.dcm", "MR_small_RLE.dcm", "SC_rgb_jpeg_dcmtk.dcm", "rtplan.dcm"):
        shutil.copy(dicom_testfile(name), folder / name)
    (folder / "broken.dcm").write_bytes(b"\x00" * 300)
    return folder


def _webp_digests(home: Path) -> dict:
    return {p.relative_to(home): hashlib.sha256(p.read_bytes()).hexdigest() for p in home.rglob("*.webp")}


def test_partition_materialises_and_rematerialises_without_duplicates(tmp_path, settings, dagster_instance):
    summary = ingest(str(_incoming(tmp_path)), settings, batch_size=10, instance=dagster_instance)
    assert summary.ok == 3 and len(summary.errors) == 2 and not summary.failed_runs
    [batch] = summary.batches
    assert dagster_instance.get_dynamic_partitions("batch") == [batch]
    materialization = dagster_instance.get_latest_materialization_event(dg.AssetKey("normalized_images"))
    metadata = materialization.asset_materialization.metadata
    assert metadata["ok"].value == 3 and metadata["errors"].value == 2
    assert "data:image/png;base64," in metadata["thumbnails"].value
    assert "rtplan.dcm" in metadata["first_errors"].value

    db = database.connect(settings.lancedb_uri)
    assert len(database.list_errors(db, batch)) == 2
    records_before, files_before = load_batch_records(settings.home, batch), _webp_digests(settings.home)

    result = dg.materialize(
        [source_manifest, normalized_images], partition_key=batch, instance=dagster_instance,
        resources={"medvec": _resource(settings)})
    assert result.success
    rerun = result.asset_materializations_for_node("normalized_images")[0].metadata
    assert rerun["skipped_unchanged"].value == 3 and rerun["normalized_this_run"].value == 0
    assert [r.to_row() for r in load_batch_records(settings.home, batch)] == [r.to_row() for r in records_before]
    assert _webp_digests(settings.home) == files_before
    assert len(database.list_errors(db)) == 2  # replaced, not appended
    assert result.output_for_node("normalized_images")[0].image_id == records_before[0].image_id


def _resource(settings):
    from resources import MedvecHomeResource

    return MedvecHomeResource(home=str(settings.home), lancedb_uri=settings.lancedb_uri,
                              pseudonym_key=settings.pseudonym_key.get_secret_value())


def test_second_ingest_of_the_same_folder_opens_nothing(tmp_path, settings, dagster_instance):
    folder = _incoming(tmp_path)
    first = ingest(str(folder), settings, instance=dagster_instance)
    again = ingest(str(folder), settings, instance=dagster_instance)
    assert len(first.batches) == 1 and again.batches == [] and again.files == 0


def test_cli_ingest_json_and_dry_run(tmp_path, settings):
    folder = _incoming(tmp_path)
    env = {**os.environ, "DAGSTER_HOME": str(tmp_path / "dagster_home")}
    medvec = str(Path(sys.executable).parent / "medvec")
    dry = subprocess.run([medvec, "ingest", str(folder), "--dry-run", "--json", "--batch-size", "2"],
                         env=env, capture_output=True, text=True, timeout=120)
    assert dry.returncode == 0, dry.stderr
    planned = json.loads(dry.stdout)
    assert planned["dry_run"] and planned["files"] == 5 and len(planned["batches"]) == 3
    assert not (settings.home / "batches").exists()  # a dry run changes nothing

    run = subprocess.run([medvec, "ingest", str(folder), "--limit", "4", "--json"], env=env,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    summary = json.loads(run.stdout)
    assert summary["files"] == 4 and summary["ok"] + summary["errors"] + summary["skipped"] == 4
    assert {"ok", "errors", "skipped", "batches", "error_records"} <= set(summary)
    assert all({"source_uri", "stage", "error", "message"} <= set(e) for e in summary["error_records"])
    # The runs went into $DAGSTER_HOME, where `dagster dev` will show them.
    with dg.DagsterInstance.from_config(str(tmp_path / "dagster_home")) as instance:
        assert instance.get_dynamic_partitions("batch") == summary["batches"]
        runs = instance.get_runs()
        assert len(runs) == 3  # the model once, then the batch, then one search refresh
        assert summary["model"] == "tiny-siglip" and summary["embedded"] == summary["ok"] and summary["indexed"]
