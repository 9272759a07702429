"""Zero-shot classification by prompt ensembles: ROC AUC per finding with patient-level bootstrap
intervals, and paired differences between models.

Each label of the table's vocabulary (`medvec.datasets.vocabulary`) has positive prompts (its phrasings)
and negative ones ("no pleural effusion", "a clinical photograph with no eczema"). An image's score is
cos(image, mean positive) - cos(image, mean negative), the positive-vs-negative prompt contrast of
CheXzero (Tiu et al., Nat. Biomed. Eng. 2022) and MedSigLIP's zero-shot evaluation (MedGemma technical
report, arXiv 2507.05201). Only labelled images are scored: an image
without labels is unknown, not negative. The uncertain-label policy is the retrieval evaluation's.
"""

from __future__ import annotations

import io
import time

import numpy as np

from medvec.evaluation.auc import DEFAULT_REPLICATES, ClusterBootstrap, mean_over_findings, roc_auc, summary
from medvec.evaluation.retrieval import EvalData, judgements, load_eval_data

SCHEMA_NOTE = ("score = cos(image, mean positive prompt) - cos(image, mean negative prompt); AUC with a 95% "
               "percentile interval from a bootstrap over patients (subject_key)")


def _unit(v: np.ndarray) -> np.ndarray:
    return v / max(float(np.linalg.norm(v)), 1e-12)


def finding_scores(vectors: np.ndarray, embed_texts, prompts: dict) -> dict[str, np.ndarray]:
    """Each finding's contrast score for every image; `prompts` maps a finding to its (positive, negative)
    prompts, `embed_texts` a list of texts to vectors."""
    findings = list(prompts)
    texts = [t for f in findings for side in prompts[f] for t in side]
    encoded = np.asarray(embed_texts(texts), dtype=np.float64) if texts else np.empty((0, vectors.shape[1]))
    scores, offset = {}, 0
    for finding in findings:
        positives, negatives = prompts[finding]
        pos = _unit(encoded[offset:offset + len(positives)].mean(axis=0))
        offset += len(positives)
        neg = _unit(encoded[offset:offset + len(negatives)].mean(axis=0))
        offset += len(negatives)
        scores[finding] = vectors @ pos - vectors @ neg
    return scores


def labelled_subset(data: EvalData) -> EvalData:
    """The images that carry labels (an unlabelled image is unknown, not negative)."""
    keep = [i for i, l in enumerate(data.labels) if l or data.uncertain[i]]
    pick = lambda values: [values[i] for i in keep]  # noqa: E731
    return EvalData(ids=pick(data.ids), vectors=data.vectors[keep], labels=pick(data.labels),
                    uncertain=pick(data.uncertain), subjects=pick(data.subjects), studies=pick(data.studies),
                    thumbs=pick(data.thumbs), split=data.split)


def auc_table(data: EvalData, scores: dict[str, np.ndarray], *, policy: str = "exclude",
              replicates: int = DEFAULT_REPLICATES, seed: int = 0) -> dict:
    """Per finding (both classes present) AUC with its interval, and the macro mean with its own."""
    boot = ClusterBootstrap(data.subjects, replicates, seed)
    per_finding, macro_points, macro_reps = {}, [], []
    for finding, score in scores.items():
        positive, candidates = judgements(data, finding, policy)
        n_pos, n_neg = int((positive & candidates).sum()), int((~positive & candidates).sum())
        if not n_pos or not n_neg:
            continue
        point = roc_auc(positive[candidates], score[candidates])
        reps = boot.aucs(positive, score, candidates)
        per_finding[finding] = {**summary(point, reps), "positives": n_pos, "negatives": n_neg}
        macro_points.append(point)
        macro_reps.append(reps)
    macro = {}
    if per_finding:
        macro = {**summary(float(np.mean(macro_points)), mean_over_findings(macro_reps)),
                 "findings": len(per_finding)}
    return {"per_finding": per_finding, "macro": macro, "images": len(data.ids),
            "patients": boot.clusters, "replicates": replicates, "seed": seed}


