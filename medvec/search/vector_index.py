"""The in-memory nearest-neighbour index the search path queries (LanceDB stays the system of record).

LanceDB's own ANN index answers in 4-15 ms on two cores (../shared/reference/lancedb.md §3);
the search target is 2 ms p50 at recall@10 >= 0.98, so queries run here, over vectors loaded from
the table: exact inner product below `exact_below` rows, FAISS IVF above it. Vectors are
L2-normalised, so inner product is cosine similarity and the score users see.

The IVF lists hold 4-bit product-quantiser codes (d/8 bytes a vector, scanned with SIMD look-up
tables: FAISS "fast scan"), and the best few hundred candidates are re-ranked on the exact vectors,
which the index holds anyway. Against IVF-Flat at the same recall this touches about 15x fewer bytes a
query, so the many probes that queries between clusters need stay cheap, and the index adds ~4% to
the vectors' memory instead of a second copy of them (benchmarks/search.py, BENCHMARKS.md "Search").

Filters arrive as a boolean row mask. IVF scans check membership before computing a distance;
the lists a filtered query probes are the nearest ones until they hold as many allowed rows as an
unfiltered query scans, so a filter correlated with the geometry (lateral views sit together) still
finds its k rows. Single queries run on one thread: on a busy two-core box an OpenMP or BLAS thread
team waits a scheduler tick (~8 ms) for a core, which turned 1 ms queries into 8 ms ones.
"""

from __future__ import annotations

import math
import time
import weakref
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np

from medvec.search.exact import exact_top_k, recall_at_k, top_k  # noqa: F401 - recall_at_k re-exported
from medvec.storage import HomePath, write_atomic

#: Below this many rows an exact scan is both fast (< 2 ms at 1,152 dims) and exact.
EXACT_BELOW = 20_000
#: Re-rank depths tried when tuning (candidates from the code scan re-scored on the exact vectors).
RERANK_STEPS = (20, 40, 80, 160, 320, 640, 1280)
#: Cost of re-ranking one byte of vectors (a random row fetch) relative to scanning one byte of
#: codes; measured at 377k x 768 on the 2-core AVX-512 box (~0.11 against ~0.08 ns a byte).
RERANK_BYTE_COST = 1.4


@dataclass
class IndexInfo:
    """What was built and how it was tuned; shown in asset metadata and `medvec stats`."""

    kind: str  # exact | ivf_pq (4-bit codes + exact re-rank) | ivf_flat (saved by older versions)
    rows: int
    dim: int
    nlist: int = 0
    nprobe: int = 0
    build_seconds: float = 0.0
    tuned_recall_at_10: float | None = None
    tuning: list[dict] = field(default_factory=list)
    rerank: int = 0  # candidates re-scored on the exact vectors for k=10 (0: the IVF's own scores)

    def to_json(self) -> dict:
        return {k: v for k, v in self.__dict__.items()}


def _faiss():
    import faiss

    return faiss


@contextmanager
def _one_thread(faiss):
    """OpenMP's thread count for this thread only, restored after (batched work keeps all cores)."""
    before = faiss.omp_get_max_threads()
    if before > 1:
        faiss.omp_set_num_threads(1)
    try:
        yield
    finally:
        if before > 1:
            faiss.omp_set_num_threads(before)


def _subquantizers(dim: int) -> int:
    """4 dimensions per 4-bit code where the width allows it (768 -> 192 codes, 96 bytes)."""
    for per_code in (4, 2):
        if dim % per_code == 0:
            return dim // per_code
    return dim


