"""Straight from the archive, against real servers: a throwaway Orthanc with its DICOMweb plugin for the
DICOMweb sensor, DCMTK's storescu/echoscu against `medvec receive`, a real Dagster instance, real
decoding and LanceDB. Instances carry PHI sentinels; none may reach any output."""

import os
import shutil
import signal
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import dagster as dg
import pydicom
import pytest

from assets.ingest import normalized_images
from medvec.ingest.batches import list_batches, load_batch_records, load_manifest
from medvec.sources.dicomweb import sop_uid_of
from medvec.tables import database
from pipelines.dicomweb_sensor import dicomweb_sensor
from pipelines.ingest import ingest
from tests.conftest import dicom_testfile, free_port
from tests.orthanc_server import Orthanc
from tests.test_phi import SENTINELS
from tests.test_sensors import ONE_WORKER, RUNNABLE, Daemon

BIN = Path(sys.executable).parent
SHARED = sorted(Path("/work/shared/data/dicom").glob("*.dcm"))
WG04 = ("RG1_UNCR.dcm", "RG3_UNCR.dcm")  # what the sample generator takes from pydicom-data


def _sample_files() -> list[Path]:
    return [*SHARED, *(dicom_testfile(name) for name in WG04)]


def _with_sentinels(source: Path, target: Path, **overrides) -> str:
    ds = pydicom.dcmread(source, force=True)  # one sample file has no preamble
    for keyword, value in {**SENTINELS, **overrides}.items():
        setattr(ds, keyword, value)
    ds.save_as(target, enforce_file_format=True)  # what a PACS holds: a full PS3.10 file
    return str(ds.SOPInstanceUID)


@pytest.fixture(scope="session")
def sample(tmp_path_factory) -> dict[str, Path]:
    """SOPInstanceUID → a copy of each sample file with every PHI sentinel written into it."""
    folder = tmp_path_factory.mktemp("pacs_sample")
    return {_with_sentinels(path, folder / path.name): folder / path.name for path in _sample_files()}


@pytest.fixture(scope="session")
def orthanc(tmp_path_factory, sample):
    server = Orthanc(tmp_path_factory.mktemp("orthanc")).start()
    for path in sample.values():
        server.upload(path.read_bytes())
    yield server
    server.stop()


@pytest.fixture
def archive_env(monkeypatch, settings):
    def point_at(server: Orthanc):
        monkeypatch.setenv("MEDVEC_DICOMWEB_URL", server.dicomweb_url)
    monkeypatch.setenv("MEDVEC_WATCH_BATCH_SIZE", "4")
    return point_at


@pytest.fixture
def resources(settings):
    from resources import home_resources
    from resources.embedders import LocalEmbedderResource

    return {**home_resources(settings), "embedder": LocalEmbedderResource(model="tiny-siglip")}


def _held(home) -> list[str]:
    return sorted(sop_uid_of(f.uri) for b in list_batches(home) for f in load_manifest(home, b).files)


def _ingested(home) -> list[str]:
    return sorted(r.source_uri.rsplit("/", 1)[-1] for b in list_batches(home) for r in load_batch_records(home, b))


def _first_ticks(daemon: Daemon) -> None:
    """Tick one opens batches and asks for the model; tick two launches the batches."""
    daemon.tick()
    daemon.launch()
    daemon.tick()
    daemon.launch()


@pytest.mark.slow
def test_dicomweb_sensor_ingests_exactly_the_archive_then_only_later_arrivals(
        orthanc, sample, settings, resources, dagster_instance, archive_env, tmp_path, caplog):
    archive_env(orthanc)
    daemon = Daemon(dagster_instance, resources, dicomweb_sensor)
    _first_ticks(daemon)
    assert _held(settings.home) == sorted(sample) == _ingested(settings.home)

    again = daemon.tick()  # nothing new: nothing opened, nothing requested
    assert again.run_requests == [] and _held(settings.home) == sorted(sample)

    later = tmp_path / "later.dcm"
    new_uid = _with_sentinels(dicom_testfile("CT_small.dcm"), later, StudyDate=date.today().strftime("%Y%m%d"))
    orthanc.upload(later.read_bytes())
    arrived = daemon.tick()
    [request] = arrived.run_requests
    assert [sop_uid_of(f.uri) for f in load_manifest(settings.home, request.partition_key).files] == [new_uid]
    daemon.launch()
    assert _ingested(settings.home) == sorted([*sample, new_uid])

    # PHI: no sentinel in the home, Dagster's storage, the cursor, the logs or the run events.
    haystacks = {str(p): p.read_bytes() for p in settings.home.rglob("*") if p.is_file()}
    haystacks.update({str(p): p.read_bytes() for p in Path(dagster_instance.root_directory).rglob("*") if p.is_file()})
    haystacks["cursor"] = (daemon.cursor or "").encode()
    haystacks["log"] = caplog.text.encode()
    for run in dagster_instance.get_runs():
        haystacks[f"events {run.run_id}"] = repr(dagster_instance.all_logs(run.run_id)).encode()
    for where, data in haystacks.items():
        for keyword, value in SENTINELS.items():
            assert value.encode() not in data, f"{keyword} leaked into {where}"


