"""The embedding assets end to end with the real tiny-siglip model, a real Dagster instance and LanceDB."""

import shutil

import dagster as dg
import numpy as np
import pytest

from assets.embeddings import embedding_model, image_embeddings
from assets.ingest import normalized_images, source_manifest
from medvec.tables import database
from medvec.ingest.batches import load_batch_records
from medvec.tables.images import image_table_name, open_image_table
from pipelines.ingest import ingest
from resources import home_resources
from resources.embedders import LocalEmbedderResource
from tests.conftest import dicom_testfile

pytestmark = pytest.mark.slow

SOURCES = ["CT_small.dcm", "MR_small_RLE.dcm", "SC_rgb_jpeg_dcmtk.dcm", "JPEGLSNearLossless_16.dcm",
           "image_dfl.dcm", "rtplan.dcm"]


def _folder(tmp_path):
    folder = tmp_path / "incoming"
    folder.mkdir()
    for name in SOURCES:
        shutil.copy(dicom_testfile(name), folder / name)
    return folder


def _resources(settings):
    return {**home_resources(settings), "embedder": LocalEmbedderResource(model="tiny-siglip")}


def test_ingest_embeds_every_normalised_image_once(tmp_path, settings, dagster_instance):
    summary = ingest(str(_folder(tmp_path)), settings, batch_size=3, instance=dagster_instance,
                     embedder=LocalEmbedderResource(model="tiny-siglip"))
    assert not summary.failed_runs and summary.ok == 5 and summary.embedded == 5
    assert summary.table == image_table_name("tiny_siglip") and summary.model == "tiny-siglip"
    table = database.connect(settings.lancedb_uri).open_table(summary.table)
    ids = table.to_arrow().column("image_id").to_pylist()
    assert sorted(ids) == sorted(r.image_id for b in summary.batches for r in load_batch_records(settings.home, b))

    model_event = dagster_instance.get_latest_materialization_event(dg.AssetKey("embedding_model"))
    model_metadata = model_event.asset_materialization.metadata
    assert "no retrieval quality" in model_metadata["warning"].value
    assert model_metadata["revision"].value.startswith("sha256:")

    # Re-materialising a batch rewrites its rows in place: same count, same vectors.
    batch = summary.batches[0]
    before = {r["image_id"]: r["vector"] for r in table.to_arrow().to_pylist()}
    result = dg.materialize([embedding_model, source_manifest, normalized_images, image_embeddings],
                            selection=[image_embeddings], partition_key=batch, instance=dagster_instance,
                            resources=_resources(settings))
    assert result.success
    after = {r["image_id"]: r["vector"] for r in database.connect(settings.lancedb_uri).open_table(summary.table)
             .to_arrow().to_pylist()}
    assert after.keys() == before.keys()
    for image_id, vector in before.items():
        np.testing.assert_allclose(after[image_id], vector, atol=1e-6)
    metadata = result.asset_materializations_for_node("image_embeddings")[0].metadata
    assert metadata["table_rows"].value == 5 and metadata["device"].value == "cpu"


def test_stored_vectors_are_the_models_own_embeddings(tmp_path, settings, dagster_instance):
    summary = ingest(str(_folder(tmp_path)), settings, instance=dagster_instance,
                     embedder=LocalEmbedderResource(model="tiny-siglip"))
    resource = LocalEmbedderResource(model="tiny-siglip")
    artifact = resource.resolve(settings.home / "models")
    records = load_batch_records(settings.home, summary.batches[0])
    with resource.load(artifact) as model:
        direct = model.embed_images([(settings.home / r.image_uri).read_bytes() for r in records])
    table = database.connect(settings.lancedb_uri).open_table(summary.table)
    stored = {r["image_id"]: r["vector"] for r in table.to_arrow().to_pylist()}
    for record, vector in zip(records, direct):
        np.testing.assert_allclose(stored[record.image_id], vector, atol=1e-5)


def test_a_table_of_another_dimension_fails_the_run_and_stays_untouched(tmp_path, settings, dagster_instance):
    db = database.connect(settings.lancedb_uri)
    open_image_table(db, image_table_name("tiny_siglip"), 3)  # an older table with 3-d vectors
    version = db.open_table(image_table_name("tiny_siglip")).version
    summary = ingest(str(_folder(tmp_path)), settings, instance=dagster_instance,
                     embedder=LocalEmbedderResource(model="tiny-siglip"))
    assert summary.failed_runs == summary.batches and summary.embedded == 0
    assert summary.ok == 5  # normalisation itself went through
    assert db.open_table(image_table_name("tiny_siglip")).version == version
    failure = [e for run in dagster_instance.get_runs() for e in dagster_instance.all_logs(run.run_id)
               if e.dagster_event and e.dagster_event.is_step_failure]
    assert any("3-d vectors but this model gives" in e.dagster_event.event_specific_data.error.to_string()
               for e in failure)


