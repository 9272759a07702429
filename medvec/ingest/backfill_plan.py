"""Planning a backfill: which batches to re-run (named, all, or the failed ones) and how they group
into embedding runs. No Dagster here; `pipelines/backfill.py` runs the plan."""

from __future__ import annotations

#: A batch's state over its three assets (source_manifest, normalized_images, image_embeddings).
MATERIALIZED, FAILED, IN_PROGRESS, MISSING = "materialized", "failed", "in_progress", "missing"


def combine_status(statuses: list[str]) -> str:
    """One word for a batch from its assets' statuses: failed beats in progress beats missing."""
    for word in (FAILED, IN_PROGRESS, MISSING):
        if word in statuses:
            return word
    return MATERIALIZED


def select_batches(known: list[str], *, names: list[str] | None = None, every: bool = False,
                   status: dict[str, str] | None = None) -> list[str]:
    """The batches a backfill re-runs, in creation order. `names` must all exist; with `status`
    (the failed-only choice) it is the batches whose last run failed or that never finished."""
    if names:
        unknown = sorted(set(names) - set(known))
        if unknown:
            raise ValueError(f"no such batch: {', '.join(unknown)} (batches live under $MEDVEC_HOME/batches; "
                             "`medvec backfill --all --dry-run` lists them)")
        wanted = set(names)
        return [b for b in known if b in wanted]
    if every:
        return list(known)
    if status is not None:
        return [b for b in known if status.get(b, MISSING) in (FAILED, MISSING)]
    raise ValueError("say which batches: --batches NAME..., --all or --failed")


def group_runs(batches: list[str], order: list[str], per_run: int) -> list[list[str]]:
    """Groups of at most `per_run` batches that are neighbours in `order` (the partition order).

    A run covers a partition *range*, so a group never spans a batch that is not being backfilled:
    re-running batches 1, 2 and 5 gives runs [1, 2] and [5], never [1..5].
    """
    if per_run < 1:
        raise ValueError("batches per run must be at least 1")
    position = {b: i for i, b in enumerate(order)}
    missing = [b for b in batches if b not in position]
    if missing:
        raise ValueError(f"batch(es) {', '.join(missing)} are not partitions yet")
    groups: list[list[str]] = []
    for batch in sorted(set(batches), key=position.__getitem__):
        last = groups[-1][-1] if groups else None
        if last is not None and position[batch] == position[last] + 1 and len(groups[-1]) < per_run:
            groups[-1].append(batch)
        else:
            groups.append([batch])
    return groups
