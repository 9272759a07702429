"""Dagster's instance at 5,000 batch partitions, SQLite against PostgreSQL: sensor ticks, the UI's
GraphQL partition queries and the instance's partition reads.

    .venv/bin/python benchmarks/instance_postgres.py                      # both, 5,000 partitions
    .venv/bin/python benchmarks/instance_postgres.py --partitions 20000 --only postgres

Each backend gets a fresh $DAGSTER_HOME with deploy/dagster.yaml (SQLite: as shipped; PostgreSQL: plus
the `storage: postgres:` block, on a throwaway server from Debian's binaries, tests/pg_server.py). Setup,
timed but not the point: N dynamic partitions of `batch`, one successful run per batch (tagged with its
partition, as a batch run is), and one materialisation per batch of normalized_images and of
image_embeddings (reported runless, so partition status queries have N x 2 events to read), plus a real
embedding_model materialisation so the folder sensor requests batch runs.

Then, per backend:
  (a) sensor ticks through Dagster's evaluation (`evaluate_tick`, run requests checked against the
      partitions): incoming_folder_sensor with nothing new, and with two new files (one batch opened,
      its partition added, one run requested); search_refresh_sensor;
  (b) a real `dagster-webserver` on a free port, POSTing the queries the UI makes for partition health
      (the asset page's partitionKeysByDimension + assetPartitionStatuses per asset, and the catalog's
      partitionStats of every asset);
  (c) instance.get_dynamic_partitions, get_materialized_partitions, has_dynamic_partition.
Median and max over --rounds. A table to stdout, every number as JSON to --out.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.dagster_graphql import graphql  # noqa: E402  (after the root is importable)

PARTITION_HEALTH = """query PartitionHealth($path: [String!]!) {
  assetNodeOrError(assetKey: {path: $path}) {
    ... on AssetNode {
      id
      partitionKeysByDimension { name type partitionKeys }
      assetPartitionStatuses {
        ... on DefaultPartitionStatuses { materializedPartitions materializingPartitions failedPartitions }
      }
    }
  }
}"""
CATALOG_STATS = """{ assetNodes { assetKey { path } isPartitioned
  partitionStats { numMaterialized numPartitions numFailed numMaterializing } } }"""


def _summary(seconds: list[float]) -> dict:
    return {"median_ms": round(statistics.median(seconds) * 1000, 1), "max_ms": round(max(seconds) * 1000, 1),
            "n": len(seconds)}


def _timed(fn, rounds: int) -> tuple[dict, object]:
    seconds, answer = [], None
    for _ in range(rounds):
        started = time.perf_counter()
        answer = fn()
        seconds.append(time.perf_counter() - started)
    return _summary(seconds), answer


def batch_keys(count: int) -> list[str]:
    """Batch names as the sensors write them (bYYYYMMDDTHHMMSS-NNN), one second apart."""
    start = time.mktime((2024, 1, 1, 0, 0, 0, 0, 0, -1))
    return [time.strftime("b%Y%m%dT%H%M%S", time.localtime(start + i)) + f"-{i % 1000:03d}" for i in range(count)]


def fill_instance(instance, keys: list[str]) -> dict:
    """What N finished batches leave in the instance: partitions, one run each, two materialisations each."""
    import dagster as dg
    from dagster._core.storage.dagster_run import DagsterRun, DagsterRunStatus
    from dagster._core.utils import make_new_run_id

    from assets.partitions import batch_partitions

    timings = {}
    started = time.perf_counter()
    instance.add_dynamic_partitions(batch_partitions.name, keys)
    timings["add_partitions_s"] = round(time.perf_counter() - started, 2)
    started = time.perf_counter()
    for key in keys:
        instance.add_run(DagsterRun(job_name="__ASSET_JOB", run_id=make_new_run_id(), status=DagsterRunStatus.SUCCESS,
                                    tags={"dagster/partition": key, "medvec/batch": key}))
    timings["add_runs_s"] = round(time.perf_counter() - started, 2)
    started = time.perf_counter()
    for key in keys:
        for asset in ("normalized_images", "image_embeddings"):
            instance.report_runless_asset_event(dg.AssetMaterialization(asset_key=asset, partition=key,
                                                                        metadata={"ok": 2, "errors": 0}))
    timings["add_materializations_s"] = round(time.perf_counter() - started, 2)
    return timings


def _write_files(folder: Path, names: list[str]) -> None:
    """Finished downloads: a `.done` marker beside each settles it on the sensor's first look."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_bytes(b"DICM" + name.encode())
        (folder / f"{name}.done").touch()


