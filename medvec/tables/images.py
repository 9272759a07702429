"""Per-model LanceDB image tables (`images__<slug>`): one row per image, its vector and provenance.

One table per model, so embedding with a new model never touches another model's rows.
"""

from __future__ import annotations

from datetime import datetime, timezone

import numpy as np
import pyarrow as pa

from medvec.tables.records import ImageRecord, image_table_schema
from medvec.home import image_table_name  # noqa: F401 - named in medvec.home, re-exported for table callers
from medvec.tables.database import open_table_if_exists, sql_string


class TableDimensionMismatch(ValueError):
    """A model's vectors do not fit the existing table: nothing was written."""


def table_dim(table) -> int:
    return table.schema.field("vector").type.list_size


def open_image_table(db, name: str, dim: int):
    """Open the table, creating it (with `image_id` as its primary key) when missing.

    An existing table whose vectors have another dimension is an error, and stays untouched.
    """
    table = open_table_if_exists(db, name)
    if table is None:
        table = db.create_table(name, schema=image_table_schema(dim), exist_ok=True)
        try:
            table.set_unenforced_primary_key("image_id")
        except ValueError as exc:  # another writer created the table and set the key first
            if "already set" not in str(exc):
                raise
    existing = table_dim(table)
    if existing != dim:
        raise TableDimensionMismatch(
            f"table {name} holds {existing}-d vectors but this model gives {dim}-d vectors; "
            "use the model the table was built with, or give this model its own name")
    return table


def vectors_of(data: pa.Table) -> np.ndarray:
    """The `vector` column of an Arrow table as one (rows, dim) float32 matrix."""
    dim = data.schema.field("vector").type.list_size
    flat = data.column("vector").combine_chunks().flatten().to_numpy(zero_copy_only=False)
    return flat.astype(np.float32, copy=False).reshape(data.num_rows, dim)


def image_rows(records: list[ImageRecord], vectors: np.ndarray, *, dim: int, model_id: str,
               revision: str | None) -> pa.Table:
    if len(records) != len(vectors):
        raise ValueError(f"{len(records)} records but {len(vectors)} vectors")
    embedded_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
    rows = []
    for record, vector in zip(records, vectors):
        row = record.to_row()
        row.update(vector=vector.astype(np.float32).tolist(), model_id=model_id, model_revision=revision,
                   embedded_at=embedded_at)
        rows.append(row)
    return pa.Table.from_pylist(rows, schema=image_table_schema(dim))


def upsert_batch(table, batch: str, rows: pa.Table, key: str = "image_id"):
    """Make the table hold exactly `rows` for `batch`: update, insert, and drop the batch's
    rows that are no longer in it, in one commit (re-runs change nothing, lose nothing)."""
    if rows.num_rows == 0:
        return table.delete(f"batch = {sql_string(batch)}")
    return (table.merge_insert(key)
            .when_matched_update_all()
            .when_not_matched_insert_all()
            .when_not_matched_by_source_delete(f"batch = {sql_string(batch)}")
            .execute(rows))
