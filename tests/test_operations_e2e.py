"""Operations end to end, the way an operator works: `dagster dev` on a temporary DAGSTER_HOME with
Medvec's dagster.yaml, the folder sensor turned on as the UI's toggle does it, a finished download
dropped into the watched folder; the sensor's runs and the search refresh are followed over GraphQL,
the result is searched, a headless Chromium takes a picture of the asset graph
(tests/artifacts/asset_graph.png), and an embedding backfill is launched as the UI launches it."""

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pytest

from medvec.ingest.batches import list_batches, load_batch_records
from medvec.sample.writer import write_sample_data
from medvec.search.configured import open_search
from medvec.settings import Settings
from tests.conftest import ARTIFACTS, CHROMIUM, free_port
from tests.dagster_graphql import failed_runs, graphql

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

pytestmark = pytest.mark.slow


RUNS = """query($tags: [ExecutionTag!]) { runsOrError(filter: {tags: $tags}) { ... on Runs { results {
    runId status jobName tags { key value } } } } }"""


def _runs(port: int, **tags: str) -> list[dict]:
    found = graphql(port, RUNS, {"tags": [{"key": k, "value": v} for k, v in tags.items()]})
    return [{**run, "tags": {t["key"]: t["value"] for t in run["tags"]}} for run in found["runsOrError"]["results"]]


def _wait(what: str, seconds: float, check, log: Path):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        answer = check()
        if answer:
            return answer
        time.sleep(3)
    pytest.fail(f"{what} did not happen in {seconds:.0f}s; dagster dev log tail:\n{log.read_text()[-4000:]}")


def _embedding_spans(instance: dg.DagsterInstance, run_ids: list[str]) -> list[tuple[float, float]]:
    spans = []
    for run_id in run_ids:
        times = {e.dagster_event.event_type_value: e.timestamp for e in instance.all_logs(run_id)
                 if e.dagster_event and e.dagster_event.step_key == "image_embeddings"}
        spans.append((times["STEP_START"], times["STEP_SUCCESS"]))
    return sorted(spans)


