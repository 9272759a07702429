"""The sensors against real files, a real S3 server (moto) and a real Dagster instance: ticks are
evaluated through Dagster's own path (`evaluate_tick`), their partitions added and their runs
executed as the daemon would, and the cursor carried from tick to tick."""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pytest

from assets.checks import CHECKS
from assets.embeddings import embedding_model, image_embeddings
from assets.ingest import normalized_images, source_manifest
from assets.reports import report_embeddings, report_records
from assets.search import image_index
from medvec.tables import database
from medvec.ingest.batches import list_batches, load_manifest
from medvec.sources import LocalFolderSource
from medvec.storage import as_path
from medvec.ingest.watch import (AWAITING_LAUNCH, CHANGED_STAGE, WatchCursor, clear_awaiting, refresh_decision,
                          rescan)
import pipelines.sensors
from pipelines.definitions import defs
from pipelines.jobs import rescan_job
from pipelines.sensors import incoming_folder_sensor, s3_prefix_sensor, search_refresh_sensor
from resources import MedvecHomeResource, home_resources
from resources.embedders import LocalEmbedderResource
from tests.conftest import dicom_testfile

BIN = Path(sys.executable).parent
RUNNABLE = [embedding_model, source_manifest, normalized_images, report_records, image_embeddings, report_embeddings]
ONE_WORKER = {"ops": {"normalized_images": {"config": {"workers": 1}}}}


@pytest.fixture
def watch_env(monkeypatch):
    """Small batches, no clock-skew margin, and a short wait for partial batches."""
    for name, value in {"MEDVEC_WATCH_BATCH_SIZE": "3", "MEDVEC_WATCH_BATCHES_PER_TICK": "2",
                        "MEDVEC_WATCH_SETTLE_MARGIN_S": "0", "MEDVEC_WATCH_PARTIAL_WAIT_S": "600",
                        "MEDVEC_WATCH_TICK_BUDGET_S": "0"}.items():  # the floor only: a fixed 2 a tick
        monkeypatch.setenv(name, value)


@pytest.fixture
def resources(settings):
    return {**home_resources(settings),
            "embedder": LocalEmbedderResource(model="tiny-siglip")}


class Daemon:
    """What Dagster's sensor daemon does with a tick: evaluate it with the stored cursor, add the
    requested partitions, then (when asked) execute the requested runs."""

    def __init__(self, instance, resources, sensor):
        self.instance, self.resources, self.sensor, self.cursor = instance, resources, sensor, None

    def tick(self) -> dg.SensorResult:
        context = dg.build_sensor_context(instance=self.instance, instance_ref=self.instance.get_ref(),
                                          cursor=self.cursor, resources=self.resources, definitions=defs)
        result = self.sensor.evaluate_tick(context)
        for request in result.dynamic_partitions_requests:
            self.instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
        self.cursor = result.cursor
        self.last = result
        return result

    def launch(self) -> list[dg.ExecuteInProcessResult]:
        results = []
        for request in self.last.run_requests:
            normalizes = normalized_images.key in request.asset_selection
            selection = (dg.AssetSelection.assets(*request.asset_selection)
                         | dg.AssetSelection.checks(*(request.asset_check_keys or [])))
            results.append(dg.materialize([*RUNNABLE, *CHECKS], selection=selection,
                                          partition_key=request.partition_key, instance=self.instance,
                                          resources=self.resources, tags=request.tags,
                                          run_config=ONE_WORKER if normalizes else None))
            assert results[-1].success
        return results


def _files(folder: Path, names: list[str], age_s: float = 120.0) -> list[Path]:
    """Small files whose download finished `age_s` seconds ago."""
    paths = []
    for name in names:
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"DICM" + name.encode())
        os.utime(path, (time.time() - age_s,) * 2)
        paths.append(path)
    return paths


def _claimed(home: Path) -> list[str]:
    return [f.uri for b in list_batches(home) for f in load_manifest(home, b).files]