def test_a_backfill_run_embeds_several_batches_with_one_model_load(tmp_path, settings, dagster_instance):
    summary = ingest(str(_folder(tmp_path)), settings, batch_size=2, instance=dagster_instance, embed=False)
    assert len(summary.batches) == 3
    resources = _resources(settings)
    dg.materialize([embedding_model], instance=dagster_instance, resources=resources)
    job = dg.Definitions(assets=[embedding_model, source_manifest, normalized_images, image_embeddings],
                         jobs=[dg.define_asset_job("embed_job", selection=[image_embeddings])],
                         resources=resources).resolve_job_def("embed_job")
    result = job.execute_in_process(instance=dagster_instance, tags={
        "dagster/asset_partition_range_start": summary.batches[0],
        "dagster/asset_partition_range_end": summary.batches[-1]})
    assert result.success
    materializations = result.asset_materializations_for_node("image_embeddings")
    assert sorted(m.partition for m in materializations) == sorted(summary.batches)
    table = database.connect(settings.lancedb_uri).open_table(image_table_name("tiny_siglip"))
    assert table.count_rows() == 5


def test_the_nim_backend_fills_the_same_table_as_the_local_model(tmp_path, settings, dagster_instance):
    from medvec.serve.embed_server import EmbedServer
    from resources.embedders import NimEmbedderResource

    local = LocalEmbedderResource(model="tiny-siglip")
    artifact = local.resolve(settings.home / "models")
    with local.load(artifact) as model:
        server = EmbedServer(model).start()
        try:
            nim = NimEmbedderResource(model="tiny-siglip", url=server.url, nim_model="medvec/tiny-siglip")
            summary = ingest(str(_folder(tmp_path)), settings, instance=dagster_instance, embedder=nim)
        finally:
            server.stop()
        assert not summary.failed_runs and summary.embedded == 5 and summary.table == "images__tiny_siglip"
        records = load_batch_records(settings.home, summary.batches[0])
        direct = model.embed_images([(settings.home / r.image_uri).read_bytes() for r in records])
    stored = {r["image_id"]: r["vector"] for r in
              database.connect(settings.lancedb_uri).open_table(summary.table).to_arrow().to_pylist()}
    for record, vector in zip(records, direct):
        np.testing.assert_allclose(stored[record.image_id], vector, atol=1e-4)
    model_event = dagster_instance.get_latest_materialization_event(dg.AssetKey("embedding_model"))
    assert model_event.asset_materialization.metadata["loader"].value == "nim"


def test_a_model_mirrored_on_s3_is_resolved_recorded_and_used(tmp_path, settings, dagster_instance, s3_endpoint,
                                                               monkeypatch):
    import boto3

    from medvec.models.tiny import build_tiny_siglip

    for key, value in {"AWS_ACCESS_KEY_ID": "t", "AWS_SECRET_ACCESS_KEY": "t", "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(key, value)
    model_dir = build_tiny_siglip(tmp_path / "built")
    client = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    client.create_bucket(Bucket="hospital-models")
    for path in model_dir.iterdir():
        client.upload_file(str(path), "hospital-models", f"mirror/chest-siglip/{path.name}")
    embedder = LocalEmbedderResource(model="hospital/chest-siglip", dim=64, image_size=32, model_source="s3",
                                     model_location="s3://hospital-models/mirror/chest-siglip",
                                     s3_endpoint_url=s3_endpoint)
    summary = ingest(str(_folder(tmp_path)), settings, instance=dagster_instance, embedder=embedder)
    assert not summary.failed_runs and summary.embedded == 5 and summary.table == "images__hospital_chest_siglip"
    metadata = dagster_instance.get_latest_materialization_event(
        dg.AssetKey("embedding_model")).asset_materialization.metadata
    details = metadata["details"].value
    assert details["source"] == "s3" and details["n_files"] == len(list(model_dir.iterdir()))
    assert metadata["revision"].value.startswith("sha256:") and "warning" not in metadata
    assert {f["path"] for f in details["files"]} >= {"config.json", "model.safetensors"}


def test_embedding_refuses_an_unnormalised_batch_or_a_stale_model(tmp_path, settings, dagster_instance):
    from medvec.ingest.batches import plan_batches, write_manifest
    from medvec.sources import LocalFolderSource

    resources = _resources(settings)
    dg.materialize([embedding_model], instance=dagster_instance, resources=resources)
    [manifest] = plan_batches(LocalFolderSource(_folder(tmp_path)), settings.home, batch_size=10)
    write_manifest(settings.home, manifest)
    dagster_instance.add_dynamic_partitions("batch", [manifest.batch])
    assets = [embedding_model, source_manifest, normalized_images, image_embeddings]
    result = dg.materialize(assets, selection=[image_embeddings], partition_key=manifest.batch,
                            instance=dagster_instance, resources=resources, raise_on_error=False)
    assert not result.success  # nothing normalised yet: no silent zero-row success
    other = {**resources, "embedder": LocalEmbedderResource(model="my-org/other", dim=64, image_size=32)}
    dg.materialize(assets, selection=[source_manifest, normalized_images], partition_key=manifest.batch,
                   instance=dagster_instance, resources=resources)
    stale = dg.materialize(assets, selection=[image_embeddings], partition_key=manifest.batch,
                           instance=dagster_instance, resources=other, raise_on_error=False)
    assert not stale.success
    messages = [e.event_specific_data.error.to_string() for e in stale.all_events
                if e.is_step_failure]
    assert any("materialise embedding_model again" in m for m in messages)
    assert open_image_table(database.connect(settings.lancedb_uri), image_table_name("tiny_siglip"), 64).count_rows() == 0