@pytest.mark.slow
def test_archive_down_mid_run_fails_the_batch_clearly_and_a_later_tick_resumes_it(
        tmp_path, settings, resources, dagster_instance, archive_env):
    server = Orthanc(tmp_path / "orthanc").start()
    try:
        uids = [_with_sentinels(dicom_testfile(n), tmp_path / n) for n in ("CT_small.dcm", "MR_small_RLE.dcm")]
        for name in ("CT_small.dcm", "MR_small_RLE.dcm"):
            server.upload((tmp_path / name).read_bytes())
        archive_env(server)
        daemon = Daemon(dagster_instance, resources, dicomweb_sensor)
        daemon.tick()
        daemon.launch()  # the model
        [request] = daemon.tick().run_requests
        server.stop()  # the archive goes down after the batch opened, before its instances are retrieved
        failed = dg.materialize(RUNNABLE, selection=request.asset_selection, partition_key=request.partition_key,
                                instance=dagster_instance, resources=resources, tags=request.tags,
                                run_config=ONE_WORKER, raise_on_error=False)
        assert not failed.success
        failure = [e for e in failed.all_events if e.is_step_failure][0]
        cause = failure.step_failure_data.error.cause
        assert cause.cls_name == "SourceUnavailable" and "did not answer" in cause.message

        down = daemon.tick()
        assert down.run_requests == [] and "did not answer" in down.skip_message

        server.start()
        [resume] = daemon.tick().run_requests
        assert resume.partition_key == request.partition_key and resume.run_key.endswith(":resume:1")
        daemon.launch()
        assert _ingested(settings.home) == sorted(uids)
        assert daemon.tick().run_requests == []
    finally:
        server.stop()


# --- the receiver ----------------------------------------------------------------------------------------

def _echo(port: int, calling: str = "ECHOSCU") -> subprocess.CompletedProcess:
    return subprocess.run(["echoscu", "-aet", calling, "-aec", "MEDVEC", "127.0.0.1", str(port)],
                          capture_output=True, text=True, timeout=30)


@pytest.fixture
def receiver(tmp_path):
    """`medvec receive` in its own process; yields (port, out folder, process)."""
    started = []

    def start(*allow: str):
        port, out = free_port(), tmp_path / "incoming"
        command = [str(BIN / "medvec"), "receive", "--ae-title", "MEDVEC", "--port", str(port), "--out", str(out)]
        process = subprocess.Popen(command + (["--allow", *allow] if allow else []), stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True)
        started.append(process)
        assert "receiving as MEDVEC" in process.stdout.readline()
        deadline = time.monotonic() + 300  # only ends a hang: a loaded machine may take long to start it
        while _echo(port, allow[0] if allow else "ECHOSCU").returncode != 0:  # readiness: the port answers
            assert time.monotonic() < deadline and process.poll() is None, "medvec receive did not answer"
            time.sleep(0.1)
        return port, out, process

    yield start
    for process in started:
        if process.poll() is None:
            process.kill()
        process.wait()


def test_receiver_answers_echo_and_refuses_unknown_callers(receiver):
    port, _, _ = receiver("PACS1")
    assert _echo(port, "PACS1").returncode == 0
    refused = _echo(port, "STRANGER")
    assert refused.returncode != 0 and "reject" in (refused.stdout + refused.stderr).lower()


