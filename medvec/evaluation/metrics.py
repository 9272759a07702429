"""Retrieval metrics over ranked relevance, with torchmetrics' definitions (tested against it).

Input is a boolean matrix: one row per query, its candidates in ranked order (best first),
True where the candidate is relevant. Queries without any relevant candidate have no defined
score and are left out (torchmetrics: `empty_target_action="skip"`).

- Recall@k: relevant in the top k / all relevant (`RetrievalRecall(top_k=k)`).
- Precision@k: relevant in the top k / k (`RetrievalPrecision(top_k=k)`, not adaptive).
- MRR: 1 / rank of the first relevant candidate (`RetrievalMRR`).
- AP: mean of precision@rank over the ranks of the relevant candidates (`RetrievalMAP`), over
  the whole ranking.
"""

from __future__ import annotations

import numpy as np

DEFAULT_KS = (1, 5, 10)


def per_query(ranked_relevance: np.ndarray, ks=DEFAULT_KS) -> dict[str, np.ndarray]:
    """Each metric for each query that has a relevant candidate (rows without one are dropped)."""
    rel = np.atleast_2d(np.asarray(ranked_relevance, dtype=bool))
    n_relevant = rel.sum(axis=1)
    rel = rel[n_relevant > 0]
    n_relevant = n_relevant[n_relevant > 0].astype(np.float64)
    out: dict[str, np.ndarray] = {}
    if rel.shape[0] == 0:
        return {name: np.empty(0) for name in _names(ks)}
    hits = np.cumsum(rel, axis=1)
    n = rel.shape[1]
    for k in ks:
        at_k = hits[:, min(k, n) - 1]
        out[f"recall@{k}"] = at_k / n_relevant
        out[f"precision@{k}"] = at_k / k
    ranks = np.arange(1, n + 1, dtype=np.float64)
    out["mrr"] = 1.0 / (np.argmax(rel, axis=1) + 1)
    out["map"] = (np.where(rel, hits / ranks, 0.0).sum(axis=1)) / n_relevant
    return out


def mean_metrics(ranked_relevance: np.ndarray, ks=DEFAULT_KS) -> dict[str, float | int]:
    """Means over the queries that have a relevant candidate, and how many those were."""
    scores = per_query(ranked_relevance, ks)
    queries = len(next(iter(scores.values())))
    return {"queries": queries, **{name: (float(v.mean()) if queries else None) for name, v in scores.items()}}


def _names(ks) -> list[str]:
    return [f"{m}@{k}" for k in ks for m in ("recall", "precision")] + ["mrr", "map"]


def rank_relevance(scores: np.ndarray, relevant: np.ndarray, candidates: np.ndarray | None = None) -> np.ndarray:
    """Ranked relevance rows from a (queries, items) score matrix and a relevance matrix.

    Items outside `candidates` (a boolean matrix of the same shape) are ranked last and never
    relevant, which leaves every metric above as if they did not exist (while k <= candidates).
    """
    scores = np.atleast_2d(np.asarray(scores, dtype=np.float64))
    relevant = np.atleast_2d(np.asarray(relevant, dtype=bool))
    if candidates is not None:
        candidates = np.atleast_2d(candidates)
        scores = np.where(candidates, scores, -np.inf)
        relevant = relevant & candidates
    order = np.argsort(-scores, axis=1, kind="stable")
    return np.take_along_axis(relevant, order, axis=1)