def _opened(result: dg.SensorResult) -> list[str]:
    return [k for r in result.dynamic_partitions_requests for k in r.partition_keys]


def test_settled_files_open_a_batch_and_its_run_in_one_tick_after_the_model(settings, resources, dagster_instance,
                                                                            watch_env):
    incoming = settings.home / "incoming"
    incoming.mkdir(parents=True)
    for name in ("CT_small.dcm", "MR_small_RLE.dcm"):
        shutil.copy(dicom_testfile(name), incoming / name)
        os.utime(incoming / name, (time.time() - 120,) * 2)
    daemon = Daemon(dagster_instance, resources, incoming_folder_sensor)

    first = daemon.tick()  # the first look has nothing to compare with: only the model is requested
    assert _opened(first) == [] and [r.asset_selection for r in first.run_requests] == [[embedding_model.key]]
    daemon.launch()

    second = daemon.tick()
    [batch] = _opened(second)  # the partition is added and its run requested in the same tick
    [request] = second.run_requests
    assert request.partition_key == batch and request.run_key == f"batch:{batch}"
    assert set(request.asset_selection) == {source_manifest.key, normalized_images.key, image_embeddings.key,
                                            report_records.key, report_embeddings.key}
    assert (settings.home / "batches" / batch / AWAITING_LAUNCH).exists()
    [run] = daemon.launch()
    assert run.asset_materializations_for_node("image_embeddings")[0].metadata["rows_written"].value == 2

    third = daemon.tick()  # the launched batch is done: nothing requested, the marker is gone
    assert third.run_requests == [] and _opened(third) == []
    assert not (settings.home / "batches" / batch / AWAITING_LAUNCH).exists()


def test_a_file_still_being_written_waits_until_it_stops_changing(settings, resources, dagster_instance, watch_env,
                                                                  monkeypatch):
    # The sensors' clock and the file's mtime are set by the test, one second apart per look: no sleep,
    # and no filesystem timestamp resolution, decides what is settled.
    now = {"t": float(int(time.time()))}
    monkeypatch.setattr(pipelines.sensors, "clock", lambda: now["t"])
    incoming = settings.home / "incoming"
    [growing] = _files(incoming, ["growing.dcm"], age_s=0)
    os.utime(growing, (now["t"],) * 2)
    daemon = Daemon(dagster_instance, resources, incoming_folder_sensor)
    for _ in range(3):
        assert _opened(daemon.tick()) == []  # it changed after the previous look began
        with growing.open("ab") as handle:  # the download goes on between ticks, as this look runs
            handle.write(b"more bytes")
        os.utime(growing, (now["t"],) * 2)
        now["t"] += 1
    assert _opened(daemon.tick()) == []
    now["t"] += 1
    [batch] = _opened(daemon.tick())  # unchanged since the previous look began: settled
    assert [f.uri for f in load_manifest(settings.home, batch).files] == [str(growing)]
    assert load_manifest(settings.home, batch).files[0].size == growing.stat().st_size


def test_a_done_marker_settles_files_on_the_first_look(settings, resources, dagster_instance, watch_env):
    incoming = settings.home / "incoming"
    _files(incoming, ["study1/a.dcm", "study1/b.dcm"], age_s=0)
    (incoming / "study1" / ".done").touch()
    _files(incoming, ["c.dcm"], age_s=0)
    (incoming / "c.dcm.done").touch()
    _files(incoming, ["d.dcm"], age_s=0)  # no marker, just written: waits
    daemon = Daemon(dagster_instance, resources, incoming_folder_sensor)
    [batch] = _opened(daemon.tick())
    assert sorted(Path(u).name for u in _claimed(settings.home)) == ["a.dcm", "b.dcm", "c.dcm"]
    assert batch in list_batches(settings.home)


