"""`dagster dev` as an operator uses it, against a throwaway Orthanc holding the sample DICOMs: turn
dicomweb_sensor on over GraphQL, see the tick that opened batches and the cursor it keeps, then launch the
date-range backfill from the launchpad's mutation and watch its re-ingest runs succeed."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pydicom
import pytest

from medvec.ingest.batches import is_normalized, list_batches, load_manifest
from medvec.sources.dicomweb import sop_uid_of
from tests.conftest import dicom_testfile, free_port
from tests.dagster_graphql import failed_runs, graphql
from tests.orthanc_server import Orthanc

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SAMPLES = [*sorted(Path("/work/shared/data/dicom").glob("*.dcm")), "RG1_UNCR.dcm", "RG3_UNCR.dcm"]
LOCATION = {"repositoryLocationName": "medvec", "repositoryName": "__repository__"}
SENSOR = {**LOCATION, "sensorName": "dicomweb_sensor"}
DEADLINE_S = 600  # two shared cores: a cold code location, the model run and the batch runs take minutes
#: The month of the newest study date among the samples; the WG04 radiographs are from 26 August 2004.
NEWEST_MONTH, RANGE = "200408", ("20040801", "20040831")


def _until(what: str, probe):
    """Poll `probe` until it returns something truthy; the deadline only bounds a hung server."""
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline:
        try:
            found = probe()
        except OSError:  # the webserver is still starting
            found = None
        if found:
            return found
        time.sleep(2)
    raise AssertionError(f"dagster dev: {what} did not happen within {DEADLINE_S} s")


SENSOR_STATE = """query($s: SensorSelector!) { sensorOrError(sensorSelector: $s) { ... on Sensor {
    sensorState { status typeSpecificData { ... on SensorData { lastCursor } }
                  ticks(limit: 20) { status runIds dynamicPartitionsRequestResults { partitionKeys } } } } } }"""
RUNS = """query($tags: [ExecutionTag!]) { runsOrError(filter: {tags: $tags}) { ... on Runs {
    results { runId status tags { key value } } } } }"""
LAUNCH = """mutation($p: ExecutionParams!) { launchRun(executionParams: $p) {
    __typename ... on LaunchRunSuccess { run { runId } } ... on PythonError { message }
    ... on RunConfigValidationInvalid { errors { message } } } }"""


def _runs(port: int, **tags: str) -> list[dict]:
    found = graphql(port, RUNS, {"tags": [{"key": k, "value": v} for k, v in tags.items()]})
    return found["runsOrError"]["results"]


@pytest.fixture
def archive(tmp_path):
    server = Orthanc(tmp_path / "orthanc").start()
    try:
        for sample in SAMPLES:
            server.upload(Path(dicom_testfile(sample) if isinstance(sample, str) else sample).read_bytes())
        yield server
    finally:
        server.stop()


@pytest.fixture
def dagster_dev(tmp_path, archive):
    """`dagster dev` in its own session on a free port, with its own homes; the whole process tree is
    stopped afterwards (the webserver, the daemon, code servers and run workers)."""
    port = free_port()
    env = {**os.environ, "MEDVEC_HOME": str(tmp_path / "home"), "DAGSTER_HOME": str(tmp_path / "dagster"),
           "MEDVEC_PSEUDONYM_KEY": "k", "MEDVEC_DICOMWEB_URL": archive.dicomweb_url,
           "MEDVEC_WATCH_BATCH_SIZE": "4", "MEDVEC_WATCH_INTERVAL_S": "5"}
    (tmp_path / "dagster").mkdir()
    log = open(tmp_path / "dagster_dev.log", "wb")
    server = subprocess.Popen([str(BIN / "dagster"), "dev", "-w", "workspace.yaml", "-p", str(port)], cwd=ROOT,
                              env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield port, tmp_path / "home"
    finally:
        _stop_group(server)
        log.close()


def _stop_group(server: subprocess.Popen) -> None:
    os.killpg(server.pid, signal.SIGTERM)
    try:
        server.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # children that outlived dagster dev: they go too
        try:
            os.killpg(server.pid, signal.SIGKILL)
        except ProcessLookupError:
            return
        time.sleep(0.5)
    raise AssertionError("processes of dagster dev's session are still running")


def _in_range(home: Path) -> dict[str, int]:
    """batch → how many of its instances the archive dates within RANGE (read from the samples)."""
    dates = {}
    for sample in SAMPLES:
        ds = pydicom.dcmread(dicom_testfile(sample) if isinstance(sample, str) else sample,
                             stop_before_pixels=True, force=True)
        dates[str(ds.SOPInstanceUID)] = str(ds.get("StudyDate") or "")
    counts = {}
    for batch in list_batches(home):
        held = [f for f in load_manifest(home, batch).files if RANGE[0] <= dates[sop_uid_of(f.uri)] <= RANGE[1]]
        if held:
            counts[batch] = len(held)
    return counts


@pytest.mark.slow
def test_dagster_dev_shows_the_dicomweb_sensor_with_its_cursor_and_runs_a_date_range_backfill(dagster_dev):
    port, home = dagster_dev
    _until("the code location loading", lambda: graphql(port, "{ repositoriesOrError { __typename } }"))
    started = graphql(port, """mutation($s: SensorSelector!) { startSensor(sensorSelector: $s) {
        ... on Sensor { sensorState { status } } ... on PythonError { message } } }""", {"s": SENSOR})
    assert started["startSensor"]["sensorState"]["status"] == "RUNNING", started

    def opening_tick():
        state = graphql(port, SENSOR_STATE, {"s": SENSOR})["sensorOrError"]["sensorState"]
        opened = [k for t in state["ticks"] if t["status"] in ("SUCCESS", "SKIPPED")
                  for r in t["dynamicPartitionsRequestResults"] for k in r["partitionKeys"]]
        # The daemon records the tick's partitions, launches its runs, and only then stores the cursor.
        cursor = json.loads(state["typeSpecificData"]["lastCursor"] or "{}")
        return cursor if opened and cursor.get("study_date_floor") else None

    cursor = _until("a dicomweb_sensor tick that opened a batch, and its cursor", opening_tick)
    batches = list_batches(home)
    assert len(batches) == 2  # six instances, four a batch
    assert cursor["study_date_floor"] == NEWEST_MONTH  # year and month only: study dates identify
    assert set(cursor["open_batches"]) <= set(batches)

    def all_normalised():  # the model run, then one run per batch, launched by later ticks
        runs = [r for b in batches for r in _runs(port, **{"dagster/partition": b})]
        assert not failed_runs(port, runs)
        return all(is_normalized(home, b) for b in batches) and runs and all(r["status"] == "SUCCESS" for r in runs)

    _until("every opened batch normalised", all_normalised)
    expected = _in_range(home)
    assert sum(expected.values()) == 3  # the three WG04-dated instances, whichever batches hold them

    launched = graphql(port, LAUNCH, {"p": {"selector": {**LOCATION, "jobName": "dicomweb_backfill_job"},
                                             "runConfigData": {"ops": {"open_dicomweb_range": {"config": {
                                                 "study_date_from": RANGE[0], "study_date_to": RANGE[1]}}}}}})
    assert launched["launchRun"]["__typename"] == "LaunchRunSuccess", launched
    job_run = launched["launchRun"]["run"]["runId"]

    def job_finished():
        [run] = [r for r in _runs(port) if r["runId"] == job_run]
        return run["status"] if run["status"] in ("SUCCESS", "FAILURE", "CANCELED") else None

    status = _until("the backfill job finishing", job_finished)
    assert status == "SUCCESS", failed_runs(port, [{"runId": job_run, "status": status}])

    def reingested():
        runs = [r for r in _runs(port) if any(t["key"] == "medvec/reingest" for t in r["tags"])]
        assert not failed_runs(port, runs)
        done = len(runs) == len(expected) and all(r["status"] == "SUCCESS" for r in runs)
        return runs if done else None

    runs = _until("the re-ingest runs succeeding", reingested)
    assert sorted(next(t["value"] for t in r["tags"] if t["key"] == "dagster/partition") for r in runs) \
        == sorted(expected)
    assert list_batches(home) == batches and not list(home.glob("batches/*/reingest.json"))
    # exactly the range read and normalised again, as normalized_images reported in those runs
    events = graphql(port, """{ assetOrError(assetKey: {path: ["normalized_images"]}) { ... on Asset {
        assetMaterializations(limit: 20) { runId metadataEntries { label ... on IntMetadataEntry { intValue } } } } } }""")
    reported = {e["runId"]: {m["label"]: m.get("intValue") for m in e["metadataEntries"]}
                for e in events["assetOrError"]["assetMaterializations"]}
    assert sorted(reported[r["runId"]]["normalized_this_run"] for r in runs) == sorted(expected.values())
    assert sum(reported[r["runId"]]["kept_unread"] for r in runs) == 6 - 3  # the rest of those batches
