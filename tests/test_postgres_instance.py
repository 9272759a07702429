"""Dagster's instance on a real PostgreSQL server (Debian's `postgresql`, started by the test): our
deploy template with a `storage: postgres:` block holds the batch partitions, the sensors' ticks and
a batch's materialisations. Timing at 5,000 partitions is in benchmarks/instance_postgres.py."""

import os
import shutil
import time

import dagster as dg
import pytest

from assets.embeddings import embedding_model, image_embeddings
from assets.ingest import normalized_images, source_manifest
from assets.partitions import batch_partitions
from pipelines.sensors import incoming_folder_sensor, search_refresh_sensor
from resources import home_resources
from resources.embedders import LocalEmbedderResource
from tests.conftest import dicom_testfile
from tests.pg_server import PG_URL_ENV, PostgresServer, PostgresUnavailable, write_postgres_instance
from tests.test_sensors import Daemon

EARLIER_BATCHES = 200


@pytest.fixture(scope="module")
def postgres_server():
    server = PostgresServer()
    try:
        server.start()
    except PostgresUnavailable as reason:
        pytest.skip(f"no PostgreSQL server here: {reason}")
    yield server
    server.stop()


@pytest.fixture
def postgres_instance(tmp_path, monkeypatch, postgres_server):
    """A DagsterInstance loaded from $DAGSTER_HOME/dagster.yaml, as `dagster dev` and the daemon load it."""
    home = tmp_path / "dagster_home"
    write_postgres_instance(home)
    monkeypatch.setenv(PG_URL_ENV, postgres_server.url)
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    with dg.DagsterInstance.get() as instance:
        yield instance


def _stored_partitions(url: str) -> set[str]:
    """The batch partitions as PostgreSQL holds them, read without Dagster."""
    import psycopg2

    connection = psycopg2.connect(url)
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT partition FROM dynamic_partitions WHERE partitions_def_name = %s",
                           (batch_partitions.name,))
            return {row[0] for row in cursor.fetchall()}
    finally:
        connection.close()


def test_the_template_with_postgres_storage_keeps_its_run_queue_and_gpu_pool(postgres_instance):
    assert type(postgres_instance.run_storage).__name__ == "PostgresRunStorage"
    assert type(postgres_instance.event_log_storage).__name__ == "PostgresEventLogStorage"
    assert type(postgres_instance.schedule_storage).__name__ == "PostgresScheduleStorage"
    assert postgres_instance.event_log_storage.get_concurrency_info("gpu").limit == 1
    assert postgres_instance.run_coordinator.__class__.__name__ == "QueuedRunCoordinator"


def test_sensors_open_and_run_a_batch_among_200_partitions_on_postgres(settings, postgres_instance, postgres_server,
                                                                       monkeypatch):
    for name, value in {"MEDVEC_WATCH_SETTLE_MARGIN_S": "0", "MEDVEC_REFRESH_QUIET_S": "0"}.items():
        monkeypatch.setenv(name, value)
    earlier = [f"b20240101T{i // 60:02d}{i % 60:02d}00-{i:03d}" for i in range(EARLIER_BATCHES)]
    postgres_instance.add_dynamic_partitions(batch_partitions.name, earlier)
    incoming = settings.home / "incoming"
    incoming.mkdir(parents=True)
    for name in ("CT_small.dcm", "MR_small_RLE.dcm"):
        shutil.copy(dicom_testfile(name), incoming / name)
        os.utime(incoming / name, (time.time() - 120,) * 2)  # downloaded two minutes ago: settled
    resources = {**home_resources(settings), "embedder": LocalEmbedderResource(model="tiny-siglip")}
    daemon = Daemon(postgres_instance, resources, incoming_folder_sensor)

    first = daemon.tick()  # the model is not resolved yet: it is requested first
    assert [r.asset_selection for r in first.run_requests] == [[embedding_model.key]]
    daemon.launch()
    second = daemon.tick()
    [request] = second.run_requests  # the batch opens and its run is requested in the same tick
    batch = request.partition_key
    assert batch not in earlier and request.run_key == f"batch:{batch}"
    assert _stored_partitions(postgres_server.dsn) == {*earlier, batch}

    [run] = daemon.launch()  # source_manifest → normalized_images → image_embeddings (+ reports), one partition
    assert run.dagster_run.tags["dagster/partition"] == batch

    # A second instance from the same dagster.yaml reads it all back from PostgreSQL.
    with dg.DagsterInstance.get() as reader:
        assert reader.get_materialized_partitions(normalized_images.key) == {batch}
        assert reader.get_materialized_partitions(source_manifest.key) == {batch}
        [record] = reader.fetch_materializations(image_embeddings.key, limit=5).records
        assert record.partition_key == batch
        assert record.asset_materialization.metadata["rows_written"].value == 2
        assert reader.get_run_record_by_id(run.run_id).dagster_run.is_success

    refresh = Daemon(postgres_instance, {"medvec": resources["medvec"]}, search_refresh_sensor)
    [refresh_request] = refresh.tick().run_requests  # the wave is done: one search refresh
    assert refresh_request.run_key == f"refresh:{record.storage_id}"