def paired_difference(a: tuple[EvalData, dict], b: tuple[EvalData, dict], *, policy: str = "exclude",
                      replicates: int = DEFAULT_REPLICATES, seed: int = 0) -> dict:
    """AUC(a) - AUC(b) per finding and macro, on the images both hold, each replicate drawing the same
    patients for both models; labels are a's (the same images carry the same labels)."""
    data_a, scores_a = a
    data_b, scores_b = b
    row_b = {image_id: i for i, image_id in enumerate(data_b.ids)}
    common = [i for i, image_id in enumerate(data_a.ids) if image_id in row_b]
    take_b = np.array([row_b[data_a.ids[i]] for i in common], dtype=np.int64)
    subjects = [data_a.subjects[i] for i in common]
    shared = EvalData(ids=[data_a.ids[i] for i in common], vectors=data_a.vectors[common],
                      labels=[data_a.labels[i] for i in common], uncertain=[data_a.uncertain[i] for i in common],
                      subjects=subjects, studies=[data_a.studies[i] for i in common], thumbs=[""] * len(common),
                      split=data_a.split)
    boot = ClusterBootstrap(subjects, replicates, seed)
    per_finding, points, reps_all = {}, [], []
    for finding in scores_a:
        if finding not in scores_b:
            continue
        positive, candidates = judgements(shared, finding, policy)
        if not (positive & candidates).any() or not (~positive & candidates).any():
            continue
        sa, sb = scores_a[finding][common], scores_b[finding][take_b]
        point = roc_auc(positive[candidates], sa[candidates]) - roc_auc(positive[candidates], sb[candidates])
        reps = boot.aucs(positive, sa, candidates) - boot.aucs(positive, sb, candidates)
        per_finding[finding] = _difference(point, reps)
        points.append(point)
        reps_all.append(reps)
    macro = {}
    if per_finding:
        macro = {**_difference(float(np.mean(points)), mean_over_findings(reps_all)), "findings": len(per_finding)}
    return {"images": len(common), "patients": boot.clusters, "per_finding": per_finding, "macro": macro}


def _difference(point: float, reps: np.ndarray) -> dict:
    out = summary(point, reps)
    return {"difference": out.pop("auc"), **out}


def evaluate_zero_shot(db, targets, *, split: str | None = "test", policy: str = "exclude",
                       replicates: int = DEFAULT_REPLICATES, seed: int = 0, progress=lambda message: None) -> dict:
    """The report's `zero_shot` part: one section per model with a text encoder, and each later model
    compared with the first on the images both hold."""
    from medvec.tables import database

    sections, scored, prompts = [], [], {}
    for target in targets:
        table = database.open_table_if_exists(db, target.table)
        if table is None or target.open_embedder is None:
            sections.append({"model": target.model, "table": target.table,
                             "error": "no such table: embed first" if table is None else "no text encoder"})
            continue
        started = time.perf_counter()
        try:
            embedder = target.open_embedder()
        except Exception as exc:  # noqa: BLE001 - a missing model skips its section, not the report
            sections.append({"model": target.model, "table": target.table,
                             "error": f"text encoder could not be loaded: {str(exc).splitlines()[0][:200]}"})
            continue
        try:
            progress(f"zero-shot {target.model} ({target.table})")
            data = labelled_subset(load_eval_data(table, split))
            present = {f for l in data.labels for f in l} | {f for u in data.uncertain for f in u}
            scored_prompts = {f: p for f, p in target.vocabulary_of(table).zero_shot_prompts().items() if f in present}
            scores = finding_scores(data.vectors, embedder.embed_texts, scored_prompts)
            prompts.update(scored_prompts)
        finally:
            embedder.close()
        section = auc_table(data, scores, policy=policy, replicates=replicates, seed=seed)
        sections.append({"model": target.model, "table": target.table, "split": data.split, **section,
                         "seconds": round(time.perf_counter() - started, 2)})
        scored.append((target.model, data, scores))
    comparisons = [{"a": name, "b": scored[0][0], **paired_difference((data, scores), scored[0][1:], policy=policy,
                                                                      replicates=replicates, seed=seed)}
                   for name, data, scores in scored[1:]]
    return {"method": SCHEMA_NOTE, "prompts": {f: {"positive": list(p), "negative": list(n)}
                                               for f, (p, n) in prompts.items()},
            "replicates": replicates, "seed": seed, "models": sections, "comparisons": comparisons}


