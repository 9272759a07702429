"""A pipeline that survives faults, each shown with real processes, a real Dagster instance, real
LanceDB and a stand-in NIM (our own embed-server, the tiny SigLIP behind it, serving under NV-CLIP's
model id) reached over HTTP, with the fault-injecting proxy of tests/nim_faults.py in between."""

import hashlib
import io
import json
import logging
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import dagster as dg
import numpy as np
import pytest
from PIL import Image

from assets.embeddings import embedding_model
from assets.ingest import ERRORS_SHOWN
from medvec.tables import database
from medvec.ingest.batches import load_batch_errors, load_batch_records
from medvec.serve.embed_server import EmbedServer
from medvec.embedders.transformers_local import TransformersEmbedder
from medvec.tables.images import image_table_name
from medvec.models.registry import resolve_model
from medvec.models.tiny import build_tiny_siglip
from medvec.sample.chest_dicom import write_chest
from medvec.sample.plan import chest_specs
from medvec.settings import Settings
from pipelines.backfill import backfill
from pipelines.ingest import ingest
from resources import home_resources
from resources.embedders import LocalEmbedderResource, NimEmbedderResource
from tests.conftest import dicom_testfile
from tests.nim_faults import Fault, FaultProxy

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
NIM_MODEL = "nvidia/nvclip"
TABLE = image_table_name("nvclip")


@pytest.fixture(scope="module")
def stand_in_model(tmp_path_factory):
    """The tiny SigLIP answering as NV-CLIP, so `MEDVEC_EMBEDDER=nim` works with its defaults."""
    directory = build_tiny_siglip(tmp_path_factory.mktemp("models") / "tiny-siglip")
    return TransformersEmbedder(replace(resolve_model("tiny-siglip"), model_id=NIM_MODEL), directory, device="cpu")


@pytest.fixture(scope="module")
def nim_server(stand_in_model):
    with EmbedServer(stand_in_model) as server:
        yield server


@pytest.fixture
def proxy(nim_server):
    proxy = FaultProxy(nim_server.url)
    yield proxy
    proxy.stop()


def _nim(url: str, **options) -> NimEmbedderResource:
    return NimEmbedderResource(model="nvclip", url=url, nim_model=NIM_MODEL, **options)


def _instance_dir(path: Path, pools: int | None = None) -> Path:
    """A DAGSTER_HOME with Medvec's template (gpu pool limit 1), or with another pool limit."""
    path.mkdir(parents=True)
    template = (ROOT / "deploy" / "dagster.yaml").read_text()
    if pools is not None:
        template = template.replace("default_limit: 1", f"default_limit: {pools}")
    (path / "dagster.yaml").write_text(template)
    return path


