"""What the asset checks measure, per batch and per table: each function counts one kind of problem and
returns what it saw, so a check (Dagster's or a person's) can report the numbers.

Dagster-free: the asset checks in `assets/checks.py` call these and decide pass or fail.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from medvec.ingest.batches import load_batch_records
from medvec.phi import IDENTIFYING_TAGS, is_identifying_column
from medvec.storage import HomePath
from medvec.tables.database import EMBED_STAGES, list_errors, sql_string, table_names
from medvec.tables.images import table_dim, vectors_of

#: Below this L2 norm a vector points nowhere: cosine search would rank it arbitrarily.
ZERO_NORM = 1e-6


@dataclass(frozen=True)
class BatchRows:
    """One batch's images: normalised, failed to embed, and the rows the model's table holds."""

    batch: str
    normalized: int
    embed_errors: int
    embedded: int

    @property
    def matches(self) -> bool:
        return self.embedded == self.normalized - self.embed_errors


def batch_rows(db, table, home: HomePath, batches: list[str]) -> list[BatchRows]:
    """Per batch: the normalised records, the embed errors recorded for them, and the table's rows."""
    counts = []
    for batch in batches:
        errors = [e for e in list_errors(db, batch) if e["stage"] in EMBED_STAGES]
        embedded = table.count_rows(f"batch = {sql_string(batch)}") if table is not None else 0
        counts.append(BatchRows(batch, len(load_batch_records(home, batch)), len(errors), embedded))
    return counts


@dataclass(frozen=True)
class VectorProblems:
    rows: int
    nan_rows: int
    zero_norm_rows: int
    table_dim: int
    expected_dim: int

    @property
    def bad_rows(self) -> int:
        return self.nan_rows + self.zero_norm_rows

    @property
    def ok(self) -> bool:
        return self.bad_rows == 0 and self.table_dim == self.expected_dim


def count_bad_vectors(table, expected_dim: int) -> VectorProblems:
    """Rows whose vector holds NaN/inf or has (near) zero length, and the table's vector width
    against the model's."""
    vectors = vectors_of(table.search().select(["vector"]).limit(None).to_arrow())
    finite = np.isfinite(vectors).all(axis=1)
    norms = np.linalg.norm(np.where(np.isfinite(vectors), vectors, 0.0), axis=1)
    return VectorProblems(rows=len(vectors), nan_rows=int((~finite).sum()),
                          zero_norm_rows=int((finite & (norms < ZERO_NORM)).sum()),
                          table_dim=table_dim(table), expected_dim=expected_dim)


def duplicate_image_ids(table) -> dict[str, int]:
    """image_id → how many rows hold it, for every id held more than once (LanceDB's primary key
    is not enforced, so only our merge-inserts keep ids unique)."""
    ids = table.search().select(["image_id"]).limit(None).to_arrow().column("image_id")
    counts = pc.value_counts(ids)
    repeated = pc.filter(counts, pc.greater(counts.field("counts"), 1))
    return {row["values"]: row["counts"] for row in repeated.to_pylist()}


def answered_versions(table) -> list[int]:
    """The image-table versions a precomputed table (fallback answers, neighbours) was made from."""
    column = table.search().select(["table_version"]).limit(None).to_arrow().column("table_version")
    return sorted(v for v in pc.unique(column).to_pylist() if v is not None)


#: DICOM keywords that name a person, as a column would spell them (`PatientName`, `patient_name`).
#: StudyID is left out: the `study_id` column holds the pseudonymised StudyInstanceUID, not it.
_TAG_COLUMNS = tuple(t for t in IDENTIFYING_TAGS if t != "StudyID")


def _identifying(name: str) -> bool:
    squashed = name.replace("_", "").lower()
    return is_identifying_column(name) or any(squashed == tag.lower() for tag in _TAG_COLUMNS)




def identifying_columns(db) -> dict[str, list[str]]:
    """Table → its columns that `medvec.phi` counts as identifying (nested struct fields included),
    over every table in the database."""
    found = {}
    for name in table_names(db):
        columns = _column_names(db.open_table(name).schema)
        bad = [c for c in columns if _identifying(c.rsplit(".", 1)[-1])]
        if bad:
            found[name] = bad
    return found


def _column_names(schema: pa.Schema) -> list[str]:
    names = []
    for field in schema:
        names.append(field.name)
        if pa.types.is_struct(field.type):
            names += [f"{field.name}.{child}" for child in _column_names(pa.schema(list(field.type)))]
    return names