def test_a_folder_marker_still_settles_files_when_a_look_resumes_after_its_budget(settings):
    """The root's `.done` sorts before every file: a look resumed in the middle never lists it again."""
    from medvec.ingest.watch import WatchOptions, watch_source

    incoming = settings.home / "incoming"
    files = _files(incoming, [f"p{i}/x.dcm" for i in range(4)], age_s=0)
    (incoming / ".done").touch()
    source = LocalFolderSource(incoming)
    resumed = WatchCursor(pass_started=time.time(), resume_after=str(files[1]))  # first pass, half listed
    tick = watch_source(source, settings.home, resumed, WatchOptions(batch_size=10, settle_margin_s=0),
                        launcher="test", now=time.time())
    assert sorted(f.uri for m in tick.opened for f in m.files) == [str(f) for f in files[2:]]


def test_batches_are_bounded_a_tick_opens_a_few_and_no_file_is_batched_twice(settings, resources, dagster_instance,
                                                                               watch_env):
    incoming = settings.home / "incoming"
    files = _files(incoming, [f"p{i % 3}/s{i:02d}.dcm" for i in range(10)])
    daemon = Daemon(dagster_instance, resources, incoming_folder_sensor)
    daemon.tick()  # first look
    second = _opened(daemon.tick())
    assert len(second) == 2 and all(len(load_manifest(settings.home, b).files) == 3 for b in second)
    assert WatchCursor.from_json(daemon.cursor).resume_after is not None  # the cap cut the look short
    third = _opened(daemon.tick())
    assert [len(load_manifest(settings.home, b).files) for b in third] == [3, 1]  # quiet source: the rest opens
    for _ in range(3):  # later looks, and a forgotten cursor, never batch a file again
        assert _opened(daemon.tick()) == []
    daemon.cursor = None
    daemon.tick()
    assert _opened(daemon.tick()) == []
    claimed = _claimed(settings.home)
    assert sorted(claimed) == sorted(str(f) for f in files) and len(claimed) == len(set(claimed))


def test_a_partial_batch_waits_while_downloads_go_on(settings, resources, dagster_instance, watch_env, monkeypatch):
    incoming = settings.home / "incoming"
    _files(incoming, ["a.dcm", "b.dcm"])
    [busy] = _files(incoming, ["c.dcm"], age_s=0)
    daemon = Daemon(dagster_instance, resources, incoming_folder_sensor)
    daemon.tick()
    busy.write_bytes(b"still downloading")
    assert _opened(daemon.tick()) == []  # 2 settled < batch size 3, and c.dcm is still changing
    assert WatchCursor.from_json(daemon.cursor).held_since is not None
    monkeypatch.setenv("MEDVEC_WATCH_PARTIAL_WAIT_S", "0")
    busy.write_bytes(b"still downloading more")
    [batch] = _opened(daemon.tick())  # waited long enough: the partial batch opens
    assert sorted(Path(f.uri).name for f in load_manifest(settings.home, batch).files) == ["a.dcm", "b.dcm"]


def test_a_changed_file_is_reported_once_and_never_batched_again(settings, resources, dagster_instance, watch_env):
    incoming = settings.home / "incoming"
    [first, _, _] = _files(incoming, ["a.dcm", "b.dcm", "c.dcm"])
    daemon = Daemon(dagster_instance, resources, incoming_folder_sensor)
    daemon.tick()
    [batch] = _opened(daemon.tick())
    first.write_bytes(b"a different, longer file body")
    for _ in range(3):
        assert _opened(daemon.tick()) == []
    errors = [e for e in database.list_errors(database.connect(settings.lancedb_uri)) if e["stage"] == CHANGED_STAGE]
    assert [(e["source_uri"], e["batch"]) for e in errors] == [(str(first), batch)]
    assert "size changed after its batch was opened" in errors[0]["message"]
    assert f"medvec backfill --batches {batch}" in errors[0]["message"]
    assert _claimed(settings.home).count(str(first)) == 1