def _chests(folder: Path, count: int) -> list[Path]:
    """Synthetic chest DICOMs from the sample-data generator (several transfer syntaxes)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for spec in chest_specs(count):
        path = folder / f"chest_{spec.index:03d}.dcm"
        write_chest(spec, path)
        paths.append(path)
    return paths


def _cli_env(settings: Settings, dagster_home: Path, nim_url: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MEDVEC_", "NVIDIA_"))}
    env.update(MEDVEC_HOME=str(settings.home), DAGSTER_HOME=str(dagster_home), MEDVEC_PSEUDONYM_KEY="test-key",
               MEDVEC_EMBEDDER="nim", MEDVEC_NIM_URL=nim_url, MEDVEC_NIM_MODEL=NIM_MODEL)
    return env


def _table_ids(settings: Settings, name: str = TABLE) -> list[str]:
    table = database.open_table_if_exists(database.connect(settings.lancedb_uri), name)
    return [] if table is None else table.to_arrow().column("image_id").to_pylist()


def _record_ids(settings: Settings, batches: list[str]) -> list[str]:
    return [r.image_id for b in batches for r in load_batch_records(settings.home, b)]


# --- SIGKILL in the middle of embedding ----------------------------------------------------------

@pytest.mark.slow
def test_a_run_killed_in_the_middle_of_embedding_is_finished_with_every_image_once(tmp_path, settings, proxy,
                                                                                  nim_server):
    dagster_home = _instance_dir(tmp_path / "dagster")
    with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
        _chests(tmp_path / "incoming", 12)
        summary = ingest(str(tmp_path / "incoming"), settings, batch_size=3, instance=instance, embed=False, workers=1)
    assert len(summary.batches) == 4 and summary.ok == 12
    # Every request is held until the test lets it through: one at a time until the first batch is
    # committed, then none, so the kill lands with the next batch in flight however slow the machine is.
    proxy.inject(*[Fault(hold=True)] * 40)
    killed = subprocess.Popen([str(BIN / "medvec"), "backfill", "--all", "--no-refresh", "--workers", "1"],
                              env=_cli_env(settings, dagster_home, proxy.url), stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, start_new_session=True)
    deadline, passed = time.monotonic() + 300, 0  # the deadline only turns a hang into a failure
    while not (_table_ids(settings) and len(proxy.posts()) > passed):  # batch one committed, the next held
        assert killed.poll() is None, killed.stderr.read().decode()[-3000:]
        assert time.monotonic() < deadline, "no embeddings written, or no request after them, in 300 s"
        if len(proxy.posts()) > passed and not _table_ids(settings):
            proxy.let_through()
            passed += 1
        time.sleep(0.05)
    os.killpg(killed.pid, signal.SIGKILL)  # the next batch's request is in flight
    killed.wait(30)
    at_kill = _table_ids(settings)
    assert 0 < len(at_kill) < 12 and len(set(at_kill)) == len(at_kill)
    with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
        stuck = [r for r in instance.get_runs() if r.status == dg.DagsterRunStatus.STARTED]
        assert len(stuck) == 1  # the embedding run: it holds the gpu pool's only slot

    rerun = subprocess.run([str(BIN / "medvec"), "backfill", "--failed", "--no-refresh", "--workers", "1", "--json"],
                           env=_cli_env(settings, dagster_home, nim_server.url), capture_output=True, text=True,
                           timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    result = json.loads(rerun.stdout)
    assert result["reaped_runs"] == [stuck[0].run_id] and result["failed_runs"] == []
    assert sorted(result["batches"]) == sorted(summary.batches) and result["embed_runs"] == [summary.batches]
    ids = _table_ids(settings)
    assert len(ids) == len(set(ids)) == 12 and set(ids) == set(_record_ids(settings, summary.batches))


# --- two runs writing one table at once ----------------------------------------------------------

class GatedProxy(FaultProxy):
    """Holds the first `parties` embedding requests until all have arrived, so the runs embed, and
    then write to the table, at the same moment."""

    def __init__(self, upstream: str, parties: int):
        super().__init__(upstream)
        self.gate = threading.Barrier(parties, timeout=120)
        self.waiting = parties

    def _record(self, seen):
        fault = super()._record(seen)
        if seen.method == "POST" and seen.path == "/v1/embeddings":
            with self._lock:
                wait, self.waiting = self.waiting > 0, self.waiting - 1
            if wait:
                self.gate.wait()
        return fault


@pytest.mark.slow
def test_two_runs_write_different_batches_into_one_table_at_the_same_time(tmp_path, settings, nim_server):
    dagster_home = _instance_dir(tmp_path / "dagster", pools=2)  # two embedding steps may run at once
    gated = GatedProxy(nim_server.url, parties=2)
    try:
        with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
            _chests(tmp_path / "incoming", 8)
            summary = ingest(str(tmp_path / "incoming"), settings, batch_size=4, instance=instance, embed=False,
                             workers=1)
            dg.materialize([embedding_model], instance=instance,
                           resources={**home_resources(settings),
                                      "embedder": _nim(nim_server.url)})
        assert len(summary.batches) == 2
        env = _cli_env(settings, dagster_home, gated.url)
        runs = [subprocess.Popen([str(BIN / "medvec"), "backfill", "--batches", batch, "--no-refresh", "--workers",
                                  "1", "--json"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                for batch in summary.batches]
        outputs = [run.communicate(timeout=300) for run in runs]
    finally:
        gated.stop()
    for run, (out, err) in zip(runs, outputs):
        assert run.returncode == 0, err[-3000:]
        assert json.loads(out)["embedded"] == 4
    ids = _table_ids(settings)
    assert len(ids) == len(set(ids)) == 8 and set(ids) == set(_record_ids(settings, summary.batches))
    with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
        spans = []
        for run in instance.get_runs(filters=dg.RunsFilter(job_name="embed_batches_job")):
            times = {e.dagster_event.event_type_value: e.timestamp for e in instance.all_logs(run.run_id)
                     if e.dagster_event and e.dagster_event.step_key == "image_embeddings"}
            spans.append((times["STEP_START"], times["STEP_SUCCESS"]))
    (start_a, end_a), (start_b, end_b) = spans
    assert start_a < end_b and start_b < end_a  # both embedding steps were running at once


# --- fuzzed inputs -------------------------------------------------------------------------------

def fuzzed_inputs(folder: Path, bases: list[Path], seed: int) -> dict[str, str]:
    """Seeded corruptions of real DICOMs plus empty files and wrong extensions; name → what was done."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    made = {}
    for base in bases:
        data = base.read_bytes()
        stem = base.stem
        # Sorted first, the intact copy is the batch's holder of its image; the variants that still
        # decode are the same image (same SOPInstanceUID) and count as duplicates.
        (folder / f"{stem}_0intact.dcm").write_bytes(data)
        made[f"{stem}_0intact.dcm"] = "intact"
        cut = rng.randint(1, len(data) - 1)
        (folder / f"{stem}_cut{cut}.dcm").write_bytes(data[:cut])
        made[f"{stem}_cut{cut}.dcm"] = "truncated"
        for flips, region in ((1, len(data)), (16, min(len(data), 1024)), (64, len(data))):
            mutated = bytearray(data)
            for _ in range(flips):
                mutated[rng.randrange(region)] ^= 1 << rng.randrange(8)
            name = f"{stem}_flip{flips}_{'head' if region == 1024 else 'any'}.dcm"
            (folder / name).write_bytes(bytes(mutated))
            made[name] = "flipped"
    (folder / "empty.dcm").write_bytes(b"")
    (folder / "random.dcm").write_bytes(rng.randbytes(4096))
    (folder / "notes.jpg").write_text("scan notes, not a JPEG\n")
    shutil.copy(bases[0], folder / "really_a_dicom.png")
    image = Image.fromarray(np.random.default_rng(seed).integers(0, 255, (40, 48), dtype=np.uint8), "L")
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    (folder / "really_a_png.dcm").write_bytes(buffer.getvalue())
    made.update({"empty.dcm": "empty", "random.dcm": "noise", "notes.jpg": "text named .jpg",
                 "really_a_dicom.png": "DICOM named .png", "really_a_png.dcm": "PNG named .dcm"})
    return made


