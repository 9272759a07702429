"""Per-image metadata from a CSV (NIH ChestX-ray14 style, SCIN style, or our sample data).

The CSV maps a file (by relative path or file name) to labels, view, split and patient; every
other column is kept as free metadata, except columns that name or locate a person, which are
dropped unless the user allows them by name.
"""

from __future__ import annotations

import csv
import io
import logging
from dataclasses import dataclass, field

from medvec.datasets.labels import (are_chest_findings, chexpert_columns, chexpert_row, labels_from_findings_text,
                                    labels_from_terms, split_terms)
from medvec.datasets.splits import normalize_split
from medvec.phi import Pseudonymizer, is_identifying_column

log = logging.getLogger(__name__)

# Header aliases, compared after lower-casing and turning "_"/"-" into spaces.
FILE_COLUMNS = ("path", "file", "filename", "file name", "image", "image index", "image path", "dicom", "source")
LABEL_COLUMNS = ("finding labels", "labels", "label", "findings", "problems", "mesh")
VIEW_COLUMNS = ("view position", "view", "viewposition", "projection")
SPLIT_COLUMNS = ("split", "subset", "fold")
PATIENT_COLUMNS = ("patient id", "patientid", "patient", "subject id", "subject")
NO_LABEL_VALUES = {"", "nan", "none"}


@dataclass
class ImageMetadata:
    labels: list[str] = field(default_factory=list)
    view_position: str | None = None
    split: str | None = None
    subject_key: str | None = None
    extra: dict[str, str] = field(default_factory=dict)
    study_id: str | None = None  # keyed pseudonym of the dataset's study (dataset adapters)
    #: Kept filter fields (sex, age_group, fitzpatrick_skin_type, monk_skin_tone_us, ...), never names or ids.
    demographics: dict[str, str] = field(default_factory=dict)
    #: Multi-rater labels: label -> share of raters (VinDr) or the dataset's own weight (SCIN).
    label_weights: dict[str, float] = field(default_factory=dict)


def _norm(name: str) -> str:
    return " ".join(name.strip().lower().replace("_", " ").replace("-", " ").split())


def _find(headers: dict[str, str], aliases: tuple[str, ...]) -> str | None:
    for alias in aliases:
        if alias in headers:
            return headers[alias]
    return None


def _path_key(path: str) -> str:
    return path.replace("\\", "/").strip().strip("/").lower()


class MetadataTable:
    """Lookup of CSV metadata by source file. Build with `MetadataTable.from_csv_text`."""

    def __init__(self, rows: dict[str, ImageMetadata], dropped_columns: list[str]):
        self._by_path = rows
        self._by_name: dict[str, ImageMetadata | None] = {}
        for key, meta in rows.items():
            name = key.rsplit("/", 1)[-1]
            # A file name that appears twice is ambiguous: only the full path may match it then.
            self._by_name[name] = None if name in self._by_name else meta
        self.dropped_columns = dropped_columns

    def __len__(self) -> int:
        return len(self._by_path)

    @classmethod
    def from_csv_text(cls, text: str, pseudonymizer: Pseudonymizer,
                      allow_columns: tuple[str, ...] = ()) -> "MetadataTable":
        reader = csv.DictReader(io.StringIO(text))
        if not reader.fieldnames:
            raise ValueError("metadata CSV has no header row")
        headers = {_norm(h): h for h in reader.fieldnames if h}
        file_col = _find(headers, FILE_COLUMNS)
        if file_col is None:
            raise ValueError(
                f"metadata CSV needs a column naming the image file (one of: {', '.join(FILE_COLUMNS)}); "
                f"found {', '.join(reader.fieldnames)}")
        label_col, view_col = _find(headers, LABEL_COLUMNS), _find(headers, VIEW_COLUMNS)
        split_col, patient_col = _find(headers, SPLIT_COLUMNS), _find(headers, PATIENT_COLUMNS)
        allowed = {_norm(a) for a in allow_columns}
        # CheXpert / MIMIC-CXR-JPG: one column per finding (1 / 0 / -1 / blank) when no label column.
        finding_cols = chexpert_columns(reader.fieldnames) if label_col is None else {}
        if len(finding_cols) < 3:
            finding_cols = {}
        known = {file_col, label_col, view_col, split_col, patient_col, *finding_cols}
        dropped = [h for h in reader.fieldnames
                   if h not in known and is_identifying_column(h) and _norm(h) not in allowed]
        if dropped:
            log.info("metadata CSV: dropped %d identifying column(s) %s (allow with --allow-column)",
                     len(dropped), dropped)
        keep = [h for h in reader.fieldnames if h and h not in known and h not in dropped]

        rows: dict[str, ImageMetadata] = {}
        records = list(reader)
        # A label column of chest findings maps into the CheXpert vocabulary; any other set's labels
        # (dermatology conditions, fundus grades) are kept as the dataset spells them.
        own_labels = label_col is not None and not are_chest_findings(
            [t for r in records if not _is_findings_text(text := (r.get(label_col) or "").strip())
             for t in split_terms(text)])
        for row in records:
            path = (row.get(file_col) or "").strip()
            if not path:
                continue
            labels, notes = _labels(row, label_col, finding_cols, own_labels)
            extra = {_norm(k).replace(" ", "_"): (row.get(k) or "").strip() for k in keep if (row.get(k) or "").strip()}
            rows[_path_key(path)] = ImageMetadata(
                labels=labels,
                view_position=((row.get(view_col) or "").strip().upper() or None) if view_col else None,
                split=normalize_split(row.get(split_col)) if split_col else None,
                subject_key=pseudonymizer.subject_key(row.get(patient_col)) if patient_col else None,
                extra={**extra, **notes},
            )
        return cls(rows, dropped)

    def lookup(self, source_uri: str) -> ImageMetadata | None:
        """Longest CSV path that the source path ends with; else a unique file-name match."""
        key = _path_key(source_uri.split("://", 1)[-1])
        parts = key.split("/")
        for start in range(len(parts)):
            meta = self._by_path.get("/".join(parts[start:]))
            if meta is not None:
                return meta
        return self._by_name.get(parts[-1])


def _is_findings_text(text: str) -> bool:
    """A sentence of findings text (Open-I style), not a list of terms."""
    return len(text) > 80 or ". " in text


def _labels(row: dict, label_col: str | None, finding_cols: dict[str, str],
            own_labels: bool = False) -> tuple[list[str], dict[str, str]]:
    """Findings in the chest vocabulary (medvec.datasets.labels), or with `own_labels` the row's terms as
    written, plus notes for `extra`: labels that did not map, and CheXpert's uncertain (-1) findings."""
    notes: dict[str, str] = {}
    if finding_cols:
        labels, uncertain = chexpert_row(row, finding_cols)
        if uncertain:
            notes["uncertain_labels"] = "|".join(uncertain)
        return labels, notes
    text = (row.get(label_col) or "").strip() if label_col else ""
    if text.lower() in NO_LABEL_VALUES:
        return [], notes
    if _is_findings_text(text):
        return labels_from_findings_text(text), notes
    if own_labels:
        return list(dict.fromkeys(split_terms(text))), notes
    labels, unmapped = labels_from_terms(text)
    if unmapped:
        notes["unmapped_labels"] = "|".join(unmapped)
    return labels, notes
