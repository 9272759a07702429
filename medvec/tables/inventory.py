"""What a Medvec home holds (`medvec stats`, `medvec collections`) and how to empty its tables (`medvec reset`)."""

from __future__ import annotations

from collections import Counter

import pyarrow.compute as pc

from medvec.home import collection_names, index_dir, is_image_table, is_medvec_table, model_slug_of
from medvec.settings import Settings
from medvec.tables import database
from medvec.storage import HomePath, remove_tree


def medvec_tables(db) -> list[str]:
    return [n for n in database.table_names(db) if is_medvec_table(n)]


def collection_stats(lancedb_uri: str, home: HomePath | None = None) -> dict:
    """Images by view and modality, subjects, studies, errors, and per model its table and rows.

    Counts come from the model tables (what search sees); the largest table is described when
    several models embedded different subsets.
    """
    db = database.connect(lancedb_uri)
    models = []
    described = None
    for name in medvec_tables(db):
        if not is_image_table(name):
            continue
        table = db.open_table(name)
        rows = table.count_rows()
        head = table.search().select(["model_id", "model_revision"]).limit(1).to_arrow().to_pylist()
        models.append({"table": name, "model": model_slug_of(name), "rows": rows,
                       "model_id": head[0]["model_id"] if head else None,
                       "model_revision": head[0]["model_revision"] if head else None,
                       "dim": table.schema.field("vector").type.list_size, "version": table.version,
                       "indexes": sorted(i.name for i in table.list_indices())})
        if described is None or rows > described[1]:
            described = (table, rows)
    stats = {"lancedb_uri": lancedb_uri, "images": 0, "subjects": 0, "studies": 0, "by_view": {},
             "by_modality": {}, "by_label": {}, "by_split": {}, "errors": 0, "errors_by_stage": {}, "models": models}
    if described is not None:
        data = described[0].search().select(["view_position", "modality", "subject_key", "study_id", "labels", "split"]) \
            .limit(None).to_arrow()
        stats["images"] = data.num_rows
        stats["subjects"] = pc.count_distinct(data.column("subject_key")).as_py()
        stats["studies"] = pc.count_distinct(data.column("study_id")).as_py()
        stats["by_view"] = _counts(data.column("view_position").to_pylist())
        stats["by_modality"] = _counts(data.column("modality").to_pylist())
        stats["by_split"] = _counts(data.column("split").to_pylist())
        stats["by_label"] = _counts([label for labels in data.column("labels").to_pylist() for label in (labels or [])])
    errors = database.list_errors(db)
    stats["errors"] = len(errors)
    stats["errors_by_stage"] = _counts([e["stage"] for e in errors])
    return stats


def image_rows(lancedb_uri: str) -> dict[str, int]:
    """Rows per image table (one per model) in a table database; empty when it holds none."""
    db = database.connect(lancedb_uri)
    return {name: db.open_table(name).count_rows() for name in medvec_tables(db) if is_image_table(name)}


def home_collections(settings: Settings) -> list[dict]:
    """The collections of the settings' home: name (None for the home itself), images (its largest image
    table's rows, what `medvec stats` counts), rows per image table, and `default`: whether it is the one
    these settings are for. The home itself is listed when it holds images or has no collections."""
    rows = []
    for name in [None, *collection_names(settings.root_home)]:
        tables = image_rows(settings.for_collection(name).lancedb_uri)
        rows.append({"name": name, "images": max(tables.values(), default=0), "tables": tables,
                     "default": name == settings.collection})
    if len(rows) > 1 and not rows[0]["images"]:
        rows.pop(0)
    return rows


def _counts(values) -> dict:
    return dict(Counter("unknown" if v in (None, "") else str(v) for v in values).most_common())


def reset_tables(lancedb_uri: str, home: HomePath | None = None) -> list[str]:
    """Drop every Medvec table (and the saved search indexes); returns the names dropped.

    Batches, manifests and WebP files stay: the next `medvec ingest` re-embeds them.
    """
    db = database.connect(lancedb_uri)
    dropped = []
    for name in medvec_tables(db):
        db.drop_table(name)
        dropped.append(name)
        if home is not None:
            remove_tree(index_dir(home, name))
    return dropped
