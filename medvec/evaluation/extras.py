"""The evaluation's optional parts, added to the retrieval report: zero-shot AUC and finding probes.
Shared by `medvec eval --zero-shot --probes` and the Dagster evaluation assets."""

from __future__ import annotations

from medvec.evaluation.auc import DEFAULT_REPLICATES


def add_zero_shot(result: dict, db, targets, home, *, replicates: int = DEFAULT_REPLICATES, seed: int = 0,
                  progress=lambda message: None) -> bytes:
    """`result["zero_shot"]` for the report's split and policy; saves and returns the AUC plot."""
    from medvec.evaluation.zero_shot import auc_plot_png, evaluate_zero_shot, save_zero_shot_plot

    result["zero_shot"] = evaluate_zero_shot(db, targets, split=result["split"] or "all",
                                             policy=result["uncertain_policy"], replicates=replicates, seed=seed,
                                             progress=progress)
    png = auc_plot_png(result["zero_shot"])
    save_zero_shot_plot(home, result["zero_shot"], png)
    return png


def fit_and_save_probes(db, targets, home, *, policy: str = "exclude", replicates: int = DEFAULT_REPLICATES,
                        seed: int = 0, progress=lambda message: None) -> list[dict]:
    """Per model: its probes fitted on train, scored on test and saved in the home (weights left out of
    the answer), or why not."""
    from medvec.evaluation.probes import fit_probes, save_probes, without_weights
    from medvec.tables import database

    sections = []
    for target in targets:
        table = database.open_table_if_exists(db, target.table)
        if table is None:
            sections.append({"model": target.model, "table": target.table, "error": "no such table: embed first"})
            continue
        progress(f"fitting probes for {target.model} ({target.table})")
        try:
            fitted = fit_probes(table, policy=policy, replicates=replicates, seed=seed,
                                vocabulary=target.vocabulary_of(table))
        except ValueError as exc:
            sections.append({"model": target.model, "table": target.table, "error": str(exc)})
            continue
        sections.append({"model": target.model, **without_weights(fitted), "saved": save_probes(home, fitted)})
    return sections
