"""Retrieval evaluation of one or more models' tables against their labels, in each table's vocabulary
(`medvec.datasets.vocabulary`: the CheXpert findings, or a collection's own labels such as SCIN's conditions).

- text → image: each finding's prompts are the queries; relevant = images carrying the finding.
- image → image: each labelled image queries the rest; relevant = shares at least one finding;
  images of the same subject or study are not candidates, so near-duplicates cannot inflate it.
- hard cases: which other findings a finding's queries retrieve, and its worst-ranked relevant images.

The report is one JSON object (`SCHEMA`), documented in the README ("Evaluation").
"""

from __future__ import annotations

import io
import time
from collections import Counter
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from medvec.home import EVAL_FILES, reports_table_for
from medvec.tables.images import vectors_of
from medvec.datasets.labels import label_agreement_of
from medvec.datasets.vocabulary import CHEST, Vocabulary, table_vocabulary
from medvec.evaluation.metrics import DEFAULT_KS, mean_metrics, per_query, rank_relevance

#: The chest prompts under the name the demo model's training recipe reads them by: that recipe
#: (medvec/models/demo_clip/captions.py) is hashed into the packaged weights, so renaming there means retraining.
FINDING_PROMPTS = CHEST.prompts

SCHEMA = "medvec.eval/1"
UNCERTAIN_POLICIES = ("exclude", "positive", "negative")

WORST_SHOWN = 5
CURVE_KS = tuple(range(1, 51))  # Recall@K curves in the report and the plot


@dataclass
class EvalData:
    """The evaluated rows of one table: vectors and what relevance is judged on."""

    ids: list[str]
    vectors: np.ndarray
    labels: list[set[str]]
    uncertain: list[set[str]]
    subjects: list[str | None]
    studies: list[str | None]
    thumbs: list[str]
    split: str | None  # the split evaluated; None = all rows
    label_sources: dict = None  # {"given": n, "reports": n, "none": n}
    report_agreement: dict | None = None  # report-read labels vs given labels, where both exist


def load_eval_data(table, split: str | None = "test", reports_table=None) -> EvalData:
    """Rows of `split` (all rows when None or "all", or when no row carries a split at all)."""
    split = None if split == "all" else split
    import json

    data = table.to_arrow()
    splits = data.column("split").to_pylist()
    keep = list(range(data.num_rows))
    if split is not None and any(s is not None for s in splits):
        keep = [i for i, s in enumerate(splits) if s == split]
    elif split is not None:
        split = None  # the table has no splits: evaluate everything, and say so in the report
    rows = data.take(pa.array(keep, type=pa.int64()))
    extras = [json.loads(e or "{}") for e in rows.column("extra").to_pylist()]
    ids = rows.column("image_id").to_pylist()
    labels = [set(l or []) for l in rows.column("labels").to_pylist()]
    sources = {"given": sum(1 for l in labels if l), "reports": 0}
    agreement = None
    if reports_table is not None:
        # Images without given labels take the findings read from their reports (report-only datasets).
        from medvec.reports.tables import report_labels_by_image

        read = report_labels_by_image(reports_table, ids, rows.column("source_uri").to_pylist())
        pairs = [(given, read[i]) for i, given in zip(ids, labels) if given and read.get(i)]
        agreement = label_agreement_of(pairs) if pairs else None
        for index, image_id in enumerate(ids):
            if not labels[index] and read.get(image_id):
                labels[index] = set(read[image_id])
                sources["reports"] += 1
    sources["none"] = sum(1 for l in labels if not l)
    return EvalData(
        ids=ids,
        vectors=vectors_of(rows),
        labels=labels, label_sources=sources, report_agreement=agreement,
        uncertain=[set(filter(None, (e.get("uncertain_labels") or "").split("|"))) for e in extras],
        subjects=rows.column("subject_key").to_pylist(), studies=rows.column("study_id").to_pylist(),
        thumbs=rows.column("thumb_uri").to_pylist(), split=split)


