"""HTTP search benchmark: end-to-end latency of `medvec serve` requests, over one keep-alive connection.

    .venv/bin/python benchmarks/http_search.py [--home DIR] [--n 200] [--warmup 20]

Starts `medvec serve` (tiny-siglip) as a subprocess on the demo data; without --home, `medvec demo`
builds it in a temporary home first. Novel text queries are each new text, so the text encoder runs
for every one; fallback queries are answered from precomputed results. Latency is measured in the
client around the whole request; "in search" is the server's own `took_ms`.
"""

from __future__ import annotations

import argparse
import itertools
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from medvec.search.precompute import FALLBACK_QUERIES  # noqa: E402
from medvec.search.images import normalize_query_text  # noqa: E402

FINDINGS = ("opacity", "haziness", "blunting", "density", "lucency", "shadow", "markings", "silhouette",
            "thickening", "nodularity")
PLACES = ("left base", "right base", "left apex", "right apex", "hilum", "costophrenic angle", "mid zone",
          "retrocardiac region", "upper lobe", "perihilar region", "lung periphery")
QUALIFIERS = ("subtle", "faint", "new", "increased", "patchy", "streaky")


def novel_queries(n: int) -> list[str]:
    """n distinct report-like phrases, none of them a fallback query."""
    known = {normalize_query_text(q) for q in FALLBACK_QUERIES}
    texts = (f"{qualifier} {finding} in the {place}"
             for qualifier, finding, place in itertools.product(QUALIFIERS, FINDINGS, PLACES))
    chosen = [t for t in texts if normalize_query_text(t) not in known][:n]
    if len(chosen) < n:
        raise SystemExit(f"only {len(chosen)} distinct novel queries; ask for fewer")
    return chosen


def demo_home(root: Path) -> Path:
    home = root / "home"
    env = {**os.environ, "MEDVEC_HOME": str(home), "MEDVEC_PSEUDONYM_KEY": "bench-key", "MEDVEC_MODEL": "tiny-siglip"}
    subprocess.run([sys.executable, "-m", "medvec.cli", "demo"], env=env, check=True, stdout=subprocess.DEVNULL)
    return home


@contextmanager
def served(home: Path):
    env = {**os.environ, "MEDVEC_HOME": str(home), "MEDVEC_MODEL": "tiny-siglip"}
    env.pop("MEDVEC_API_TOKEN", None)
    process = subprocess.Popen([sys.executable, "-m", "medvec.cli", "serve", "--port", "0"], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        yield _wait_for_url(process)
    finally:
        process.terminate()
        process.wait(20)


def _wait_for_url(process: subprocess.Popen) -> str:
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(iter(process.stdout.readline, "")), daemon=True).start()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        for line in list(lines):
            if " open http" in line:
                return line.split(" open ", 1)[1].split()[0].rstrip("/")
        if process.poll() is not None:
            break
        time.sleep(0.05)
    raise SystemExit("medvec serve did not start:\n" + "".join(lines))


def timed(calls: list[Callable[[], httpx.Response]]) -> tuple[np.ndarray, np.ndarray]:
    """Client-side milliseconds per request, and the server's took_ms where the answer has one."""
    wall, inside = [], []
    for call in calls:
        started = time.perf_counter()
        response = call()
        wall.append((time.perf_counter() - started) * 1000)
        response.raise_for_status()
        if response.headers["content-type"].startswith("application/json"):
            inside.append(response.json()["took_ms"])
    return np.array(wall), np.array(inside)


def row(name: str, wall: np.ndarray, inside: np.ndarray) -> str:
    server = f"{np.percentile(inside, 50):.2f}" if inside.size else "-"
    return f"| {name} | {wall.size} | {np.percentile(wall, 50):.2f} | {np.percentile(wall, 99):.2f} | {server} |"


def get(client: httpx.Client, path: str, **params) -> Callable[[], httpx.Response]:
    return lambda: client.get(path, params=params)


def upload(client: httpx.Client, path: Path, k: int) -> Callable[[], httpx.Response]:
    data = path.read_bytes()
    return lambda: client.post("/api/search/image", params={"k": k}, files={"file": (path.name, data)})


def warm_up_and_plan(client: httpx.Client, home: Path, n: int, k: int, warmup: int) -> list[tuple[str, list]]:
    """Load both sides of the encoder, then the requests to time, row by row."""
    texts = novel_queries(warmup + 2 * n)
    dicoms = sorted((home / "sample_data" / "synthetic").glob("*.dcm"))
    timed([get(client, "/api/search", q=t, k=k) for t in texts[:warmup]] + [upload(client, dicoms[0], k)] * 3)
    novel, filtered = texts[warmup:warmup + n], texts[warmup + n:]
    fallbacks = [FALLBACK_QUERIES[i % len(FALLBACK_QUERIES)] for i in range(n)]
    ids = [h["image_id"] for h in client.get("/api/search", params={"q": "edema", "k": 50}).json()["hits"]]
    some_ids = [ids[i % len(ids)] for i in range(n)]
    return [
        ("text, novel (encoder + index)", [get(client, "/api/search", q=t, k=k) for t in novel]),
        ("text, novel, view=PA filter", [get(client, "/api/search", q=t, k=k, view="PA") for t in filtered]),
        ("text, fallback (precomputed)", [get(client, "/api/search", q=t, k=k) for t in fallbacks]),
        ("similar (precomputed)", [get(client, f"/api/similar/{i}", k=k) for i in some_ids]),
        ("thumbnail (WebP bytes)", [get(client, f"/api/images/{i}/thumbnail") for i in some_ids]),
        ("image upload (sample DICOM)", [upload(client, dicoms[i % len(dicoms)], k) for i in range(n)]),
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--home", help="a Medvec home with a tiny-siglip table (default: build the demo in a temp dir)")
    parser.add_argument("--n", type=int, default=200, help="timed requests per row")
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--k", type=int, default=10)
    args = parser.parse_args()

    print("    $ " + shlex.join([os.path.relpath(sys.executable), *sys.argv]))
    print(f"    {platform.platform()}, {os.cpu_count()} CPU(s), load average {os.getloadavg()[0]:.2f}\n")
    with tempfile.TemporaryDirectory() as scratch:
        home = Path(args.home) if args.home else demo_home(Path(scratch))
        with served(home) as url, httpx.Client(base_url=url, timeout=60) as client:
            health = client.get("/api/health").json()
            rows = warm_up_and_plan(client, home, args.n, args.k, args.warmup)
            print(f"{health['rows']} images, {health['model']}, k={args.k}, one keep-alive connection (httpx)\n")
            print("| request | n | p50 ms | p99 ms | in search p50 ms |")
            print("|---|---:|---:|---:|---:|")
            for name, calls in rows:
                print(row(name, *timed(calls)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
