"""The records Medvec stores per image and per failure, and their Arrow schemas (one place)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone

import pyarrow as pa


@dataclass
class ImageRecord:
    """One normalised image: allow-listed metadata only (see medvec.phi)."""

    image_id: str  # SOPInstanceUID, or the content sha256 for non-DICOM
    batch: str
    source_uri: str
    content_sha256: str
    image_uri: str
    thumb_uri: str
    source_format: str  # "dicom" | "png" | "jpeg" | "tiff" | ...
    study_id: str | None = None
    series_id: str | None = None
    subject_key: str | None = None
    view_position: str | None = None
    modality: str | None = None
    body_part: str | None = None
    rows: int | None = None
    columns: int | None = None
    photometric: str | None = None
    bits_stored: int | None = None
    pixel_spacing: list[float] | None = None
    transfer_syntax: str | None = None
    frames: int = 1  # frames in the source; the first is rendered
    window_source: str | None = None  # voi_lut | header_window | percentile | flat | 8bit | grey-rgb (equal channels) | colour (WebP in colour)
    labels: list[str] = field(default_factory=list)
    split: str | None = None
    # Kept demographics (dataset adapters), searchable for fairness audits: never exact ages or ids.
    sex: str | None = None  # male | female | other
    age_group: str | None = None  # a band ("40-49", "90+") or the dataset's own ("AGE_30_TO_39")
    skin_type: str | None = None  # Fitzpatrick type as the dataset writes it ("FST3")
    extra: dict[str, str] = field(default_factory=dict)  # other metadata-CSV columns, allowed tags
    width: int = 0  # of the viewing WebP
    height: int = 0

    def to_row(self) -> dict:
        row = asdict(self)
        row["extra"] = json.dumps(self.extra, sort_keys=True)
        return row

    @classmethod
    def from_row(cls, row: dict) -> "ImageRecord":
        row = {f.name: row.get(f.name) for f in fields(cls)}
        row["extra"] = json.loads(row["extra"] or "{}")
        row["labels"] = list(row["labels"] or [])
        row["pixel_spacing"] = list(row["pixel_spacing"]) if row["pixel_spacing"] is not None else None
        return cls(**row)


@dataclass
class IngestError:
    """A file that could not be normalised: what, where, and why in plain words."""

    source_uri: str
    batch: str
    stage: str  # read | parse | decode | render | duplicate | write
    error: str  # exception type
    message: str  # plain-words reason, scrubbed of identifying values
    at: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))

    def to_row(self) -> dict:
        return asdict(self)


IMAGE_RECORD_SCHEMA = pa.schema([
    ("image_id", pa.string()), ("batch", pa.string()), ("source_uri", pa.string()),
    ("content_sha256", pa.string()), ("image_uri", pa.string()), ("thumb_uri", pa.string()),
    ("source_format", pa.string()), ("study_id", pa.string()), ("series_id", pa.string()),
    ("subject_key", pa.string()), ("view_position", pa.string()), ("modality", pa.string()),
    ("body_part", pa.string()), ("rows", pa.int32()), ("columns", pa.int32()),
    ("photometric", pa.string()), ("bits_stored", pa.int32()),
    ("pixel_spacing", pa.list_(pa.float64())), ("transfer_syntax", pa.string()),
    ("frames", pa.int32()), ("window_source", pa.string()), ("labels", pa.list_(pa.string())),
    ("split", pa.string()), ("sex", pa.string()), ("age_group", pa.string()), ("skin_type", pa.string()),
    ("extra", pa.string()), ("width", pa.int32()), ("height", pa.int32()),
])

INGEST_ERROR_SCHEMA = pa.schema([
    ("source_uri", pa.string()), ("batch", pa.string()), ("stage", pa.string()),
    ("error", pa.string()), ("message", pa.string()), ("at", pa.string()),
])


#: Columns added to the record after tables were first written: an older table or batch file
#: without them reads as null, and `missing_record_fields` names what to add before a write.
LATER_RECORD_COLUMNS = ("sex", "age_group", "skin_type")


def missing_record_fields(schema: pa.Schema) -> list[pa.Field]:
    """The later record columns an existing table lacks (all nullable strings)."""
    return [IMAGE_RECORD_SCHEMA.field(name) for name in LATER_RECORD_COLUMNS if name not in schema.names]


def image_table_schema(dim: int) -> pa.Schema:
    """A model's image table (`images__<slug>`): the record, its vector and provenance.

    `image_id` is non-nullable because LanceDB's unenforced primary key requires it; the key is
    what stops concurrent writers of the same new ids from creating duplicates.
    """
    fields = [pa.field("image_id", pa.string(), nullable=False)]
    fields += [f for f in IMAGE_RECORD_SCHEMA if f.name != "image_id"]
    fields += [pa.field("vector", pa.list_(pa.float32(), dim)), pa.field("model_id", pa.string()),
               pa.field("model_revision", pa.string()), pa.field("embedded_at", pa.string())]
    return pa.schema(fields)


def image_records_table(records: list[ImageRecord]) -> pa.Table:
    return pa.Table.from_pylist([r.to_row() for r in records], schema=IMAGE_RECORD_SCHEMA)


def ingest_errors_table(errors: list[IngestError]) -> pa.Table:
    return pa.Table.from_pylist([e.to_row() for e in errors], schema=INGEST_ERROR_SCHEMA)
