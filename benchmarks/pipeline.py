"""End-to-end pipeline benchmark: N distinct chest DICOMs through the real Dagster path (sensor tick →
batch runs: normalise, embed → search refresh: index, fallbacks, neighbours) into a real LanceDB table.

    .venv/bin/python benchmarks/pipeline.py [--images 10000] [--batch-size 2000] [--workdir DIR]
                                            [--home-on local|s3] [--out benchmarks/results/pipeline.json] [--keep]

Images: the offline sample dataset's DICOMs (the two full-size NEMA WG04 radiographs from pydicom-data and
36 synthetic chests at 512-1024 px in several transfer syntaxes) replicated round-robin with fresh
Study/Series/SOP Instance UIDs and pseudonymous PatientIDs, so every file is a distinct image. They are
written into the watched folder with a `.done` marker, so the first look takes them.

Dagster: a temporary DAGSTER_HOME with deploy/dagster.yaml. `incoming_folder_sensor` is evaluated tick by
tick (`evaluate_tick`, as the daemon would); its dynamic partitions are added and each run request is
executed in this process through the code location's implicit asset job (the one the daemon launches),
with the request's partition, asset selection and tags. Then `search_refresh_sensor` is evaluated and
`search_refresh_job` executed. Runs are in process: the daemon's default launcher would add a fresh
interpreter per run and the multiprocess executor one per step; the cost of that import is measured
separately and reported, not included.

Overhead: the medvec functions the assets call (normalize_batch, embed_records, upsert_batch,
maintain_table, compute_fallbacks, ...) are wrapped with a timer while the runs execute: the real function
runs, the wrapper only adds up its wall time. Dagster's overhead = run wall - domain time inside the run,
as a fraction of run wall; the event log's STEP_START → STEP_SUCCESS splits it into run set-up/teardown
and per-step cost (IO manager, events, metadata).

Home on S3 (`--home-on s3`): the benchmark starts moto's S3 server in a subprocess of its own (moto's WSGI
app under werkzeug, as `moto_server` runs it, wrapped to append one line per request: time, operation,
status), creates a bucket and sets MEDVEC_HOME=s3://bucket/home, MEDVEC_LANCEDB_URI=s3://bucket/lancedb,
MEDVEC_S3_ENDPOINT_URL and MEDVEC_CACHE_DIR (model files, local). The watched DICOM folder and DAGSTER_HOME
stay local, as in the local run. Requests are attributed to sensor ticks and asset steps by their time
against the event log's step windows; the server's CPU is read from /proc per run, and it is left out of
the memory sampler's children. moto keeps objects in memory and shares this machine's cores: its latency
is not S3's.

Memory: the kernel's peak RSS of this process (VmHWM, reset per stage via /proc/self/clear_refs), a
100 ms sampler of the RSS of every descendant (normalisation workers, the embedding preparation worker),
and getrusage(RUSAGE_SELF / RUSAGE_CHILDREN) at the end.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import resource
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run from a checkout without an editable install
    sys.path.insert(0, str(ROOT))

#: MIMIC-CXR's size: what the projection is for.
PROJECT_IMAGES = 377_000
PROJECT_CORES = 32
#: Measured 1 → 2 worker scaling was 1.70x overall (BENCHMARKS.md, normalisation section 2): 85% per core.
PROJECT_CORE_EFFICIENCY = 0.85
#: No GPU was measured for siglip-base: this is the project's aim (BENCHMARKS.md, "Embedding"), not a figure.
ASSUMED_GPU_IMAGES_PER_S = 2000.0
OVERHEAD_AIM = 0.10


def log(message: str) -> None:
    print(f"[pipeline {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --- memory --------------------------------------------------------------------------------------

def _status_kb(pid: int | str, field_name: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _descendants(pid: int) -> list[int]:
    out, stack = [], [pid]
    while stack:
        parent = stack.pop()
        try:
            tasks = os.listdir(f"/proc/{parent}/task")
        except OSError:
            continue
        for tid in tasks:
            try:
                children = Path(f"/proc/{parent}/task/{tid}/children").read_text().split()
            except OSError:
                continue
            out.extend(int(c) for c in children)
            stack.extend(int(c) for c in children)
    return out


def reset_peak_rss() -> bool:
    """Reset this process's VmHWM (Linux ≥ 4.0), so each stage's peak is its own."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


class MemorySampler(threading.Thread):
    """Every 100 ms: the RSS of each descendant and their sum, kept as peaks per phase (the domain
    call running at the time, else 'dagster')."""

    def __init__(self, clock: "DomainClock", interval: float = 0.1, exclude: set[int] | None = None):
        super().__init__(daemon=True)
        self.clock, self.interval = clock, interval
        self.exclude = exclude or set()  # the S3 server: not the pipeline's memory
        self.peaks: dict[str, dict[str, int]] = {}
        self._halt = threading.Event()

    def run(self) -> None:
        me = os.getpid()
        while not self._halt.is_set():
            kids = [p for p in _descendants(me) if p not in self.exclude]
            rss = [_status_kb(p, "VmRSS") for p in kids]
            hwm = [_status_kb(p, "VmHWM") for p in kids]  # catches spikes between samples
            own = _status_kb(me, "VmRSS")
            peak = self.peaks.setdefault(self.clock.phase, {"self_kb": 0, "children_sum_kb": 0,
                                                            "child_max_kb": 0, "children": 0, "total_kb": 0})
            peak["self_kb"] = max(peak["self_kb"], own)
            peak["children_sum_kb"] = max(peak["children_sum_kb"], sum(rss))
            peak["child_max_kb"] = max([peak["child_max_kb"], *hwm])
            peak["children"] = max(peak["children"], len(kids))
            peak["total_kb"] = max(peak["total_kb"], own + sum(rss))
            self._halt.wait(self.interval)

    def stop(self) -> None:
        self._halt.set()
        self.join()


# --- domain timing -------------------------------------------------------------------------------