WATCHER = """
import sys, time
from pathlib import Path
from medvec.sources import LocalFolderSource
from medvec.ingest.batches import list_batches, load_manifest
from medvec.ingest.watch import WatchCursor, WatchOptions, watch_source

folder, home, total = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
options = WatchOptions(batch_size=7, batches_per_tick=2, settle_margin_s=0)
cursor = WatchCursor(previous_pass_started=time.time())
print("ready", flush=True)
sys.stdin.readline()  # a barrier: the sensor has opened its first batch; now both race
# Until every file is claimed, by either watcher: no wall-clock window.
while sum(len(load_manifest(home, b).files) for b in list_batches(home)) < total:
    cursor = watch_source(LocalFolderSource(folder), home, cursor, options, launcher="other").cursor
"""


def _launchers(home: Path) -> list[str]:
    """Who opened each batch (a batch the other process is opening right now may not say yet)."""
    markers = [home / "batches" / b / AWAITING_LAUNCH for b in list_batches(home)]
    return [json.loads(m.read_text())["launcher"] for m in markers if m.exists()]


def test_two_watchers_of_one_folder_never_claim_a_file_twice(settings, resources, dagster_instance, watch_env,
                                                            monkeypatch):
    """Two watchers of one folder (say a second code server; `medvec ingest` takes the same lock) race
    for 300 files; every file lands in exactly one batch."""
    incoming = settings.home / "incoming"
    files = _files(incoming, [f"d{i // 50}/f{i:03d}.dcm" for i in range(300)])
    monkeypatch.setenv("MEDVEC_WATCH_BATCH_SIZE", "7")
    other = subprocess.Popen([sys.executable, "-c", WATCHER, str(incoming), str(settings.home), str(len(files))],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert other.stdout.readline().strip() == "ready", other.stderr.read()
    daemon = Daemon(dagster_instance, resources, incoming_folder_sensor)
    daemon.cursor = WatchCursor(previous_pass_started=time.time()).to_json()
    while "incoming_folder_sensor" not in _launchers(settings.home):
        daemon.tick()
    other.stdin.write("go\n")
    other.stdin.flush()
    # Then the sensor waits (a barrier, not a window) until the other watcher has opened a batch too, so
    # both really race whatever the machine's load; the deadline only turns a hang into a failure.
    deadline = time.monotonic() + 300
    while "other" not in _launchers(settings.home) and len(_claimed(settings.home)) < len(files):
        assert time.monotonic() < deadline and other.poll() is None, other.stderr.read()
        time.sleep(0.01)
    while len(_claimed(settings.home)) < len(files):
        daemon.tick()
    assert other.wait(120) == 0, other.stderr.read()
    owners = {}
    for batch in list_batches(settings.home):
        for entry in load_manifest(settings.home, batch).files:
            assert entry.uri not in owners, f"{entry.uri} is in {owners[entry.uri]} and {batch}"
            owners[entry.uri] = batch
    assert sorted(owners) == sorted(str(f) for f in files)
    launchers = {json.loads((settings.home / "batches" / b / AWAITING_LAUNCH).read_text())["launcher"]
                 for b in list_batches(settings.home)}
    assert launchers == {"other", "incoming_folder_sensor"}  # both really opened batches


@pytest.mark.parametrize("home_on", ["local", "s3"])
def test_s3_prefix_sensor_opens_batches_and_reports_a_replaced_object(settings, resources, dagster_instance, home_on,
                                                                        watch_env, s3_endpoint, monkeypatch):
    """With the Medvec home and LanceDB local, and with both in the bucket (the cluster profile)."""
    import boto3

    bucket = f"watched-{home_on}"
    for key, value in {"AWS_ACCESS_KEY_ID": "t", "AWS_SECRET_ACCESS_KEY": "t", "AWS_DEFAULT_REGION": "us-east-1",
                       "MEDVEC_WATCH_S3": f"s3://{bucket}/cxr", "MEDVEC_WATCH_BATCH_SIZE": "2"}.items():
        monkeypatch.setenv(key, value)
    client = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    client.create_bucket(Bucket=bucket)
    for name in ("p1/a.dcm", "p1/b.dcm", "p2/c.dcm", "p2/notes.csv"):
        client.put_object(Bucket=bucket, Key=f"cxr/{name}", Body=b"DICM" + name.encode())
    client.put_object(Bucket=bucket, Key="cxr/p1/.done", Body=b"")
    if home_on == "s3":
        home = f"s3://{bucket}/home"
        settings = settings.model_copy(update={"home": as_path(home, s3_endpoint), "lancedb_uri": f"{home}/lancedb",
                                               "s3_endpoint_url": s3_endpoint})
        monkeypatch.setenv("MEDVEC_S3_ENDPOINT_URL", s3_endpoint)
    resources = {**resources, "medvec": MedvecHomeResource(home=str(settings.home), lancedb_uri=settings.lancedb_uri,
                                                           s3_endpoint_url=s3_endpoint)}
    # S3 times have one-second resolution: the sensors' clock runs 2 s ahead, so an object written before
    # a look is older than that look's start (rather than sleeping past the resolution).
    monkeypatch.setattr(pipelines.sensors, "clock", lambda: time.time() + 2)
    daemon = Daemon(dagster_instance, resources, s3_prefix_sensor)
    [batch] = _opened(daemon.tick())  # p1 is marked done; p2/c.dcm waits for a second look
    assert sorted(_claimed(settings.home)) == [f"s3://{bucket}/cxr/p1/a.dcm", f"s3://{bucket}/cxr/p1/b.dcm"]
    [later] = _opened(daemon.tick())
    assert [f.uri for f in load_manifest(settings.home, later).files] == [f"s3://{bucket}/cxr/p2/c.dcm"]
    client.put_object(Bucket=bucket, Key="cxr/p1/a.dcm", Body=b"replaced content")
    assert _opened(daemon.tick()) == []
    [error] = [e for e in database.list_errors(database.connect(settings.lancedb_uri)) if e["stage"] == CHANGED_STAGE]
    assert error["source_uri"] == f"s3://{bucket}/cxr/p1/a.dcm" and error["batch"] == batch
    assert "ETag differs" in error["message"]


def test_a_large_prefix_is_looked_at_over_several_ticks(settings, resources, dagster_instance, watch_env,
                                                        s3_endpoint, monkeypatch):
    import boto3
    from concurrent.futures import ThreadPoolExecutor

    for key, value in {"AWS_ACCESS_KEY_ID": "t", "AWS_SECRET_ACCESS_KEY": "t", "AWS_DEFAULT_REGION": "us-east-1",
                       "MEDVEC_WATCH_S3": "s3://large-prefix/cxr", "MEDVEC_WATCH_LISTING_BUDGET_S": "0",
                       "MEDVEC_WATCH_BATCH_SIZE": "600", "MEDVEC_WATCH_BATCHES_PER_TICK": "4"}.items():
        monkeypatch.setenv(key, value)
    client = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    client.create_bucket(Bucket="large-prefix")
    keys = [f"cxr/p{i // 100:02d}/{i:04d}.dcm" for i in range(1100)]
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda k: client.put_object(Bucket="large-prefix", Key=k, Body=b"DICM"), keys))
    monkeypatch.setattr(pipelines.sensors, "clock", lambda: time.time() + 2)  # past S3's one-second resolution
    resources = {**resources, "medvec": MedvecHomeResource(home=str(settings.home), lancedb_uri=settings.lancedb_uri,
                                                           s3_endpoint_url=s3_endpoint)}
    daemon = Daemon(dagster_instance, resources, s3_prefix_sensor)
    daemon.tick()  # a zero budget: one page (1,000 keys) per look
    cursor = WatchCursor.from_json(daemon.cursor)
    assert cursor.resume_after == f"s3://large-prefix/{keys[999]}" and cursor.previous_pass_started is None
    daemon.tick()  # the rest: the first pass is complete
    assert WatchCursor.from_json(daemon.cursor).previous_pass_started is not None
    opened = [b for _ in range(6) for b in _opened(daemon.tick())]  # later passes open what the first saw
    sizes = [len(load_manifest(settings.home, b).files) for b in opened]
    assert sorted(sizes, reverse=True)[0] == 600 and all(size <= 600 for size in sizes) and len(sizes) <= 3
    assert sorted(_claimed(settings.home)) == [f"s3://large-prefix/{k}" for k in keys]


