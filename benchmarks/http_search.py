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

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from medvec.precompute import FALLBACK_QUERIES  # noqa: E402
from medvec.search import normalize_query_text  # noqa: E402

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


def timed(client: httpx.Client, requests: list[tuple[str, dict]]) -> tuple[np.ndarray, np.ndarray]:
    """Client-side milliseconds per request, and the server's took_ms where the answer has one."""
    wall, inside = [], []
    for path, params in requests:
        started = time.perf_counter()
        response = client.get(path, params=params)
        wall.append((time.perf_counter() - started) * 1000)
        response.raise_for_status()
        if response.headers["content-type"].startswith("application/json"):
            inside.append(response.json()["took_ms"])
    return np.array(wall), np.array(inside)


def row(name: str, wall: np.ndarray, inside: np.ndarray) -> str:
    server = f"{np.percentile(inside, 50):.2f}" if inside.size else "-"
    return (f"| {name} | {wall.size} | {np.percentile(wall, 50):.2f} | {np.percentile(wall, 99):.2f} | {server} |")


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
            texts = novel_queries(args.warmup + 2 * args.n)
            warm, novel, filtered = (texts[:args.warmup], texts[args.warmup:args.warmup + args.n],
                                     texts[args.warmup + args.n:])
            timed(client, [("/api/search", {"q": t, "k": args.k}) for t in warm])  # loads the text encoder
            fallbacks = [FALLBACK_QUERIES[i % len(FALLBACK_QUERIES)] for i in range(args.n)]
            ids = [h["image_id"] for h in client.get("/api/search", params={"q": "edema", "k": 50}).json()["hits"]]
            some_ids = [ids[i % len(ids)] for i in range(args.n)]
            rows = [
                ("text, novel (encoder + index)", [("/api/search", {"q": t, "k": args.k}) for t in novel]),
                ("text, novel, view=PA filter", [("/api/search", {"q": t, "k": args.k, "view": "PA"})
                                                 for t in filtered]),
                ("text, fallback (precomputed)", [("/api/search", {"q": t, "k": args.k}) for t in fallbacks]),
                ("similar (precomputed)", [(f"/api/similar/{i}", {"k": args.k}) for i in some_ids]),
                ("thumbnail (WebP bytes)", [(f"/api/images/{i}/thumbnail", {}) for i in some_ids]),
            ]
            print(f"{health['rows']} images, {health['model']}, k={args.k}, one keep-alive connection (httpx)\n")
            print("| request | n | p50 ms | p99 ms | in search p50 ms |")
            print("|---|---:|---:|---:|---:|")
            for name, requests in rows:
                print(row(name, *timed(client, requests)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
