"""Reports per batch (parsed, scrubbed, on disk) and per model (`reports__<model>` in LanceDB, with a
full-text index and the model's text embedding), plus how report labels agree with given labels."""

from __future__ import annotations

import logging
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

from medvec.home import batch_dir, report_table_name  # noqa: F401 - report_table_name re-exported for callers
from medvec.tables.images import table_dim, upsert_batch
from medvec.datasets.labels import label_agreement_of
from medvec.tables.records import IngestError, ImageRecord
from medvec.reports.parse import (INDIANA_PROJECTIONS, INDIANA_REPORTS, REPORT_RECORD_SCHEMA, ReportRecord, file_stem,
                            is_report_file, parse_indiana, parse_report_file, report_table_schema,
                            reports_table)
from medvec.sources import open_source
from medvec.sources.dicomweb import is_dicomweb_root
from medvec.tables.database import open_table_if_exists
from medvec.storage import HomePath, is_missing_object, read_parquet, write_parquet

if TYPE_CHECKING:  # a type only: reports read a batch's manifest, and ingest (which writes it) reads reports
    from medvec.ingest.batches import BatchManifest

log = logging.getLogger(__name__)
REPORT_STAGES = ("report",)


def read_batch_reports(manifest: BatchManifest, s3_endpoint_url: str | None = None
                       ) -> tuple[list[ReportRecord], list[IngestError]]:
    """The batch's report files, and the Indiana pair's reports that name one of the batch's images."""
    source = open_source(manifest.source, s3_endpoint_url)
    records, errors = [], []
    for entry in manifest.files:
        if not is_report_file(entry.uri):
            continue
        try:
            records.append(parse_report_file(source.read_bytes(entry.uri), entry.uri, manifest.batch))
        except (ET.ParseError, ValueError, UnicodeDecodeError) as exc:
            errors.append(IngestError(entry.uri, manifest.batch, "report", type(exc).__name__,
                                      f"report could not be parsed ({str(exc).splitlines()[0][:160]})"))
        except OSError as exc:
            errors.append(IngestError(entry.uri, manifest.batch, "report", type(exc).__name__,
                                      f"report could not be read ({exc.strerror or exc})"))
    stems = {file_stem(f.uri) for f in manifest.files if not is_report_file(f.uri)}
    # A PACS holds instances only: the Indiana pair's CSV files live beside images in folders and buckets.
    pair = None if is_dicomweb_root(manifest.source) else _read_indiana_pair(source, manifest.source)
    if pair is not None:
        reports_uri, reports_text, projections_text = pair
        for record in parse_indiana(reports_text, projections_text, reports_uri, manifest.batch):
            if stems & set(record.image_names):
                records.append(record)
    return records, errors


def _read_indiana_pair(source, root: str):
    join = (lambda name: f"{root.rstrip('/')}/{name}") if root.startswith("s3://") else \
        (lambda name: str(Path(root) / name))
    for reports_name, projections_name in zip(INDIANA_REPORTS, INDIANA_PROJECTIONS):
        try:
            reports = source.read_bytes(join(reports_name)).decode("utf-8-sig")
        except Exception as exc:  # noqa: BLE001 - absent in most sources; boto3 and OS errors differ
            if not (isinstance(exc, FileNotFoundError) or is_missing_object(exc)):
                log.warning("could not read %s: %s", reports_name, type(exc).__name__)
            continue
        try:
            projections = source.read_bytes(join(projections_name)).decode("utf-8-sig")
        except Exception:  # noqa: BLE001 - reports without projections link to no image
            projections = None
        return join(reports_name), reports, projections
    return None


def write_batch_reports(home: HomePath, batch: str, records: list[ReportRecord]) -> HomePath:
    path = batch_dir(home, batch) / "reports.parquet"
    write_parquet(path, reports_table(records))
    return path


def load_batch_reports(home: HomePath, batch: str) -> list[ReportRecord]:
    path = batch_dir(home, batch) / "reports.parquet"
    if not path.exists():
        return []
    return [ReportRecord(**row) for row in read_parquet(path).cast(REPORT_RECORD_SCHEMA).to_pylist()]