#: storescu proposes uncompressed syntaxes unless told; a compressed file needs its own (no transcoding).
_PROPOSE = {"1.2.840.10008.1.2.4.50": ["-xy"], "1.2.840.10008.1.2.4.51": ["-xx"], "1.2.840.10008.1.2.4.90": ["-xv"],
            "1.2.840.10008.1.2.4.70": ["-xs"], "1.2.840.10008.1.2.4.80": ["-xt"]}


@pytest.mark.slow
def test_storescu_push_ends_with_every_image_searchable(receiver, sample, settings, dagster_instance):
    port, out, _ = receiver()
    for path in sample.values():  # one association per file: storescu proposes each file's own syntax
        syntax = str(pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID)
        pushed = subprocess.run(["storescu", *_PROPOSE.get(syntax, []), "-aec", "MEDVEC", "127.0.0.1", str(port),
                                 str(path)],
                                capture_output=True, text=True, timeout=120)
        assert pushed.returncode == 0, pushed.stderr
    studies = [p for p in out.iterdir() if p.is_dir()]
    # The receiver marks a study done on EVT_RELEASED, which pynetdicom fires after the release reply has gone
    # out: storescu may have exited first. The deadline only ends a hang.
    deadline = time.monotonic() + 120
    while not all((s / ".done").exists() for s in studies):
        assert time.monotonic() < deadline, "the receiver did not mark every study done"
        time.sleep(0.05)
    files = sorted(out.rglob("*.dcm"))
    assert sorted(str(pydicom.dcmread(f).SOPInstanceUID) for f in files) == sorted(sample)

    summary = ingest(str(out), settings, instance=dagster_instance, workers=1)
    assert summary.ok == len(sample) and summary.embedded == len(sample) and summary.indexed
    table = database.connect(settings.lancedb_uri).open_table(summary.table)
    assert table.count_rows() == len(sample)
    for path in files:  # file names hold no UIDs and the stored files no less than what was sent
        assert str(pydicom.dcmread(path).SOPInstanceUID) not in str(path)