# --- presentation ---------------------------------------------------------------------------------

def auc_cell(entry: dict | None, key: str = "auc") -> str:
    if not entry or entry.get(key) is None:
        return "-"
    if entry.get("ci_low") is None:
        return f"{entry[key]:.3f}"
    return f"{entry[key]:.3f} [{entry['ci_low']:.3f}, {entry['ci_high']:.3f}]"


def scored_findings(models: list[dict]) -> list[str]:
    """The findings any model scored, in vocabulary order (the order each section lists them)."""
    return list(dict.fromkeys(f for section in models for f in section["per_finding"]))


def auc_markdown(zero_shot: dict) -> str:
    """Findings down, models across: AUC [95% CI]; then each paired comparison's difference."""
    models = [s for s in zero_shot["models"] if "error" not in s]
    if not models:
        return "no model could be scored zero-shot: " + "; ".join(
            f"{s['model']}: {s['error']}" for s in zero_shot["models"])
    findings = scored_findings(models)
    lines = ["| finding | " + " | ".join(f"{s['model']} AUC [95% CI]" for s in models) + " |",
             "|---|" + "---|" * len(models)]
    for finding in findings:
        lines.append(f"| {finding} | " + " | ".join(auc_cell(s["per_finding"].get(finding)) for s in models) + " |")
    lines.append("| **macro** | " + " | ".join(auc_cell(s["macro"]) for s in models) + " |")
    for c in zero_shot.get("comparisons", []):
        lines += ["", f"paired difference {c['a']} - {c['b']} ({c['images']} images, {c['patients']} patients):",
                  "| finding | AUC difference [95% CI] |", "|---|---|"]
        lines += [f"| {f} | {auc_cell(d, 'difference')} |" for f, d in c["per_finding"].items()]
        lines.append(f"| **macro** | {auc_cell(c['macro'], 'difference')} |")
    return "\n".join(lines)


def auc_plot_png(zero_shot: dict, title: str = "Zero-shot ROC AUC per finding (95% CI, patient bootstrap)") -> bytes:
    """Per finding and model: AUC as a dot with its interval as a bar; 0.5 (chance) as a line."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    models = [s for s in zero_shot["models"] if "error" not in s]
    findings = scored_findings(models) + ["macro"]
    fig, ax = plt.subplots(figsize=(6.4, 0.3 * len(findings) + 1.6), dpi=100)
    for m, section in enumerate(models):
        offset = (m - (len(models) - 1) / 2) * 0.25
        for y, finding in enumerate(findings):
            entry = section["macro"] if finding == "macro" else section["per_finding"].get(finding)
            if not entry or entry.get("auc") is None:
                continue
            low, high = entry.get("ci_low"), entry.get("ci_high")
            if low is not None:
                ax.plot([low, high], [y + offset] * 2, color=f"C{m}", lw=1.5)
            ax.plot(entry["auc"], y + offset, "o", color=f"C{m}", ms=4, label=section["model"] if y == 0 else None)
    ax.axvline(0.5, color="grey", ls=":", lw=1)
    ax.set_yticks(range(len(findings)), findings, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("ROC AUC (0.5 = chance)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3, axis="x")
    if ax.get_legend_handles_labels()[0]:  # none when no model could score a finding
        ax.legend(fontsize=7, loc="lower left")
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()


def save_zero_shot_plot(home, zero_shot: dict, png: bytes | None = None) -> str:
    """`$MEDVEC_HOME/eval/zero_shot_auc.png`, beside the report (the web page reads it there)."""
    from medvec.home import ZERO_SHOT_PLOT
    from medvec.storage import as_path, write_atomic

    path = as_path(home) / ZERO_SHOT_PLOT
    write_atomic(path, png if png is not None else auc_plot_png(zero_shot))
    return str(path)
