"""The whole pipeline with the Medvec home, LanceDB and the source on S3 (moto's real server, started by the
test), compared with the same sample ingested into a local home (`search_collection`)."""

from __future__ import annotations

import contextlib
import os
import threading
import time
from pathlib import Path

import boto3
import dagster as dg
import numpy as np
import pytest
from fastapi.testclient import TestClient

from medvec.ingest.batches import batch_dir, list_batches, load_batch_records
from medvec.serve.http_api import create_app
from medvec.search.configured import open_search
from medvec.settings import Settings
from medvec.storage import S3Path, concurrent_writes, create_exclusive, exclusive_lock, remove_tree, upload_tree, write_atomic
from pipelines.ingest import ingest
from tests.conftest import free_port

QUERIES = ["pleural effusion", "cardiomegaly", "normal chest x-ray", "left lower lobe opacity"]


@pytest.fixture(scope="module")
def aws_env(s3_endpoint, tmp_path_factory):
    with pytest.MonkeyPatch.context() as env:
        env.setenv("AWS_ACCESS_KEY_ID", "testing")
        env.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        env.setenv("AWS_DEFAULT_REGION", "us-east-1")
        env.setenv("MEDVEC_S3_ENDPOINT_URL", s3_endpoint)
        # Model files and Dagster's SQLite stay on local disk when the home is on S3.
        env.setenv("MEDVEC_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
        client = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
        bucket = f"medvec-{free_port()}"
        client.create_bucket(Bucket=bucket)
        yield client, bucket


def _upload_folder(client, bucket: str, folder, prefix: str) -> int:
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    for path in files:
        client.put_object(Bucket=bucket, Key=f"{prefix}/{path.relative_to(folder).as_posix()}", Body=path.read_bytes())
    return len(files)


@pytest.fixture(scope="module")
def s3_collection(aws_env, search_collection):
    client, bucket = aws_env
    _upload_folder(client, bucket, search_collection.sample_dir, "incoming")
    env = {"MEDVEC_HOME": f"s3://{bucket}/home", "MEDVEC_LANCEDB_URI": f"s3://{bucket}/lancedb",
           "MEDVEC_S3_ENDPOINT_URL": aws_env[0].meta.endpoint_url, "MEDVEC_PSEUDONYM_KEY": "test-key",
           "MEDVEC_ALLOW_DEV_KEY": "1",
           "MEDVEC_MODEL": "tiny-siglip"}
    settings = Settings.from_env(env)
    with dg.instance_for_test() as instance:
        summary = ingest(f"s3://{bucket}/incoming", settings, batch_size=16, instance=instance)
        again = ingest(f"s3://{bucket}/incoming", settings, batch_size=16, instance=instance)
    return settings, summary, again, client, bucket


def _keys(client, bucket: str, prefix: str) -> list[str]:
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return [o["Key"] for page in pages for o in page.get("Contents", [])]


@pytest.mark.slow
def test_pipeline_on_s3_matches_the_local_run(s3_collection, search_collection):
    settings, summary, again, client, bucket = s3_collection
    local = search_collection.summary
    assert isinstance(settings.home, S3Path)
    assert summary.indexed and summary.embedded == local.embedded == 38, summary.to_json()
    # The sample's deliberately broken files fail the same way; a second run finds nothing new.
    assert sorted((e.source_uri.rsplit("/", 1)[-1], e.stage, e.error) for e in summary.errors) == \
        sorted((e.source_uri.rsplit("/", 1)[-1], e.stage, e.error) for e in local.errors)
    assert again.embedded == 0 and not again.batches

    # Everything the pipeline keeps sits in the bucket: manifests, records, WebP files, tables, the index.
    home_keys = _keys(client, bucket, "home/")
    assert sum(k.endswith("/manifest.json") for k in home_keys) == len(local.batches)
    assert sum(k.startswith("home/images/") and k.endswith(".webp") for k in home_keys) == 38
    assert sum(k.startswith("home/thumbs/") and k.endswith(".webp") for k in home_keys) == 38
    assert any(k.startswith("lancedb/images__tiny_siglip.lance/") for k in _keys(client, bucket, "lancedb/"))

    # The same images, the same WebP bytes, the same answers.
    s3_records = {r.image_id: r for b in list_batches(settings.home) for r in load_batch_records(settings.home, b)}
    local_settings = search_collection.settings
    local_records = {r.image_id: r for b in list_batches(local_settings.home)
                     for r in load_batch_records(local_settings.home, b)}
    assert s3_records.keys() == local_records.keys()
    some = sorted(s3_records)[:5]
    for image_id in some:
        assert (settings.home / s3_records[image_id].image_uri).read_bytes() == \
            (local_settings.home / local_records[image_id].image_uri).read_bytes()

    remote, local_search = open_search(settings), open_search(local_settings)
    try:
        assert remote.info()["rows"] == local_search.info()["rows"] == 38
        for query in QUERIES:
            a, b = remote.search_text(query, k=10), local_search.search_text(query, k=10)
            assert [h.image_id for h in a.hits] == [h.image_id for h in b.hits], query
            np.testing.assert_allclose([h.score for h in a.hits], [h.score for h in b.hits], atol=1e-5)
        for image_id in some:
            a, b = remote.similar(image_id, k=5), local_search.similar(image_id, k=5)
            assert [h.image_id for h in a.hits] == [h.image_id for h in b.hits]

        # The HTTP API serves the WebP files from the bucket, by id, as it does from a local home.
        http = TestClient(create_app(remote, settings.home), base_url="http://localhost")  # an allowed Host
        hit = remote.search_text("pleural effusion", k=1).hits[0]
        response = http.get(f"/api/images/{hit.image_id}/thumbnail")
        assert response.status_code == 200 and response.headers["content-type"] == "image/webp"
        assert response.content == (settings.home / s3_records[hit.image_id].thumb_uri).read_bytes()
        assert http.get("/api/images/no-such-id/thumbnail").status_code == 404
    finally:
        remote.close()
        local_search.close()

    # Asset values passed between steps sit in the bucket too, not on the disk of whoever ran the step.
    assert sum(k.startswith("home/dagster-io/source_manifest/") for k in home_keys) == len(local.batches)
    assert "home/dagster-io/embedding_model/value.pkl" in home_keys


@pytest.mark.slow
def test_a_step_on_a_fresh_machine_works_from_the_bucket_alone(s3_collection, tmp_path, monkeypatch):
    """What a Kubernetes pod sees: no local model files, an empty Dagster instance; the step reads the
    batch records and the model description from the bucket, fetches the model and re-embeds the batch
    into the same rows."""
    from assets.embeddings import embedding_model, image_embeddings
    from assets.ingest import normalized_images, source_manifest
    from medvec.tables import database
    from resources import home_resources
    from resources.embedders import LocalEmbedderResource

    settings, summary = s3_collection[0], s3_collection[1]
    table = database.connect(settings.lancedb_uri).open_table("images__tiny_siglip")
    before = table.count_rows()
    # The machine that resolved the model (this one, under the module's cache) is not this "pod".
    resolved_here = Path(os.environ["MEDVEC_CACHE_DIR"])
    resolved_here.rename(tmp_path / "elsewhere")
    monkeypatch.setenv("MEDVEC_CACHE_DIR", str(tmp_path / "fresh-pod-cache"))
    batch = summary.batches[0]
    try:
        with dg.instance_for_test() as instance:
            instance.add_dynamic_partitions("batch", [batch])
            result = dg.materialize([embedding_model, source_manifest, normalized_images, image_embeddings],
                                    partition_key=batch, instance=instance, selection=[image_embeddings],
                                    resources={**home_resources(settings),
                                               "embedder": LocalEmbedderResource(model="tiny-siglip")})
    finally:
        (tmp_path / "elsewhere").rename(resolved_here)
    assert result.success
    [event] = result.asset_materializations_for_node("image_embeddings")
    assert event.metadata["rows_written"].value == len(load_batch_records(settings.home, batch)) > 0
    # The model was fetched on this "machine".
    assert any((tmp_path / "fresh-pod-cache" / "models").rglob("config.json"))
    assert table.count_rows() == before


def test_s3_paths_read_write_list_and_lock(aws_env, tmp_path):
    client, bucket = aws_env
    home = S3Path(f"s3://{bucket}/scratch", client.meta.endpoint_url)
    manifest = batch_dir(home, "b1") / "manifest.json"
    assert not manifest.exists()
    assert create_exclusive(manifest, b'{"batch": "b1"}')
    assert not create_exclusive(manifest, b"other writer")  # exclusive: the first one stays
    assert manifest.read_bytes() == b'{"batch": "b1"}'
    write_atomic(batch_dir(home, "b2") / "records.parquet", b"x")  # a folder without a manifest is no batch
    assert list_batches(home) == ["b1"]
    assert [p.name for p in (home / "batches").iterdir()] == ["b1", "b2"]
    assert (home / "batches" / ".." / "escape").is_relative_to(home)
    assert not (home / "../elsewhere").is_relative_to(home)

    lock = home / "batches" / ".open.lock"
    with contextlib.ExitStack() as old_holder, contextlib.ExitStack() as new_holder:
        old_holder.enter_context(exclusive_lock(lock))
        assert lock.is_file()
        # A holder that stopped beating is taken over; its late release leaves the new holder's lock alone.
        new_holder.enter_context(exclusive_lock(lock, stale_after_s=0.0))
        old_holder.close()
        assert lock.is_file()
        new_holder.close()
    assert not lock.exists()

    # A lock left by a killed process: of two waiters exactly one takes it over, the other waits its turn.
    lock.write_bytes(b'{"token": "killed"}')
    held: list[tuple[float, float]] = []

    def age_s(held_object) -> float:
        # The lock's clock, injected: the killed holder's lock is an hour old, a live holder's never ages,
        # so however slow the machine, only the killed lock is stale (no sleep, no heartbeat window).
        return 3600.0 if b'"killed"' in held_object["Body"].read() else 0.0

    def hold() -> None:
        with exclusive_lock(lock, stale_after_s=2.0, poll_s=0.05, age_s=age_s):
            start = time.monotonic()
            time.sleep(0.3)
            held.append((start, time.monotonic()))

    waiters = [threading.Thread(target=hold) for _ in range(2)]
    for waiter in waiters:
        waiter.start()
    for waiter in waiters:
        waiter.join(timeout=300)  # only ends a hang
    (first_in, first_out), (second_in, _) = sorted(held)
    assert len(held) == 2 and second_in >= first_out  # never both inside
    assert not lock.exists()

    # WebP files go up from a pool of threads; every write lands, and a failed one is raised at the end.
    with concurrent_writes(True, threads=4, max_in_flight=8) as write:
        for i in range(40):
            write(home / "images" / f"{i:02d}.webp", bytes([i]) * 100)
    assert sorted(p.name for p in (home / "images").iterdir()) == [f"{i:02d}.webp" for i in range(40)]
    assert (home / "images" / "07.webp").read_bytes() == bytes([7]) * 100
    missing_bucket = S3Path(f"s3://no-such-bucket-{free_port()}/home", client.meta.endpoint_url)
    with pytest.raises(Exception, match="NoSuchBucket"):
        with concurrent_writes(True) as write:
            write(missing_bucket / "a.webp", b"x")

    # A bundle built locally is uploaded whole, and replaces the earlier one whole.
    site = tmp_path / "site"
    (site / "data").mkdir(parents=True)
    (site / "index.html").write_text("<html></html>")
    (site / "data" / "index.json").write_text("{}")
    target = S3Path(f"s3://{bucket}/site/cxr", client.meta.endpoint_url)
    (target / "stale.js").write_bytes(b"old")
    remove_tree(target)
    upload_tree(site, target)
    assert sorted(str(p.relative_to(target)) for p in target.rglob("*")) == ["data/index.json", "index.html"]
    assert (target / "data" / "index.json").read_text() == "{}"
    # Served by S3 as a static site: each object carries the type a browser needs.
    head = client.head_object(Bucket=bucket, Key="site/cxr/index.html")
    assert head["ContentType"].startswith("text/html")
    # `medvec bundle` never replaces a prefix that holds something other than a bundle (say, the home).
    from medvec.bundle.build import BundleError, _check_target

    with pytest.raises(BundleError, match="not a Medvec bundle"):
        _check_target(home)



def _write_batches(uri: str, endpoint: str, batches: list[str], rows_per_batch: int) -> None:
    """A writer process: what image_embeddings does per batch (open the table, one merge per batch)."""
    import os

    import pyarrow as pa

    from medvec.tables import database
    from medvec.tables.images import image_table_schema, open_image_table, upsert_batch

    os.environ["MEDVEC_S3_ENDPOINT_URL"] = endpoint
    table = open_image_table(database.connect(uri), "images__concurrent", 8)
    rng = np.random.default_rng(abs(hash(batches[0])) % 2**32)
    for batch in batches:
        rows = pa.Table.from_pylist([{"image_id": f"{batch}-{i}", "batch": batch,
                                      "vector": rng.standard_normal(8).astype(np.float32).tolist()}
                                     for i in range(rows_per_batch)], schema=image_table_schema(8))
        upsert_batch(table, batch, rows)  # as the asset calls it: LanceDB's merge retries a lost commit race


@pytest.mark.slow
def test_concurrent_writers_on_one_s3_table_lose_and_duplicate_nothing(aws_env):
    """Several embedding workers (pods) merging their batches into one LanceDB table on S3 at once: LanceDB
    commits with conditional PUTs and a merge that loses a commit race is retried by LanceDB, so every row
    lands once."""
    import multiprocessing

    from medvec.tables import database

    client, bucket = aws_env
    uri, endpoint = f"s3://{bucket}/lancedb", client.meta.endpoint_url
    writers = [[f"w{w}-b{b}" for b in range(4)] for w in range(3)]
    context = multiprocessing.get_context("spawn")
    processes = [context.Process(target=_write_batches, args=(uri, endpoint, batches, 50)) for batches in writers]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=240)
        assert process.exitcode == 0
    table = database.connect(uri, endpoint).open_table("images__concurrent")
    data = table.search().select(["image_id", "batch"]).limit(None).to_arrow()
    ids = data.column("image_id").to_pylist()
    assert len(ids) == len(set(ids)) == 3 * 4 * 50
    assert sorted(set(data.column("batch").to_pylist())) == sorted(b for batches in writers for b in batches)