@pytest.mark.slow
def test_killing_the_receiver_mid_association_keeps_every_acknowledged_instance_whole(receiver, sample, tmp_path):
    port, out, process = receiver()
    plain = [str(p) for p in sample.values() if not pydicom.dcmread(p, stop_before_pixels=True)
             .file_meta.TransferSyntaxUID.is_compressed]
    files = plain * 3  # one association, several stores of each
    push = subprocess.Popen(["storescu", "-v", "-R", "-aec", "MEDVEC", "127.0.0.1", str(port), *files],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    for line in push.stdout:  # kill the receiver as soon as the first store is acknowledged
        lines.append(line)
        if "Received Store Response (Success)" in line:
            os.kill(process.pid, signal.SIGKILL)
            break
    lines.extend(push.stdout)
    push.wait(timeout=60)
    acknowledged = sum("Received Store Response (Success)" in line for line in lines)
    assert acknowledged >= 1 and push.returncode != 0  # the association broke off
    stored = [p for p in out.rglob("*.dcm")]  # hidden temp files are never listed by the folder sensor
    assert stored and not any(p.name.startswith(".") for p in stored)
    by_uid = {}
    for path in stored:  # every visible file is whole: it parses to the end and matches what was sent
        ds = pydicom.dcmread(path)
        by_uid[str(ds.SOPInstanceUID)] = path
        assert path.read_bytes()[-64:] == _sent_tail(sample[str(ds.SOPInstanceUID)])
    assert len(by_uid) >= min(acknowledged, len(sample))


def _sent_tail(path: Path) -> bytes:
    return path.read_bytes()[-64:]


# --- backfill by study date range ------------------------------------------------------------------------

BACKFILL_FILES = {"CT_small.dcm": "20230105", "MR_small.dcm": "20230310", "MR_small_RLE.dcm": "20230622",
                  "JPEG2000.dcm": "20230930"}
SPRING = ("20230301", "20230630")


def _upload_dated(server: Orthanc, source: Path, target: Path, study_date: str) -> str:
    """One study per date (Orthanc dates studies, not files), with fresh UIDs: MR_small_RLE.dcm is
    MR_small.dcm re-encoded, with the same SOPInstanceUID."""
    from pydicom.uid import generate_uid

    uid = _with_sentinels(source, target, StudyDate=study_date, StudyInstanceUID=generate_uid(),
                          SeriesInstanceUID=generate_uid(), SOPInstanceUID=generate_uid())
    server.upload(target.read_bytes())
    return uid


def _by_instance(home) -> dict[str, tuple]:
    """SOPInstanceUID → (its stored record, (inode, mtime) of its viewing WebP): what a re-ingest rewrites."""
    found = {}
    for batch in list_batches(home):
        for record in load_batch_records(home, batch):
            st = (home / record.image_uri).stat()
            found[sop_uid_of(record.source_uri)] = (record, (st.st_ino, st.st_mtime_ns))
    return found


@pytest.mark.slow
def test_backfill_by_date_range_reingests_exactly_that_range_and_nothing_outside_it(
        tmp_path, settings, resources, dagster_instance, archive_env):
    from pipelines.dicomweb_sensor import dicomweb_backfill_job

    server = Orthanc(tmp_path / "orthanc").start()
    try:
        uid_of = {d: _upload_dated(server, dicom_testfile(n), tmp_path / n, d) for n, d in BACKFILL_FILES.items()}
        in_range = sorted(uid for d, uid in uid_of.items() if SPRING[0] <= d <= SPRING[1])
        archive_env(server)
        daemon = Daemon(dagster_instance, resources, dicomweb_sensor)
        _first_ticks(daemon)  # the whole archive ingested: one batch of four (MEDVEC_WATCH_BATCH_SIZE=4)
        [batch] = list_batches(settings.home)
        def rows() -> int:  # opened afresh: an open LanceDB table keeps the version it opened
            return database.connect(settings.lancedb_uri).open_table("images__tiny_siglip").count_rows()

        assert rows() == 4

        def backfill_spring() -> tuple[dict, list[dict], list[dict]]:
            config = {"ops": {"open_dicomweb_range": {"config": {"study_date_from": SPRING[0],
                                                                 "study_date_to": SPRING[1]}}}}
            job = dicomweb_backfill_job.execute_in_process(run_config=config, instance=dagster_instance,
                                                           resources=resources)
            opened = [e for e in job.all_events if e.event_type_value == "STEP_OUTPUT"][0].event_specific_data.metadata
            daemon.tick()
            runs = daemon.launch()
            normalized = [r.asset_materializations_for_node("normalized_images")[0].metadata for r in runs]
            embedded = [r.asset_materializations_for_node("image_embeddings")[0].metadata for r in runs]
            return {k: v.value for k, v in opened.items()}, normalized, embedded

        for attempt in ("first", "identical second"):
            before = _by_instance(settings.home)
            opened, [normalized], [embedded] = backfill_spring()
            after = _by_instance(settings.home)
            assert opened["instances_in_range"] == 2 and opened["batches_opened"] == [], attempt
            assert opened["batches_reingesting"] == {batch: 2}, attempt
            # exactly the range read and normalised again; the rest of the batch not even read
            assert (normalized["reingested"].value, normalized["normalized_this_run"].value,
                    normalized["kept_unread"].value, normalized["skipped_unchanged"].value) == (2, 2, 2, 0), attempt
            assert sorted(u for u in after if after[u][1] != before[u][1]) == in_range, attempt
            assert all(after[u] == before[u] for u in after if u not in in_range), attempt
            assert all(after[u][0] == before[u][0] for u in in_range), attempt  # same records, rewritten files
            # unchanged content and model: no vector computed, the table keeps one row per image
            assert (embedded["embedded"].value, embedded["skipped"].value) == (0, 4), attempt
            assert rows() == 4 and list_batches(settings.home) == [batch], attempt
            assert daemon.tick().run_requests == [], attempt  # the marker was served once

        # A late arrival in the range: a new batch of just it, the held ones re-ingested again.
        late = _upload_dated(server, dicom_testfile("CT_small.dcm"), tmp_path / "late.dcm", "20230415")
        opened, normalized, embedded = backfill_spring()
        [new_batch] = opened["batches_opened"]
        assert opened["instances_in_range"] == 3 and opened["batches_reingesting"] == {batch: 2}
        assert [sop_uid_of(f.uri) for f in load_manifest(settings.home, new_batch).files] == [late]
        assert sum(m["normalized_this_run"].value for m in normalized) == 3
        assert sum(m["embedded"].value for m in embedded) == 1 and rows() == 5
    finally:
        server.stop()