def test_rescan_job_opens_unclaimed_files_and_the_sensor_launches_them(settings, resources, dagster_instance,
                                                                         watch_env):
    incoming = settings.home / "incoming"
    old = _files(incoming, ["old1.dcm", "old2.dcm", "old3.dcm", "old4.dcm"])
    _files(incoming, ["fresh.dcm"], age_s=0)
    result = rescan_job.execute_in_process(instance=dagster_instance, resources=resources, run_config={
        "ops": {"rescan_source": {"config": {"batch_size": 3}}}})
    assert result.success
    batches = result.output_for_node("rescan_source")
    assert len(batches) == 2 and set(dagster_instance.get_dynamic_partitions("batch")) == set(batches)
    assert sorted(_claimed(settings.home)) == sorted(str(p) for p in old)  # fresh.dcm may still be downloading
    dg.materialize([embedding_model], instance=dagster_instance, resources=resources)
    daemon = Daemon(dagster_instance, resources, incoming_folder_sensor)
    assert sorted(r.partition_key for r in daemon.tick().run_requests) == sorted(batches)


def test_search_refresh_runs_once_after_a_wave_of_batches(tmp_path, settings, resources, dagster_instance,
                                                         monkeypatch):
    from pipelines.backfill import backfill
    from pipelines.ingest import ingest

    # The sensors' clock is advanced past the quiet period instead of slept through: no timing window on a
    # loaded machine. 600 s outlasts the embed runs' own checks (after the last vectors land) however slow.
    monkeypatch.setenv("MEDVEC_REFRESH_QUIET_S", "600")
    advanced = {"s": 0.0}
    monkeypatch.setattr(pipelines.sensors, "clock", lambda: time.time() + advanced["s"])
    folder = tmp_path / "wave"
    folder.mkdir()
    for name in ("CT_small.dcm", "MR_small_RLE.dcm"):
        shutil.copy(dicom_testfile(name), folder / name)
    refresh = Daemon(dagster_instance, {"medvec": resources["medvec"]}, search_refresh_sensor)
    assert "no embeddings yet" in refresh.tick().skip_message
    summary = ingest(str(folder), settings, batch_size=1, instance=dagster_instance, embed=False, workers=1)
    backfill(settings, summary.batches, instance=dagster_instance, embedder=resources["embedder"], refresh=False,
             normalize_config={"workers": 1})
    assert "debouncing" in refresh.tick().skip_message  # the last vectors just landed
    advanced["s"] += 601
    [request] = refresh.tick().run_requests  # one refresh for both batches
    job = defs.resolve_job_def("search_refresh_job")
    assert job.execute_in_process(instance=dagster_instance, resources=resources, tags=request.tags).success
    assert "already cover" in refresh.tick().skip_message

    # A re-run whose images are all in the table already embeds nothing: no reason to refresh.
    backfill(settings, summary.batches[:1], instance=dagster_instance, embedder=resources["embedder"], refresh=False,
             normalize_config={"workers": 1})
    advanced["s"] += 601
    assert "already cover" in refresh.tick().skip_message

    _files(tmp_path / "more", ["late.dcm"])  # another batch of the wave, opened but not launched yet
    [waiting], _ = rescan(LocalFolderSource(tmp_path / "more"), settings.home, launcher="incoming_folder_sensor")
    (tmp_path / "new").mkdir()
    shutil.copy(dicom_testfile("SC_rgb.dcm"), tmp_path / "new" / "SC_rgb.dcm")  # an image the table lacks
    new = ingest(str(tmp_path / "new"), settings, batch_size=1, instance=dagster_instance, embed=False, workers=1)
    backfill(settings, new.batches, instance=dagster_instance, embedder=resources["embedder"], refresh=False,
             normalize_config={"workers": 1})
    advanced["s"] += 601
    assert "1 batch(es) awaiting launch" in refresh.tick().skip_message
    clear_awaiting(settings.home, waiting.batch)
    assert len(refresh.tick().run_requests) == 1


