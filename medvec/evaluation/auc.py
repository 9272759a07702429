"""ROC AUC (rank-based, ties count one half) and its 95% interval from a bootstrap over patients.

AUC is the Mann-Whitney statistic: the chance that a random positive outscores a random negative,
ties counted as one half (what scikit-learn's `roc_auc_score` computes; the tests check it).

The bootstrap resamples patients (`subject_key` clusters), not images: a patient's images are
correlated, so resampling images would pretend there is more evidence than there is and give
intervals that are too narrow. A replicate draws as many clusters as there are, with replacement;
an image counts as often as its cluster was drawn, which makes the replicate's AUC a weighted AUC.
Clusters are the sorted distinct subject keys; an image without a subject key is its own cluster.
The draws come from one seeded `numpy.random.default_rng(seed).integers(0, clusters, (n, clusters))`,
so the same seed and clusters give the same replicates for every finding and every model, which is
what makes the paired differences paired.
"""

from __future__ import annotations

import warnings

import numpy as np

DEFAULT_REPLICATES = 1000
LEVEL = 0.95
_CHUNK = 100  # replicates per weight matrix: bounds memory at 100 × images floats


def weighted_auc(labels: np.ndarray, scores: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """AUC of `scores` for boolean `labels` under each row of `weights` (replicates × images);
    NaN for a row that leaves no positive or no negative weight."""
    labels = np.asarray(labels, dtype=bool)
    weights = np.atleast_2d(np.asarray(weights, dtype=np.float64))
    order = np.argsort(scores, kind="stable")
    sorted_scores = np.asarray(scores, dtype=np.float64)[order]
    starts = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])  # tie groups
    ordered = weights[:, order]
    positive = np.add.reduceat(ordered * labels[order], starts, axis=1)
    negative = np.add.reduceat(ordered * ~labels[order], starts, axis=1)
    below = np.cumsum(negative, axis=1) - negative  # negative weight strictly below each tie group
    wins = (positive * (below + 0.5 * negative)).sum(axis=1)
    total = positive.sum(axis=1) * negative.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, wins / np.where(total > 0, total, 1), np.nan)


def roc_auc(labels, scores) -> float:
    """Area under the ROC curve; NaN when only one class is present."""
    labels = np.asarray(labels, dtype=bool)
    return float(weighted_auc(labels, np.asarray(scores), np.ones((1, len(labels))))[0])


def clusters_of(subjects: list[str | None]) -> np.ndarray:
    """Each image's cluster number: its subject key's place among the sorted distinct keys."""
    keys = [s if s else f"\0{i}" for i, s in enumerate(subjects)]  # no key: a cluster of its own
    _, inverse = np.unique(np.array(keys, dtype=object).astype(str), return_inverse=True)
    return inverse


class ClusterBootstrap:
    """Seeded patient-level replicates over a fixed set of images, reused for every finding and model."""

    def __init__(self, subjects: list[str | None], replicates: int = DEFAULT_REPLICATES, seed: int = 0):
        self.cluster = clusters_of(subjects)
        self.clusters = int(self.cluster.max()) + 1 if len(self.cluster) else 0
        self.replicates, self.seed = replicates, seed
        rng = np.random.default_rng(seed)
        self.draws = rng.integers(0, max(self.clusters, 1), size=(replicates, self.clusters))

    def weight_chunks(self):
        """(replicates × images) weights, a chunk at a time: how often each image's patient was drawn."""
        for start in range(0, self.replicates, _CHUNK):
            draws = self.draws[start:start + _CHUNK]
            flat = (draws + np.arange(len(draws))[:, None] * self.clusters).ravel()  # one bincount per chunk
            counts = np.bincount(flat, minlength=len(draws) * self.clusters).reshape(len(draws), self.clusters)
            yield counts[:, self.cluster].astype(np.float64)

    def aucs(self, labels: np.ndarray, scores: np.ndarray, keep: np.ndarray | None = None) -> np.ndarray:
        """Each replicate's AUC over the images in `keep` (default all)."""
        keep = np.ones(len(labels), dtype=bool) if keep is None else np.asarray(keep, dtype=bool)
        labels, scores = np.asarray(labels, dtype=bool)[keep], np.asarray(scores)[keep]
        return np.concatenate([weighted_auc(labels, scores, w[:, keep]) for w in self.weight_chunks()])


def mean_over_findings(replicates: list[np.ndarray]) -> np.ndarray:
    """Each replicate's macro AUC: the mean over the findings it could score (NaN when none)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a replicate that scored no finding stays NaN
        return np.nanmean(np.vstack(replicates), axis=0)


def interval(values: np.ndarray, level: float = LEVEL) -> tuple[float | None, float | None]:
    """Percentile interval of the finite replicate values (None when there are none)."""
    finite = values[np.isfinite(values)]
    if not len(finite):
        return None, None
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(finite, [tail, 100 - tail])
    return float(low), float(high)


def summary(point: float, replicates: np.ndarray) -> dict:
    """A point estimate with its interval and how many replicates could be scored."""
    low, high = interval(replicates)
    return {"auc": None if np.isnan(point) else round(float(point), 4),
            "ci_low": None if low is None else round(low, 4), "ci_high": None if high is None else round(high, 4),
            "replicates_scored": int(np.isfinite(replicates).sum())}
