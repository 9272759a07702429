"""The LanceDB store: the `ingest_errors` table (and, later, the per-model image tables)."""

from __future__ import annotations

import lancedb

from medvec.records import INGEST_ERROR_SCHEMA, IngestError, ingest_errors_table

INGEST_ERRORS_TABLE = "ingest_errors"


def connect(uri: str):
    return lancedb.connect(uri)


def _sql_string(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def open_table_if_exists(db, name: str):
    try:
        return db.open_table(name)
    except ValueError:  # lancedb: "Table 'x' was not found"
        return None


def replace_batch_errors(db, batch: str, errors: list[IngestError]) -> None:
    """Make the errors table hold exactly `errors` for `batch`, in one commit.

    merge_insert with a scoped delete replaces the batch's rows atomically, so a re-run never
    duplicates an error and a fixed file's old error disappears.
    """
    table = db.create_table(INGEST_ERRORS_TABLE, schema=INGEST_ERROR_SCHEMA, exist_ok=True)
    rows = ingest_errors_table(errors)
    if rows.num_rows == 0:
        table.delete(f"batch = {_sql_string(batch)}")
        return
    (table.merge_insert(["batch", "source_uri"])
     .when_matched_update_all()
     .when_not_matched_insert_all()
     .when_not_matched_by_source_delete(f"batch = {_sql_string(batch)}")
     .execute(rows))


def list_errors(db, batch: str | None = None) -> list[dict]:
    table = open_table_if_exists(db, INGEST_ERRORS_TABLE)
    if table is None:
        return []
    query = table.search()
    if batch is not None:
        query = query.where(f"batch = {_sql_string(batch)}")
    return query.limit(None).to_arrow().sort_by([("batch", "ascending"), ("source_uri", "ascending")]).to_pylist()