@dataclass
class DomainClock:
    """Wall and CPU seconds spent inside medvec's domain functions, per asset step."""

    phase: str = "dagster"
    seconds: dict[str, float] = field(default_factory=dict)
    cpu: dict[str, float] = field(default_factory=dict)  # this process + reaped children
    calls: list[dict] = field(default_factory=list)

    def take(self) -> tuple[dict[str, float], dict[str, float], list[dict]]:
        out = (self.seconds, self.cpu, self.calls)
        self.seconds, self.cpu, self.calls = {}, {}, []
        return out


def _cpu_now() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def _timed(clock: DomainClock, step: str, name: str, fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        outer = clock.phase
        clock.phase = step
        started, cpu = time.perf_counter(), _cpu_now()
        try:
            return fn(*args, **kwargs)
        finally:
            # Nested domain calls (upsert inside a domain call) must not be counted twice.
            if outer == "dagster":
                wall = time.perf_counter() - started
                clock.seconds[step] = clock.seconds.get(step, 0.0) + wall
                clock.cpu[step] = clock.cpu.get(step, 0.0) + _cpu_now() - cpu
                clock.calls.append({"step": step, "fn": name, "seconds": wall, "args": _describe(name, args)})
            clock.phase = outer
    return wrapper


def _describe(name: str, args: tuple) -> dict:
    """Rows per upsert, so the LanceDB merge rate can be read per call."""
    if name == "upsert_batch" and len(args) >= 3:
        return {"rows": args[2].num_rows}
    return {}


def instrument_domain_calls(clock: DomainClock) -> None:
    """Wrap the medvec functions each asset calls, in the asset modules' namespaces (the real function
    still runs). Model loading is a method of the embedder resource and is wrapped on its class."""
    import assets.embeddings as embeddings
    import assets.ingest as ingest
    import assets.reports as reports
    import assets.search as search
    from medvec.tables import database
    from resources.embedders import LocalEmbedderResource

    plan = {
        (ingest, "source_manifest"): ["load_manifest"],
        (ingest, "normalized_images"): ["normalize_batch", "thumbnail_strip"],
        (reports, "report_records"): ["read_batch_reports", "write_batch_reports", "label_agreement"],
        (reports, "report_embeddings"): ["open_report_table", "load_batch_reports", "upsert_batch_reports",
                                               "refresh_report_index"],
        (embeddings, "image_embeddings"): ["load_batch_records", "embed_records", "check_vectors", "image_rows",
                                           "upsert_batch", "open_image_table"],
        (search, "image_index"): ["maintain_table", "stored_query_vectors"],
        (search, "fallback_queries"): ["compute_fallbacks"],
        (search, "similar_images"): ["compute_similar"],
    }
    for (module, step), names in plan.items():
        for name in names:
            setattr(module, name, _timed(clock, step, name, getattr(module, name)))
    database.replace_batch_errors = _timed(clock, "ingest_errors", "replace_batch_errors", database.replace_batch_errors)
    LocalEmbedderResource.load = _timed(clock, "model_load", "load", LocalEmbedderResource.load)
    LocalEmbedderResource.resolve = _timed(clock, "embedding_model", "resolve", LocalEmbedderResource.resolve)


# --- the home on S3 (moto) ----------------------------------------------------------------------

#: moto's server as `moto_server` runs it (werkzeug, threaded), its WSGI app wrapped to append one line per
#: request to argv[2]: start time, operation (LIST for a bucket-level GET), HTTP status. Werkzeug's own
#: per-request log is off (it would cost the server CPU for coloured lines).
_MOTO_SERVER = r"""
import logging, sys, threading, time
from moto.server import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
from werkzeug.serving import run_simple

logging.getLogger("werkzeug").setLevel(logging.WARNING)
out, lock = open(sys.argv[2], "a", buffering=1), threading.Lock()
app = DomainDispatcherApplication(create_backend_app)

def counted(environ, start_response):
    started, method = time.time(), environ["REQUEST_METHOD"]
    path = environ.get("PATH_INFO", "").strip("/")
    op = "LIST" if method == "GET" and ("/" not in path or "list-type" in environ.get("QUERY_STRING", "")) else method
    status = []

    def respond(code, headers, exc_info=None):
        status.append(code.split()[0])
        return start_response(code, headers, exc_info)

    body = app(environ, respond)
    with lock:
        out.write(f"{started:.4f} {op} {status[0] if status else '-'}\n")
    return body

run_simple("127.0.0.1", int(sys.argv[1]), counted, threaded=True, request_handler=MotoRequestHandler)
"""


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class S3Server:
    """moto's S3 server in a subprocess, a bucket in it, and what it saw: requests (from its log) and CPU."""

    def __init__(self, workdir: Path):
        import boto3

        self.port, self.log_path = _free_port(), workdir / "moto-requests.log"
        self.log_path.write_text("")
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.stderr = open(workdir / "moto-server.err", "w")
        self.proc = subprocess.Popen([sys.executable, "-c", _MOTO_SERVER, str(self.port), str(self.log_path)],
                                     stdout=self.stderr, stderr=self.stderr)
        os.environ.update({"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                           "AWS_DEFAULT_REGION": "us-east-1"})
        self.client = boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1")
        deadline = time.time() + 60
        while True:
            try:
                self.client.list_buckets()
                break
            except Exception:
                if self.proc.poll() is not None or time.time() > deadline:
                    raise RuntimeError(f"moto's server did not start: see {workdir / 'moto-server.err'}")
                time.sleep(0.2)
        self.bucket = f"medvec-bench-{self.port}"
        self.client.create_bucket(Bucket=self.bucket)
        log(f"moto S3 server pid {self.proc.pid} on {self.endpoint}, bucket {self.bucket}")

    def env(self) -> dict[str, str]:
        return {"MEDVEC_HOME": f"s3://{self.bucket}/home", "MEDVEC_LANCEDB_URI": f"s3://{self.bucket}/lancedb",
                "MEDVEC_S3_ENDPOINT_URL": self.endpoint}

    def cpu_s(self) -> float:
        """The server process's user + system CPU seconds so far."""
        try:
            fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except OSError:
            return 0.0

    def requests(self) -> list[tuple[float, str, str]]:
        out = []
        for line in self.log_path.read_text().splitlines():
            parts = line.split()
            if len(parts) == 3:
                out.append((float(parts[0]), parts[1], parts[2]))
        return out

    def stored(self) -> dict:
        """Objects and bytes in the bucket, by top-level part of the home (images, thumbs, batches, ...)."""
        by: dict[str, dict[str, int]] = {}
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket):
            for obj in page.get("Contents", []):
                parts = obj["Key"].split("/")
                part = "/".join(parts[:2]) if parts[0] == "home" and len(parts) > 2 else parts[0]
                entry = by.setdefault(part, {"objects": 0, "bytes": 0})
                entry["objects"] += 1
                entry["bytes"] += obj["Size"]
        return by

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.stderr.close()


def count_requests(requests: list[tuple[float, str, str]], windows: list[tuple[float, float]]) -> dict[str, int]:
    """Requests by operation whose start time falls in any of the windows."""
    out: dict[str, int] = {}
    for t, op, _status in requests:
        if any(a <= t < b for a, b in windows):
            out[op] = out.get(op, 0) + 1
    if out:
        out["total"] = sum(out.values())
    return out


# --- the images ----------------------------------------------------------------------------------

def seed_datasets(folder: Path) -> list:
    """The sample dataset's DICOMs (no broken files, no reports), read once as pydicom datasets."""
    import pydicom

    from medvec.sample.writer import write_sample_data

    summary = write_sample_data(folder, include_broken=False, include_reports=False)
    return [(p, pydicom.dcmread(p)) for p in summary.files if p.suffix == ".dcm"]


def write_images(seeds: list, incoming: Path, count: int) -> dict:
    """`count` distinct DICOMs: the seeds round-robin, each with fresh UIDs and a pseudonymous
    PatientID (four images per patient), then one `.done` marker at the root so all are settled."""
    from pydicom.uid import generate_uid

    started, total_bytes, by_seed = time.perf_counter(), 0, {}
    for i in range(count):
        path, ds = seeds[i % len(seeds)]
        ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.PatientID = f"BENCH{i // 4:06d}"
        target = incoming / f"p{i // 1000:03d}" / f"img{i:06d}.dcm"
        target.parent.mkdir(parents=True, exist_ok=True)
        ds.save_as(target, enforce_file_format=True)
        total_bytes += target.stat().st_size
        by_seed[path.name] = by_seed.get(path.name, 0) + 1
        if (i + 1) % 1000 == 0 or i + 1 == count:
            log(f"wrote {i + 1:,}/{count:,} DICOMs ({total_bytes / 2**30:.2f} GiB)")
    (incoming / ".done").write_text("")
    return {"files": count, "bytes": total_bytes, "seconds": time.perf_counter() - started,
            "seed_files": len(seeds), "wg04_files": sum(n for name, n in by_seed.items() if name.startswith("RG"))}


# --- Dagster -------------------------------------------------------------------------------------

WORK_PARTS = ("home", "dagster", "incoming", "cache", "seed")


def prepare_environment(workdir: Path, batch_size: int, s3: S3Server | None = None) -> dict[str, str]:
    """A fresh Medvec home (a folder, or the moto bucket) and DAGSTER_HOME; must run before the code location
    is imported. The watched folder is local either way."""
    if any((workdir / part).exists() for part in WORK_PARTS):
        raise SystemExit(f"{workdir} holds an earlier run ({', '.join(WORK_PARTS)}): remove them or pick another --workdir")
    home, dagster_home = workdir / "home", workdir / "dagster"
    dagster_home.mkdir(parents=True)
    shutil.copyfile(ROOT / "deploy" / "dagster.yaml", dagster_home / "dagster.yaml")
    env = {"MEDVEC_HOME": str(home), "DAGSTER_HOME": str(dagster_home), "MEDVEC_SOURCE": str(workdir / "incoming"),
           "MEDVEC_MODEL": "tiny-siglip", "MEDVEC_PSEUDONYM_KEY": "pipeline-benchmark",
           "MEDVEC_WATCH_BATCH_SIZE": str(batch_size),
           # The daemon waits 60 s of quiet before refreshing search; a benchmark has nothing to wait for.
           "MEDVEC_REFRESH_QUIET_S": "0"}
    if s3 is not None:
        env.update(s3.env())
        env["MEDVEC_CACHE_DIR"] = str(workdir / "cache")  # model files stay local when the home is on S3
    os.environ.update(env)
    return env


def run_events(instance, run_id: str) -> dict:
    """Run and step durations from the event log (Dagster's own timestamps)."""
    from dagster import DagsterEventType as E

    run_start = run_end = None
    steps: dict[str, dict] = {}
    for entry in instance.all_logs(run_id):
        event = entry.dagster_event
        if event is None:
            continue
        kind = event.event_type
        if kind == E.RUN_START:
            run_start = entry.timestamp
        elif kind in (E.RUN_SUCCESS, E.RUN_FAILURE):
            run_end = entry.timestamp
        elif kind == E.STEP_START:
            steps.setdefault(event.step_key, {})["start"] = entry.timestamp
        elif kind in (E.STEP_SUCCESS, E.STEP_FAILURE):
            steps.setdefault(event.step_key, {})["end"] = entry.timestamp
    done = {k: v for k, v in steps.items() if "start" in v and "end" in v}
    return {"run_event_s": (run_end - run_start) if run_start and run_end else None,
            "steps": {k: v["end"] - v["start"] for k, v in done.items()},
            "step_windows": {k: (v["start"], v["end"]) for k, v in done.items()}}


@dataclass
class RunRecord:
    label: str
    kind: str  # model | batch | refresh
    run_id: str
    success: bool
    wall_s: float
    run_event_s: float | None
    steps: dict[str, float]
    domain_s: dict[str, float]
    domain_cpu_s: dict[str, float]
    calls: list[dict]
    peak_self_kb: int
    loadavg: list[float]
    images: int = 0
    window: tuple[float, float] = (0.0, 0.0)  # time.time() at the start and end of execute_in_process
    step_windows: dict[str, tuple[float, float]] = field(default_factory=dict)
    s3_server_cpu_s: float | None = None


class Harness:
    """Holds the instance, the code location and the clocks; executes what the sensors request."""

    def __init__(self, instance, defs, clock: DomainClock, s3: S3Server | None = None):
        self.instance, self.defs, self.clock, self.s3 = instance, defs, clock, s3
        self.runs: list[RunRecord] = []
        self.asset_job = defs.resolve_implicit_global_asset_job_def()
        self.resources = {"medvec": defs.resources["medvec"], "embedder": defs.resources["embedder"]}

    def tick(self, sensor, cursor: str | None):
        import dagster as dg

        context = dg.build_sensor_context(instance=self.instance, instance_ref=self.instance.get_ref(),
                                          cursor=cursor, resources=self.resources, definitions=self.defs)
        started, self.last_tick_at = time.perf_counter(), time.time()
        result = sensor.evaluate_tick(context)
        seconds = time.perf_counter() - started
        for request in result.dynamic_partitions_requests:  # the daemon adds them before launching
            self.instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
        return result, seconds

    def execute(self, label: str, kind: str, job, request, images: int = 0) -> RunRecord:
        from pipelines.backfill import QUIET

        self.clock.take()
        reset_peak_rss()
        s3_cpu = self.s3.cpu_s() if self.s3 else None
        started, started_at = time.perf_counter(), time.time()
        result = job.execute_in_process(
            instance=self.instance, run_config=QUIET, raise_on_error=False, tags=dict(request.tags),
            partition_key=request.partition_key,
            asset_selection=list(request.asset_selection) if request.asset_selection else None)
        wall, ended_at = time.perf_counter() - started, time.time()
        domain, cpu, calls = self.clock.take()
        events = run_events(self.instance, result.run_id)
        record = RunRecord(label=label, kind=kind, run_id=result.run_id, success=result.success, wall_s=wall,
                           run_event_s=events["run_event_s"], steps=events["steps"], domain_s=domain,
                           domain_cpu_s=cpu, calls=calls, peak_self_kb=_status_kb("self", "VmHWM"),
                           loadavg=[round(x, 2) for x in os.getloadavg()], images=images,
                           window=(started_at, ended_at), step_windows=events["step_windows"],
                           s3_server_cpu_s=self.s3.cpu_s() - s3_cpu if self.s3 else None)
        self.runs.append(record)
        overhead = (wall - sum(domain.values())) / wall if wall else 0.0
        log(f"run {label}: {'ok' if result.success else 'FAILED'} in {wall:.1f}s; domain {sum(domain.values()):.1f}s, "
            f"Dagster {overhead:.1%}; load {record.loadavg[0]}")
        if not result.success:
            failure = next((e for e in result.all_events if e.is_failure), None)
            log(f"  failure: {failure.message if failure else 'unknown'}")
        return record


def drive_sensor(harness: Harness, sensor, count: int, max_ticks: int = 50) -> list[dict]:
    """Tick the folder sensor and execute what it requests until no batch awaits a run."""
    from medvec.ingest.batches import list_batches, load_manifest
    from medvec.ingest.watch import awaiting_batches
    from pipelines.sensors import FOLDER_SENSOR

    from medvec.settings import Settings

    home = Settings.from_env().home  # a folder or an S3Path
    ticks, cursor = [], None
    for number in range(1, max_ticks + 1):
        result, seconds = harness.tick(sensor, cursor)
        cursor = result.cursor
        opened = [k for r in result.dynamic_partitions_requests for k in r.partition_keys]
        ticks.append({"tick": number, "seconds": seconds, "window": (harness.last_tick_at, harness.last_tick_at + seconds),
                      "partitions_added": len(opened),
                      "run_requests": len(result.run_requests),
                      "skip_message": result.skip_message})
        log(f"tick {number}: {seconds:.2f}s, {len(opened)} partition(s) added, {len(result.run_requests)} run(s) "
            f"requested")
        for request in result.run_requests:
            if request.partition_key:
                files = len(load_manifest(home, request.partition_key).files)
                harness.execute(request.partition_key, "batch", harness.asset_job, request, images=files)
            else:
                harness.execute("embedding_model", "model", harness.asset_job, request)
        claimed = sum(len(load_manifest(home, b).files) for b in list_batches(home))
        if claimed >= count and not awaiting_batches(home, FOLDER_SENSOR) and not result.run_requests:
            return ticks
    raise RuntimeError(f"the sensor did not launch every batch in {max_ticks} ticks")


def refresh_search(harness: Harness, count: int) -> None:
    """What the daemon does after a wave: search_refresh_sensor's request, run as search_refresh_job."""
    from pipelines.sensors import search_refresh_sensor

    result, seconds = harness.tick(search_refresh_sensor, None)
    if not result.run_requests:
        raise RuntimeError(f"search_refresh_sensor did not request a refresh: {result.skip_message}")
    log(f"search_refresh_sensor requested a refresh ({seconds:.2f}s)")
    job = harness.defs.resolve_job_def("search_refresh_job")
    harness.execute("search_refresh", "refresh", job, result.run_requests[0], images=count)


def code_location_import_s(rounds: int = 2) -> list[float]:
    """What a fresh run or step process pays before any work: importing the code location."""
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import pipelines.definitions"], cwd=ROOT, check=True,
                       env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True)
        times.append(time.perf_counter() - started)
    return times


# --- figures -------------------------------------------------------------------------------------

STAGES = [  # (stage, the asset steps it covers)
    ("normalise", ["source_manifest", "normalized_images", "report_records"]),
    ("embed", ["image_embeddings", "report_embeddings"]),
    ("index", ["image_index"]),
    ("fallbacks", ["fallback_queries"]),
    ("neighbours", ["similar_images"]),
]
#: Domain clock keys attributed to a stage besides the steps' own (shared helpers).
EXTRA_DOMAIN = {"normalise": ["ingest_errors"], "embed": ["model_load"], "fallbacks": ["model_load"]}


def stage_figures(runs: list[RunRecord], count: int) -> list[dict]:
    rows = []
    for stage, steps in STAGES:
        step_s = sum(r.steps.get(s, 0.0) for r in runs for s in steps)
        keys = steps + EXTRA_DOMAIN.get(stage, [])
        # ingest_errors and model_load are shared: attribute them to the stage whose runs hold them.
        domain_s = 0.0
        for r in runs:
            if not any(s in r.steps for s in steps):
                continue
            for key, value in r.domain_s.items():
                if key in steps or (key in keys and _belongs(key, stage, r)):
                    domain_s += value
        cpu_s = sum(v for r in runs for k, v in r.domain_cpu_s.items() if k in steps)
        rows.append({"stage": stage, "steps": steps, "step_s": step_s, "domain_s": domain_s, "domain_cpu_s": cpu_s,
                     "images_per_s_step": count / step_s if step_s else None,
                     "images_per_s_domain": count / domain_s if domain_s else None,
                     "step_overhead": (step_s - domain_s) / step_s if step_s else None})
    return rows


def _belongs(key: str, stage: str, run: RunRecord) -> bool:
    """ingest_errors is written by normalized_images and image_embeddings alike: the clock cannot tell
    them apart, so it counts for normalise (the larger writer). model_load: in a batch run it is the
    embedding step's, in the refresh run it is fallback_queries'."""
    if key == "ingest_errors":
        return stage == "normalise"
    if key == "model_load":
        return (stage == "embed") == (run.kind == "batch")
    return False


def upsert_rates(runs: list[RunRecord]) -> list[dict]:
    out, rows_before = [], 0
    for run in runs:
        for call in run.calls:
            if call["fn"] == "upsert_batch":
                rows = call["args"].get("rows", 0)
                out.append({"batch": run.label, "rows": rows, "table_rows_before": rows_before,
                            "seconds": call["seconds"], "rows_per_s": rows / call["seconds"] if call["seconds"] else None})
                rows_before += rows
    return out


def projection(stages: list[dict], normalise_cpu_per_image: float, embed_cpu_rate: float, count: int,
               sensor: dict) -> dict:
    """377,000 images on one H100 box from the measured rates; every assumption is named in the output."""
    per_core = 1.0 / normalise_cpu_per_image
    normalise_rate = per_core * PROJECT_CORES * PROJECT_CORE_EFFICIENCY
    by = {s["stage"]: s for s in stages}
    scale = PROJECT_IMAGES / count
    out = {
        "images": PROJECT_IMAGES, "cores": PROJECT_CORES, "core_efficiency": PROJECT_CORE_EFFICIENCY,
        "normalise_per_core_images_per_s": per_core, "normalise_images_per_s": normalise_rate,
        "normalise_s": PROJECT_IMAGES / normalise_rate,
        "embed_assumed_gpu_images_per_s": ASSUMED_GPU_IMAGES_PER_S,
        "embed_s": PROJECT_IMAGES / ASSUMED_GPU_IMAGES_PER_S,
        "embed_cpu_tiny_measured_images_per_s": embed_cpu_rate,
        "index_s": by["index"]["step_s"] * scale, "fallbacks_s": by["fallbacks"]["step_s"] * scale,
        "neighbours_s_linear": by["neighbours"]["step_s"] * scale,
        "sensor_ticks": sensor["ticks_needed"], "sensor_open_s": sensor["open_s"],
    }
    refresh = out["index_s"] + out["fallbacks_s"] + out["neighbours_s_linear"]
    out["serial_s"] = out["normalise_s"] + out["embed_s"] + refresh
    # Batch runs overlap (4 runs at once): normalising batch k+1 while batch k embeds, so the batch
    # phase takes about as long as its slower stage; the refresh runs once after the wave.
    out["overlapped_s"] = max(out["normalise_s"], out["embed_s"]) + refresh
    out["overlapped_with_sensor_s"] = max(out["normalise_s"], out["embed_s"], out["sensor_open_s"]) + refresh
    return out


def sensor_capacity(ticks: list[dict], batch_size: int) -> dict:
    from medvec.ingest.watch import WatchOptions

    options = WatchOptions.from_env()
    per_tick = options.batches_per_tick * batch_size
    ticks_needed = -(-PROJECT_IMAGES // per_tick)
    return {"files_per_tick": per_tick, "interval_s": options.interval_s, "ticks_needed": ticks_needed,
            "open_s": ticks_needed * options.interval_s, "max_tick_s": max(t["seconds"] for t in ticks)}


# --- report --------------------------------------------------------------------------------------

def fmt(x, digits=1) -> str:
    return "–" if x is None else f"{x:,.{digits}f}"


def render(res: dict) -> str:
    m, corpus, tot = res["machine"], res["corpus"], res["totals"]
    lines = ["# Medvec end-to-end pipeline benchmark", "",
             f"- command: `{res['command']}`", f"- date: {res['date']}",
             f"- home and LanceDB: {res['home_on']}" + (" (moto's S3 server in a subprocess, in memory, on this "
                                                         "machine)" if res["home_on"] == "s3" else ""),
             f"- machine: {m['cpu']}, {m['cpus']} cores, {m['memory_gb']:.0f} GB RAM, no GPU; load average at start "
             f"{m['loadavg_start']}, during runs {m['loadavg_runs_min']}–{m['loadavg_runs_max']} (1-min), at end "
             f"{m['loadavg_end']}",
             "- libraries: " + ", ".join(f"{k} {v}" for k, v in res["versions"].items()),
             f"- images: {corpus['files']:,} DICOMs ({corpus['bytes'] / 2**30:.2f} GiB), the sample dataset's "
             f"{corpus['seed_files']} DICOMs round-robin ({corpus['wg04_files']:,} full-size WG04 RG1/RG3, the rest "
             "synthetic 512–1024 px chests in 6 transfer syntaxes) with fresh UIDs and PatientIDs; written in "
             f"{corpus['seconds']:.0f} s (not timed)",
             f"- batches of {res['batch_size']:,}; model tiny-siglip (64-d, random weights) on CPU; "
             f"{res['rows']:,} rows in `{res['table']}` (expected {res['expected_rows']:,}: {res['errors']} error(s), "
             f"{res['duplicates']} duplicate(s))", ""]
    lines += ["## Stages", "",
              "| stage | Dagster steps | step s (event log) | domain s | images/s (step) | images/s (domain) | "
              "step overhead |", "|---|---|---:|---:|---:|---:|---:|"]
    s = res["sensor"]
    lines.append(f"| sensor (`incoming_folder_sensor`) | {s['ticks']} ticks | {fmt(s['seconds'], 2)} | – | "
                 f"{fmt(res['images'] / s['seconds'], 0)} | – | – |")
    for row in res["stages"]:
        lines.append(f"| {row['stage']} | {', '.join(row['steps'])} | {fmt(row['step_s'], 1)} | {fmt(row['domain_s'], 1)} | "
                     f"**{fmt(row['images_per_s_step'])}** | {fmt(row['images_per_s_domain'])} | "
                     f"{fmt(100 * row['step_overhead'] if row['step_overhead'] is not None else None)}% |")
    lines += ["", f"Wall time, first tick to the end of the search refresh: **{tot['wall_s']:.0f} s** "
              f"({res['images'] / tot['wall_s']:.1f} images/s end to end); runs {tot['run_wall_s']:.0f} s, "
              f"ticks {s['seconds']:.1f} s, the benchmark's bookkeeping between runs {tot['between_s']:.1f} s.", ""]
    lines += ["## Dagster's overhead", "",
              "| runs | run wall s | run (event log) s | Σ steps s | domain s | overhead s | overhead / run wall |",
              "|---|---:|---:|---:|---:|---:|---:|"]
    for label, o in res["overhead"].items():
        lines.append(f"| {label} | {fmt(o['wall_s'])} | {fmt(o['event_s'])} | {fmt(o['steps_s'])} | {fmt(o['domain_s'])} | "
                     f"{fmt(o['overhead_s'])} | **{fmt(100 * o['fraction'])}%** |")
    total = res["overhead"]["all runs"]
    lines += ["", f"Overall: **{100 * total['fraction']:.1f}%** of run wall time is Dagster's (aim: under "
              f"{100 * OVERHEAD_AIM:.0f}%). Outside the steps (run set-up, resource init, run events): "
              f"{fmt(total['wall_s'] - total['steps_s'])} s; inside the steps but outside medvec (IO manager, "
              f"events, metadata): {fmt(total['steps_s'] - total['domain_s'])} s.",
              f"A daemon-launched run would also start a fresh interpreter per run (default run launcher) and per "
              f"step (multiprocess executor): importing the code location took {res['import_s']} s here.", ""]
    lines += ["### Per run", "", "| run | images | wall s | domain s | overhead | peak RSS MB (this process) | load |",
              "|---|---:|---:|---:|---:|---:|---:|"]
    for r in res["runs"]:
        d = sum(r["domain_s"].values())
        lines.append(f"| {r['label']} | {r['images']:,} | {r['wall_s']:.1f} | {d:.1f} | "
                     f"{100 * (r['wall_s'] - d) / r['wall_s']:.1f}% | {r['peak_self_kb'] / 1024:,.0f} | {r['loadavg'][0]} |")
    lines += ["", "## Peak memory", "",
              "| phase | this process MB (sampled) | children, sum MB | largest child MB (VmHWM) | children |",
              "|---|---:|---:|---:|---:|"]
    for phase, p in sorted(res["memory"]["phases"].items()):
        lines.append(f"| {phase} | {p['self_kb'] / 1024:,.0f} | {p['children_sum_kb'] / 1024:,.0f} | "
                     f"{p['child_max_kb'] / 1024:,.0f} | {p['children']} |")
    mem = res["memory"]
    lines += ["", f"getrusage at the end: this process (RUSAGE_SELF ru_maxrss) **{mem['ru_self_mb']:,.0f} MB**; "
              f"RUSAGE_CHILDREN ru_maxrss {mem['ru_children_mb']:,.0f} MB, which is *not* a worker's peak: Linux "
              "carries the parent's RSS at fork into a spawned child's ru_maxrss across exec, so it reads about this "
              "process's size. A worker's own peak is its VmHWM, sampled above (normalisation workers, the embedding "
              "preparation worker). Per run, this process's VmHWM (reset before each run) is in the per-run table.", ""]
    up = res["upserts"]
    if up:
        lines += ["## LanceDB upserts (`upsert_batch`: merge_insert on image_id)", "",
                  "| batch | rows | table rows before | seconds | rows/s |", "|---|---:|---:|---:|---:|"]
        lines += [f"| {u['batch']} | {u['rows']:,} | {u['table_rows_before']:,} | {u['seconds']:.2f} | "
                  f"{fmt(u['rows_per_s'], 0)} |" for u in up]
        lines.append("")
    if res.get("s3"):
        s3 = res["s3"]
        ops = lambda d: ", ".join(f"{k} {v:,}" for k, v in d.items() if k != "total") or "none"
        lines += ["## Requests to the S3 server (moto, in a subprocess)", "",
                  f"All: {s3['total_requests']:,} ({ops(s3['by_op'])}); 4xx/5xx answers: {s3['errors_4xx_5xx']:,} "
                  "(404s of existence checks are expected). By the event log's step windows:", "",
                  "| where | requests | by operation |", "|---|---:|---|"]
        lines.append(f"| sensor ticks | {s3['sensor_ticks'].get('total', 0):,} | {ops(s3['sensor_ticks'])} |")
        for stage, d in s3["stages"].items():
            lines.append(f"| {stage} | {d.get('total', 0):,} | {ops(d)} |")
        lines.append(f"| runs, outside the steps | {s3['runs_outside_steps'].get('total', 0):,} | "
                     f"{ops(s3['runs_outside_steps'])} |")
        lines += ["", "| runs | wall s | requests | S3 server CPU s |", "|---|---:|---:|---:|"]
        for kind, d in s3["by_run_kind"].items():
            lines.append(f"| {kind} | {d['wall_s']:.1f} | {d['requests'].get('total', 0):,} | {d['server_cpu_s']:.1f} |")
        lines += ["", f"S3 server CPU in all: {s3['server_cpu_s_total']:.1f} s. Bucket at the end: " +
                  ", ".join(f"{k} {v['objects']:,} objects / {v['bytes'] / 2**20:,.1f} MiB"
                            for k, v in sorted(s3["stored"].items())), ""]
    p = res["projection"]
    lines += ["## Projection: 377,000 images on one H100 box", "",
              f"- normalise: measured CPU time {1000 / p['normalise_per_core_images_per_s']:.1f} ms per image "
              f"(this process and its workers, inside `normalize_batch`) → {p['normalise_per_core_images_per_s']:.1f} "
              f"images/s per core × {p['cores']} cores × {p['core_efficiency']:.0%} scaling efficiency = "
              f"{p['normalise_images_per_s']:,.0f} images/s → {PROJECT_IMAGES:,} / {p['normalise_images_per_s']:,.0f} = "
              f"**{p['normalise_s'] / 60:.1f} min**",
              f"- embed (siglip-base on the H100): **assumed** {p['embed_assumed_gpu_images_per_s']:,.0f} images/s "
              f"(the project's aim; no GPU was measured) → {PROJECT_IMAGES:,} / "
              f"{p['embed_assumed_gpu_images_per_s']:,.0f} = **{p['embed_s'] / 60:.1f} min** (tiny-siglip on this "
              f"CPU: {p['embed_cpu_tiny_measured_images_per_s']:,.0f} images/s, bound by WebP decoding)",
              f"- index + fallbacks + neighbours: measured step time × {PROJECT_IMAGES:,} / {res['images']:,}: "
              f"{p['index_s']:.0f} + {p['fallbacks_s']:.0f} + {p['neighbours_s_linear']:.0f} s = "
              f"**{(p['index_s'] + p['fallbacks_s'] + p['neighbours_s_linear']) / 60:.1f} min** (linear in rows)",
              f"- sensor: {res['sensor_capacity']['files_per_tick']:,} files per {res['sensor_capacity']['interval_s']} s "
              f"tick → {p['sensor_ticks']} ticks = **{p['sensor_open_s'] / 60:.1f} min** to open every batch",
              f"- total, stages one after another: **{p['serial_s'] / 60:.1f} min**; batch runs overlapping "
              f"(normalise and embed of different batches at once, then one refresh): "
              f"**{p['overlapped_s'] / 60:.1f} min**, or **{p['overlapped_with_sensor_s'] / 60:.1f} min** when the "
              "sensor's opening rate is the limit", ""]
    return "\n".join(lines)


def versions() -> dict[str, str]:
    from importlib import metadata

    out = {"python": platform.python_version()}
    for dist in ("dagster", "lancedb", "pyarrow", "pydicom", "pillow", "numpy", "torch", "transformers"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "not installed"
    return out


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.lower().startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.machine()


# --- main ----------------------------------------------------------------------------------------

def summarise(harness: Harness, ticks: list[dict], count: int, batch_size: int) -> dict:
    runs = harness.runs
    stages = stage_figures(runs, count)

    def overhead(selected: list[RunRecord]) -> dict:
        wall = sum(r.wall_s for r in selected)
        domain = sum(sum(r.domain_s.values()) for r in selected)
        return {"wall_s": wall, "event_s": sum(r.run_event_s or 0 for r in selected),
                "steps_s": sum(sum(r.steps.values()) for r in selected), "domain_s": domain,
                "overhead_s": wall - domain, "fraction": (wall - domain) / wall if wall else 0.0}

    groups = {"model run": [r for r in runs if r.kind == "model"],
              "batch runs (normalise + embed)": [r for r in runs if r.kind == "batch"],
              "search refresh": [r for r in runs if r.kind == "refresh"], "all runs": runs}
    normalise_cpu = sum(r.domain_cpu_s.get("normalized_images", 0.0) for r in runs)
    embed = next(s for s in stages if s["stage"] == "embed")
    embed_domain = sum(r.domain_s.get("image_embeddings", 0.0) for r in runs)
    sensor = sensor_capacity(ticks, batch_size)
    return {"stages": stages, "overhead": {k: overhead(v) for k, v in groups.items() if v},
            "upserts": upsert_rates(runs), "sensor_capacity": sensor,
            "projection": projection(stages, normalise_cpu / count, count / embed_domain if embed_domain else 0.0,
                                     count, sensor),
            "embed_stage": embed}


def s3_figures(s3: S3Server, runs: list[RunRecord], ticks: list[dict], count: int) -> dict:
    """Requests to the S3 server per stage (by the event log's step windows), per tick, outside the steps,
    and the server's CPU; what the bucket holds at the end."""
    reqs = s3.requests()
    stages = {}
    for stage, steps in STAGES:
        windows = [r.step_windows[k] for r in runs for k in steps if k in r.step_windows]
        stages[stage] = count_requests(reqs, windows)
    all_steps = [w for r in runs for w in r.step_windows.values()]
    in_runs = count_requests(reqs, [r.window for r in runs])
    in_steps = count_requests(reqs, all_steps)
    outside_steps = {k: in_runs.get(k, 0) - in_steps.get(k, 0) for k in in_runs if in_runs.get(k, 0) > in_steps.get(k, 0)}
    by_kind = {}
    for kind in ("model", "batch", "refresh"):
        selected = [r for r in runs if r.kind == kind]
        if selected:
            by_kind[kind] = {"requests": count_requests(reqs, [r.window for r in selected]),
                             "server_cpu_s": sum(r.s3_server_cpu_s or 0.0 for r in selected),
                             "wall_s": sum(r.wall_s for r in selected)}
    stored = s3.stored()
    return {"endpoint": "moto (subprocess, in-memory)", "total_requests": len(reqs),
            "by_op": count_requests(reqs, [(0.0, float("inf"))]),
            "errors_4xx_5xx": sum(1 for _t, _op, st in reqs if st[:1] in ("4", "5")),
            "stages": stages, "sensor_ticks": count_requests(reqs, [tuple(t["window"]) for t in ticks]),
            "runs_outside_steps": outside_steps, "by_run_kind": by_kind,
            "server_cpu_s_total": s3.cpu_s(), "stored": stored,
            "requests_per_image_batch_runs": by_kind.get("batch", {}).get("requests", {}).get("total", 0) / count}


def verify(count: int) -> dict:
    """Rows in the model's table against the images written, minus the files that really failed."""
    from medvec.tables import database
    from medvec.ingest.batches import list_batches, load_batch_errors
    from medvec.tables.images import image_table_name
    from medvec.settings import Settings

    settings = Settings.from_env()
    home = settings.home
    errors = sum(len(load_batch_errors(home, b)) for b in list_batches(home))
    table_name = image_table_name("tiny_siglip")
    rows = database.connect(settings.lancedb_uri).open_table(table_name).count_rows()
    return {"table": table_name, "rows": rows, "errors": errors, "expected_rows": count - errors}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--batch-size", type=int, default=2000, help="MEDVEC_WATCH_BATCH_SIZE")
    parser.add_argument("--workdir", type=Path, help="folder for the images, Medvec home and DAGSTER_HOME "
                                                     "(default: a new temporary folder); what the run writes there is removed unless --keep")
    parser.add_argument("--out", type=Path, help="also write every number as JSON here")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    parser.add_argument("--home-on", choices=("local", "s3"), default="local",
                        help="where the Medvec home and LanceDB live: a local folder, or a bucket on moto's S3 "
                             "server, started in a subprocess (the watched folder stays local)")
    args = parser.parse_args(argv)

    import logging
    import warnings

    warnings.filterwarnings("ignore")
    logging.basicConfig(level=logging.WARNING)
    started_all = time.perf_counter()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="medvec-pipeline-"))
    workdir.mkdir(parents=True, exist_ok=True)
    res: dict = {"command": shlex.join([os.path.relpath(sys.executable, ROOT) if sys.executable.startswith(str(ROOT))
                                        else sys.executable, *(sys.argv if argv is None else [__file__, *argv])]),
                 "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "images": args.images,
                 "batch_size": args.batch_size, "home_on": args.home_on, "versions": versions(),
                 "machine": {"cpu": cpu_model(), "cpus": len(os.sched_getaffinity(0)), "platform": platform.platform(),
                             "memory_gb": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30,
                             "loadavg_start": [round(x, 2) for x in os.getloadavg()]}}
    s3: S3Server | None = None
    try:
        if args.home_on == "s3":
            s3 = S3Server(workdir)
        prepare_environment(workdir, args.batch_size, s3)
        log(f"work folder {workdir}; writing {args.images:,} DICOMs")
        seeds = seed_datasets(workdir / "seed")
        res["corpus"] = write_images(seeds, Path(os.environ["MEDVEC_SOURCE"]), args.images)
        del seeds

        import dagster as dg

        from pipelines.definitions import defs
        from pipelines.sensors import incoming_folder_sensor

        clock = DomainClock()
        instrument_domain_calls(clock)
        sampler = MemorySampler(clock, exclude={s3.proc.pid} if s3 else None)
        sampler.start()
        with dg.DagsterInstance.get() as instance:
            harness = Harness(instance, defs, clock, s3)
            started = time.perf_counter()
            ticks = drive_sensor(harness, incoming_folder_sensor, args.images)
            refresh_search(harness, args.images)
            wall = time.perf_counter() - started
            res.update(summarise(harness, ticks, args.images, args.batch_size))
            res["runs"] = [r.__dict__ for r in harness.runs]
            res["sensor"] = {"ticks": len(ticks), "seconds": sum(t["seconds"] for t in ticks), "per_tick": ticks}
            run_wall = sum(r.wall_s for r in harness.runs)
            res["totals"] = {"wall_s": wall, "run_wall_s": run_wall,
                             "between_s": wall - run_wall - res["sensor"]["seconds"]}
        sampler.stop()
        res.update(verify(args.images))
        if s3:
            res["s3"] = s3_figures(s3, harness.runs, ticks, args.images)
        batch_runs = [r for r in res["runs"] if r["kind"] == "batch"]
        res["duplicates"] = args.images - res["errors"] - res["rows"]
        loads = [r["loadavg"][0] for r in res["runs"]]
        res["machine"].update({"loadavg_runs_min": min(loads), "loadavg_runs_max": max(loads),
                               "loadavg_end": [round(x, 2) for x in os.getloadavg()]})
        res["memory"] = {"phases": sampler.peaks,
                         "ru_self_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                         "ru_children_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
                         "batch_run_peak_self_mb": max((r["peak_self_kb"] for r in batch_runs), default=0) / 1024}
        # After getrusage: the probe imports torch and would be the largest reaped child.
        log("timing the code location's import in a fresh interpreter (what a run or step process pays)")
        res["import_s"] = [round(x, 1) for x in code_location_import_s()]
        res["total_seconds"] = time.perf_counter() - started_all
        print(render(res))
        if args.out:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(res, indent=1, default=str))
            log(f"wrote {args.out}")
        if res["rows"] != res["expected_rows"]:
            log(f"table holds {res['rows']:,} rows, expected {res['expected_rows']:,}")
            return 1
    finally:
        if s3:
            s3.stop()
        if not args.keep:  # only what this run created: --workdir may be a folder that holds other things
            for part in WORK_PARTS:
                shutil.rmtree(workdir / part, ignore_errors=True)
            for name in ("moto-requests.log", "moto-server.err"):
                (workdir / name).unlink(missing_ok=True)
            if not args.workdir:
                shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
