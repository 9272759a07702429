"""MIMIC-CXR (DICOM) and MIMIC-CXR-JPG: the official CSVs keyed by dicom_id / study_id / subject_id.

Images live at `files/p<first two digits>/p<subject_id>/s<study_id>/<dicom_id>.{dcm,jpg}`. Labels are
per study (`-chexpert.csv.gz`, else `-negbio.csv.gz`: 1 / 0 / -1 / blank), the split per image
(`-split.csv.gz`, `validate` kept as Medvec's name), the view from `-metadata.csv.gz`.
"""

from __future__ import annotations

from medvec.datasets.adapters.base import DatasetAdapter, DatasetFiles, clean, keyed, table
from medvec.datasets.labels import chexpert_columns, chexpert_row
from medvec.datasets.metadata_csv import ImageMetadata, MetadataTable
from medvec.datasets.splits import normalize_split
from medvec.phi import Pseudonymizer

METADATA = "mimic-cxr-2.0.0-metadata.csv.gz"
CHEXPERT = "mimic-cxr-2.0.0-chexpert.csv.gz"
NEGBIO = "mimic-cxr-2.0.0-negbio.csv.gz"
SPLIT = "mimic-cxr-2.0.0-split.csv.gz"
RECORD_LIST = "cxr-record-list.csv.gz"
STUDY_LIST = "cxr-study-list.csv.gz"


def image_path(subject_id: str, study_id: str, dicom_id: str, suffix: str) -> str:
    return f"files/p{subject_id[:2]}/p{subject_id}/s{study_id}/{dicom_id}{suffix}"


class MimicCxr(DatasetAdapter):
    name = "mimic-cxr"
    title = "MIMIC-CXR 2.0.0 (DICOM) and MIMIC-CXR-JPG 2.0.0/2.1.0 (PhysioNet)"
    metadata_files = (METADATA, CHEXPERT, NEGBIO, SPLIT, RECORD_LIST, STUDY_LIST, "SHA256SUMS.txt",
                      "LICENSE.txt", "mimic-cxr-reports.zip")

    def detect(self, files: DatasetFiles) -> bool:
        return files.first(METADATA, SPLIT, RECORD_LIST) is not None

    def load(self, files: DatasetFiles, pseudonymizer: Pseudonymizer,
             allow_columns: tuple[str, ...] = ()) -> MetadataTable:
        images = _images(files)
        splits = {r["dicom_id"]: normalize_split(r.get("split")) for r in _rows(files, SPLIT)}
        labeler = files.first(CHEXPERT, NEGBIO)
        study_labels = {}
        if labeler:
            label_rows = files.read_csv(labeler)
            columns = chexpert_columns(label_rows[0].keys()) if label_rows else {}
            study_labels = {r["study_id"]: chexpert_row(r, columns) for r in label_rows}
        rows: dict[str, ImageMetadata] = {}
        for dicom_id, (subject_id, study_id, view) in images.items():
            labels, uncertain = study_labels.get(study_id, ([], []))
            extra = {"label_source": labeler.split("-")[-1].split(".")[0]} if labeler else {}
            if uncertain:
                extra["uncertain_labels"] = "|".join(uncertain)
            meta = ImageMetadata(labels=list(labels), view_position=view, split=splits.get(dicom_id),
                                 subject_key=pseudonymizer.subject_key(subject_id),
                                 study_id=keyed(pseudonymizer, "mimic-study", study_id), extra=extra)
            # The DICOM project and the JPG project share the tree; one table serves both.
            for suffix in (".dcm", ".jpg"):
                rows[image_path(subject_id, study_id, dicom_id, suffix)] = meta
        return table(rows)


def _rows(files: DatasetFiles, name: str) -> list[dict[str, str]]:
    return files.read_csv(name) if files.exists(name) else []


def _images(files: DatasetFiles) -> dict[str, tuple[str, str, str | None]]:
    """dicom_id → (subject_id, study_id, view) from the richest list present."""
    images: dict[str, tuple[str, str, str | None]] = {}
    for name in (RECORD_LIST, SPLIT, METADATA):  # later lists fill in the view
        for row in _rows(files, name):
            view = (clean(row.get("ViewPosition")) or "").upper() or None
            images[row["dicom_id"]] = (row["subject_id"].strip(), row["study_id"].strip(), view)
    return images