def judgements(data: EvalData, finding: str, policy: str) -> tuple[np.ndarray, np.ndarray]:
    """(relevant, candidate) masks for one finding under the uncertain-label policy."""
    has = np.array([finding in l for l in data.labels])
    unsure = np.array([finding in u for u in data.uncertain])
    if policy == "positive":
        return has | unsure, np.ones(len(has), dtype=bool)
    if policy == "negative":
        return has, np.ones(len(has), dtype=bool)
    return has & ~unsure, ~unsure


def text_to_image(data: EvalData, prompt_vectors: dict[str, np.ndarray], *, ks=DEFAULT_KS,
                  policy: str = "exclude", hard_k: int | None = None) -> dict:
    """Per finding (its prompts' mean) and macro-averaged over findings with relevant images; hard cases
    look at each prompt's top `hard_k` (default: the largest of `ks`)."""
    per_finding, confusion, worst = {}, {}, {}
    for finding, vectors in prompt_vectors.items():
        relevant, candidates = judgements(data, finding, policy)
        if not relevant.any():
            continue
        scores = vectors @ data.vectors.T  # (prompts, images)
        ranked = rank_relevance(scores, np.tile(relevant, (len(vectors), 1)), np.tile(candidates, (len(vectors), 1)))
        metrics = mean_metrics(ranked, ks)
        per_finding[finding] = {**metrics, "prompts": len(vectors), "relevant": int(relevant.sum()),
                                "candidates": int(candidates.sum())}
        confusion[finding], worst[finding] = _hard_cases(data, finding, scores, relevant, candidates,
                                                         hard_k or max(ks))
    macro = {}
    if per_finding:
        names = [n for n in next(iter(per_finding.values())) if "@" in n or n in ("mrr", "map")]
        macro = {n: float(np.mean([m[n] for m in per_finding.values()])) for n in names}
        macro["findings"] = len(per_finding)
    return {"per_finding": per_finding, "macro": macro,
            "hard_cases": {f: {"confused_with": confusion[f], "worst_ranked": worst[f]} for f in per_finding}}


def _hard_cases(data, finding, scores, relevant, candidates, k):
    """Other findings among each prompt's top k, and the relevant images ranked lowest (mean rank)."""
    masked = np.where(candidates, scores, -np.inf)
    order = np.argsort(-masked, axis=1, kind="stable")
    others = Counter(label for row in order[:, :k] for i in row if not relevant[i] for label in data.labels[i])
    ranks = np.empty_like(order)
    np.put_along_axis(ranks, order, np.arange(1, order.shape[1] + 1)[None, :].repeat(len(order), 0), axis=1)
    mean_rank = ranks.mean(axis=0)
    idx = [i for i in np.argsort(-mean_rank, kind="stable") if relevant[i]][:WORST_SHOWN]
    worst = [{"image_id": data.ids[i], "mean_rank": float(mean_rank[i]), "score": float(scores[:, i].mean()),
              "labels": sorted(data.labels[i]), "thumb_uri": data.thumbs[i]} for i in idx]
    return dict(others.most_common(5)), worst


