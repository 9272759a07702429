"""Image embeddings packed for the browser: one little-endian file the page scans with a dot product.

Two precisions. `float16` (the default): the vectors as IEEE half floats. `int8`: each vector scaled by
its own largest component (`scale = max|v| / 127`), rounded to int8 codes, the n float32 scales after the
n x d codes; a score is `scale * dot(query, codes)`. int8 is half the bytes of float16, but its score
error (~2e-3 against ~5e-5) reorders images whose scores crowd: recall@10 against float32 was 0.989 at
377,000 x 768 (0.983 for text-like queries between clusters) where float16 kept 1.0 (BENCHMARKS.md,
"Search in the browser"). Every build measures both on its own vectors (`packing_recall`) and keeps the
numbers in the bundle's manifest.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

PRECISIONS = ("int8", "float16")


@dataclass(frozen=True)
class PackedVectors:
    """The bytes of `embeddings.bin` and where its parts start (what the page needs to read it)."""

    data: bytes
    precision: str
    rows: int
    dim: int
    codes_offset: int
    scales_offset: int | None  # int8 only

    def layout(self, file: str) -> dict:
        return {"file": file, "precision": self.precision, "rows": self.rows, "dim": self.dim, "byte_order": "little",
                "codes_offset": self.codes_offset, "scales_offset": self.scales_offset, "bytes": len(self.data)}


def pack_vectors(vectors: np.ndarray, precision: str = "int8") -> PackedVectors:
    """(n, d) float32 → packed bytes; rows stay in order (row i of the bundle's index is vector i)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    rows, dim = vectors.shape
    if precision == "float16":
        return PackedVectors(vectors.astype("<f2").tobytes(), precision, rows, dim, 0, None)
    codes, scales = quantize_int8(vectors)
    code_bytes = codes.tobytes()
    # Float32Array views need a 4-byte aligned offset.
    padding = b"\0" * (-len(code_bytes) % 4)
    return PackedVectors(code_bytes + padding + scales.astype("<f4").tobytes(), precision, rows, dim, 0,
                         len(code_bytes) + len(padding))


def quantize_int8(vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric per-vector int8: codes in [-127, 127] and one float32 scale per row."""
    vectors = np.asarray(vectors, dtype=np.float32)
    peak = np.abs(vectors).max(axis=1) if vectors.size else np.zeros(len(vectors), np.float32)
    scales = np.where(peak > 0, peak / 127.0, 1.0).astype(np.float32)
    codes = np.clip(np.rint(vectors / scales[:, None]), -127, 127).astype(np.int8)
    return codes, scales


def unpack_vectors(packed: PackedVectors | bytes, *, precision: str | None = None, rows: int | None = None,
                   dim: int | None = None, scales_offset: int | None = None) -> np.ndarray:
    """What the page computes with, as float32 (for measuring the packing's cost)."""
    if isinstance(packed, PackedVectors):
        data, precision, rows, dim, scales_offset = (packed.data, packed.precision, packed.rows, packed.dim,
                                                     packed.scales_offset)
    else:
        data = packed
    if precision == "float16":
        return np.frombuffer(data, dtype="<f2", count=rows * dim).astype(np.float32).reshape(rows, dim)
    codes = np.frombuffer(data, dtype=np.int8, count=rows * dim).reshape(rows, dim)
    scales = np.frombuffer(data, dtype="<f4", count=rows, offset=scales_offset)
    return codes.astype(np.float32) * scales[:, None]


def packing_recall(vectors: np.ndarray, queries: np.ndarray, precision: str, *, k: int = 10,
                   exclude_self: bool = False) -> dict:
    """Recall@k of top-k over the packed vectors against exact float32 top-k, and the largest score error.

    `exclude_self`: the queries are the stored vectors themselves (find-similar), so each one's own row is
    left out of both rankings.
    """
    vectors = np.asarray(vectors, dtype=np.float32)
    queries = np.asarray(queries, dtype=np.float32)
    if not len(vectors) or not len(queries):
        return {"queries": 0, "k": k, "recall": None, "max_score_error": None}
    approx = unpack_vectors(pack_vectors(vectors, precision))
    exact_scores, approx_scores = queries @ vectors.T, queries @ approx.T
    if exclude_self:
        np.fill_diagonal(exact_scores, -np.inf)
        np.fill_diagonal(approx_scores, -np.inf)
    k = min(k, len(vectors) - (1 if exclude_self else 0))
    exact_top = np.argsort(-exact_scores, axis=1, kind="stable")[:, :k]
    approx_top = np.argsort(-approx_scores, axis=1, kind="stable")[:, :k]
    found = [len(set(a) & set(e)) / k for a, e in zip(approx_top.tolist(), exact_top.tolist())]
    finite = np.isfinite(exact_scores)
    error = float(np.abs(exact_scores[finite] - approx_scores[finite]).max())
    return {"queries": len(queries), "k": k, "recall": round(float(np.mean(found)), 4),
            "max_score_error": round(error, 6)}


def packing_costs(vectors: np.ndarray, text_queries: np.ndarray, chosen: str, *, image_queries: int = 200) -> dict:
    """Recall@10 of both precisions against float32, for the common queries' text vectors and for
    stored images as find-similar queries (a fixed sample of at most `image_queries`)."""
    rng = np.random.default_rng(0)
    sample = np.sort(rng.choice(len(vectors), min(image_queries, len(vectors)), replace=False))
    costs = {"chosen": chosen}
    for precision in PRECISIONS:
        text = packing_recall(vectors, text_queries, precision)
        # Self-matches are excluded by comparing against the other rows only.
        image = packing_recall(np.delete(vectors, sample, axis=0), vectors[sample], precision) \
            if len(vectors) > len(sample) else packing_recall(vectors, vectors, precision, exclude_self=True)
        costs[precision] = {"bytes_per_vector": vectors.shape[1] * (1 if precision == "int8" else 2)
                            + (4 if precision == "int8" else 0), "text_queries": text, "image_queries": image}
    return costs
