"""VinDr-CXR 1.0.0: `train/<image_id>.dicom`, `test/<image_id>.dicom` and
`annotations/image_labels_{train,test}.csv` (image_id, rad_id, 28 findings and diagnoses as 0/1).

The training set has one row per radiologist (three per image). Every rater's labels are kept
(`extra["rater_labels"]`), each finding's share of raters is its weight (`label_weights`), a finding
most raters marked is a label, and one a minority marked is uncertain (the evaluation policy for
CheXpert's -1 then applies). Findings with no CheXpert counterpart are kept in `unmapped_labels`.
"""

from __future__ import annotations

import json
from collections import defaultdict

from medvec.datasets.adapters.base import DatasetAdapter, DatasetFiles, table
from medvec.datasets.labels import FINDINGS, NO_FINDING, map_labels
from medvec.datasets.metadata_csv import ImageMetadata, MetadataTable
from medvec.datasets.splits import TEST, TRAIN
from medvec.phi import Pseudonymizer

#: VinDr names → CheXpert vocabulary (the rest have no counterpart).
TO_CHEXPERT = {
    "atelectasis": "Atelectasis", "cardiomegaly": "Cardiomegaly", "consolidation": "Consolidation",
    "edema": "Edema", "infiltration": "Lung Opacity", "lung opacity": "Lung Opacity",
    "nodule/mass": "Lung Lesion", "lung tumor": "Lung Lesion", "pleural effusion": "Pleural Effusion",
    "pleural thickening": "Pleural Other", "pneumothorax": "Pneumothorax", "rib fracture": "Fracture",
    "clavicle fracture": "Fracture", "pneumonia": "Pneumonia", "no finding": NO_FINDING,
}
LABEL_FILES = (("train", TRAIN), ("test", TEST))
_NOT_FINDINGS = {"image_id", "rad_id"}


class VinDrCxr(DatasetAdapter):
    name = "vindr-cxr"
    title = "VinDr-CXR 1.0.0 (PhysioNet)"
    metadata_files = ("image_labels_train.csv", "image_labels_test.csv", "annotations_train.csv",
                      "annotations_test.csv", "SHA256SUMS.txt", "LICENSE.txt")

    def detect(self, files: DatasetFiles) -> bool:
        return _labels_file(files, "train") is not None or _labels_file(files, "test") is not None

    def load(self, files: DatasetFiles, pseudonymizer: Pseudonymizer,
             allow_columns: tuple[str, ...] = ()) -> MetadataTable:
        rows: dict[str, ImageMetadata] = {}
        for part, split in LABEL_FILES:
            name = _labels_file(files, part)
            if name is None:
                continue
            by_image: dict[str, list[dict]] = defaultdict(list)
            for row in files.read_csv(name):
                by_image[row["image_id"].strip()].append(row)
            for image_id, raters in by_image.items():
                rows[f"{part}/{image_id}.dicom"] = _image_metadata(raters, split)
        return table(rows)


def _labels_file(files: DatasetFiles, part: str) -> str | None:
    return files.first(f"annotations/image_labels_{part}.csv", f"image_labels_{part}.csv")


def _image_metadata(raters: list[dict], split: str) -> ImageMetadata:
    per_rater: dict[str, list[str]] = {}
    votes: dict[str, int] = defaultdict(int)
    for number, row in enumerate(raters, 1):
        rater = next((v.strip() for k, v in row.items() if k and k.lower() == "rad_id" and v), f"rater{number}")
        marked = [k.strip() for k, v in row.items()
                  if k and k.lower() not in _NOT_FINDINGS and _is_one(v)]
        per_rater[rater] = marked
        for finding in marked:
            votes[finding] += 1
    weights = {finding: round(count / len(raters), 4) for finding, count in sorted(votes.items())}
    majority = [f for f, w in weights.items() if w > 0.5]
    minority = [f for f, w in weights.items() if w <= 0.5]
    labels, _ = map_labels([TO_CHEXPERT.get(f.lower(), "") for f in majority])
    unsure = {TO_CHEXPERT[f.lower()] for f in minority if f.lower() in TO_CHEXPERT} - set(labels) - {NO_FINDING}
    unmapped = [f for f in weights if f.lower() not in TO_CHEXPERT]
    extra = {"rater_labels": json.dumps(per_rater, sort_keys=True)}
    if unsure:
        extra["uncertain_labels"] = "|".join(f for f in FINDINGS if f in unsure)
    if unmapped:
        extra["unmapped_labels"] = "|".join(unmapped)
    return ImageMetadata(labels=labels, split=split, extra=extra, label_weights=weights)


def _is_one(value: str | None) -> bool:
    try:
        return float((value or "").strip() or 0) == 1
    except ValueError:
        return False