def image_to_image(data: EvalData, *, ks=DEFAULT_KS, max_queries: int = 2000, chunk: int = 512,
                   policy: str = "exclude", seed: int = 0, vocabulary: Vocabulary = CHEST) -> dict:
    """Each labelled image against the others, minus its own subject's and study's images; relevant = shares
    a label of the vocabulary."""
    n = len(data.ids)
    labelled = [i for i in range(n) if data.labels[i]]
    if len(labelled) > max_queries:
        labelled = sorted(np.random.default_rng(seed).choice(labelled, max_queries, replace=False).tolist())
    vocab = list(vocabulary.labels)
    onehot = np.array([[f in l for f in vocab] for l in data.labels], dtype=bool)
    if policy == "positive":
        onehot |= np.array([[f in u for f in vocab] for u in data.uncertain], dtype=bool)
    subjects = np.array([s or f"\0{i}" for i, s in enumerate(data.subjects)], dtype=object)
    studies = np.array([s or f"\0{i}" for i, s in enumerate(data.studies)], dtype=object)
    collected: dict[str, list[np.ndarray]] = {}
    excluded = 0
    for start in range(0, len(labelled), chunk):
        q = np.array(labelled[start:start + chunk])
        scores = data.vectors[q] @ data.vectors.T
        same = (subjects[q][:, None] == subjects[None, :]) | (studies[q][:, None] == studies[None, :])
        same[np.arange(len(q)), q] = True  # never itself
        excluded += int(same.sum() - len(q))
        relevant = (onehot[q].astype(np.int32) @ onehot.T.astype(np.int32)) > 0
        for name, values in per_query(rank_relevance(scores, relevant, ~same), ks).items():
            collected.setdefault(name, []).append(values)
    metrics = {name: float(np.concatenate(v).mean()) if sum(map(len, v)) else None for name, v in collected.items()}
    queries = sum(map(len, next(iter(collected.values())))) if collected else 0
    result = {"queries": queries, **metrics, "excluded_same_subject_or_study": excluded,
              "sampled": len(labelled) < len([i for i in range(n) if data.labels[i]])}
    if not queries:
        result["note"] = ("no query had a relevant candidate from another subject and study: evaluate a larger "
                          "split (--split all) or more subjects")
    return result


def chance(data: EvalData, *, ks=DEFAULT_KS, policy: str = "exclude", repeats: int = 20, seed: int = 0,
           vocabulary: Vocabulary = CHEST) -> dict:
    """What a random ranking scores on the same text → image judgements (macro over findings)."""
    rng = np.random.default_rng(seed)
    values = []
    for finding in vocabulary.labels:
        relevant, candidates = judgements(data, finding, policy)
        if not relevant.any():
            continue
        scores = rng.random((repeats, len(relevant)))
        values.append(mean_metrics(rank_relevance(scores, np.tile(relevant, (repeats, 1)),
                                                  np.tile(candidates, (repeats, 1))), ks))
    if not values:
        return {}
    return {n: float(np.mean([v[n] for v in values])) for n in values[0] if n != "queries"}


def _at_ks(metrics: dict, ks) -> dict:
    """The entries at cut-offs `ks` (and those without one) of metrics computed at more cut-offs."""
    keep = {str(k) for k in ks}
    return {name: value for name, value in metrics.items() if "@" not in name or name.split("@", 1)[1] in keep}


