"""The in-memory nearest-neighbour index the search path queries (LanceDB stays the system of record).

LanceDB's own ANN index answers in 4-15 ms on two cores (../shared/reference/lancedb.md §3);
the search target is 2 ms p50 at recall@10 >= 0.98, so queries run here, over vectors loaded from
the table: exact inner product below `exact_below` rows, FAISS IVF above it. Vectors are
L2-normalised, so inner product is cosine similarity and the score users see.

Filters arrive as a boolean row mask. IVF scans check membership before computing a distance,
so a filter costs a bitmap lookup per scanned row, and the probe count grows as the filter
narrows so that k matching rows are still found.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

#: Below this many rows an exact scan is both fast (< 2 ms at 1,152 dims) and exact.
EXACT_BELOW = 20_000


@dataclass
class IndexInfo:
    """What was built and how it was tuned; shown in asset metadata and `medvec stats`."""

    kind: str  # exact | ivf_flat
    rows: int
    dim: int
    nlist: int = 0
    nprobe: int = 0
    build_seconds: float = 0.0
    tuned_recall_at_10: float | None = None
    tuning: list[dict] = field(default_factory=list)

    def to_json(self) -> dict:
        return {k: v for k, v in self.__dict__.items()}


def _faiss():
    import faiss

    return faiss


class VectorIndex:
    """Top-k inner-product search over an (n, d) float32 matrix of L2-normalised rows.

    Row numbers are the ids: callers keep their own row → image_id mapping.
    """

    def __init__(self, vectors: np.ndarray, *, ivf=None, info: IndexInfo | None = None):
        self.vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        self._ivf = ivf
        n, d = self.vectors.shape if self.vectors.ndim == 2 else (0, 0)
        self.info = info or IndexInfo(kind="exact", rows=n, dim=d)

    # --- building --------------------------------------------------------------------------------

    @classmethod
    def build(cls, vectors: np.ndarray, *, exact_below: int = EXACT_BELOW, nlist: int | None = None,
              target_recall: float = 0.98, seed: int = 0,
              tuning_queries: np.ndarray | None = None) -> "VectorIndex":
        """Exact for small tables; IVF-Flat for large ones, with `nprobe` tuned on a sample of the
        table's own vectors until recall@10 against exact search reaches `target_recall`."""
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        n = len(vectors)
        if n < exact_below:
            return cls(vectors)
        faiss = _faiss()
        started = time.perf_counter()
        d = vectors.shape[1]
        nlist = nlist or max(16, int(2 * math.sqrt(n)))
        ivf = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
        rng = np.random.default_rng(seed)
        # 64 points per centroid trains k-means well and keeps the build to seconds at 377k rows.
        sample = vectors[np.sort(rng.choice(n, min(n, 64 * nlist), replace=False))]
        ivf.train(sample)
        ivf.add(vectors)
        info = IndexInfo(kind="ivf_flat", rows=n, dim=d, nlist=nlist, build_seconds=0.0)
        index = cls(vectors, ivf=ivf, info=info)
        index.tune(target_recall=target_recall, seed=seed, extra_queries=tuning_queries)
        info.build_seconds = round(time.perf_counter() - started, 2)
        return index

    def tune(self, *, target_recall: float = 0.98, queries: int = 200, seed: int = 0,
             extra_queries: np.ndarray | None = None) -> None:
        """Pick the smallest nprobe whose recall@10 against exact search reaches the target on every
        query set: stored vectors with a little noise (image → image), points between two random
        stored vectors (queries that sit in no cluster), and `extra_queries` when given (e.g. the
        model's text embeddings of common queries, which sit away from the images: the modality gap).
        """
        if self._ivf is None:
            return
        rng = np.random.default_rng(seed + 1)
        n, d = self.vectors.shape
        m = min(queries, n)
        near = self.vectors[rng.choice(n, m, replace=False)]
        near = near + rng.standard_normal(near.shape, dtype=np.float32) * (0.2 / math.sqrt(d))
        between = self.vectors[rng.choice(n, m)] + self.vectors[rng.choice(n, m)]
        sets = {"near_rows": near, "between_rows": between}
        if extra_queries is not None and len(extra_queries):
            sets["given"] = np.asarray(extra_queries, dtype=np.float32).reshape(-1, d)
        sets = {name: np.ascontiguousarray(q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12))
                for name, q in sets.items()}
        truths = {name: exact_top_k(self.vectors, q, 10) for name, q in sets.items()}
        self.info.tuning = []
        nprobe = 1
        while True:
            self._ivf.nprobe = nprobe
            recalls = {name: round(recall_at_k(self._ivf.search(q, 10)[1], truths[name]), 4)
                       for name, q in sets.items()}
            self.info.tuning.append({"nprobe": nprobe, **recalls})
            recall = min(recalls.values())
            if recall >= target_recall or nprobe >= self.info.nlist:
                break
            nprobe = min(self.info.nlist, nprobe * 2)
        self.info.nprobe = nprobe
        self.info.tuned_recall_at_10 = round(recall, 4)

    # --- searching -------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.vectors)

    def search(self, query: np.ndarray, k: int, allowed: "RowFilter | None" = None) -> tuple[np.ndarray, np.ndarray]:
        """(scores, rows) of the k best rows, best first; only rows in `allowed` when given."""
        query = np.ascontiguousarray(query, dtype=np.float32).reshape(-1)
        n = len(self.vectors)
        if n == 0 or k <= 0 or (allowed is not None and allowed.count == 0):
            return np.empty(0, np.float32), np.empty(0, np.int64)
        if self._ivf is None or (allowed is not None and allowed.count < EXACT_BELOW // 4):
            return self._exact(query, k, allowed)
        faiss = _faiss()
        nprobe = self.info.nprobe
        params = None
        if allowed is not None and allowed.count < n:
            # A filter keeping a fraction f of rows needs about 1/f as many lists for the same k.
            nprobe = min(self.info.nlist, math.ceil(nprobe * n / allowed.count))
            params = faiss.SearchParametersIVF(sel=allowed.selector(), nprobe=nprobe)
        else:
            params = faiss.SearchParametersIVF(nprobe=nprobe)
        scores, rows = self._ivf.search(query[None, :], k, params=params)
        keep = rows[0] >= 0
        return scores[0][keep], rows[0][keep].astype(np.int64)

    def search_many(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Batched unfiltered search (for precomputing neighbours of every image)."""
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        if self._ivf is None:
            rows = exact_top_k(self.vectors, queries, k)
            scores = np.take_along_axis(queries @ self.vectors.T, rows, axis=1) if len(rows) else rows.astype(np.float32)
            return scores, rows
        self._ivf.nprobe = self.info.nprobe
        return self._ivf.search(queries, min(k, len(self.vectors)))

    def _exact(self, query: np.ndarray, k: int, allowed: "RowFilter | None"):
        if allowed is None or allowed.count == len(self.vectors):
            scores = self.vectors @ query
            candidates = None
        else:
            candidates = allowed.rows
            scores = self.vectors[candidates] @ query
        k = min(k, len(scores))
        top = np.argpartition(-scores, k - 1)[:k] if k < len(scores) else np.arange(len(scores))
        top = top[np.argsort(-scores[top], kind="stable")]
        rows = top if candidates is None else candidates[top]
        return scores[top], rows.astype(np.int64)

    # --- persistence -----------------------------------------------------------------------------

    def save_ivf(self, path: Path) -> bool:
        """Write the IVF structure (not the vectors: they are reloaded from LanceDB)."""
        if self._ivf is None:
            return False
        faiss = _faiss()
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        faiss.write_index(self._ivf, str(tmp))
        tmp.replace(path)
        return True

    @classmethod
    def with_saved_ivf(cls, vectors: np.ndarray, path: Path, info: IndexInfo) -> "VectorIndex":
        ivf = _faiss().read_index(str(path))
        if ivf.ntotal != len(vectors) or ivf.d != vectors.shape[1]:
            raise ValueError(f"saved index {path.name} holds {ivf.ntotal}x{ivf.d}, table has {vectors.shape}")
        return cls(vectors, ivf=ivf, info=info)


class RowFilter:
    """A set of allowed rows, kept as a mask, the row numbers and (lazily) a FAISS selector."""

    def __init__(self, mask: np.ndarray):
        self.mask = np.asarray(mask, dtype=bool)
        self.rows = np.flatnonzero(self.mask)
        self.count = len(self.rows)
        self._selector = None
        self._bits = None

    def selector(self):
        if self._selector is None:
            faiss = _faiss()
            self._bits = np.packbits(self.mask, bitorder="little")  # the selector reads this buffer: keep it
            self._selector = faiss.IDSelectorBitmap(len(self.mask), faiss.swig_ptr(self._bits))
        return self._selector


def exact_top_k(vectors: np.ndarray, queries: np.ndarray, k: int, chunk: int = 256) -> np.ndarray:
    """Row numbers of the exact top k per query, best first (the ground truth for recall)."""
    queries = np.atleast_2d(queries)
    k = min(k, len(vectors))
    out = np.empty((len(queries), k), dtype=np.int64)
    for start in range(0, len(queries), chunk):
        scores = queries[start:start + chunk] @ vectors.T
        top = np.argpartition(-scores, k - 1, axis=1)[:, :k] if k < scores.shape[1] else np.tile(np.arange(k), (len(scores), 1))
        order = np.argsort(-np.take_along_axis(scores, top, axis=1), axis=1, kind="stable")
        out[start:start + chunk] = np.take_along_axis(top, order, axis=1)
    return out


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean fraction of each query's true top-k that the search returned."""
    k = truth.shape[1]
    if k == 0:
        return 1.0
    hits = [len(set(f[:k].tolist()) & set(t.tolist())) / k for f, t in zip(found, truth)]
    return float(np.mean(hits)) if hits else 1.0
