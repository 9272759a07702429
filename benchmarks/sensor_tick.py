"""How long one sensor tick takes on a large source: 100,000 files in a local folder, and 100,000
keys under an S3 prefix on moto's server. Each tick runs through Dagster's own evaluation
(`evaluate_tick`) against a temporary Dagster instance, with partitions added between ticks as the
daemon would; the runs themselves are not executed (their cost is not the sensor's).

    .venv/bin/python benchmarks/sensor_tick.py                 # both, 100,000 objects each
    .venv/bin/python benchmarks/sensor_tick.py --files 20000 --only local
    .venv/bin/python benchmarks/sensor_tick.py --only local --modes fixed adaptive   # old vs new, one run

Modes: `adaptive` (the default options: a tick opens batches until its 20 s budget is spent, at least 4,
at most 400) and `fixed` (MEDVEC_WATCH_TICK_BUDGET_S=0: exactly 4 a tick, the behaviour before issue 20).
Minutes to open the backlog are counted at the sensor's 30 s interval: ticks x 30 s.

Phases per source: the first look (nothing is settled yet), then ticks until every file is in a
batch, then a tick with nothing new, then one after 500
new files arrive. Setup (writing files, filling moto) is not timed. moto answers a page of 1,000
keys in ~0.6 s at 100,000 keys (it filters the whole bucket per page; real S3 takes ~0.05 s), so
there a look is cut by the 15 s listing budget and continues over several ticks.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _write_local(root: Path, count: int, start: int = 0, age_s: float = 300.0) -> None:
    stamp = time.time() - age_s
    for i in range(start, start + count):
        folder = root / f"p{i // 10000:02d}" / f"p{i // 100:05d}"
        if i % 100 == 0 or i == start:
            folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{i:06d}.dcm"
        path.write_bytes(b"DICM")
        os.utime(path, (stamp, stamp))


def _fill_moto(bucket: str, count: int, start: int = 0) -> None:
    """Straight into moto's in-process backend: 100,000 PUTs over HTTP would take ~6 minutes."""
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.s3.models import s3_backends

    backend = s3_backends[DEFAULT_ACCOUNT_ID]["aws"]
    for i in range(start, start + count):
        backend.put_object(bucket, f"cxr/p{i // 10000:02d}/p{i // 100:05d}/{i:06d}.dcm", b"DICM")


class Ticker:
    def __init__(self, sensor, instance, resources, definitions):
        self.sensor, self.instance, self.resources, self.definitions = sensor, instance, resources, definitions
        self.cursor = None

    def tick(self) -> tuple[float, object]:
        import dagster as dg

        context = dg.build_sensor_context(instance=self.instance, instance_ref=self.instance.get_ref(),
                                          cursor=self.cursor, resources=self.resources, definitions=self.definitions)
        started = time.perf_counter()
        result = self.sensor.evaluate_tick(context)
        seconds = time.perf_counter() - started
        for request in result.dynamic_partitions_requests:
            self.instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
        self.cursor = result.cursor
        return seconds, result


def _opened(result) -> int:
    return sum(len(r.partition_keys) for r in result.dynamic_partitions_requests)


MODES = {"adaptive": {}, "fixed": {"MEDVEC_WATCH_TICK_BUDGET_S": "0"}}