def test_fuzzed_files_are_each_recorded_as_an_error_and_the_rest_is_stored(tmp_path, settings, dagster_instance):
    bases = _chests(tmp_path / "bases", 3) + [dicom_testfile(n) for n in ("CT_small.dcm", "MR_small_RLE.dcm",
                                                                           "JPEGLSNearLossless_16.dcm")]
    made = fuzzed_inputs(tmp_path / "fuzz", bases, seed=6)
    again = fuzzed_inputs(tmp_path / "fuzz_again", bases, seed=6)
    digest = lambda folder: {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.iterdir()}  # noqa: E731
    assert made == again and digest(tmp_path / "fuzz") == digest(tmp_path / "fuzz_again")  # seeded: the same files

    summary = ingest(str(tmp_path / "fuzz"), settings, batch_size=100, instance=dagster_instance, workers=1,
                     embedder=LocalEmbedderResource(model="tiny-siglip"))
    assert summary.failed_runs == [], "a fuzzed file crashed a run"
    [batch] = summary.batches
    records, errors = load_batch_records(settings.home, batch), load_batch_errors(settings.home, batch)
    stored = {Path(r.source_uri).name for r in records}
    failed = {Path(e.source_uri).name for e in errors}
    assert not stored & failed and summary.files == len(made)
    assert summary.ok + len(errors) + summary.skipped == len(made)  # every file accounted for once
    assert {name for name, what in made.items() if what == "intact"} <= stored  # the rest of the batch is stored
    assert {"empty.dcm", "random.dcm", "notes.jpg"} <= failed
    assert {name for name, what in made.items() if what == "truncated"} <= failed | stored  # decoded or an error
    # "duplicate": a damaged copy that still decodes is another image under its base's SOP Instance UID.
    assert all(e.stage in ("read", "parse", "decode", "render", "duplicate") and e.message for e in errors)
    table_errors = [e for e in database.list_errors(database.connect(settings.lancedb_uri), batch)]
    assert sorted(Path(e["source_uri"]).name for e in table_errors) == sorted(failed)
    metadata = dagster_instance.get_latest_materialization_event(
        dg.AssetKey("normalized_images")).asset_materialization.metadata
    assert metadata["errors"].value == len(errors) and metadata["ok"].value == len(records)
    shown = [line for line in metadata["first_errors"].value.splitlines() if line.startswith("| `")]
    assert len(shown) == min(len(errors), ERRORS_SHOWN) and all(line.split("`")[1] in failed for line in shown)
    assert sorted(_table_ids(settings, image_table_name("tiny_siglip"))) == sorted(r.image_id for r in records)