@pytest.mark.slow
def test_steps_in_separate_processes_share_only_the_bucket(aws_env, tmp_path):
    """The cluster's shape without Kubernetes: `dagster asset materialize` runs each step in its own process
    (Dagster's multiprocess executor), and the steps hand each other nothing but what the bucket holds:
    the manifest, the records, the WebP files and the model's description (the IO manager's values)."""
    import shutil
    import subprocess
    import sys

    from medvec.tables import database
    from medvec.ingest.batches import plan_batches, write_manifest
    from medvec.sources import LocalFolderSource
    from tests.conftest import dicom_testfile

    client, bucket = aws_env
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    for name in ("CT_small.dcm", "MR_small_RLE.dcm", "JPEGLSNearLossless_16.dcm"):
        shutil.copy(dicom_testfile(name), incoming / name)
    env = {**os.environ, "MEDVEC_HOME": f"s3://{bucket}/procs/home", "MEDVEC_LANCEDB_URI": f"s3://{bucket}/procs/lancedb",
           "MEDVEC_MODEL": "tiny-siglip", "MEDVEC_PSEUDONYM_KEY": "test-key", "DAGSTER_HOME": str(tmp_path / "dagster")}
    env.pop("MEDVEC_EMBEDDER", None)
    env.pop("MEDVEC_PROFILE", None)
    settings = Settings.from_env(env)
    [manifest] = plan_batches(LocalFolderSource(incoming), settings.home, batch_size=10)
    write_manifest(settings.home, manifest)
    (tmp_path / "dagster").mkdir()
    (tmp_path / "dagster" / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    with dg.DagsterInstance.from_config(str(tmp_path / "dagster")) as instance:
        instance.add_dynamic_partitions("batch", [manifest.batch])

    dagster = [str(Path(sys.executable).parent / "dagster"), "asset", "materialize", "-m", "pipelines.definitions"]
    for selection in (["--select", "embedding_model"],
                      ["--select", "source_manifest,normalized_images,image_embeddings", "--partition", manifest.batch]):
        done = subprocess.run(dagster + selection, env=env, cwd=Path(__file__).resolve().parents[1],
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]

    table = database.connect(settings.lancedb_uri).open_table("images__tiny_siglip")
    assert table.count_rows() == 3
    with dg.DagsterInstance.from_config(str(tmp_path / "dagster")) as instance:
        [batch_run] = [r for r in instance.get_runs() if r.tags.get("dagster/partition") == manifest.batch]
        starts = [e for e in instance.all_logs(batch_run.run_id)
                  if e.dagster_event and e.dagster_event.event_type_value == "STEP_START"]
    # Every step in a process of its own: the three assets and the asset checks the job now runs beside them.
    assert {"source_manifest", "normalized_images", "image_embeddings"} <= {e.step_key for e in starts}
    assert len({e.dagster_event.pid for e in starts}) == len(starts) >= 3