def test_a_download_is_picked_up_embedded_indexed_backfilled_and_shown(tmp_path):
    home, dagster_home = tmp_path / "home", tmp_path / "dagster"
    dagster_home.mkdir()
    shutil.copy(ROOT / "deploy" / "dagster.yaml", dagster_home / "dagster.yaml")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MEDVEC_", "NVIDIA_"))}
    env.update(MEDVEC_HOME=str(home), DAGSTER_HOME=str(dagster_home), MEDVEC_PSEUDONYM_KEY="k",
               MEDVEC_MODEL="tiny-siglip", MEDVEC_WATCH_INTERVAL_S="5", MEDVEC_WATCH_BATCH_SIZE="6",
               MEDVEC_REFRESH_QUIET_S="5")
    port, log = free_port(), tmp_path / "dagster_dev.log"
    with log.open("w") as out:
        server = subprocess.Popen([str(BIN / "dagster"), "dev", "-w", "workspace.yaml", "-p", str(port)], cwd=ROOT,
                                  env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        def answering():
            try:
                return graphql(port, "{ assetNodes { assetKey { path } } }")["assetNodes"]
            except OSError:
                return None

        _wait("dagster dev answering GraphQL", 180, answering, log)
        started = graphql(port, """mutation { startSensor(sensorSelector: {repositoryLocationName: "medvec",
            repositoryName: "__repository__", sensorName: "incoming_folder_sensor"}) { __typename } }""")
        assert started["startSensor"]["__typename"] == "Sensor", started  # `dagster sensor start` does the same

        # A download finishes: its folder appears at once (rename), then the tool's `.done` marker.
        sample = write_sample_data(tmp_path / "download", count=4)  # 6 images, a few non-image files
        staging = sample.out_dir
        home.mkdir(exist_ok=True)
        os.rename(staging, home / "incoming")
        (home / "incoming" / ".done").touch()

        def batches_done():
            runs = [r for r in _runs(port, **{"dagster/sensor_name": "incoming_folder_sensor"})
                    if "dagster/partition" in r["tags"]]
            assert not failed_runs(port, runs)
            opened = list_batches(home)
            return runs if opened and len(runs) == len(opened) and all(r["status"] == "SUCCESS" for r in runs) else None

        batch_runs = _wait("the sensor's batch runs succeeding", 480, batches_done, log)
        batches = list_batches(home)
        assert len(batches) == -(-len(sample.files) // 6) == 2
        assert sorted(r["tags"]["dagster/partition"] for r in batch_runs) == batches

        def refreshed():
            runs = [r for r in _runs(port, **{"dagster/sensor_name": "search_refresh_sensor"})]
            assert not [r for r in runs if r["status"] == "FAILURE"], runs
            return runs if runs and runs[0]["status"] == "SUCCESS" else None

        [refresh] = _wait("search_refresh_job after the wave", 240, refreshed, log)
        assert refresh["jobName"] == "search_refresh_job"

        search = open_search(Settings.from_env(env))
        try:
            answer = search.search_text("pleural effusion", 5)
        finally:
            search.close()
        assert len(answer.hits) == 5 and answer.route == "fallback"  # precomputed by the refresh run
        images = sum(len(load_batch_records(home, b)) for b in batches)

        with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
            spans = _embedding_spans(instance, [r["runId"] for r in batch_runs])
        # The gpu pool's one slot (deploy/dagster.yaml): the two runs never embedded at the same time.
        assert all(end <= next_start for (_, end), (next_start, _) in zip(spans, spans[1:]))

        # A backfill of every batch's embeddings, launched as the UI's "Materialize → all partitions" does.
        launched = graphql(port, """mutation($params: LaunchBackfillParams!) { launchPartitionBackfill(
            backfillParams: $params) { __typename ... on LaunchBackfillSuccess { backfillId }
            ... on PythonError { message } } }""", {"params": {
            "partitionNames": batches, "assetSelection": [{"path": ["image_embeddings"]}]}})
        backfill_id = launched["launchPartitionBackfill"]["backfillId"]

        def backfill_done():
            status = graphql(port, """query($id: String!) { partitionBackfillOrError(backfillId: $id) {
                ... on PartitionBackfill { status } } }""", {"id": backfill_id})["partitionBackfillOrError"]["status"]
            assert status not in ("FAILED", "CANCELED", "COMPLETED_FAILED"), status
            return status == "COMPLETED_SUCCESS" or status == "COMPLETED"

        _wait("the backfill completing", 480, backfill_done, log)
        [run] = _runs(port, **{"dagster/backfill": backfill_id})  # several batches in one run: one model load
        assert run["status"] == "SUCCESS"
        assert (run["tags"]["dagster/asset_partition_range_start"],
                run["tags"]["dagster/asset_partition_range_end"]) == (batches[0], batches[-1])

        import lancedb

        table = lancedb.connect(str(home / "lancedb")).open_table("images__tiny_siglip")
        ids = table.to_arrow().column("image_id").to_pylist()
        assert len(ids) == len(set(ids)) == images  # re-embedding every batch rewrote rows, added none
        # Last: without Chromium only the picture is skipped, never the checks above.
        _screenshot(port, ARTIFACTS / "asset_graph.png")
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:  # a temporary instance: nothing to lose
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=30)


def _screenshot(port: int, path: Path) -> None:
    if not CHROMIUM.exists():
        pytest.skip("needs Debian's Chromium at /usr/bin/chromium for the asset graph picture")
    sync_api = pytest.importorskip("playwright.sync_api")
    path.parent.mkdir(parents=True, exist_ok=True)
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        try:
            page = browser.new_page(viewport={"width": 1600, "height": 1000})
            page.goto(f"http://127.0.0.1:{port}/asset-groups", wait_until="networkidle", timeout=60_000)
            page.get_by_text("Global asset lineage").first.wait_for(timeout=60_000)
            page.wait_for_timeout(1000)
            welcome = page.get_by_role("button", name="Skip")  # the UI's first-visit community dialog
            if welcome.count():
                welcome.first.click()
            page.keyboard.press("Alt+e")  # "Expand all groups": every asset, not just the group boxes
            page.get_by_text("image_embeddings").first.wait_for(timeout=60_000)
            page.wait_for_timeout(1500)  # the graph lays itself out after the nodes appear
            page.screenshot(path=str(path), full_page=True)
        finally:
            browser.close()
    assert path.stat().st_size > 10_000