# --- a misbehaving NIM fails its batch only ------------------------------------------------------

def _pngs(folder: Path, count: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    for i in range(count):
        Image.fromarray(rng.integers(0, 256, (24, 20), dtype=np.uint8), "L").save(folder / f"img{i:03d}.png")


def test_nim_faults_retry_then_fail_only_their_batch_and_write_nothing_of_it(tmp_path, settings, dagster_instance,
                                                                               proxy):
    batches = {}
    for name, count in (("storm", 3), ("big", 70), ("slow", 3)):  # "big": two requests of at most 64 images
        _pngs(tmp_path / name, count, seed=len(batches))
        [batches[name]] = ingest(str(tmp_path / name), settings, instance=dagster_instance, embed=False,
                                 workers=1).batches
    # A stalled answer times out whatever the timeout; a generous one keeps healthy answers from timing out
    # on a loaded machine (which would add posts the assertions below count).
    nim = _nim(proxy.url, timeout_s=10.0)
    resources = {**home_resources(settings), "embedder": nim}
    dg.materialize([embedding_model], instance=dagster_instance, resources=resources)

    def embed(batch):
        return backfill(settings, [batch], instance=dagster_instance, embedder=nim, refresh=False)

    proxy.inject(*[Fault(status=429, retry_after="0")] * 4)  # a 429 storm, then answers
    assert embed(batches["storm"]).failed_runs == []
    proxy.inject(Fault(), *[Fault(status=503, retry_after="0")] * 7)  # one chunk answered, the other never
    seen = len(proxy.posts())
    failed = embed(batches["big"])
    assert failed.failed_runs == [batches["big"]]
    assert {len(post.body["input"]) for post in proxy.posts()[seen:]} == {64, 6}  # 64 vectors came back, unused
    proxy.inject(Fault(stall=True), Fault(truncate=True))  # a timeout, then a malformed answer, then fine
    assert embed(batches["slow"]).failed_runs == []

    table = database.connect(settings.lancedb_uri).open_table(TABLE)
    by_batch = table.to_arrow().group_by("batch").aggregate([("image_id", "count")]).to_pylist()
    assert {row["batch"]: row["image_id_count"] for row in by_batch} == {batches["storm"]: 3, batches["slow"]: 3}
    failures = [e.dagster_event.event_specific_data.error.to_string() for run in dagster_instance.get_runs()
                for e in dagster_instance.all_logs(run.run_id) if e.dagster_event and e.dagster_event.is_step_failure]
    assert any("503" in message and "retries" in message for message in failures)

    assert embed(batches["big"]).failed_runs == []  # the NIM is back: the batch goes in, once
    ids = _table_ids(settings)
    assert len(ids) == len(set(ids)) == 76


# --- a model whose dimension differs from the table -------------------------------------------------

def test_a_dimension_change_fails_clearly_and_leaves_a_full_table_untouched(tmp_path, settings, dagster_instance):
    folder = tmp_path / "incoming"
    for name in ("CT_small.dcm", "MR_small_RLE.dcm", "JPEGLSNearLossless_16.dcm"):
        folder.mkdir(exist_ok=True)
        shutil.copy(dicom_testfile(name), folder / name)
    summary = ingest(str(folder), settings, instance=dagster_instance,
                     embedder=LocalEmbedderResource(model="tiny-siglip"))
    table_name = image_table_name("tiny_siglip")
    before = database.connect(settings.lancedb_uri).open_table(table_name)
    version, rows = before.version, before.to_arrow().sort_by("image_id")
    assert rows.num_rows == 3

    # Someone sets MEDVEC_MODEL_DIM=32 for the same model name: the model is resolved again with it.
    wrong = LocalEmbedderResource(model="tiny-siglip", dim=32)
    resources = {**home_resources(settings), "embedder": wrong}
    dg.materialize([embedding_model], instance=dagster_instance, resources=resources)
    result = backfill(settings, summary.batches, instance=dagster_instance, embedder=wrong, refresh=False)
    assert result.failed_runs == summary.batches and result.embedded == 0
    messages = [e.dagster_event.event_specific_data.error.to_string() for e in
                dagster_instance.all_logs(dagster_instance.get_runs(limit=1)[0].run_id)
                if e.dagster_event and e.dagster_event.is_step_failure]
    assert any("holds 64-d vectors but this model gives 32-d vectors" in m for m in messages)
    after = database.connect(settings.lancedb_uri).open_table(table_name)
    assert after.version == version and after.to_arrow().sort_by("image_id").equals(rows)


# --- secrets and patient data never reach logs or the event log --------------------------------------

def test_the_nim_key_and_identifying_tags_reach_no_log_event_or_file(tmp_path, settings, dagster_instance, caplog,
                                                                     monkeypatch, stand_in_model):
    from dagster._serdes import serialize_value  # run snapshots are stored compressed: read them back

    from resources.embedders import embedder_resource
    from tests.test_phi import SENTINELS, write_sentinel_dicom

    key, wrong_key = "nvapi-ZZKEYSENTINELQQ-0123456789", "nvapi-ZZWRONGKEYSENTINELQQ-987"
    folder = tmp_path / "incoming"
    folder.mkdir()
    write_sentinel_dicom("CT_small.dcm", folder / "ct.dcm")
    write_sentinel_dicom("MR_small_RLE.dcm", folder / "mr.dcm", n=2)  # its own UIDs: not a duplicate of ct.dcm
    write_sentinel_dicom("CT_small.dcm", folder / "cut.dcm", truncate=True, n=3)
    with EmbedServer(stand_in_model, api_key=key) as server:
        monkeypatch.setenv("MEDVEC_EMBEDDER", "nim")
        monkeypatch.setenv("MEDVEC_NIM_URL", server.url)
        monkeypatch.setenv("MEDVEC_NIM_MODEL", NIM_MODEL)
        monkeypatch.setenv("NVIDIA_API_KEY", key)
        with caplog.at_level(logging.DEBUG):
            summary = ingest(str(folder), Settings.from_env(), instance=dagster_instance, workers=1,
                             embedder=embedder_resource(Settings.from_env()))
            assert summary.embedded == 2 and not summary.failed_runs, [(e.source_uri, e.stage, e.message) for e in summary.errors]
            # Nothing is embedded twice: empty the table so the backfill must call the NIM, with the wrong key.
            database.connect(settings.lancedb_uri).open_table(summary.table).delete("true")
            monkeypatch.setenv("NVIDIA_API_KEY", wrong_key)  # a rejected key fails the run, and is not shown
            rejected = backfill(settings, summary.batches, instance=dagster_instance,
                                embedder=embedder_resource(Settings.from_env()), refresh=False)
            assert rejected.failed_runs == summary.batches
    haystacks = {"log": caplog.text.encode()}
    for root in (settings.home, Path(dagster_instance.root_directory)):
        haystacks.update({str(p): p.read_bytes() for p in root.rglob("*") if p.is_file()})
    for run in dagster_instance.get_runs():
        haystacks[f"run {run.run_id}"] = (serialize_value(run) + serialize_value(
            dagster_instance.get_job_snapshot(run.job_snapshot_id))).encode()
        haystacks[f"events {run.run_id}"] = repr(dagster_instance.all_logs(run.run_id)).encode()
    failures = [v for k, v in haystacks.items() if k.startswith("events") and b"NVIDIA_API_KEY" in v]
    assert failures, "the rejected key's failure should name NVIDIA_API_KEY"
    for where, data in haystacks.items():
        assert key.encode() not in data and wrong_key.encode() not in data, f"an API key leaked into {where}"
        for keyword, value in SENTINELS.items():
            assert value.encode() not in data, f"{keyword} leaked into {where}"


# --- what a backfill re-runs -------------------------------------------------------------------------

def test_a_backfill_embeds_neighbouring_batches_together_and_never_spans_a_gap():
    from medvec.ingest.backfill_plan import FAILED, IN_PROGRESS, MATERIALIZED, MISSING, group_runs, select_batches

    order = ["b1", "b2", "b3", "b4", "b5"]
    assert group_runs(["b5", "b1", "b2"], order, per_run=8) == [["b1", "b2"], ["b5"]]
    assert group_runs(order, order, per_run=2) == [["b1", "b2"], ["b3", "b4"], ["b5"]]
    status = {"b1": MATERIALIZED, "b2": FAILED, "b3": IN_PROGRESS, "b4": MISSING}
    assert select_batches(order, status=status) == ["b2", "b4", "b5"]  # b5: never ran at all
    with pytest.raises(ValueError, match="no such batch: b9"):
        select_batches(order, names=["b1", "b9"])