def time_sensors(instance, home: Path, rounds: int) -> dict:
    from benchmarks.sensor_tick import Ticker
    from pipelines.definitions import defs
    from pipelines.sensors import incoming_folder_sensor, search_refresh_sensor
    from resources import MedvecHomeResource
    from resources.embedders import LocalEmbedderResource

    medvec = MedvecHomeResource(home=str(home), lancedb_uri=str(home / "lancedb"))
    resources = {"medvec": medvec, "embedder": LocalEmbedderResource(model="tiny-siglip")}
    folder = Ticker(incoming_folder_sensor, instance, resources, defs)
    folder.tick()  # the first look at an empty folder
    idle = [folder.tick()[0] for _ in range(rounds)]
    opening, requested = [], 0
    for round_ in range(rounds):
        _write_files(home / "incoming", [f"new{round_:02d}a.dcm", f"new{round_:02d}b.dcm"])
        seconds, result = folder.tick()
        opening.append(seconds)
        requested += len(result.run_requests)
    refresh = Ticker(search_refresh_sensor, instance, {"medvec": medvec}, defs)
    refreshing = [refresh.tick()[0] for _ in range(rounds)]
    return {"folder_idle": _summary(idle), "folder_new_batch": _summary(opening), "runs_requested": requested,
            "search_refresh": _summary(refreshing)}