def run(kind: str, count: int, workdir: Path, mode: str = "adaptive") -> dict:
    import dagster as dg

    from assets.embeddings import embedding_model
    from medvec.ingest.batches import list_batches, load_manifest
    from pipelines.definitions import defs
    from pipelines.sensors import incoming_folder_sensor, s3_prefix_sensor
    from resources import MedvecHomeResource
    from resources.embedders import LocalEmbedderResource

    for name in ("MEDVEC_WATCH_TICK_BUDGET_S",):
        os.environ.pop(name, None)
    os.environ.update(MODES[mode])
    home = workdir / f"home_{kind}_{mode}"
    endpoint = os.environ.get("MEDVEC_S3_ENDPOINT_URL")
    medvec = MedvecHomeResource(home=str(home), lancedb_uri=str(home / "lancedb"), s3_endpoint_url=endpoint)
    resources = {"medvec": medvec, "embedder": LocalEmbedderResource(model="tiny-siglip")}
    setup = time.perf_counter()
    if kind == "local":
        os.environ["MEDVEC_SOURCE"] = str(home / "incoming")
        _write_local(home / "incoming", count)
        sensor = incoming_folder_sensor
    else:
        import boto3

        os.environ["MEDVEC_WATCH_S3"] = "s3://sensor-bench/cxr"
        boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket="sensor-bench")
        _fill_moto("sensor-bench", count)
        time.sleep(2.5)  # S3 times have one-second resolution; let the settle margin pass
        sensor = s3_prefix_sensor
    print(f"[{kind}] {count:,} objects written in {time.perf_counter() - setup:.1f}s (not timed)", flush=True)

    (workdir / f"dagster_{kind}_{mode}").mkdir()
    with dg.instance_for_test(temp_dir=str(workdir / f"dagster_{kind}_{mode}")) as instance:
        dg.materialize([embedding_model], instance=instance, resources=resources)  # so ticks request batch runs
        ticker = Ticker(sensor, instance, resources, defs)
        first_pass, opening, requests = [], [], 0
        while True:  # the first look: nothing settled yet, possibly over several ticks
            seconds, result = ticker.tick()
            first_pass.append(seconds)
            if '"resume_after":null' in result.cursor:
                break
        while sum(len(load_manifest(home, b).files) for b in list_batches(home)) < count:
            seconds, result = ticker.tick()
            opening.append((seconds, _opened(result), len(result.run_requests)))
            requests += len(result.run_requests)
            if len(opening) > 200:
                raise RuntimeError("the backlog does not drain")
        idle = []
        for _ in range(3 if kind == "local" else 1):
            seconds, result = ticker.tick()
            idle.append(seconds)
        if kind == "local":
            _write_local(home / "incoming", 500, start=count)
        else:
            _fill_moto("sensor-bench", 500, start=count)
            time.sleep(2.5)
        arrivals, opened_after = [], 0
        while opened_after < 500 and len(arrivals) < 20:
            seconds, result = ticker.tick()
            arrivals.append(seconds)
            opened_after += sum(len(load_manifest(home, b).files) for b in
                                [k for r in result.dynamic_partitions_requests for k in r.partition_keys])
    batches = list_batches(home)
    files = [f.uri for b in batches for f in load_manifest(home, b).files]
    assert len(files) == len(set(files)) == count + 500, "a file was batched twice or missed"
    report = {
        "kind": kind, "mode": mode, "objects": count,
        "first_look_ticks": len(first_pass), "first_look_max_s": round(max(first_pass), 2),
        "opening_ticks": len(opening), "opening_max_s": round(max(s for s, _, _ in opening), 2),
        "opening_median_s": round(statistics.median(s for s, _, _ in opening), 2),
        "batches": len(batches), "run_requests": requests,
        "opening_minutes_at_30s": round(len(opening) * 30 / 60, 1),
        "idle_tick_s": round(max(idle), 2),
        "new_files_ticks": len(arrivals), "new_files_max_s": round(max(arrivals), 2),
    }
    print(f"[{kind}, {mode}] first look: {report['first_look_ticks']} tick(s), slowest {report['first_look_max_s']}s; "
          f"backlog: {report['opening_ticks']} ticks opened {len(batches)} batches, slowest "
          f"{report['opening_max_s']}s (median {report['opening_median_s']}s; {report['opening_minutes_at_30s']} min at "
          f"30 s a tick), {requests} runs requested; nothing new: {report['idle_tick_s']}s; "
          f"500 new files: {report['new_files_ticks']} tick(s), slowest {report['new_files_max_s']}s", flush=True)
    return report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=100_000)
    parser.add_argument("--only", choices=("local", "s3"))
    parser.add_argument("--modes", nargs="+", choices=tuple(MODES), default=["adaptive"])
    args = parser.parse_args()
    import warnings

    warnings.filterwarnings("ignore")
    import logging

    logging.getLogger("dagster").setLevel(logging.WARNING)
    os.environ.update({"MEDVEC_PSEUDONYM_KEY": "bench", "AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
                       "AWS_DEFAULT_REGION": "us-east-1"})
    server = None
    if args.only != "local":
        from moto.server import ThreadedMotoServer

        import socket

        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto logs every request
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
        server.start()
        os.environ["MEDVEC_S3_ENDPOINT_URL"] = f"http://127.0.0.1:{port}"
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for kind in ("local", "s3"):
                for mode in args.modes if args.only in (None, kind) else ():
                    if kind == "s3" and len(args.modes) > 1:
                        raise SystemExit("--modes with more than one mode: use --only local (moto holds one bucket)")
                    run(kind, args.files, Path(tmp), mode)
    finally:
        if server is not None:
            server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
