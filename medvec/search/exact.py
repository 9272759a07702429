"""Exact nearest neighbours and recall: the ground truth the in-memory index is tuned and checked against."""

from __future__ import annotations

import numpy as np


def top_k(scores: np.ndarray, rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row of a (queries, candidates) score matrix, the k best (scores, rows), best first;
    missing candidates (row -1, score -inf) come last and stay -1."""
    k = min(k, scores.shape[1])
    if k < scores.shape[1]:
        top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    else:
        top = np.tile(np.arange(k), (len(scores), 1))
    top_scores = np.take_along_axis(scores, top, axis=1)
    order = np.argsort(-top_scores, axis=1, kind="stable")
    top = np.take_along_axis(top, order, axis=1)
    return np.take_along_axis(scores, top, axis=1), np.take_along_axis(rows, top, axis=1)


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
