"""Each asset check fails on purpose: a real LanceDB table in a copy of an ingested home is corrupted,
the check's job runs in process against a real Dagster instance, and the check reports the damage;
a blocking check also keeps the assets downstream of it from running."""

import shutil

import dagster as dg
import numpy as np
import pyarrow as pa
import pytest

from assets.checks import (CHECKS, check_embedded_rows_match_normalized, check_fallbacks_current,
                           check_image_ids_unique, check_index_recall, check_no_identifying_columns,
                           check_vectors_finite)
from assets.embeddings import image_embeddings
from assets.search import image_index, similar_images
from medvec.models.registry import resolve_model
from medvec.settings import Settings
from medvec.tables import database
from medvec.tables.images import image_table_name
from medvec.tables.records import image_table_schema
from pipelines.backfill import QUIET
from pipelines.ingest import ingest
from pipelines.jobs import ASSETS, in_process, search_refresh_job
from resources import home_resources
from resources.embedders import LocalEmbedderResource
from tests.conftest import dicom_testfile

MODEL = "tiny-siglip"
TABLE = image_table_name(resolve_model(MODEL).slug)
DIM = resolve_model(MODEL).dim


@pytest.fixture(scope="module")
def ingested(tmp_path_factory):
    """A home with three DICOM images ingested, embedded, indexed and answered, built once; with the
    instance that ran it (every check ran there too)."""
    root = tmp_path_factory.mktemp("checks")
    folder = root / "incoming"
    folder.mkdir()
    for name in ("CT_small.dcm", "MR_small_RLE.dcm", "SC_rgb_jpeg_dcmtk.dcm"):
        shutil.copy(dicom_testfile(name), folder / name)
    settings = Settings.from_env({"MEDVEC_HOME": str(root / "home"), "MEDVEC_PSEUDONYM_KEY": "test-key", "MEDVEC_ALLOW_DEV_KEY": "1",
                                  "MEDVEC_MODEL": MODEL})
    with dg.instance_for_test() as instance:
        summary = ingest(str(folder), settings, instance=instance, workers=1)
        assert summary.indexed and summary.embedded == 3, summary.to_json()
        evaluations = [r.event_log_entry.dagster_event.event_specific_data for r in instance.get_event_records(
            dg.EventRecordsFilter(event_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION))]
    return type("Ingested", (), {"root": root, "batch": summary.batches[0], "evaluations": evaluations})


@pytest.fixture
def home(ingested, tmp_path):
    """A copy of the ingested home to corrupt: (settings, resources, the model's table)."""
    shutil.copytree(ingested.root / "home", tmp_path / "home")
    settings = Settings.from_env({"MEDVEC_HOME": str(tmp_path / "home"), "MEDVEC_PSEUDONYM_KEY": "test-key", "MEDVEC_ALLOW_DEV_KEY": "1",
                                  "MEDVEC_MODEL": MODEL})
    resources = {**home_resources(settings), "embedder": LocalEmbedderResource(model=MODEL)}
    return settings, resources, database.connect(settings.lancedb_uri).open_table(TABLE)


def _name(check) -> str:
    [key] = check.check_keys
    return key.name


def _evaluation(result, check) -> dg.AssetCheckEvaluation:
    [evaluation] = [e for e in result.get_asset_check_evaluations() if e.check_name == _name(check)]
    return evaluation


def _materialized(result) -> set[str]:
    return {e.asset_key.to_user_string() for e in result.get_asset_materialization_events()}


def _run(resources, instance, selection, partition_key=None):
    """The given assets and checks in one in-process run over the whole graph."""
    return dg.materialize([*ASSETS, *CHECKS], selection=selection, partition_key=partition_key, instance=instance,
                          resources=resources, run_config=QUIET, raise_on_error=False)


def _fake_rows(count: int, vectors: np.ndarray, batch: str = "corrupt") -> pa.Table:
    rows = [{"image_id": f"2.25.{i}", "batch": batch, "vector": v.tolist()} for i, v in enumerate(vectors)]
    return pa.Table.from_pylist(rows[:count], schema=image_table_schema(DIM))


def test_ingest_runs_every_check_and_each_passes(ingested):
    names = {e.check_name: e.passed for e in ingested.evaluations}
    assert names == {_name(c): True for c in CHECKS}


