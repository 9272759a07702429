"""Per-model LanceDB image tables (`images__<slug>`): one row per image, its vector and provenance.

One table per model, so embedding with a new model never touches another model's rows.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timezone

import numpy as np
import pyarrow as pa

from medvec.tables.records import ImageRecord, image_table_schema, missing_record_fields
from medvec.home import image_table_name  # noqa: F401 - named in medvec.home, re-exported for table callers
from medvec.tables.database import open_table_if_exists, sql_string

log = logging.getLogger(__name__)


class TableDimensionMismatch(ValueError):
    """A model's vectors do not fit the existing table: nothing was written."""


def table_dim(table) -> int:
    return table.schema.field("vector").type.list_size


def open_image_table(db, name: str, dim: int):
    """Open the table, creating it (with `image_id` as its primary key) when missing.

    An existing table whose vectors have another dimension is an error, and stays untouched.
    """
    table = open_table_if_exists(db, name) or _create_image_table(db, name, dim)
    existing = table_dim(table)
    if existing != dim:
        raise TableDimensionMismatch(
            f"table {name} holds {existing}-d vectors but this model gives {dim}-d vectors; "
            "use the model the table was built with, or give this model its own name")
    missing = missing_record_fields(table.schema)
    if missing:  # a table from before these columns: add them (null) so new rows fit
        try:
            table.add_columns(missing)
        except Exception as exc:  # noqa: BLE001 - another writer added them first
            if missing_record_fields(db.open_table(name).schema):
                raise
            log.info("columns already added by another writer (%s)", type(exc).__name__)
        table = db.open_table(name)
    return table


def _create_image_table(db, name: str, dim: int):
    table = create_keyed_table(db, name, image_table_schema(dim), "image_id")
    missing = set(image_table_schema(dim).names) - set(table.schema.names)
    if missing:
        raise ValueError(f"table {name} exists without the column(s) {sorted(missing)}; "
                         "it was not made by this version of Medvec")
    return table


def create_keyed_table(db, name: str, schema: pa.Schema, key: str):
    """Create the table and set its primary key `key`, or open the one another writer created meanwhile.

    `create_table(exist_ok=True)` compares the schema given with the stored one, and the stored one
    carries the primary key's field metadata once the other writer has set it: "Schema Error". That
    error, with the table now there, means we lost the race; the caller then checks what it needs."""
    try:
        table = db.create_table(name, schema=schema, exist_ok=True)
    except ValueError as exc:
        table = open_table_if_exists(db, name)
        if table is None or "schema" not in str(exc).lower():
            raise
        return table
    for attempt in range(5):
        try:
            table.set_unenforced_primary_key(key)
            return table
        except ValueError as exc:  # another writer created the table and set the key first
            if "already set" not in str(exc):
                raise
            return table
        except RuntimeError as exc:  # another writer's key commit won the version: look again
            if "incompatible transaction" not in str(exc).lower() or attempt == 4:
                raise
            table = open_table_if_exists(db, name)
    return table


def vectors_of(data: pa.Table) -> np.ndarray:
    """The `vector` column of an Arrow table as one (rows, dim) float32 matrix."""
    dim = data.schema.field("vector").type.list_size
    flat = data.column("vector").combine_chunks().flatten().to_numpy(zero_copy_only=False)
    return flat.astype(np.float32, copy=False).reshape(data.num_rows, dim)


#: Ids per `IN (...)` filter when looking up stored rows, so one query's SQL stays small.
_LOOKUP_CHUNK = 500


@dataclass(frozen=True)
class StoredEmbedding:
    """What a model's table already holds for one image: enough to tell whether it must be embedded again."""

    content_sha256: str
    model_id: str | None
    model_revision: str | None
    vector: np.ndarray
    embedded_at: str | None


def stored_embeddings(table, image_ids: list[str]) -> dict[str, StoredEmbedding]:
    """image_id → its stored embedding, for the ids the table holds (in any batch)."""
    columns = ["image_id", "content_sha256", "model_id", "model_revision", "vector", "embedded_at"]
    found: dict[str, StoredEmbedding] = {}
    unique = sorted(set(image_ids))
    for start in range(0, len(unique), _LOOKUP_CHUNK):
        ids = ", ".join(sql_string(i) for i in unique[start:start + _LOOKUP_CHUNK])
        data = table.search().where(f"image_id IN ({ids})").select(columns).limit(None).to_arrow()
        if data.num_rows == 0:
            continue
        vectors = vectors_of(data)
        for i, row in enumerate(data.drop_columns(["vector"]).to_pylist()):
            found[row["image_id"]] = StoredEmbedding(row["content_sha256"], row["model_id"], row["model_revision"],
                                                     vectors[i], row["embedded_at"])
    return found


def image_rows(records: list[ImageRecord], vectors: np.ndarray, *, dim: int, model_id: str,
               revision: str | None, embedded_at: list[str | None] | None = None) -> pa.Table:
    """Table rows for records and their vectors; `embedded_at` keeps a reused vector's original time
    (None, or no list: now)."""
    if len(records) != len(vectors):
        raise ValueError(f"{len(records)} records but {len(vectors)} vectors")
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    times = embedded_at if embedded_at is not None else [None] * len(records)
    rows = []
    for record, vector, when in zip(records, vectors, times):
        row = record.to_row()
        row.update(vector=vector.astype(np.float32).tolist(), model_id=model_id, model_revision=revision,
                   embedded_at=when or now)
        rows.append(row)
    return pa.Table.from_pylist(rows, schema=image_table_schema(dim))


def upsert_batch(table, batch: str, rows: pa.Table, key: str = "image_id"):
    """Make the table hold exactly `rows` for `batch`: update, insert, and drop the batch's
    rows that are no longer in it, in one commit (re-runs change nothing, lose nothing)."""
    if rows.num_rows == 0:
        return table.delete(f"batch = {sql_string(batch)}")
    for attempt in range(5):
        try:
            return (table.merge_insert(key)
                    .when_matched_update_all()
                    .when_not_matched_insert_all()
                    .when_not_matched_by_source_delete(f"batch = {sql_string(batch)}")
                    .execute(rows))
        except RuntimeError as exc:
            # Another writer's commit took the version this merge was planned on (writers racing to
            # create the table: "incompatible with concurrent transaction Overwrite"). The merge says
            # what the batch holds, not what to add, so planning it again on the latest version is safe.
            if "incompatible transaction" not in str(exc).lower() or attempt == 4:
                raise
            table.checkout_latest()
