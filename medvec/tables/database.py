"""The LanceDB store: connection and the `ingest_errors` table every stage reports into."""

from __future__ import annotations

import lancedb

from medvec.home import INGEST_ERRORS_TABLE
from medvec.tables.records import INGEST_ERROR_SCHEMA, IngestError, ingest_errors_table
from medvec.storage import lancedb_storage_options



def connect(uri: str, s3_endpoint_url: str | None = None):
    """A local folder or an `s3://` URI (the endpoint from MEDVEC_S3_ENDPOINT_URL when not given)."""
    return lancedb.connect(uri, storage_options=lancedb_storage_options(uri, s3_endpoint_url))


def sql_string(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def open_table_if_exists(db, name: str):
    try:
        return db.open_table(name)
    except ValueError:  # lancedb: "Table 'x' was not found"
        return None


#: The stages each asset owns in the errors table; an asset replaces only its own rows.
#: "duplicate": another image under a SOP Instance UID a stored image already holds (medvec.ingest.batches);
#: "deidentify": refused by the de-identification policy (burned-in text, medvec.imaging.normalize).
NORMALIZE_STAGES = ("read", "parse", "decode", "deidentify", "render", "duplicate")
EMBED_STAGES = ("embed",)


def replace_batch_errors(db, batch: str, errors: list[IngestError],
                         stages: tuple[str, ...] = NORMALIZE_STAGES) -> None:
    """Make the errors table hold exactly `errors` for `batch` and `stages`, in one commit.

    merge_insert with a scoped delete replaces those rows atomically, so a re-run never
    duplicates an error and a fixed file's old error disappears.
    """
    table = db.create_table(INGEST_ERRORS_TABLE, schema=INGEST_ERROR_SCHEMA, exist_ok=True)
    scope = f"batch = {sql_string(batch)} AND stage IN ({', '.join(sql_string(s) for s in stages)})"
    rows = ingest_errors_table([e for e in errors if e.stage in stages])
    if rows.num_rows == 0:
        table.delete(scope)
        return
    (table.merge_insert(["batch", "source_uri", "stage"])
     .when_matched_update_all()
     .when_not_matched_insert_all()
     .when_not_matched_by_source_delete(scope)
     .execute(rows))


def list_errors(db, batch: str | None = None) -> list[dict]:
    table = open_table_if_exists(db, INGEST_ERRORS_TABLE)
    if table is None:
        return []
    query = table.search()
    if batch is not None:
        query = query.where(f"batch = {sql_string(batch)}")
    return query.limit(None).to_arrow().sort_by([("batch", "ascending"), ("source_uri", "ascending")]).to_pylist()


def table_names(db) -> list[str]:
    """Every table in the database, Medvec's or not, sorted (LanceDB lists them a page at a time)."""
    names, token = [], None
    while True:
        page = db.list_tables(page_token=token)
        names += page.tables
        token = page.page_token
        if not token:
            return sorted(names)
