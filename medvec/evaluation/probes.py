"""Linear probes: one logistic regression per finding on a model's stored image embeddings.

Fitted on the train split (scikit-learn's `LogisticRegression`, balanced class weights, on
standardised vectors), scored on the test split with the zero-shot evaluation's AUC and patient-level
bootstrap. The standardisation is folded into the weights, so a probe is just `w · x + b` on the
stored (unit) vectors; probes are saved as JSON in the Medvec home (`medvec.home.probes_file`), where
search reads them to re-rank a finding query's hits.
"""

from __future__ import annotations

import json
import time

import numpy as np

from medvec.evaluation.auc import DEFAULT_REPLICATES, ClusterBootstrap, mean_over_findings, roc_auc, summary
from medvec.datasets.vocabulary import CHEST, Vocabulary, table_vocabulary
from medvec.evaluation.retrieval import judgements, load_eval_data
from medvec.evaluation.zero_shot import labelled_subset
from medvec.home import probes_file
from medvec.storage import HomePath

SCHEMA = "medvec.probes/1"
MIN_PER_CLASS = 2  # a probe needs at least this many positives and negatives to fit


def _fit_one(x: np.ndarray, y: np.ndarray, seed: int) -> tuple[np.ndarray, float]:
    """(w, b) of a balanced logistic regression on standardised x, expressed on the raw x."""
    from sklearn.linear_model import LogisticRegression

    mean, std = x.mean(axis=0), x.std(axis=0) + 1e-6
    model = LogisticRegression(class_weight="balanced", max_iter=2000, random_state=seed)
    model.fit((x - mean) / std, y)
    w = model.coef_[0] / std
    return w, float(model.intercept_[0] - (w * mean).sum())


def fit_probes(table, *, policy: str = "exclude", train_split: str = "train", test_split: str = "test",
               replicates: int = DEFAULT_REPLICATES, seed: int = 0, vocabulary: Vocabulary | None = None) -> dict:
    """Probes for every finding of `vocabulary` (None: the table's own) with enough train examples, and
    their test-split AUC with intervals. Each probe keeps its finding's prompts (search re-ranks a query
    that names one). Refuses (ValueError) a table whose rows carry no train/test splits: a probe scored on its own
    training images would report nothing."""
    started = time.perf_counter()
    train = labelled_subset(load_eval_data(table, train_split))
    test = labelled_subset(load_eval_data(table, test_split))
    if train.split is None or test.split is None:
        raise ValueError(f"{table.name}: no row carries a split, so there is no {train_split} split to fit on "
                         f"and no separate {test_split} split to score on")
    boot = ClusterBootstrap(test.subjects, replicates, seed)
    vocabulary = vocabulary or table_vocabulary(table)
    probes, per_finding, skipped, points, reps_all = {}, {}, {}, [], []
    for finding in vocabulary.labels:
        y_train, keep_train = judgements(train, finding, policy)
        y_fit = y_train[keep_train]
        if min(int(y_fit.sum()), int((~y_fit).sum())) < MIN_PER_CLASS:
            skipped[finding] = f"fewer than {MIN_PER_CLASS} positives or negatives in {train_split}"
            continue
        w, b = _fit_one(train.vectors[keep_train].astype(np.float64), y_fit, seed)
        probes[finding] = {"w": [round(float(v), 7) for v in w], "b": b, "train_positives": int(y_fit.sum()),
                           "train_negatives": int((~y_fit).sum()), "prompts": list(vocabulary.prompts[finding])}
        y_test, keep_test = judgements(test, finding, policy)
        if not (y_test & keep_test).any() or not (~y_test & keep_test).any():
            skipped[finding] = f"fitted, but {test_split} lacks positives or negatives to score it"
            continue
        score = test.vectors.astype(np.float64) @ w + b
        point = roc_auc(y_test[keep_test], score[keep_test])
        reps = boot.aucs(y_test, score, keep_test)
        per_finding[finding] = {**summary(point, reps), "positives": int((y_test & keep_test).sum()),
                                "negatives": int((~y_test & keep_test).sum()), **{k: probes[finding][k] for k in
                                                                                   ("train_positives", "train_negatives")}}
        points.append(point)
        reps_all.append(reps)
    macro = {}
    if per_finding:
        macro = {**summary(float(np.mean(points)), mean_over_findings(reps_all)), "findings": len(per_finding)}
    return {"schema": SCHEMA, "table": table.name, "table_version": table.version, "policy": policy,
            "vocabulary": vocabulary.name,
            "train_split": train_split, "test_split": test_split, "train_images": len(train.ids),
            "test_images": len(test.ids), "test_patients": boot.clusters, "replicates": replicates, "seed": seed,
            "per_finding": per_finding, "macro": macro, "skipped": skipped,
            "seconds": round(time.perf_counter() - started, 2), "probes": probes}


def without_weights(result: dict) -> dict:
    """The result as reports show it: everything but the weight vectors."""
    return {k: v for k, v in result.items() if k != "probes"} | {"probed_findings": sorted(result["probes"])}


def save_probes(home: HomePath, result: dict) -> str:
    from medvec.storage import write_atomic

    path = probes_file(home, result["table"])
    write_atomic(path, json.dumps(result).encode())
    return str(path)


def load_probes(home: HomePath | None, table_name: str) -> dict | None:
    """The saved probes of a table, or None when none were fitted."""
    if home is None:
        return None
    path = probes_file(home, table_name)
    if not path.is_file():
        return None
    return json.loads(path.read_bytes())


def probe_prompts(probes: dict | None) -> dict[str, tuple[str, ...]]:
    """The findings a query can name for re-ranking, each with its prompts: those of the saved probes, and
    for chest probes (or none yet) every chest finding, so an unfitted one is named as missing."""
    known = dict(CHEST.prompts) if probes is None or probes.get("vocabulary", CHEST.name) == CHEST.name else {}
    for finding, probe in (probes or {}).get("probes", {}).items():
        known[finding] = tuple(probe.get("prompts") or CHEST.prompts.get(finding, ()))
    return known


def probe_logits(probe: dict, vectors: np.ndarray) -> np.ndarray:
    return np.asarray(vectors, dtype=np.float64) @ np.asarray(probe["w"]) + probe["b"]


def probes_markdown(result: dict) -> str:
    from medvec.evaluation.zero_shot import auc_cell

    lines = [f"| finding | test AUC [95% CI] | test +/- | train +/- |", "|---|---|---|---|"]
    for finding, m in result["per_finding"].items():
        lines.append(f"| {finding} | {auc_cell(m)} | {m['positives']}/{m['negatives']} | "
                     f"{m['train_positives']}/{m['train_negatives']} |")
    lines.append(f"| **macro** | {auc_cell(result['macro'])} | | |")
    return "\n".join(lines)
