"""Zero-shot AUC and probes: AUC against scikit-learn, the patient bootstrap against a plain loop,
patient-level (not image-level) resampling, paired differences, probes on a planted signal, and the
CLI, HTTP and MCP surfaces on the shared sample collection."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from medvec.evaluation.auc import ClusterBootstrap, clusters_of, interval, roc_auc
from medvec.evaluation.retrieval import EvalData
from medvec.evaluation.zero_shot import ZERO_SHOT_PROMPTS, auc_markdown, auc_table, paired_difference

sklearn_metrics = pytest.importorskip("sklearn.metrics")
MEDVEC = str(Path(sys.executable).with_name("medvec"))


# --- AUC -------------------------------------------------------------------------------------------

def test_auc_agrees_with_scikit_learn_with_and_without_ties():
    rng = np.random.default_rng(1)
    for trial in range(200):
        n = int(rng.integers(2, 80))
        labels = rng.random(n) < rng.uniform(0.1, 0.9)
        if labels.all() or not labels.any():
            continue
        # Every third trial rounds the scores hard, so many positives and negatives tie.
        scores = rng.normal(size=n) + labels * rng.uniform(0, 2)
        if trial % 3 == 0:
            scores = np.round(scores)
        assert roc_auc(labels, scores) == pytest.approx(sklearn_metrics.roc_auc_score(labels, scores), abs=1e-12)


def test_auc_of_one_class_is_undefined():
    assert np.isnan(roc_auc([True, True], [0.1, 0.2]))


# --- the patient bootstrap ---------------------------------------------------------------------------

def _reference_bootstrap(labels, scores, subjects, replicates, seed):
    """The textbook loop: draw patients with replacement, take all their images, score with scikit-learn."""
    keys = sorted(set(subjects))
    members = {k: [i for i, s in enumerate(subjects) if s == k] for k in keys}
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(replicates):
        drawn = rng.integers(0, len(keys), size=len(keys))
        idx = [i for c in drawn for i in members[keys[c]]]
        y, s = labels[idx], scores[idx]
        out.append(sklearn_metrics.roc_auc_score(y, s) if 0 < y.sum() < len(y) else np.nan)
    return np.array(out)


def _patients(n_patients=40, per_patient=3, signal=1.0, seed=0):
    rng = np.random.default_rng(seed)
    subjects = [f"p{p:03d}" for p in range(n_patients) for _ in range(per_patient)]
    sick = rng.random(n_patients) < 0.4
    labels = np.repeat(sick, per_patient)
    scores = np.round(rng.normal(size=len(labels)) + signal * labels, 1)  # rounded: ties too
    return labels, scores, subjects


def test_bootstrap_matches_a_plain_loop_with_the_same_seed():
    labels, scores, subjects = _patients()
    ours = ClusterBootstrap(subjects, replicates=200, seed=7).aucs(labels, scores)
    reference = _reference_bootstrap(labels, scores, subjects, 200, 7)
    np.testing.assert_allclose(ours, reference, atol=1e-12, equal_nan=True)
    # Same seed, same replicates; another seed, others.
    assert np.array_equal(ours, ClusterBootstrap(subjects, 200, seed=7).aucs(labels, scores), equal_nan=True)
    assert not np.allclose(ours, ClusterBootstrap(subjects, 200, seed=8).aucs(labels, scores))


def test_bootstrap_resamples_patients_not_images():
    """Copying every image of every patient ten times adds no evidence: the patient-level interval is
    exactly the one without copies, while an image-level bootstrap would shrink it."""
    labels, scores, subjects = _patients(per_patient=1)
    once = ClusterBootstrap(subjects, 300, seed=3).aucs(labels, scores)
    copies = ClusterBootstrap(np.repeat(subjects, 10).tolist(), 300, seed=3).aucs(np.repeat(labels, 10),
                                                                                 np.repeat(scores, 10))
    np.testing.assert_allclose(copies, once, atol=1e-12)
    as_images = ClusterBootstrap([f"img{i}" for i in range(len(labels) * 10)], 300, seed=3)
    by_image = as_images.aucs(np.repeat(labels, 10), np.repeat(scores, 10))
    width = lambda reps: np.subtract(*interval(reps)[::-1])  # noqa: E731
    assert width(by_image) < 0.5 * width(copies)


def test_interval_covers_the_true_auc_about_95_percent_of_the_time():
    # Scores: positives N(1, 1), negatives N(0, 1), so the true AUC is Phi(1 / sqrt 2).
    from math import erf

    truth = 0.5 * (1 + erf(1 / np.sqrt(2) / np.sqrt(2)))
    covered, trials = 0, 150
    for trial in range(trials):
        rng = np.random.default_rng(100 + trial)
        labels = rng.random(120) < 0.5
        scores = rng.normal(size=120) + labels
        low, high = interval(ClusterBootstrap([str(i) for i in range(120)], 300, seed=trial).aucs(labels, scores))
        covered += low <= truth <= high
    assert 0.87 <= covered / trials <= 0.99


def test_images_without_a_subject_key_are_their_own_patients():
    assert len(set(clusters_of([None, None, "a", "a"]).tolist())) == 3


# --- zero-shot tables and paired differences ---------------------------------------------------------

def _eval_data(labels, subjects) -> EvalData:
    n = len(labels)
    return EvalData(ids=[f"i{i}" for i in range(n)], vectors=np.zeros((n, 2), dtype=np.float32),
                    labels=[{"Pleural Effusion"} if l else {"No Finding"} for l in labels],
                    uncertain=[set() for _ in range(n)], subjects=list(subjects), studies=[None] * n,
                    thumbs=[""] * n, split="test")


def test_auc_table_and_a_model_compared_with_itself():
    labels, scores, subjects = _patients(signal=1.5)
    data = _eval_data(labels, subjects)
    table = auc_table(data, {"Pleural Effusion": scores}, replicates=200)
    entry = table["per_finding"]["Pleural Effusion"]
    assert entry["auc"] == pytest.approx(sklearn_metrics.roc_auc_score(labels, scores), abs=1e-4)
    assert entry["ci_low"] < entry["auc"] < entry["ci_high"] and entry["positives"] == labels.sum()
    assert table["patients"] == 40 and table["macro"]["findings"] == 1

    same = paired_difference((data, {"Pleural Effusion": scores}), (data, {"Pleural Effusion": scores}),
                             replicates=200)
    assert same["per_finding"]["Pleural Effusion"]["difference"] == 0
    assert same["macro"]["ci_low"] == 0 == same["macro"]["ci_high"]
    # A model with the signal against one without: the paired interval of the difference excludes zero.
    noise = np.random.default_rng(9).normal(size=len(labels))
    better = paired_difference((data, {"Pleural Effusion": scores}), (data, {"Pleural Effusion": noise}),
                               replicates=200)["per_finding"]["Pleural Effusion"]
    assert better["ci_low"] > 0
    report = {"models": [{"model": "m", **table}], "comparisons": []}
    assert "| Pleural Effusion | " in auc_markdown(report) and "[" in auc_markdown(report)


def test_every_finding_has_positive_and_negative_prompts():
    for finding, (positive, negative) in ZERO_SHOT_PROMPTS.items():
        assert positive and negative and not set(positive) & set(negative), finding