def evaluate_table(table, *, model: str, embedder=None, split: str | None = "test", ks=DEFAULT_KS,
                   policy: str = "exclude", text_unavailable: str | None = None, reports_table=None,
                   vocabulary: Vocabulary | None = None) -> dict:
    """One model's section of the report; `embedder` encodes the prompts (None: text part skipped);
    `vocabulary` names the labels judged (None: the table's own, MEDVEC_VOCABULARY=auto)."""
    if policy not in UNCERTAIN_POLICIES:
        raise ValueError(f"uncertain policy must be one of {UNCERTAIN_POLICIES}, not {policy!r}")
    started = time.perf_counter()
    data = load_eval_data(table, split, reports_table)
    vocabulary = vocabulary or table_vocabulary(table)
    section = {"model": model, "table": table.name, "table_version": table.version, "split": data.split,
               "vocabulary": vocabulary.name,
               "images": len(data.ids), "labelled_images": sum(1 for l in data.labels if l),
               "label_sources": data.label_sources}
    if data.report_agreement is not None:
        section["report_label_agreement"] = data.report_agreement
    present = {f for l in data.labels for f in l}
    curves: dict[str, list[float]] = {}
    # Each measure runs once at the report's cut-offs and the curve's; the report keeps its own.
    every_k = [*ks, *(k for k in CURVE_KS if k not in ks)]
    if embedder is not None:
        prompts = {f: list(p) for f, p in vocabulary.prompts.items() if f in present}
        flat = [p for ps in prompts.values() for p in ps]
        vectors = embedder.embed_texts(flat) if flat else np.empty((0, data.vectors.shape[1]))
        by_finding, offset = {}, 0
        for finding, ps in prompts.items():
            by_finding[finding] = vectors[offset:offset + len(ps)]
            offset += len(ps)
        text = text_to_image(data, by_finding, ks=every_k, policy=policy, hard_k=max(ks))
        curve = text["macro"]
        curves["text"] = [curve[f"recall@{k}"] for k in CURVE_KS] if curve else []
        text["per_finding"] = {f: _at_ks(m, ks) for f, m in text["per_finding"].items()}
        text["macro"] = _at_ks(curve, ks)
        section["text_to_image"] = text
    else:
        section["text_to_image"] = None
        section["text_to_image_skipped"] = text_unavailable or "no text encoder available"
    image_curve = image_to_image(data, ks=every_k, policy=policy, vocabulary=vocabulary)
    random_curve = chance(data, ks=every_k, policy=policy, vocabulary=vocabulary)
    section["image_to_image"] = _at_ks(image_curve, ks)
    section["chance"] = _at_ks(random_curve, ks)
    curves["image"] = [image_curve[f"recall@{k}"] for k in CURVE_KS] if image_curve["queries"] else []
    curves["chance"] = [random_curve[f"recall@{k}"] for k in CURVE_KS] if random_curve else []
    section["recall_curve"] = curves
    section["seconds"] = round(time.perf_counter() - started, 2)
    return section


def report(sections: list[dict], *, split: str | None, ks=DEFAULT_KS, policy: str = "exclude",
           vocabularies=(CHEST,)) -> dict:
    """The whole report; `findings` lists the vocabularies' labels (usually one: a home's tables hold the
    same images)."""
    return {"schema": SCHEMA, "split": split, "ks": list(ks), "uncertain_policy": policy,
            "vocabulary": "+".join(dict.fromkeys(v.name for v in vocabularies)) or CHEST.name,
            "findings": list(dict.fromkeys(label for v in vocabularies for label in v.labels)), "models": sections}


# --- presentation ---------------------------------------------------------------------------------

def markdown_table(result: dict) -> str:
    """Models side by side: text → image macro metrics, image → image metrics, and chance."""
    ks = result["ks"]
    cols = [f"R@{k}" for k in ks] + ["MRR", "mAP"]
    names = [f"recall@{k}" for k in ks] + ["mrr", "map"]
    lines = ["| model | task | " + " | ".join(cols) + " | queries |", "|---|---|" + "---|" * (len(cols) + 1)]
    for section in result["models"]:
        if "error" in section:
            lines.append(f"| {section['model']} | {section['error']} |" + " - |" * (len(cols) + 1))
            continue
        rows = []
        t2i = section.get("text_to_image")
        if t2i and t2i["macro"]:
            rows.append(("text → image (macro)", t2i["macro"], t2i["macro"].get("findings", 0)))
        i2i = section["image_to_image"]
        rows.append(("image → image", i2i, i2i["queries"]))
        if section.get("chance"):
            rows.append(("text → image, random ranking", section["chance"], "-"))
        for task, values, queries in rows:
            cells = " | ".join("-" if values.get(n) is None else f"{values[n]:.3f}" for n in names)
            lines.append(f"| {section['model']} | {task} | {cells} | {queries} |")
    return "\n".join(lines)


