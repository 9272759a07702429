"""DICOMweb against disk (issue 18): instances per second into WebP from a throwaway Orthanc over
WADO-RS, against normalising the same files from a folder.

    .venv/bin/python benchmarks/dicomweb.py [--count 200] [--rounds 2] [--out results.json]

Writes `count` synthetic chest DICOMs (medvec.sample), uploads them to an Orthanc started here (Debian's
`orthanc` + `orthanc-dicomweb`, as in tests/test_pacs.py), then measures:

1. Retrieval only: WADO-RS instances per second, parse-and-re-encode (`retrieve_instance` + `save_as`,
   the first implementation) against the raw multipart part (`DicomWebSource.read_bytes`), at several
   concurrencies (`fetch_many`).
2. End to end: `normalize_batch` (the production path: worker processes, each opening the source) on
   the folder and on the DICOMweb root, fresh Medvec home per round, best round kept.

Orthanc runs on the same machine, so its CPU competes with the normalising workers: the figure is a
floor for an archive on its own host. Markdown to stdout, progress to stderr; everything lives in a
temporary folder that is removed at the end.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run from a checkout without an editable install
    sys.path.insert(0, str(ROOT))

from medvec.ingest.batches import BatchManifest, normalize_batch  # noqa: E402 - after the sys.path fix
from medvec.sample.writer import write_sample_data  # noqa: E402
from medvec.sources import LocalFolderSource  # noqa: E402
from medvec.sources.dicomweb import DicomWebSource, dicomweb_settings  # noqa: E402
from tests.orthanc_server import Orthanc  # noqa: E402 - the same launcher the tests use

TARGET_RATIO = 0.70
KEY = "benchmark-pseudonym-key"


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def reencoded(source: DicomWebSource, uri: str) -> bytes:
    """The first implementation: dicomweb-client parses the part, pydicom writes it again."""
    study, series, sop = uri.rstrip("/").split("/")[-5::2]
    dataset = source.client.retrieve_instance(study, series, sop, media_types=(("application/dicom", "*"),))
    buffer = io.BytesIO()
    dataset.save_as(buffer)
    return buffer.getvalue()


def retrieval(source: DicomWebSource, uris: list[str], concurrency: int, raw: bool) -> float:
    fetch = source.read_bytes if raw else (lambda uri: reencoded(source, uri))
    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        total = sum(len(data) for data in pool.map(fetch, uris))
    assert total > 0
    return len(uris) / (time.perf_counter() - started)


def end_to_end(manifest: BatchManifest, work: Path, name: str, workers: int) -> float:
    home = work / f"home-{name}-{time.monotonic_ns()}"
    result = normalize_batch(manifest, home, pseudonym_key=KEY, workers=workers)
    assert not result.errors, result.errors[:3]
    return result.normalized / result.seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=200, help="instances (the sample adds 2 WG04 files)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="medvec-bench-dicomweb-") as tmp:
        work = Path(tmp)
        log(f"writing {args.count} sample instances")
        write_sample_data(work / "src", count=args.count - 2, include_broken=False, include_reports=False)
        files = sorted((work / "src").rglob("*.dcm"))
        server = Orthanc(work / "orthanc").start()
        try:
            results = run(server, files, work, args.rounds)
        finally:
            server.stop()
    report(results)
    if args.out:
        args.out.write_text(json.dumps(results, indent=1))


def run(server: Orthanc, files: list[Path], work: Path, rounds: int) -> dict:
    started = time.perf_counter()
    for path in files:
        server.upload(path.read_bytes())
    upload_s = time.perf_counter() - started
    source = DicomWebSource(server.dicomweb_url, dicomweb_settings({}))
    uris = sorted(i.uri for i in source.search_instances())
    assert len(uris) == len(files), (len(uris), len(files))
    log(f"{len(files)} instances uploaded in {upload_s:.1f}s")

    fetch = {}
    for concurrency in (1, 4, 8):
        for raw in (False, True):
            label = f"{'raw part' if raw else 're-encode'}, {concurrency} in flight"
            fetch[label] = max(retrieval(source, uris, concurrency, raw) for _ in range(rounds))
            log(f"retrieval {label}: {fetch[label]:.1f}/s")

    folder = LocalFolderSource(str(work / "src"))
    disk = BatchManifest(batch="bench-disk", source=str(work / "src"), created_at="", files=list(folder.list_files()))
    web = BatchManifest(batch="bench-web", source=server.dicomweb_url, created_at="",
                        files=[i.source_file() for i in source.search_instances()])
    paths = {}
    for _ in range(rounds):  # alternate, so a noisy neighbour hits both paths alike
        for name, manifest, workers in (("disk, 2 workers", disk, 2), ("DICOMweb, 2 workers", web, 2),
                                        ("DICOMweb, 4 workers", web, 4)):
            rate = end_to_end(manifest, work, name.split(",")[0].lower(), workers)
            paths[name] = max(paths.get(name, 0.0), rate)
            log(f"normalise {name}: {rate:.1f}/s")
    return {"instances": len(files), "upload_per_s": len(files) / upload_s, "retrieval_per_s": fetch,
            "normalise_per_s": paths, "cpus": len(os.sched_getaffinity(0)), "rounds": rounds,
            "when": datetime.now(timezone.utc).isoformat(timespec="seconds")}


def report(results: dict) -> None:
    paths = results["normalise_per_s"]
    disk = paths["disk, 2 workers"]
    best_web = max(v for k, v in paths.items() if k.startswith("DICOMweb"))
    print(f"## DICOMweb vs disk ({results['instances']} instances, {results['cpus']} CPUs, best of "
          f"{results['rounds']})\n")
    print("| retrieval only (WADO-RS) | instances/s |\n|---|---:|")
    for label, rate in results["retrieval_per_s"].items():
        print(f"| {label} | {rate:.1f} |")
    print("\n| into WebP (`normalize_batch`) | instances/s | of disk |\n|---|---:|---:|")
    for label, rate in paths.items():
        print(f"| {label} | {rate:.1f} | {rate / disk:.0%} |")
    verdict = "meets" if best_web >= TARGET_RATIO * disk else "misses"
    print(f"\nBest DICOMweb path at {best_web / disk:.0%} of disk: {verdict} the {TARGET_RATIO:.0%} aim. "
          f"Upload to Orthanc (not timed above): {results['upload_per_s']:.1f}/s.")


if __name__ == "__main__":
    main()