def time_instance_reads(instance, keys: list[str], rounds: int) -> dict:
    import dagster as dg

    from assets.partitions import batch_partitions

    partitions, found = _timed(lambda: instance.get_dynamic_partitions(batch_partitions.name), rounds)
    assert len(found) >= len(keys)
    materialized, found = _timed(lambda: instance.get_materialized_partitions(dg.AssetKey("normalized_images")),
                                 rounds)
    assert len(found) == len(keys)
    has_one, _ = _timed(lambda: instance.has_dynamic_partition(batch_partitions.name, keys[len(keys) // 2]), rounds)
    return {"get_dynamic_partitions": partitions, "get_materialized_partitions": materialized,
            "has_dynamic_partition": has_one}


def start_webserver(env: dict) -> tuple[subprocess.Popen, int]:
    from tests.conftest import free_port

    port = free_port()
    server = subprocess.Popen([str(Path(sys.executable).parent / "dagster-webserver"), "-w", "workspace.yaml",
                               "-h", "127.0.0.1", "-p", str(port)], cwd=ROOT, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        try:
            if graphql(port, "{ assetNodes { id } }")["assetNodes"]:
                return server, port
        except OSError:
            time.sleep(1)
    stop_webserver(server)
    raise RuntimeError("dagster-webserver did not answer GraphQL in 240 s")


def stop_webserver(server: subprocess.Popen) -> None:
    os.killpg(server.pid, signal.SIGTERM)
    try:
        server.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(server.pid, signal.SIGKILL)


def time_graphql(env: dict, count: int, rounds: int) -> dict:
    server, port = start_webserver(env)
    try:
        report = {}
        for asset in ("normalized_images", "image_embeddings"):
            first = time.perf_counter()
            node = graphql(port, PARTITION_HEALTH, {"path": [asset]})["assetNodeOrError"]
            first = time.perf_counter() - first
            assert len(node["partitionKeysByDimension"][0]["partitionKeys"]) >= count
            assert len(node["assetPartitionStatuses"]["materializedPartitions"]) == count
            timing, _ = _timed(lambda: graphql(port, PARTITION_HEALTH, {"path": [asset]}), rounds)
            report[f"partition_health_{asset}"] = {**timing, "first_ms": round(first * 1000, 1)}
        first = time.perf_counter()
        nodes = graphql(port, CATALOG_STATS)["assetNodes"]
        first = time.perf_counter() - first
        stats = {"/".join(n["assetKey"]["path"]): n["partitionStats"] for n in nodes}
        assert stats["normalized_images"]["numMaterialized"] == count
        timing, _ = _timed(lambda: graphql(port, CATALOG_STATS), rounds)
        report["catalog_partition_stats"] = {**timing, "first_ms": round(first * 1000, 1)}
        return report
    finally:
        stop_webserver(server)


def run(kind: str, count: int, rounds: int, workdir: Path, pg_url: str | None) -> dict:
    import dagster as dg

    from assets.embeddings import embedding_model
    from resources import MedvecHomeResource
    from resources.embedders import LocalEmbedderResource
    from tests.pg_server import PG_URL_ENV, write_postgres_instance

    dagster_home, home = workdir / f"dagster_{kind}", workdir / f"home_{kind}"
    if kind == "postgres":
        write_postgres_instance(dagster_home)
        os.environ[PG_URL_ENV] = pg_url
    else:
        dagster_home.mkdir(parents=True)
        shutil.copy(ROOT / "deploy" / "dagster.yaml", dagster_home / "dagster.yaml")
    os.environ.update({"DAGSTER_HOME": str(dagster_home), "MEDVEC_HOME": str(home),
                       "MEDVEC_SOURCE": str(home / "incoming")})
    keys = batch_keys(count)
    with dg.DagsterInstance.get() as instance:
        setup = fill_instance(instance, keys)
        medvec = MedvecHomeResource(home=str(home), lancedb_uri=str(home / "lancedb"))
        dg.materialize([embedding_model], instance=instance,
                       resources={"medvec": medvec, "embedder": LocalEmbedderResource(model="tiny-siglip")})
        print(f"[{kind}] setup: {count:,} partitions {setup['add_partitions_s']}s, runs {setup['add_runs_s']}s, "
              f"{2 * count:,} materialisations {setup['add_materializations_s']}s", file=sys.stderr, flush=True)
        sensors = time_sensors(instance, home, rounds)
        reads = time_instance_reads(instance, keys, rounds)
    print(f"[{kind}] sensors and instance reads done; starting dagster-webserver", file=sys.stderr, flush=True)
    graphql = time_graphql({**os.environ, "PYTHONPATH": str(ROOT)}, count, rounds)
    return {"backend": kind, "partitions": count, "setup": setup, "sensors": sensors, "instance": reads,
            "graphql": graphql}


ROWS = [("sensor: incoming_folder_sensor, nothing new", "sensors", "folder_idle"),
        ("sensor: incoming_folder_sensor, opens 1 batch + run", "sensors", "folder_new_batch"),
        ("sensor: search_refresh_sensor", "sensors", "search_refresh"),
        ("GraphQL: partition health, normalized_images", "graphql", "partition_health_normalized_images"),
        ("GraphQL: partition health, image_embeddings", "graphql", "partition_health_image_embeddings"),
        ("GraphQL: catalog partitionStats (all assets)", "graphql", "catalog_partition_stats"),
        ("instance.get_dynamic_partitions", "instance", "get_dynamic_partitions"),
        ("instance.get_materialized_partitions", "instance", "get_materialized_partitions"),
        ("instance.has_dynamic_partition", "instance", "has_dynamic_partition")]


def table(reports: list[dict]) -> str:
    header = "| ms, median (max) | " + " | ".join(r["backend"] for r in reports) + " |"
    lines = [header, "|---|" + "---:|" * len(reports)]
    for label, group, name in ROWS:
        cells = []
        for report in reports:
            value = report[group][name]
            first = f", first {value['first_ms']:.0f}" if "first_ms" in value else ""
            cells.append(f"{value['median_ms']:.1f} ({value['max_ms']:.1f}{first})")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--partitions", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--only", choices=("sqlite", "postgres"))
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "instance_postgres.json"))
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    logging.getLogger("dagster").setLevel(logging.WARNING)
    os.environ.setdefault("MEDVEC_PSEUDONYM_KEY", "bench")
    from tests.pg_server import PostgresServer, PostgresUnavailable

    load_before = os.getloadavg()
    reports = []
    with tempfile.TemporaryDirectory() as tmp:
        if args.only != "postgres":
            reports.append(run("sqlite", args.partitions, args.rounds, Path(tmp), None))
        if args.only != "sqlite":
            try:
                with PostgresServer() as server:
                    reports.append(run("postgres", args.partitions, args.rounds, Path(tmp), server.url))
            except PostgresUnavailable as reason:
                print(f"PostgreSQL skipped: {reason}", file=sys.stderr)
    machine = {"python": platform.python_version(), "cpus": os.cpu_count(), "load_before": load_before, "load_after": os.getloadavg(),
               "dagster": __import__("dagster").__version__}
    print(f"{args.partitions:,} batch partitions, {2 * args.partitions:,} materialisations, {args.rounds} rounds")
    print(table(reports))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"machine": machine, "reports": reports}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