class VectorIndex:
    """Top-k inner-product search over an (n, d) float32 matrix of L2-normalised rows.

    Row numbers are the ids: callers keep their own row → image_id mapping.
    """

    def __init__(self, vectors: np.ndarray, *, ivf=None, info: IndexInfo | None = None):
        self.vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        self._ivf = ivf
        n, d = self.vectors.shape if self.vectors.ndim == 2 else (0, 0)
        self.info = info or IndexInfo(kind="exact", rows=n, dim=d)
        self._centroids: np.ndarray | None = None
        self._list_of_row: np.ndarray | None = None
        self._allowed_per_list: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    # --- building --------------------------------------------------------------------------------

    @classmethod
    def build(cls, vectors: np.ndarray, *, exact_below: int = EXACT_BELOW, nlist: int | None = None,
              target_recall: float = 0.98, seed: int = 0,
              tuning_queries: np.ndarray | None = None) -> "VectorIndex":
        """Exact for small tables; IVF with 4-bit codes and an exact re-rank for large ones, with
        `nprobe` and the re-rank depth tuned on queries made from the table's own vectors until
        recall@10 against exact search reaches `target_recall`."""
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        n = len(vectors)
        if n < exact_below:
            return cls(vectors)
        faiss = _faiss()
        started = time.perf_counter()
        d = vectors.shape[1]
        # sqrt(n) lists: with codes this cheap to scan, 2*sqrt(n) lists gave the same latency at equal
        # recall but took 2-4x longer to train and add (377k x 768, benchmarks/search.py).
        nlist = nlist or max(16, int(math.sqrt(n)))
        ivf = faiss.IndexIVFPQFastScan(faiss.IndexFlatIP(d), d, nlist, _subquantizers(d), 4,
                                       faiss.METRIC_INNER_PRODUCT)
        ivf.by_residual = True  # codes of the offset from the list centre: better candidates at equal size
        rng = np.random.default_rng(seed)
        # 64 points per centroid trains k-means well and keeps the build to seconds at 377k rows.
        sample = vectors[np.sort(rng.choice(n, min(n, 64 * nlist), replace=False))]
        ivf.train_q1(len(sample), faiss.swig_ptr(sample), False, faiss.METRIC_INNER_PRODUCT)  # k-means: BLAS-bound
        with _one_thread(faiss):
            # The codebooks are hundreds of tiny k-means runs: with two OpenMP threads on a busy box each
            # of their many barriers can wait a scheduler tick, which made this step take 1-15 s at random.
            ivf.train(sample)  # the lists' centroids are trained: this trains the codebooks only
        ivf.add(vectors)
        info = IndexInfo(kind="ivf_pq", rows=n, dim=d, nlist=nlist, build_seconds=0.0, rerank=max(RERANK_STEPS))
        index = cls(vectors, ivf=ivf, info=info)
        index.tune(target_recall=target_recall, seed=seed, extra_queries=tuning_queries)
        info.build_seconds = round(time.perf_counter() - started, 2)
        return index

    def tune(self, *, target_recall: float = 0.98, queries: int = 200, seed: int = 0,
             extra_queries: np.ndarray | None = None) -> None:
        """Pick the cheapest (nprobe, re-rank depth) whose recall@10 against exact search reaches the
        target on every query set: stored vectors with a little noise (image → image), points between
        two random stored vectors (queries that sit in no cluster), and `extra_queries` when given (e.g.
        the model's text embeddings of common queries, which sit away from the images: the modality gap).

        Cost is bytes touched a query: codes scanned in the probed lists plus vectors re-ranked.
        """
        if self._ivf is None:
            return
        faiss = _faiss()
        n, d = self.vectors.shape
        sets = self._tuning_queries(queries, seed, extra_queries)
        truths = {name: exact_top_k(self.vectors, q, 10) for name, q in sets.items()}
        steps = [s for s in RERANK_STEPS if s < n] + [min(n, max(RERANK_STEPS))] if self.info.rerank else [0]
        steps = sorted(set(steps))
        nlist, list_bytes = self.info.nlist, n / self.info.nlist * self._ivf.code_size

        def cost(nprobe: int, rerank: int) -> float:
            return nprobe * list_bytes + RERANK_BYTE_COST * rerank * d * 4

        self.info.tuning = []
        best = None  # (cost, nprobe, rerank, recall)
        fallback = None  # the best recall seen, should no setting reach the target
        nprobe = 1
        while True:
            params = faiss.SearchParametersIVF(nprobe=nprobe)
            if steps == [0]:
                found = {name: self._ivf.search(q, 10, params=params)[1] for name, q in sets.items()}
                reranked = None
            else:
                found = {name: self._ivf.search(q, max(steps), params=params)[1] for name, q in sets.items()}
                reranked = {name: self._exact_scores(sets[name], found[name]) for name in sets}
            for step in steps:
                recalls = {}
                for name in sets:
                    if reranked is None:
                        rows = found[name]
                    else:
                        rows = top_k(reranked[name][:, :step], found[name][:, :step], 10)[1]
                    recalls[name] = round(recall_at_k(rows, truths[name]), 4)
                recall = min(recalls.values())
                if fallback is None or recall > fallback[3]:
                    fallback = (cost(nprobe, step), nprobe, step, recall)
                if recall >= target_recall or step == steps[-1]:
                    self.info.tuning.append({"nprobe": nprobe, **({"rerank": step} if step else {}), **recalls})
                    if recall >= target_recall and (best is None or cost(nprobe, step) < best[0]):
                        best = (cost(nprobe, step), nprobe, step, recall)
                    break
            following = min(nlist, nprobe * 2)
            if nprobe >= nlist or (best is not None and cost(following, 0) >= best[0]):
                break
            nprobe = following
        chosen = best or fallback
        self.info.nprobe, self.info.rerank, self.info.tuned_recall_at_10 = chosen[1], chosen[2], chosen[3]

    def _tuning_queries(self, queries: int, seed: int, extra_queries: np.ndarray | None) -> dict[str, np.ndarray]:
        """Unit-length query sets the tuning must satisfy, by name (see `tune`)."""
        rng = np.random.default_rng(seed + 1)
        n, d = self.vectors.shape
        m = min(queries, n)
        near = self.vectors[rng.choice(n, m, replace=False)]
        near = near + rng.standard_normal(near.shape, dtype=np.float32) * (0.2 / math.sqrt(d))
        between = self.vectors[rng.choice(n, m)] + self.vectors[rng.choice(n, m)]
        sets = {"near_rows": near, "between_rows": between}
        if extra_queries is not None and len(extra_queries):
            sets["given"] = np.asarray(extra_queries, dtype=np.float32).reshape(-1, d)
        return {name: np.ascontiguousarray(q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12))
                for name, q in sets.items()}

    # --- searching -------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.vectors)

    def _probes(self, k: int) -> int:
        """Lists to scan for k answers: nprobe was tuned for k=10, and k=500 needs 50x the rows."""
        return min(self.info.nlist, math.ceil(self.info.nprobe * max(1.0, k / 10)))

    def _candidates(self, k: int) -> int:
        """How many IVF results to fetch for k answers: the tuned re-rank depth was for k=10."""
        if not self.info.rerank:
            return min(k, len(self.vectors))
        return min(len(self.vectors), max(k, self.info.rerank, math.ceil(self.info.rerank * k / 10)))

    def search(self, query: np.ndarray, k: int, allowed: "RowFilter | None" = None) -> tuple[np.ndarray, np.ndarray]:
        """(scores, rows) of the k best rows, best first; only rows in `allowed` when given."""
        query = np.ascontiguousarray(query, dtype=np.float32).reshape(-1)
        n = len(self.vectors)
        if n == 0 or k <= 0 or (allowed is not None and allowed.count == 0):
            return np.empty(0, np.float32), np.empty(0, np.int64)
        faiss = _faiss()
        with _one_thread(faiss):
            if self._ivf is None or (allowed is not None and allowed.count < EXACT_BELOW // 4):
                return self._exact(query, k, allowed)
            want = self._candidates(k)
            if allowed is not None and allowed.count < n:
                scores, rows = self._search_filtered(query, k, want, allowed)
            else:
                scores, rows = self._ivf.search(query[None, :], want,
                                                params=faiss.SearchParametersIVF(nprobe=self._probes(k)))
            if self.info.rerank:
                scores, rows = top_k(self._exact_scores(query[None, :], rows), rows, k)
        keep = rows[0] >= 0
        return scores[0][keep], rows[0][keep].astype(np.int64)

    def search_many(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Batched unfiltered search (for precomputing neighbours of every image)."""
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        if self._ivf is None:
            rows = exact_top_k(self.vectors, queries, k)
            scores = np.take_along_axis(queries @ self.vectors.T, rows, axis=1) if len(rows) else rows.astype(np.float32)
            return scores, rows
        faiss = _faiss()
        k = min(k, len(self.vectors))
        scores, rows = self._ivf.search(queries, self._candidates(k),
                                        params=faiss.SearchParametersIVF(nprobe=self._probes(k)))
        if self.info.rerank:
            scores, rows = top_k(self._exact_scores(queries, rows), rows, k)
        return scores, rows

    def _search_filtered(self, query: np.ndarray, k: int, want: int, allowed: "RowFilter"):
        """Probe the nearest lists that hold allowed rows until they hold as many allowed rows as an
        unfiltered query scans rows (`_probes(k)` lists of average size)."""
        faiss = _faiss()
        nlist, d = self.info.nlist, len(query)
        centroids = self._centroid_matrix()
        near = np.empty(nlist, np.float32)
        faiss.fvec_inner_products_ny(faiss.swig_ptr(near), faiss.swig_ptr(query), faiss.swig_ptr(centroids), d, nlist)
        per_list = self._allowed_counts(allowed)
        order = np.argsort(-near)
        order = order[per_list[order] > 0]
        reach = np.cumsum(per_list[order])
        target = self._probes(k) * len(self.vectors) / nlist
        probes = max(1, min(len(order), int(np.searchsorted(reach, target)) + 1))
        lists = np.ascontiguousarray(order[:probes][None, :], dtype=np.int64)
        list_scores = np.ascontiguousarray(near[lists])
        scores, rows = np.empty((1, want), np.float32), np.empty((1, want), np.int64)
        params = faiss.SearchParametersIVF(sel=allowed.selector(), nprobe=probes)
        self._ivf.search_preassigned_c(1, faiss.swig_ptr(query), want, faiss.swig_ptr(lists),
                                       faiss.swig_ptr(list_scores), faiss.swig_ptr(scores), faiss.swig_ptr(rows),
                                       False, params)
        return scores, rows

    def _centroid_matrix(self) -> np.ndarray:
        if self._centroids is None:
            centroids = self._ivf.quantizer.reconstruct_n(0, self.info.nlist)
            self._centroids = np.ascontiguousarray(centroids, dtype=np.float32)
        return self._centroids

    def _allowed_counts(self, allowed: "RowFilter") -> np.ndarray:
        """Allowed rows per IVF list, computed once per filter (ImageSearch caches its filters)."""
        counts = self._allowed_per_list.get(allowed)
        if counts is None:
            if self._list_of_row is None:
                faiss = _faiss()
                owner = np.empty(len(self.vectors), np.int32)
                invlists = self._ivf.invlists
                for lst in range(self.info.nlist):
                    size = invlists.list_size(lst)
                    if size:
                        ids = invlists.get_ids(lst)
                        owner[faiss.rev_swig_ptr(ids, size)] = lst
                        invlists.release_ids(lst, ids)
                self._list_of_row = owner
            counts = np.bincount(self._list_of_row[allowed.rows], minlength=self.info.nlist)
            self._allowed_per_list[allowed] = counts
        return counts

    def _exact_scores(self, queries: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """Inner products of each query with its candidate rows (-inf where a row is -1), read in
        place: no gathered copy of the candidate vectors."""
        faiss = _faiss()
        rows = np.ascontiguousarray(rows, dtype=np.int64)
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        out = np.empty(rows.shape, np.float32)
        faiss.fvec_inner_products_by_idx(faiss.swig_ptr(out), faiss.swig_ptr(queries), faiss.swig_ptr(self.vectors),
                                         faiss.swig_ptr(rows), self.vectors.shape[1], rows.shape[0], rows.shape[1])
        return out

    def _exact(self, query: np.ndarray, k: int, allowed: "RowFilter | None"):
        faiss = _faiss()
        n, d = self.vectors.shape
        if allowed is None or allowed.count == n:
            scores = np.empty(n, np.float32)
            faiss.fvec_inner_products_ny(faiss.swig_ptr(scores), faiss.swig_ptr(query), faiss.swig_ptr(self.vectors),
                                         d, n)
            candidates = None
        else:
            candidates = allowed.rows
            scores = self._exact_scores(query[None, :], candidates[None, :])[0]
        k = min(k, len(scores))
        top = np.argpartition(-scores, k - 1)[:k] if k < len(scores) else np.arange(len(scores))
        top = top[np.argsort(-scores[top], kind="stable")]
        rows = top if candidates is None else candidates[top]
        return scores[top], rows.astype(np.int64)

    # --- persistence -----------------------------------------------------------------------------

    def save_ivf(self, path: HomePath) -> bool:
        """Write the IVF structure (not the vectors: they are reloaded from LanceDB), to a file or S3."""
        if self._ivf is None:
            return False
        write_atomic(path, _faiss().serialize_index(self._ivf).tobytes())
        return True

    @classmethod
    def with_saved_ivf(cls, vectors: np.ndarray, path: HomePath, info: IndexInfo) -> "VectorIndex":
        ivf = _faiss().deserialize_index(np.frombuffer(path.read_bytes(), dtype=np.uint8))
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