def report_embedding_text(record: ReportRecord) -> str:
    """What the text tower embeds: the impression (the report's conclusion), else the findings.
    SigLIP reads 64 tokens, so the whole report would be cut anyway."""
    return record.impression or record.findings or record.text


def open_report_table(db, name: str, dim: int):
    from medvec.tables.images import TableDimensionMismatch, create_keyed_table, table_dim

    table = open_table_if_exists(db, name) or create_keyed_table(db, name, report_table_schema(dim), "report_id")
    if table_dim(table) != dim:
        raise TableDimensionMismatch(f"table {name} holds {table_dim(table)}-d vectors; this model gives {dim}-d")
    return table


def upsert_batch_reports(table, batch: str, records: list[ReportRecord], vectors: np.ndarray, model_id: str):
    """Make the table hold exactly these reports for `batch`, in one commit (`refresh_report_index` after)."""
    if len(records) != len(vectors):
        raise ValueError(f"{len(records)} reports but {len(vectors)} vectors")
    rows = [{**r.to_row(), "vector": v.astype(np.float32).tolist(), "model_id": model_id} for r, v in zip(records, vectors)]
    upsert_batch(table, batch, pa.Table.from_pylist(rows, schema=report_table_schema(table_dim(table))), key="report_id")


def refresh_report_index(table) -> None:
    """Rebuild the full-text index over every report: once per run, after all of its batches."""
    from lancedb.index import FTS

    from medvec.tables.conflicts import retry_on_conflict

    if table.count_rows():
        retry_on_conflict(lambda: table.create_index("text", config=FTS(), replace=True), what="report FTS index")


def label_agreement(reports: list[ReportRecord], images: list[ImageRecord]) -> dict:
    """How the labels read from reports agree with the labels given for the same images (only
    images with both count; see medvec.datasets.labels.label_agreement_of)."""
    labelled = [image for image in images if image.labels]
    by_stem, by_folder = image_link_maps([i.image_id for i in labelled], [i.source_uri for i in labelled])
    read: dict[str, set[str]] = {}
    for report in reports:
        for image_id in linked_image_ids(report.to_row(), by_stem, by_folder):
            read.setdefault(image_id, set()).update(report.labels)
    return label_agreement_of([(set(i.labels), read[i.image_id]) for i in labelled if i.image_id in read])


def image_link_maps(image_ids, source_uris) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """(file stem → image ids, MIMIC study folder → image ids): what reports link by."""
    by_stem: dict[str, list[str]] = {}
    by_folder: dict[str, list[str]] = {}
    for image_id, uri in zip(image_ids, source_uris):
        parts = (uri or "").replace("\\", "/").split("/")
        by_stem.setdefault(file_stem(parts[-1]), []).append(image_id)
        for folder in parts[:-1]:
            if folder.startswith("s") and folder[1:].isdigit():  # MIMIC-CXR study folders: s<digits>
                by_folder.setdefault(folder, []).append(image_id)
    return by_stem, by_folder


def linked_image_ids(report: dict, by_stem, by_folder) -> list[str]:
    linked = list(by_folder.get(report["study_folder"], [])) if report.get("study_folder") else []
    for name in report.get("image_names") or []:
        linked += by_stem.get(name, [])
    return list(dict.fromkeys(linked))


def report_labels_by_image(reports_table, image_ids, source_uris) -> dict[str, set[str]]:
    """Findings read from each image's reports (union over its study's reports)."""
    by_stem, by_folder = image_link_maps(image_ids, source_uris)
    out: dict[str, set[str]] = {}
    rows = reports_table.search().select(["labels", "image_names", "study_folder"]).limit(None).to_arrow().to_pylist()
    for row in rows:
        for image_id in linked_image_ids(row, by_stem, by_folder):
            out.setdefault(image_id, set()).update(row["labels"] or [])
    return out