def per_finding_table(section: dict) -> str:
    t2i = section.get("text_to_image")
    if not t2i:
        return ""
    lines = ["| finding | relevant | R@1 | R@5 | R@10 | MRR | mAP | retrieves instead |", "|---|---|---|---|---|---|---|---|"]
    for finding, m in t2i["per_finding"].items():
        confused = ", ".join(f"{k} ({v})" for k, v in t2i["hard_cases"][finding]["confused_with"].items()) or "-"
        lines.append(f"| {finding} | {m['relevant']} | {m.get('recall@1', 0):.3f} | {m.get('recall@5', 0):.3f} | "
                     f"{m.get('recall@10', 0):.3f} | {m['mrr']:.3f} | {m['map']:.3f} | {confused} |")
    return "\n".join(lines)


def recall_curve_png(result: dict) -> bytes:
    """Recall@K for K = 1..50 per model (text → image macro and image → image), as PNG bytes."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=100)
    for section in result["models"]:
        for task, (kind, style) in {"text → image": ("text", "-"), "image → image": ("image", "--")}.items():
            curve = section.get("recall_curve", {}).get(kind)
            if curve:
                ax.plot(range(1, len(curve) + 1), curve, style, label=f"{section['model']} {task}")
        if section.get("recall_curve", {}).get("chance"):
            ax.plot(range(1, len(section["recall_curve"]["chance"]) + 1), section["recall_curve"]["chance"], ":",
                    color="grey", label=f"{section['model']} random ranking")
    ax.set_xlabel("K")
    ax.set_ylabel("Recall@K")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title(f"Recall@K ({result['split']} split)" if result.get("split") else "Recall@K (all images)")
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()


# --- several models, saved where the UI, the CLI and the web page find it -------------------------

@dataclass
class EvalTarget:
    """One model to evaluate: its table and how to open its text encoder (None: image → image only)."""

    model: str
    table: str
    open_embedder: object = None  # Callable[[], Embedder]
    vocabulary: Vocabulary | None = None  # the labels judged; None: the table's own (MEDVEC_VOCABULARY=auto)

    def vocabulary_of(self, table) -> Vocabulary:
        return self.vocabulary or table_vocabulary(table)


def evaluate_models(db, targets: list[EvalTarget], *, split: str | None = "test", ks=DEFAULT_KS,
                    policy: str = "exclude", progress=lambda message: None) -> dict:
    from medvec.tables import database

    sections, vocabularies = [], []
    for target in targets:
        table = database.open_table_if_exists(db, target.table)
        if table is None:
            sections.append({"model": target.model, "table": target.table, "error": "no such table: embed first"})
            continue
        vocabularies.append(target.vocabulary_of(table))
        embedder, reason = None, None
        if target.open_embedder is not None:
            try:
                embedder = target.open_embedder()
            except Exception as exc:  # noqa: BLE001 - a missing model skips its text part, not the report
                reason = f"text encoder could not be loaded: {str(exc).splitlines()[0][:200]}"
        try:
            progress(f"evaluating {target.model} ({target.table})")
            reports = database.open_table_if_exists(db, reports_table_for(target.table))
            sections.append(evaluate_table(table, model=target.model, embedder=embedder, split=split, ks=ks,
                                           policy=policy, text_unavailable=reason, reports_table=reports,
                                           vocabulary=vocabularies[-1]))
        finally:
            if embedder is not None:
                embedder.close()
    evaluated = [s.get("split") for s in sections if "error" not in s]
    return report(sections, split=evaluated[0] if evaluated else split, ks=ks, policy=policy,
                  vocabularies=vocabularies or [CHEST])




def save_report(home, result: dict, plot_png: bytes | None = None) -> dict:
    """`$MEDVEC_HOME/eval/report.json` and `recall_at_k.png` (the latest run; the web page reads them).
    `plot_png` is the run's `recall_curve_png`, when the caller has drawn it already."""
    import json

    from medvec.storage import as_path, write_atomic

    paths = {key: as_path(home) / rel for key, rel in EVAL_FILES.items()}
    for key, data in (("json", json.dumps(result, indent=2).encode()),
                      ("png", plot_png if plot_png is not None else recall_curve_png(result))):
        write_atomic(paths[key], data)
    return {k: str(v) for k, v in paths.items()}
