"""Search benchmark: single-query k=10 latency and recall@10 at MIMIC-CXR scale, with and without a
view filter, for exact numpy, LanceDB's own vector index and Medvec's search path.

    .venv/bin/python benchmarks/search.py [--quick] [--rows 377000] [--dims 768 1152] [--queries 300]
        [--flat-queries 12] [--rounds 3] [--skip exact lancedb lancedb-flat] [--out benchmarks/results/search.json]

For each vector width it builds a synthetic collection (below), writes it to a real LanceDB image
table (`medvec.tables.records.image_table_schema`) in a temporary Medvec home, and measures one query at a
time, k=10, unfiltered and with `view_position = PA`:

- exact numpy: matrix-vector product + argpartition (filtered: over a prebuilt matrix of the PA rows,
  the best case for a brute-force scan);
- LanceDB flat: `bypass_vector_index()` (its brute-force scan; fewer queries, it takes about a second);
- LanceDB index: what `medvec.search.maintenance` builds (IVF_RQ, rows // 4096 partitions, dot), with
  (nprobes, refine_factor) chosen on the same grid as `_tune_lancedb`, plus a Bitmap index on
  view_position and `prefilter=True` for the filtered case;
- `VectorIndex.search`: Medvec's in-memory index (`medvec.search.vector_index`), as `VectorIndex.build` makes it;
- `ImageSearch.search_vector`: the full search path on the LanceDB table, loaded with the index saved
  the way the `image_index` asset saves it: row filter, index search, hit metadata, result object.
  It runs in a fresh child process, so its load time and RSS are what a search server would see;
- fallback lookup: `ImageSearch.search_text` on a query stored in the `fallback_queries` table
  (rows written with `medvec.search.precompute.FALLBACK_SCHEMA` for the current table version), and the same
  stored queries with a PA filter (stored vector + live index).

Recall@10 is measured against exact search (for filtered queries, the exact top 10 among PA rows).

Data (honest, not trivially easy): unit vectors around 4,000 cluster centres of lognormal sizes
(median ~60 images at 377k, largest ~2,000), centres grouped under 48 "super" centres (anatomy /
view appearance) and a shared mean direction (embeddings of one modality sit in a cone: a random
pair has cosine ~0.2), with anisotropic plus isotropic noise large enough that nearly half of an
image's 10 nearest neighbours come from other clusters (the 1st and 10th neighbours' cosines differ
by only ~0.04, so a quantiser's error reorders them easily). view_position follows the super centre
(lateral views look alike, PA/AP mixes vary by cluster) for a mix near PA 45% / AP 35% / LATERAL 20%,
so a PA filter is correlated with the geometry, as it is in real data. Queries are never stored rows:
40% stored rows with noise (another image of a study), 40% fresh draws from a cluster (an unseen
image), 20% blends of two centres from different super centres plus noise (text-like queries that sit
between clusters). LanceDB's tuning uses its own query set (another seed); `VectorIndex` tunes on
queries it makes from the table's vectors; neither sees the evaluation queries.

Progress goes to stderr; the report (markdown) to stdout; every number as JSON to --out.

`--load-only` (issue 20) measures loading alone, old path against new, each in a fresh child process:
load time and peak RSS (`ru_maxrss`, VmHWM beside it; and an idle child's, imports only, as the
baseline) of `ImageSearch` on the table with its saved index, against the
pre-issue-20 load (`to_arrow()`, `combine_chunks()` of the vectors and metadata, the saved index read
as bytes then deserialised), reproduced here as `old_load`:

    .venv/bin/python benchmarks/search.py --load-only [--rows 377000] [--dims 768 1152]
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import math
import os
import platform
import resource
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from importlib import metadata as importlib_metadata
from pathlib import Path

import numpy as np
import pyarrow as pa

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run from a checkout without an editable install
    sys.path.insert(0, str(ROOT))

from medvec.tables import database# noqa: E402 - after the sys.path fix above
from medvec.tables.images import image_table_name  # noqa: E402
from medvec.search.precompute import FALLBACK_QUERIES, FALLBACK_SCHEMA  # noqa: E402
from medvec.tables.records import image_table_schema  # noqa: E402
from medvec.search.images import (Filters, ImageSearch, fallback_table_name, ids_fingerprint, index_dir,  # noqa: E402
                           normalize_query_text)
from medvec.search.vector_index import RowFilter, VectorIndex, exact_top_k, recall_at_k  # noqa: E402

K = 10
SLUG = "bench"
TARGET_P50_MS, TARGET_P99_MS, TARGET_RECALL, TARGET_FALLBACK_P50_MS = 2.0, 10.0, 0.98, 1.0
VIEWS = ("PA", "AP", "LATERAL")
CHEXPERT = ("Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Enlarged Cardiomediastinum", "Fracture",
            "Lung Lesion", "Lung Opacity", "Pleural Effusion", "Pleural Other", "Pneumonia", "Pneumothorax",
            "Support Devices")
#: table_index._tune_lancedb's grid, in its order.
LANCEDB_GRID = [(nprobes, refine) for nprobes in (20, 40) for refine in (5, 10, 20, 50)]


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --- machine -----------------------------------------------------------------------------------

def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def settle_memory() -> None:
    """Return freed memory to the OS (Python, Arrow's pool, glibc) so RSS deltas mean what is kept."""
    gc.collect()
    pa.default_memory_pool().release_unused()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


def rss_mb() -> float:
    """Resident set size now, from /proc (psutil is not a dependency)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def vm_hwm_mb() -> float:
    """Peak resident set size of this process so far."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for dist in ("numpy", "faiss-cpu", "lancedb", "pylance", "pyarrow"):
        try:
            out[dist] = importlib_metadata.version(dist)
        except importlib_metadata.PackageNotFoundError:
            out[dist] = "not installed"
    return out


def dir_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20 if path.exists() else 0.0


# --- synthetic collection ------------------------------------------------------------------------

def uid_like(number: int, kind: int) -> str:
    """A deterministic `2.25.` UID of the usual 44 characters (kind keeps images and studies apart)."""
    return f"2.25.{(number * 2654435761 + kind * 97) % 10**38 + 10**38:039d}"


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


class Collection:
    """Clustered unit vectors with view_position and labels (see the module docstring)."""

    def __init__(self, rows: int, dim: int, seed: int = 0, *, clusters: int = 4000, supers: int = 48):
        rng = np.random.default_rng(seed)
        self.rows, self.dim = rows, dim
        mean = _unit(rng.standard_normal(dim))
        super_dirs = _unit(rng.standard_normal((supers, dim)))
        self.cluster_super = rng.integers(0, supers, clusters)
        self.centres = _unit(0.8 * mean + 0.55 * super_dirs[self.cluster_super]
                             + 0.45 * _unit(rng.standard_normal((clusters, dim))))
        sizes = rng.lognormal(0.0, 1.0, clusters)
        self.cluster = rng.choice(clusters, rows, p=sizes / sizes.sum())
        # Image-to-image variation: a few strong shared directions (pose, exposure, devices) + isotropic.
        self.rank = 96
        self.basis = _unit(rng.standard_normal((self.rank, dim)))
        self.spectrum = (1.0 / np.sqrt(np.arange(1, self.rank + 1))).astype(np.float32)
        self.vectors = np.empty((rows, dim), np.float32)
        for start in range(0, rows, 16384):
            stop = min(rows, start + 16384)
            self.vectors[start:stop] = _unit(self.centres[self.cluster[start:stop]] + self.noise(rng, stop - start))

        # view_position: whole super centres are lateral until ~20% of images; frontal clusters mix PA/AP.
        mass = np.bincount(self.cluster_super[self.cluster], minlength=supers) / rows
        lateral_supers, total = set(), 0.0
        for s in rng.permutation(supers):
            if total >= 0.19:
                break
            lateral_supers.add(int(s))
            total += mass[s]
        lateral = np.isin(self.cluster_super, list(lateral_supers))
        pa_share = np.clip(rng.beta(2.2, 1.7, clusters), 0.02, 0.98)
        probs = np.where(lateral[:, None], [0.03, 0.02, 0.95],
                         np.stack([pa_share * 0.985, (1 - pa_share) * 0.985, np.full(clusters, 0.015)], axis=1))
        u = rng.random(rows)
        cum = np.cumsum(probs[self.cluster], axis=1)
        self.view_codes = (u[:, None] > cum[:, :2]).sum(axis=1)  # 0 PA, 1 AP, 2 LATERAL
        self.views = np.array(VIEWS, dtype=object)[self.view_codes]
        self.pa_mask = self.view_codes == 0

        # labels: each cluster has 0-3 likely findings; "No Finding" when none is drawn.
        likely = np.full((clusters, len(CHEXPERT)), 0.02)
        for c in range(clusters):
            picks = rng.choice(len(CHEXPERT), rng.integers(0, 4), replace=False)
            likely[c, picks] = rng.uniform(0.4, 0.9, len(picks))
        self.label_hits = rng.random((rows, len(CHEXPERT))) < likely[self.cluster]

    def noise(self, rng, count: int, scale: float = 1.3) -> np.ndarray:
        low = (rng.standard_normal((count, self.rank), dtype=np.float32) * self.spectrum) @ self.basis
        low /= math.sqrt(float((self.spectrum ** 2).sum()))
        iso = rng.standard_normal((count, self.dim), dtype=np.float32) / math.sqrt(self.dim)
        return scale * (0.7 * low + 0.7 * iso)

    def queries(self, count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """(queries, kind) with kind 0 = noisy stored row, 1 = fresh image of a cluster, 2 = between clusters."""
        rng = np.random.default_rng(seed)
        kinds = np.repeat([0, 1, 2], [round(count * 0.4), round(count * 0.4), count - 2 * round(count * 0.4)])
        out = np.empty((count, self.dim), np.float32)
        for kind in (0, 1, 2):
            at = np.flatnonzero(kinds == kind)
            m = len(at)
            if kind == 0:  # another image of the same study: a stored row plus a third of the image noise
                out[at] = _unit(self.vectors[rng.choice(self.rows, m, replace=False)] + self.noise(rng, m, 0.45))
            elif kind == 1:  # an unseen image: a fresh draw around the centre of an image's cluster
                out[at] = _unit(self.centres[self.cluster[rng.choice(self.rows, m)]] + self.noise(rng, m))
            else:  # a finding that spans appearances: two centres under different super centres
                a = self.cluster[rng.choice(self.rows, m)]
                b = self.cluster[rng.choice(self.rows, m)]
                same = self.cluster_super[a] == self.cluster_super[b]
                b[same] = self.cluster[rng.choice(self.rows, int(same.sum()))]
                out[at] = _unit(self.centres[a] + self.centres[b] + self.noise(rng, m, 0.8))
        order = rng.permutation(count)
        return np.ascontiguousarray(out[order]), kinds[order]

    def stats(self, sample: int = 200) -> dict:
        """How hard the collection is: neighbour overlap across clusters, similarity spread."""
        rng = np.random.default_rng(99)
        picked = rng.choice(self.rows, sample, replace=False)
        scores = self.vectors[picked] @ self.vectors.T
        scores[np.arange(sample), picked] = -np.inf
        top = np.argpartition(-scores, K, axis=1)[:, :K]
        finite = scores[np.isfinite(scores)]
        top_scores = np.sort(np.take_along_axis(scores, top, axis=1), axis=1)
        sizes = np.bincount(self.cluster)
        sizes = sizes[sizes > 0]
        own = (self.cluster[top] == self.cluster[picked][:, None]).mean()
        return {"clusters": int(len(sizes)), "cluster_size_median": float(np.median(sizes)),
                "cluster_size_max": int(sizes.max()), "neighbours_from_own_cluster": round(float(own), 3),
                "cosine_random_pair_mean": round(float(finite.mean()), 3),
                "cosine_1st_neighbour_mean": round(float(top_scores[:, -1].mean()), 3),
                "cosine_10th_neighbour_mean": round(float(top_scores[:, 0].mean()), 3),
                "view_mix": {v: round(float((self.view_codes == i).mean()), 3) for i, v in enumerate(VIEWS)},
                "labels_per_image_mean": round(float(self.label_hits.sum(axis=1).mean()), 2)}

    def image_id(self, row: int) -> str:
        """A pseudonymised SOP Instance UID's shape (`2.25.` and 39 digits, 44 characters), so the ids
        and the id → row lookup cost what real ones do."""
        return uid_like(row, 1)

    def table(self) -> pa.Table:
        """The collection as rows of a Medvec image table."""
        n = self.rows
        ids = pa.array([self.image_id(i) for i in range(n)])
        study = pa.array([uid_like(i // 2, 2) for i in range(n)])
        image_uris = [f"images/{i % 256:02x}/{self.image_id(i)}.webp" for i in range(n)]
        label_lists = [[CHEXPERT[j] for j in np.flatnonzero(hit)] or ["No Finding"] for hit in self.label_hits]
        split = np.where(np.arange(n) % 50 == 0, "test", np.where(np.arange(n) % 50 == 1, "validate", "train"))
        columns = {
            "image_id": ids, "batch": pa.array(["bench"] * n), "source_uri": pa.array([""] * n),
            "content_sha256": pa.array([""] * n), "image_uri": pa.array(image_uris),
            "thumb_uri": pa.array([u.replace("images/", "thumbs/", 1) for u in image_uris]),
            "source_format": pa.array(["dicom"] * n),
            "study_id": study, "series_id": study,
            "subject_key": pa.array([f"{i // 6 * 2654435761 % 2**128:032x}" for i in range(n)]),
            "view_position": pa.array(self.views.tolist()), "modality": pa.array(["CR"] * n),
            "body_part": pa.array(["CHEST"] * n), "rows": pa.array(np.full(n, 3050, np.int32)),
            "columns": pa.array(np.full(n, 2539, np.int32)), "photometric": pa.array(["MONOCHROME2"] * n),
            "bits_stored": pa.array(np.full(n, 12, np.int32)), "pixel_spacing": pa.nulls(n, pa.list_(pa.float64())),
            "transfer_syntax": pa.array(["1.2.840.10008.1.2.1"] * n), "frames": pa.array(np.ones(n, np.int32)),
            "window_source": pa.array(["header_window"] * n), "labels": pa.array(label_lists, pa.list_(pa.string())),
            "split": pa.array(split.tolist()), "extra": pa.array(["{}"] * n),
            "sex": pa.array(np.where(np.arange(n) // 6 % 2 == 0, "F", "M").tolist()),
            "age_group": pa.array(["40-64"] * n), "skin_type": pa.nulls(n, pa.string()),
            "width": pa.array(np.full(n, 426, np.int32)), "height": pa.array(np.full(n, 512, np.int32)),
            "vector": pa.FixedSizeListArray.from_arrays(pa.array(self.vectors.reshape(-1)), self.dim),
            "model_id": pa.array(["synthetic"] * n), "model_revision": pa.nulls(n, pa.string()),
            "embedded_at": pa.array(["2026-01-01T00:00:00+00:00"] * n),
        }
        schema = image_table_schema(self.dim)
        return pa.Table.from_arrays([columns[f.name].cast(f.type) for f in schema], schema=schema)


# --- measuring ---------------------------------------------------------------------------------

class FullCollections:
    """Counts Python's full (generation 2) garbage collections and their time while active: with
    377k ids in dicts and lists, one can cost tens of milliseconds inside a query."""

    def __init__(self):
        self.count, self.seconds, self._started = 0, 0.0, None

    def __call__(self, phase: str, info: dict) -> None:
        if info.get("generation") != 2:
            return
        if phase == "start":
            self._started = time.perf_counter()
        elif self._started is not None:
            self.count += 1
            self.seconds += time.perf_counter() - self._started

    def __enter__(self):
        gc.callbacks.append(self)
        return self

    def __exit__(self, *exc):
        gc.callbacks.remove(self)


LAST_GC: dict = {}
#: CPU seconds of the calling thread per query in the last `timed` run: against wall time it shows how
#: much of a slow query was spent waiting for a core (other processes) rather than working.
LAST_CPU: list = []


def timed(fn, queries: np.ndarray, warmup: np.ndarray) -> tuple[list, list[float]]:
    """Run fn(query) once per query, one at a time; returns (answers, seconds per query)."""
    for q in warmup:
        fn(q)
    answers, seconds, cpu = [], [], []
    with FullCollections() as collections:
        for q in queries:
            t0, c0 = time.perf_counter(), time.thread_time()
            answers.append(fn(q))
            seconds.append(time.perf_counter() - t0)
            cpu.append(time.thread_time() - c0)
    LAST_GC.update(count=collections.count, ms=round(collections.seconds * 1000, 1))
    LAST_CPU[:] = cpu
    return answers, seconds


def summary(seconds: list[float], found: list | None = None, truth: np.ndarray | None = None,
            kinds: np.ndarray | None = None) -> dict:
    ms = np.asarray(seconds) * 1000
    out = {"queries": len(ms), "p50_ms": round(float(np.percentile(ms, 50)), 3),
           "p99_ms": round(float(np.percentile(ms, 99)), 3), "mean_ms": round(float(ms.mean()), 3),
           "max_ms": round(float(ms.max()), 3), "load": load(),
           "full_gc": {"count": LAST_GC.get("count", 0), "ms": LAST_GC.get("ms", 0.0)}}
    if len(LAST_CPU) == len(ms):
        cpu = np.asarray(LAST_CPU) * 1000
        out["thread_cpu_p50_ms"] = round(float(np.percentile(cpu, 50)), 3)
        out["thread_cpu_p99_ms"] = round(float(np.percentile(cpu, 99)), 3)
    LAST_CPU.clear()
    LAST_GC.clear()
    if found is not None:
        out["recall_at_10"] = round(recall_at_k(found, truth[:len(found)]), 4)
        if kinds is not None:
            shown, kinds = truth[:len(found)], kinds[:len(found)]
            out["recall_by_query_kind"] = {
                name: round(recall_at_k([f for f, k in zip(found, kinds) if k == i], shown[kinds == i]), 4)
                for i, name in enumerate(("noisy_row", "fresh_image", "between_clusters"))}
    return out


def rounds_of(measure, rounds: int) -> dict:
    """Repeat a measurement; keep the round with the lowest p50 (another process may hold the CPU
    at times) and list every round's p50/p99/load."""
    runs = [measure() for _ in range(rounds)]
    best = min(runs, key=lambda r: r["p50_ms"])
    return {**best, "rounds": [{"p50_ms": r["p50_ms"], "p99_ms": r["p99_ms"], "load": r["load"],
                                "thread_cpu_p99_ms": r.get("thread_cpu_p99_ms"), "full_gc": r["full_gc"]["count"]}
                               for r in runs]}


def exact_search(vectors: np.ndarray):
    def search(q):
        scores = vectors @ q
        top = np.argpartition(-scores, K - 1)[:K]
        return top[np.argsort(-scores[top])]
    return search


# --- LanceDB --------------------------------------------------------------------------------------

def lancedb_rows(result: pa.Table) -> np.ndarray:
    return np.array([int(i[3:]) for i in result.column("image_id").to_pylist()], dtype=np.int64)


def lancedb_search(table, *, nprobes=None, refine=None, where=None, bypass=False):
    def search(q):
        query = table.search(q).distance_type("dot")
        if bypass:
            query = query.bypass_vector_index()
        else:
            query = query.nprobes(nprobes).refine_factor(refine)
        if where:
            query = query.where(where, prefilter=True)
        return lancedb_rows(query.select(["image_id"]).limit(K).to_arrow())
    return search


def section_lancedb(table, col: Collection, queries, kinds, truth, truth_pa, tune_q, tune_truth,
                    flat_queries: int) -> dict:
    from lancedb.index import Bitmap, IvfRq

    out: dict = {}
    rows = col.rows
    log("LanceDB: Bitmap index on view_position")
    t0 = time.perf_counter()
    table.create_index("view_position", config=Bitmap(), replace=True)
    out["bitmap_build_s"] = round(time.perf_counter() - t0, 2)

    if flat_queries:
        log(f"LanceDB flat (bypass_vector_index): {flat_queries} queries each, unfiltered and PA")
        fq = queries[:flat_queries]
        found, secs = timed(lancedb_search(table, bypass=True), fq, tune_q[:1])
        out["flat"] = summary(secs, found, truth, kinds)
        found, secs = timed(lancedb_search(table, bypass=True, where="view_position = 'PA'"), fq, tune_q[:1])
        out["flat_pa"] = summary(secs, found, truth_pa, kinds)

    partitions = max(1, rows // 4096)
    log(f"LanceDB: IVF_RQ index, {partitions} partitions (as medvec.search.maintenance builds it)")
    settle_memory()
    rss0, t0 = rss_mb(), time.perf_counter()
    table.create_index("vector", config=IvfRq(distance_type="dot", num_partitions=partitions), replace=True,
                       name="vector_idx")
    build_s = time.perf_counter() - t0
    settle_memory()
    out["index"] = {"type": "IVF_RQ", "num_partitions": partitions, "build_s": round(build_s, 2),
                    "rss_delta_mb": round(rss_mb() - rss0, 1),
                    "on_disk_mb": round(dir_mb(Path(table.uri) / "_indices"), 1) if hasattr(table, "uri") else None}

    log(f"LanceDB: choosing (nprobes, refine_factor) on {len(tune_q)} tuning queries (table_index's grid)")
    tried = []
    chosen = None
    for nprobes, refine in LANCEDB_GRID:
        found, secs = timed(lancedb_search(table, nprobes=nprobes, refine=refine), tune_q, [])
        entry = {"nprobes": nprobes, "refine_factor": refine, "recall_at_10": round(recall_at_k(found, tune_truth), 4),
                 "p50_ms": round(float(np.median(secs)) * 1000, 2)}
        tried.append(entry)
        if entry["recall_at_10"] >= TARGET_RECALL:
            chosen = entry
            break
    if chosen is None:
        chosen = max(tried, key=lambda e: e["recall_at_10"])
        chosen = {**chosen, "warning": f"recall target {TARGET_RECALL} not reached on the grid"}
    out["tuning"] = {"chosen": chosen, "tried": tried}
    nprobes, refine = chosen["nprobes"], chosen["refine_factor"]
    log(f"LanceDB IVF_RQ nprobes={nprobes} refine={refine}: {len(queries)} queries, unfiltered and PA")
    found, secs = timed(lancedb_search(table, nprobes=nprobes, refine=refine), queries, tune_q[:10])
    out["ivf"] = summary(secs, found, truth, kinds)
    found, secs = timed(lancedb_search(table, nprobes=nprobes, refine=refine, where="view_position = 'PA'"),
                        queries, tune_q[:10])
    out["ivf_pa"] = summary(secs, found, truth_pa, kinds)
    return out


# --- one vector width ------------------------------------------------------------------------------

def run_dim(dim: int, args, workdir: Path) -> dict:
    res: dict = {"dim": dim, "rows": args.rows, "load_start": load()}
    log(f"dim {dim}: generating {args.rows:,} vectors")
    t0 = time.perf_counter()
    col = Collection(args.rows, dim, seed=args.seed)
    res["generate_s"] = round(time.perf_counter() - t0, 1)
    res["data"] = col.stats()
    log(f"data: {res['data']}")
    queries, kinds = col.queries(args.queries, seed=args.seed + 1000)
    tune_q, _ = col.queries(args.tune_queries, seed=args.seed + 2000)
    warm, _ = col.queries(10, seed=args.seed + 3000)
    X = col.vectors
    pa_rows = np.flatnonzero(col.pa_mask)
    log("exact truth")
    truth = exact_top_k(X, queries, K)
    truth_pa = pa_rows[exact_top_k(X[pa_rows], queries, K)]
    tune_truth = exact_top_k(X, tune_q, K)

    # (a) exact numpy
    if "exact" not in args.skip:
        log("exact numpy: unfiltered and PA")
        found, secs = timed(exact_search(X), queries, warm)
        res["exact"] = summary(secs, found, truth)
        X_pa = np.ascontiguousarray(X[pa_rows])
        search_pa = exact_search(X_pa)
        found, secs = timed(lambda q: pa_rows[search_pa(q)], queries, warm)
        res["exact_pa"] = summary(secs, found, truth_pa)
        res["exact_pa"]["note"] = "over a prebuilt matrix of the PA rows"
        del X_pa, search_pa
        gc.collect()

    # (b) Medvec's index, as the image_index asset builds it; measured before LanceDB runs in this
    # process, so the RSS delta is the index's own
    log("VectorIndex.build")
    settle_memory()
    rss0, t0 = rss_mb(), time.perf_counter()
    index = VectorIndex.build(X)
    build_s = time.perf_counter() - t0
    settle_memory()
    ours: dict = {"build_s": round(build_s, 2), "rss_delta_mb": round(rss_mb() - rss0, 1), "info": index.info.to_json(),
                  "vectors_mb": round(X.nbytes / 2**20, 1)}
    log(f"VectorIndex: {ours['info']['kind']} built in {build_s:.1f}s; {args.rounds} rounds of {len(queries)} queries")
    allowed = RowFilter(col.pa_mask)
    index.search(queries[0], K, allowed)  # the filter's one-off set-up, cached as ImageSearch caches it

    def measure(row_filter, truth_rows):
        def one():
            found, secs = timed(lambda q: index.search(q, K, row_filter)[1], queries, warm)
            return summary(secs, found, truth_rows, kinds)
        return one

    ours["search"] = rounds_of(measure(None, truth), args.rounds)
    ours["search_pa"] = rounds_of(measure(allowed, truth_pa), args.rounds)
    res["vector_index"] = ours
    del allowed

    # The LanceDB image table in a temporary Medvec home.
    home = workdir / f"home{dim}"
    uri = str(home / "lancedb")
    db = database.connect(uri)
    log("writing the LanceDB image table")
    t0 = time.perf_counter()
    data = col.table()
    table = db.create_table(image_table_name(SLUG), schema=data.schema)
    for start in range(0, data.num_rows, 50_000):
        table.add(data.slice(start, 50_000))
    del data
    gc.collect()
    res["table_write_s"] = round(time.perf_counter() - t0, 1)
    res["table_on_disk_mb"] = round(dir_mb(home / "lancedb"), 1)

    # (c) LanceDB's own index
    if "lancedb" not in args.skip:
        res["lancedb"] = section_lancedb(table, col, queries, kinds, truth, truth_pa, tune_q, tune_truth,
                                         0 if "lancedb-flat" in args.skip else args.flat_queries)

    # Saved for the table's final version, as the image_index asset saves it, for ImageSearch to load.
    version = table.version
    folder = index_dir(home, table.name)
    ids = [col.image_id(i) for i in range(col.rows)]
    if index.save_ivf(folder / f"v{version}.faiss"):
        saved = {"ids_sha": ids_fingerprint(ids), "info": index.info.to_json()}
        (folder / f"v{version}.json").write_text(json.dumps(saved))
        ours["saved_index_mb"] = round((folder / f"v{version}.faiss").stat().st_size / 2**20, 1)
    del index
    gc.collect()

    # Fallback answers stored for the current table version.
    fb_vectors, _ = col.queries(len(FALLBACK_QUERIES), seed=args.seed + 4000)
    fb_truth = exact_top_k(X, fb_vectors, 50)
    fb_rows = [{"query": text, "query_key": normalize_query_text(text), "vector": v.tolist(),
                "image_ids": [ids[r] for r in top], "scores": [float(s) for s in X[top] @ v], "k": 50,
                "table_version": version, "model_id": "synthetic"}
               for text, v, top in zip(FALLBACK_QUERIES, fb_vectors, fb_truth)]
    db.create_table(fallback_table_name(SLUG), data=pa.Table.from_pylist(fb_rows, schema=FALLBACK_SCHEMA),
                    mode="overwrite")

    # (d) the full search path, in a fresh process: its memory is the server's, not this script's
    log("ImageSearch (child process): loading the table and the saved index, then queries")
    payload = workdir / f"e2e{dim}"
    payload.mkdir(parents=True, exist_ok=True)
    for name, array in (("queries", queries), ("warm", warm), ("kinds", kinds), ("truth", truth),
                        ("truth_pa", truth_pa)):
        np.save(payload / f"{name}.npy", array)
    (payload / "job.json").write_text(json.dumps({"uri": uri, "home": str(home), "version": version,
                                                  "rounds": args.rounds}))
    del col, X
    settle_memory()
    child = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--image-search-child", str(payload)],
                           capture_output=True, text=True)
    if child.returncode != 0:
        raise RuntimeError(f"the ImageSearch child failed:\n{child.stderr[-4000:]}")
    res["image_search"] = json.loads(child.stdout)
    res["load_end"] = load()
    shutil.rmtree(home, ignore_errors=True)
    return res


# --- the search path, measured in its own process ------------------------------------------------

def image_search_child(payload: Path) -> dict:
    """Load `ImageSearch` on the table the parent wrote and time its queries; RSS is this process's."""
    job = json.loads((payload / "job.json").read_text())
    queries, warm, kinds = (np.load(payload / f"{n}.npy") for n in ("queries", "warm", "kinds"))
    truth, truth_pa = np.load(payload / "truth.npy"), np.load(payload / "truth_pa.npy")
    settle_memory()
    rss0, t0 = rss_mb(), time.perf_counter()
    search = ImageSearch(job["uri"], SLUG, home=Path(job["home"]))
    info = search.info()
    load_s = time.perf_counter() - t0
    peak = vm_hwm_mb()
    settle_memory()
    time.sleep(1.0)  # allocators hand freed pages back lazily (mimalloc purges after a delay)
    settle_memory()
    e2e: dict = {"load_s": round(load_s, 2), "rss_before_mb": round(rss0, 1),
                 "rss_delta_mb": round(rss_mb() - rss0, 1), "peak_rss_during_load_mb": round(peak, 1),
                 "index_kind": info["index"]["kind"], "rows": info["rows"],
                 "fallback_answers_current": info["fallback_answers_current"]}
    if info["table_version"] != job["version"] or e2e["fallback_answers_current"] != len(FALLBACK_QUERIES):
        raise RuntimeError(f"ImageSearch did not load what was written: {info}")
    if info["index"] != json.loads(next(index_dir(Path(job["home"]), image_table_name(SLUG)).glob("v*.json"))
                                   .read_text())["info"]:
        raise RuntimeError("ImageSearch rebuilt the index instead of loading the saved one")
    pa_filter = Filters.of(view="PA")

    def measure(filters, truth_rows):
        def one():
            def rows_found(q):
                return np.array([int(h.image_id[3:]) for h in search.search_vector(q, K, filters).hits])

            found, secs = timed(rows_found, queries, warm)
            return summary(secs, found, truth_rows, kinds)
        return one

    e2e["search_vector"] = rounds_of(measure(Filters(), truth), job["rounds"])
    e2e["search_vector_pa"] = rounds_of(measure(pa_filter, truth_pa), job["rounds"])
    t_refresh = []
    for _ in range(5):
        t0 = time.perf_counter()
        search.refresh()
        t_refresh.append(time.perf_counter() - t0)
    e2e["version_check_ms"] = round(float(np.median(t_refresh)) * 1000, 2)
    e2e["refresh_seconds"] = search.refresh_seconds

    texts = list(FALLBACK_QUERIES)

    def fallback_once():
        secs = []
        for text in texts[:5]:
            search.search_text(text, K)
        with FullCollections() as collections:
            for _ in range(10):
                for text in texts:
                    t0 = time.perf_counter()
                    result = search.search_text(text, K)
                    secs.append(time.perf_counter() - t0)
                    if result.route != "fallback":
                        raise RuntimeError(f"{text!r} was answered by {result.route}, not the stored answer")
        LAST_GC.update(count=collections.count, ms=round(collections.seconds * 1000, 1))
        return summary(secs)

    e2e["fallback"] = rounds_of(fallback_once, job["rounds"])

    def fallback_pa_once():
        secs = []
        with FullCollections() as collections:
            for text in texts:
                t0 = time.perf_counter()
                result = search.search_text(text, K, pa_filter)
                secs.append(time.perf_counter() - t0)
                if result.route != "fallback_vector+index:" + info["index"]["kind"]:
                    raise RuntimeError(f"{text!r} with a filter was answered by {result.route}")
        LAST_GC.update(count=collections.count, ms=round(collections.seconds * 1000, 1))
        return summary(secs)

    e2e["fallback_vector_pa"] = rounds_of(fallback_pa_once, job["rounds"])
    search.close()
    return e2e


# --- loading alone, old path against new (issue 20) -------------------------------------------------

def old_load(uri: str, home: Path) -> int:
    """The load as it was before issue 20, step for step; returns the rows loaded."""
    import faiss

    from medvec.search.loading import HIT_COLUMNS
    from medvec.tables.images import vectors_of

    table = database.connect(uri).open_table(image_table_name(SLUG))
    data = table.to_arrow()
    ids = data.column("image_id").to_pylist()
    vectors = vectors_of(data)
    meta = data.select([c for c in HIT_COLUMNS if c in data.schema.names]).combine_chunks()
    path = next(index_dir(home, image_table_name(SLUG)).glob("v*.faiss"))
    ivf = faiss.deserialize_index(np.frombuffer(path.read_bytes(), dtype=np.uint8))
    index = VectorIndex(vectors, ivf=ivf)
    return len(ids) + 0 * meta.num_rows + 0 * len(index)


def ru_maxrss_mb() -> float:
    """This process's peak RSS as `getrusage` reports it (Linux: kB). It counts the parent's RSS at the
    fork too, so the load children are started by a parent that never held the table (`make_table`)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def load_child(job_path: Path) -> dict:
    """One path's load in this fresh process; `idle` loads nothing (the baseline: imports done)."""
    job = json.loads(job_path.read_text())
    settle_memory()
    rss0, t0 = rss_mb(), time.perf_counter()
    rows, kind = 0, "-"
    if job["path"] == "old":
        rows = old_load(job["uri"], Path(job["home"]))
        kind = "ivf_pq (saved)"
    elif job["path"] == "new":
        search = ImageSearch(job["uri"], SLUG, home=Path(job["home"]))
        info = search.info()
        rows, kind = info["rows"], info["index"]["kind"] + " (saved)"
        if not search.wait_for_index(timeout=0):
            raise RuntimeError("ImageSearch did not load the saved index")
    load_s = time.perf_counter() - t0
    peak, hwm = ru_maxrss_mb(), vm_hwm_mb()
    return {"path": job["path"], "rows": rows, "index": kind, "load_s": round(load_s, 2),
            "rss_before_mb": round(rss0, 1), "ru_maxrss_mb": round(peak, 1), "vm_hwm_mb": round(hwm, 1),
            "rss_after_mb": round(rss_mb(), 1)}


def make_table(job_path: Path) -> dict:
    """The 377k-row table with its saved index, made in a child so the parent stays small (see `ru_maxrss_mb`)."""
    job = json.loads(job_path.read_text())
    home, dim = Path(job["home"]), job["dim"]
    col = Collection(job["rows"], dim, seed=job["seed"])
    table = database.connect(job["uri"]).create_table(image_table_name(SLUG), schema=image_table_schema(dim))
    data = col.table()
    for start in range(0, data.num_rows, 50_000):
        table.add(data.slice(start, 50_000))
    del data
    log("building and saving the index as image_index does")
    index = VectorIndex.build(col.vectors)
    folder = index_dir(home, table.name)
    index.save_ivf(folder / f"v{table.version}.faiss")
    ids = [col.image_id(i) for i in range(col.rows)]
    (folder / f"v{table.version}.json").write_text(json.dumps({"ids_sha": ids_fingerprint(ids),
                                                                "info": index.info.to_json()}))
    return {"vectors_mb": round(col.vectors.nbytes / 2**20, 1)}


def _child(flag: str, job: Path) -> dict:
    child = subprocess.run([sys.executable, str(Path(__file__).resolve()), flag, str(job)],
                           capture_output=True, text=True)
    if child.returncode != 0:
        raise RuntimeError(f"the {flag} child failed:\n{child.stderr[-4000:]}")
    return json.loads(child.stdout.strip().splitlines()[-1])


def run_load_only(dim: int, args, workdir: Path) -> dict:
    """Peak is the child's `ru_maxrss` (VmHWM beside it); growth is that minus an idle child's (imports done)."""
    log(f"load-only, dim {dim}: generating {args.rows:,} vectors in a child")
    home = workdir / f"load{dim}"
    uri = str(home / "lancedb")
    job = workdir / f"make{dim}.json"
    job.write_text(json.dumps({"uri": uri, "home": str(home), "dim": dim, "rows": args.rows, "seed": args.seed}))
    vectors_mb = _child("--make-table", job)["vectors_mb"]
    res = {"dim": dim, "rows": args.rows, "vectors_mb": vectors_mb, "paths": []}
    for path in ("idle", "old", "new", "old", "new"):  # twice each, alternating: a shared machine drifts
        job = workdir / f"job{dim}{path}.json"
        job.write_text(json.dumps({"uri": uri, "home": str(home), "path": path}))
        out = _child("--load-child", job)
        if path == "idle":
            res["idle_ru_maxrss_mb"] = out["ru_maxrss_mb"]
            continue
        out["peak_over_vectors"] = round(out["ru_maxrss_mb"] / vectors_mb, 3)
        out["growth_over_vectors"] = round((out["ru_maxrss_mb"] - res["idle_ru_maxrss_mb"]) / vectors_mb, 3)
        log(f"{path}: {out}")
        res["paths"].append(out)
    shutil.rmtree(home, ignore_errors=True)
    return res


def render_load_report(res: dict) -> str:
    lines = [f"command: `{res['command']}`", "", "| rows x dim | vectors MB | path | load s | peak RSS MB (ru_maxrss) | "
             "VmHWM MB | peak / vectors | peak − idle baseline / vectors |", "|---|---:|---|---:|---:|---:|---:|---:|"]
    for r in res["dims"]:
        lines.append(f"| {r['rows']:,} x {r['dim']} | {r['vectors_mb']:,.0f} | idle (imports only) | – | "
                     f"{r['idle_ru_maxrss_mb']:,.0f} | | | |")
        for p in r["paths"]:
            lines.append(f"| {r['rows']:,} x {r['dim']} | {r['vectors_mb']:,.0f} | {p['path']} | {p['load_s']} | "
                         f"{p['ru_maxrss_mb']:,.0f} | {p['vm_hwm_mb']:,.0f} | {p['peak_over_vectors']} | "
                         f"{p['growth_over_vectors']} |")
    return "\n".join(lines)


# --- report ------------------------------------------------------------------------------------------

def fmt(x, digits: int = 2) -> str:
    if x is None:
        return "–"
    if isinstance(x, float):
        return f"{x:,.{digits}f}"
    return f"{x:,}" if isinstance(x, int) else str(x)


def table_rows(r: dict) -> list[tuple]:
    rows = []
    if "exact" in r:
        rows += [("exact numpy", "none", r["exact"], "–", f"vectors {fmt(r['vector_index']['vectors_mb'], 0)} MB"),
                 ("exact numpy", "PA", r["exact_pa"], "–", "+ PA copy")]
    lance = r.get("lancedb")
    if lance:
        if "flat" in lance:
            rows += [("LanceDB flat (`bypass_vector_index`)", "none", lance["flat"], "–", "–"),
                     ("LanceDB flat + prefilter (Bitmap)", "PA", lance["flat_pa"], "–", "–")]
        c, ix = lance["tuning"]["chosen"], lance["index"]
        label = f"LanceDB IVF_RQ ({ix['num_partitions']} part.), nprobes {c['nprobes']}, refine {c['refine_factor']}"
        mem = f"index {fmt(ix['on_disk_mb'], 0)} MB on disk; RSS {ix['rss_delta_mb']:+,.0f} MB"
        rows += [(label, "none", lance["ivf"], f"{fmt(ix['build_s'], 1)} s", mem),
                 (label + " + prefilter", "PA", lance["ivf_pa"], "", "")]
    v = r["vector_index"]
    i = v["info"]
    label = f"`VectorIndex.search` ({i['kind']}, nlist {i.get('nlist')}, nprobe {i.get('nprobe')}"
    label += f", re-rank {i['rerank']})" if i.get("rerank") else ")"
    mem = f"saved {fmt(v.get('saved_index_mb'), 0)} MB; RSS {v['rss_delta_mb']:+,.0f} MB"
    rows += [(label, "none", v["search"], f"{fmt(v['build_s'], 1)} s", mem), (label, "PA", v["search_pa"], "", "")]
    e = r["image_search"]
    rows += [("`ImageSearch.search_vector` (end to end)", "none", e["search_vector"], f"load {fmt(e['load_s'], 1)} s",
              f"process RSS {e['rss_delta_mb']:+,.0f} MB after load "
              f"(process peak {fmt(e['peak_rss_during_load_mb'], 0)} MB)"),
             ("`ImageSearch.search_vector` (end to end)", "PA", e["search_vector_pa"], "", ""),
             ("`ImageSearch.search_text`, stored fallback query", "none", e["fallback"], "", ""),
             ("`ImageSearch.search_text`, fallback vector + index", "PA", e["fallback_vector_pa"], "", "")]
    return rows


def render_report(res: dict) -> str:
    m = res["machine"]
    lines = ["# Medvec search benchmark", "",
             f"- command: `{res['command']}`",
             f"- date: {res['date']}",
             f"- machine: {m['cpu_model']}, {m['cpus']} cores, {m['memory_gb']:.0f} GB RAM, {m['platform']}; "
             f"load average at start {m['loadavg_start']}, at end {m.get('loadavg_end')}",
             "- libraries: " + ", ".join(f"{k} {v}" for k, v in res["versions"].items()),
             f"- mode: {'quick' if res['quick'] else 'full'}; k={K}; single queries, one at a time; "
             f"our path: best of {res['rounds']} rounds by p50 (all rounds in the JSON)", ""]
    for r in res["dims"]:
        d = r["data"]
        lines += [f"## {r['rows']:,} rows x {r['dim']} dims", "",
                  f"Data: {d['clusters']:,} clusters (median {d['cluster_size_median']:.0f} images, largest "
                  f"{d['cluster_size_max']:,}); {d['neighbours_from_own_cluster']:.0%} of an image's 10 nearest "
                  f"neighbours are from its own cluster; cosine: random pair {d['cosine_random_pair_mean']}, "
                  f"1st neighbour {d['cosine_1st_neighbour_mean']}, 10th {d['cosine_10th_neighbour_mean']}; "
                  f"views {d['view_mix']}. Load average {r['load_start']} → {r['load_end']}.", "",
                  "| method | filter | queries | p50 ms | p99 ms | recall@10 | build | memory |",
                  "|---|---|---:|---:|---:|---:|---|---|"]
        for label, filt, s, build, mem in table_rows(r):
            recall = fmt(s.get("recall_at_10"), 3) if s.get("recall_at_10") is not None else "–"
            lines.append(f"| {label} | {filt} | {s['queries']} | {fmt(s['p50_ms'])} | {fmt(s['p99_ms'])} | "
                         f"{recall} | {build} | {mem} |")
        v, e = r["vector_index"], r["image_search"]
        def rounds(s: dict) -> str:
            return ", ".join(f"{x['p50_ms']:.2f}/{x['p99_ms']:.2f} (CPU {x['thread_cpu_p99_ms']:.2f}) @{x['load'][0]}"
                             + (f" ({x['full_gc']} full GC)" if x.get("full_gc") else "") for x in s["rounds"])

        lines += ["", "Recall@10 of `VectorIndex.search` by query kind: "
                  f"unfiltered {v['search'].get('recall_by_query_kind')}, "
                  f"PA {v['search_pa'].get('recall_by_query_kind')}.",
                  "",
                  "Every round, wall p50/p99 ms (the calling thread's CPU time at p99) @ 1-minute load average; "
                  "a p99 far above its CPU time is time spent waiting for a core: "
                  f"VectorIndex none [{rounds(v['search'])}], PA [{rounds(v['search_pa'])}]; "
                  f"ImageSearch none [{rounds(e['search_vector'])}], PA [{rounds(e['search_vector_pa'])}].",
                  "",
                  f"ImageSearch re-checks the table version every {e['refresh_seconds']} s "
                  f"(one check: {e['version_check_ms']} ms, paid by the query that triggers it).",
                  "", "VectorIndex tuning (nprobe, re-rank depth, recall@10 per tuning set): "
                  f"{v['info'].get('tuning')}"]
        if "lancedb" in r:
            lines += ["", f"LanceDB tuning ({res['tune_queries']} tuning queries): {r['lancedb']['tuning']['tried']}"]
        checks = []
        for label, s in (("VectorIndex none", v["search"]), ("VectorIndex PA", v["search_pa"]),
                         ("ImageSearch none", e["search_vector"]), ("ImageSearch PA", e["search_vector_pa"])):
            ok = s["p50_ms"] <= TARGET_P50_MS and s["p99_ms"] <= TARGET_P99_MS and s["recall_at_10"] >= TARGET_RECALL
            checks.append(f"{label} {'meets' if ok else 'MISSES'}")
        ok = e["fallback"]["p50_ms"] <= TARGET_FALLBACK_P50_MS
        checks.append(f"fallback {'meets' if ok else 'MISSES'}")
        lines += ["", f"Targets (p50 ≤ {TARGET_P50_MS:g} ms, p99 ≤ {TARGET_P99_MS:g} ms, "
                  f"recall@10 ≥ {TARGET_RECALL}; "
                  f"fallback p50 ≤ {TARGET_FALLBACK_P50_MS:g} ms): " + "; ".join(checks) + ".", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=377_000)
    parser.add_argument("--dims", type=int, nargs="+", default=[768, 1152])
    parser.add_argument("--queries", type=int, default=300, help="evaluation queries per method and filter")
    parser.add_argument("--flat-queries", type=int, default=12,
                        help="queries for LanceDB's brute-force scan (about a second each at 377k rows)")
    parser.add_argument("--tune-queries", type=int, default=100, help="LanceDB tuning queries (not evaluated)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of our path's measurements (best p50 kept)")
    parser.add_argument("--skip", nargs="*", default=[], choices=["exact", "lancedb", "lancedb-flat"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="50,000 rows, 100 queries, 2 rounds (a few minutes)")
    parser.add_argument("--workdir", type=Path, default=None, help="where the temporary Medvec homes go")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "search.json")
    parser.add_argument("--image-search-child", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--load-only", action="store_true", help="load time and peak RSS, old path vs new")
    parser.add_argument("--load-child", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--make-table", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.image_search_child:
        print(json.dumps(image_search_child(args.image_search_child)))
        return 0
    if args.load_child:
        print(json.dumps(load_child(args.load_child)))
        return 0
    if args.make_table:
        print(json.dumps(make_table(args.make_table)))
        return 0
    if args.quick:
        args.rows, args.queries, args.flat_queries, args.tune_queries, args.rounds = 50_000, 100, 6, 40, 2

    import logging

    logging.basicConfig(level=logging.WARNING)
    started = time.perf_counter()
    exe = os.path.relpath(sys.executable) if not os.path.relpath(sys.executable).startswith("../..") else sys.executable
    res: dict = {
        "command": shlex.join([exe, *(sys.argv if argv is None else [__file__, *argv])]),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "quick": args.quick, "rounds": args.rounds, "tune_queries": args.tune_queries,
        "machine": {"cpu_model": cpu_model(), "cpus": os.cpu_count(), "platform": platform.platform(),
                    "memory_gb": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30,
                    "loadavg_start": load()},
        "versions": versions(), "dims": [],
    }
    print(f"command: {res['command']}", file=sys.stderr, flush=True)
    workdir = Path(tempfile.mkdtemp(prefix="medvec-search-bench-", dir=args.workdir))
    try:
        for dim in args.dims:
            res["dims"].append((run_load_only if args.load_only else run_dim)(dim, args, workdir))
            gc.collect()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    res["machine"]["loadavg_end"] = load()
    res["total_seconds"] = round(time.perf_counter() - started, 1)
    print(render_load_report(res) if args.load_only else render_report(res))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(res, indent=1, default=str))
        log(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