def test_a_rerun_that_embedded_nothing_does_not_refresh_search(resources, dagster_instance, monkeypatch):
    monkeypatch.setenv("MEDVEC_REFRESH_QUIET_S", "0")

    def embeddings(embedded: int, skipped: int) -> None:  # what image_embeddings records for a run
        dagster_instance.report_runless_asset_event(dg.AssetMaterialization(
            image_embeddings.key, metadata={"embedded": embedded, "skipped": skipped, "rows_written": skipped}))

    def tick():
        return search_refresh_sensor(dg.build_sensor_context(instance=dagster_instance,
                                                             resources={"medvec": resources["medvec"]}))

    embeddings(3, 0)
    assert isinstance(tick(), dg.RunRequest)
    dagster_instance.report_runless_asset_event(dg.AssetMaterialization(image_index.key))  # the refresh ran
    embeddings(0, 3)  # every image was in the table already
    embeddings(0, 2)
    skipped = tick()
    assert isinstance(skipped, dg.SkipReason) and "already cover" in skipped.skip_message
    embeddings(1, 2)
    [latest] = dagster_instance.fetch_materializations(image_embeddings.key, limit=1).records
    assert tick().run_key == f"refresh:{latest.storage_id}"


def test_refresh_waits_for_embedding_runs_in_flight_and_for_a_running_refresh():
    decide = dict(last_embedded_at=100.0, indexed_from=50.0, awaiting=lambda: 0, now=200.0, quiet_s=60.0)
    assert refresh_decision(**decide, embedding_in_flight=0, refresh_in_flight=False)[0]
    assert not refresh_decision(**decide, embedding_in_flight=2, refresh_in_flight=False)[0]
    assert not refresh_decision(**decide, embedding_in_flight=0, refresh_in_flight=True)[0]
    assert not refresh_decision(**{**decide, "now": 130.0}, embedding_in_flight=0, refresh_in_flight=False)[0]
    assert not refresh_decision(**{**decide, "indexed_from": 150.0}, embedding_in_flight=0, refresh_in_flight=False)[0]


def test_the_code_location_holds_the_sensors_and_the_rescan_job():
    repo = defs.get_repository_def()
    sensors = {s.name: s for s in repo.sensor_defs}
    assert set(sensors) >= {"incoming_folder_sensor", "s3_prefix_sensor", "search_refresh_sensor"}
    # Watching the user's data is a choice made in the UI or with `dagster sensor start`.
    assert sensors["incoming_folder_sensor"].default_status == dg.DefaultSensorStatus.STOPPED
    assert sensors["search_refresh_sensor"].default_status == dg.DefaultSensorStatus.RUNNING
    assert repo.has_job("rescan_job")


def test_the_dagster_yaml_template_limits_the_gpu_pool_and_monitors_runs(tmp_path):
    root = Path(__file__).resolve().parents[1]
    shutil.copy(root / "deploy" / "dagster.yaml", tmp_path / "dagster.yaml")
    with dg.DagsterInstance.from_config(str(tmp_path)) as instance:
        assert instance.event_log_storage.get_concurrency_info("gpu").limit == 1
        assert instance.run_monitoring_enabled
        assert instance.run_monitoring_settings["free_slots_after_run_end_seconds"] > 0
        assert instance.run_coordinator.__class__.__name__ == "QueuedRunCoordinator"