def test_a_nan_and_a_zero_vector_fail_the_vector_check_and_block_the_index(home, ingested, dagster_instance):
    _, resources, table = home
    table.add(_fake_rows(2, np.ones((2, DIM), dtype=np.float32)))
    table.update(where="image_id = '2.25.1'", values={"vector": [0.0] * DIM})
    # LanceDB's add refuses NaN vectors; an SQL update (or another writer) does not.
    nan_vector = ", ".join(["CAST('NaN' AS FLOAT)"] + ["1.0"] * (DIM - 1))
    table.update(where="image_id = '2.25.0'",
                 values_sql={"vector": f"arrow_cast([{nan_vector}], 'FixedSizeList({DIM}, Float32)')"})
    dagster_instance.add_dynamic_partitions("batch", [ingested.batch])
    result = _run(resources, dagster_instance, dg.AssetSelection.assets(image_embeddings, image_index),
                  partition_key=ingested.batch)
    evaluation = _evaluation(result, check_vectors_finite)
    assert not evaluation.passed
    assert evaluation.metadata["nan_rows"].value == 1 and evaluation.metadata["zero_norm_rows"].value == 1
    assert "image_embeddings" in _materialized(result) and "image_index" not in _materialized(result)


def test_a_duplicated_image_id_fails_the_uniqueness_check_and_blocks_the_index(home, ingested, dagster_instance):
    _, resources, table = home
    first = table.search().where(f"batch = '{ingested.batch}'").limit(1).to_arrow()
    table.add(first.set_column(first.schema.get_field_index("batch"), "batch", pa.array(["elsewhere"])))
    result = _run(resources, dagster_instance, dg.AssetSelection.assets(image_index)
                  | dg.AssetSelection.checks(check_image_ids_unique))
    evaluation = _evaluation(result, check_image_ids_unique)
    assert not evaluation.passed and evaluation.metadata["extra_rows"].value == 1
    assert evaluation.metadata["examples"].value == {first.column("image_id")[0].as_py(): 2}


def test_a_missing_row_fails_the_batch_row_count_check(home, ingested, dagster_instance):
    _, resources, table = home
    gone = table.search().where(f"batch = '{ingested.batch}'").limit(1).to_arrow().column("image_id")[0].as_py()
    table.delete(f"image_id = '{gone}'")
    # Run on its own (as from the UI's "Execute" button), the check covers every batch the instance knows.
    dagster_instance.add_dynamic_partitions("batch", [ingested.batch])
    result = _run(resources, dagster_instance, dg.AssetSelection.checks(check_embedded_rows_match_normalized))
    evaluation = _evaluation(result, check_embedded_rows_match_normalized)
    assert not evaluation.passed
    assert (evaluation.metadata["normalized"].value, evaluation.metadata["embedded"].value) == (3, 2)
    assert ingested.batch in evaluation.metadata["mismatches"].value


def test_an_identifying_column_fails_the_phi_check_and_blocks_the_answers(home, dagster_instance):
    _, resources, table = home
    table.add_columns({"patient_name": "'somebody'"})
    result = in_process(search_refresh_job, resources).execute_in_process(
        instance=dagster_instance, run_config=QUIET, raise_on_error=False)
    evaluation = _evaluation(result, check_no_identifying_columns)
    assert not evaluation.passed and evaluation.metadata["columns"].value == {TABLE: ["patient_name"]}
    assert _materialized(result) == {"image_index"}  # fallback_queries and similar_images did not run


def test_stale_fallback_answers_fail_the_currency_check(home, dagster_instance):
    _, resources, table = home
    table.delete("image_id = 'none'")  # a new table version, after the answers were made
    result = _run(resources, dagster_instance, dg.AssetSelection.checks(check_fallbacks_current))
    evaluation = _evaluation(result, check_fallbacks_current)
    assert not evaluation.passed and evaluation.metadata["image_table_version"].value == table.version


def test_an_index_below_the_recall_target_fails_the_recall_check_and_blocks_the_answers(home, dagster_instance):
    """Above the exact-search threshold the in-memory index is an IVF tuned to the configured target;
    on random vectors tuned for 0.3 it finds far fewer than 98% of the true neighbours."""
    from medvec.search.vector_index import EXACT_BELOW

    _, resources, table = home
    vectors = np.random.default_rng(0).standard_normal((EXACT_BELOW, DIM)).astype(np.float32)
    table.add(_fake_rows(EXACT_BELOW, vectors / np.linalg.norm(vectors, axis=1, keepdims=True)))
    result = dg.materialize([*ASSETS, *CHECKS], selection=dg.AssetSelection.assets(image_index, similar_images),
                            instance=dagster_instance, resources=resources, raise_on_error=False,
                            run_config={**QUIET, "ops": {"image_index": {"config": {"target_recall": 0.3}}}})
    evaluation = _evaluation(result, check_index_recall)
    assert not evaluation.passed and evaluation.metadata["recall_at_10"].value < 0.98
    assert _materialized(result) == {"image_index"}
