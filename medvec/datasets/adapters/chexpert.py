"""CheXpert (Stanford): `train.csv` / `valid.csv` with Path, Sex, Age, Frontal/Lateral, AP/PA and the
14 findings (1 / 0 / -1 / blank). `Path` starts with the dataset folder's name
(`CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg`); it is dropped so a renamed folder
still matches."""

from __future__ import annotations

from medvec.datasets.adapters.base import DatasetAdapter, DatasetFiles, age_group, clean, keyed, sex, table
from medvec.datasets.labels import chexpert_columns, chexpert_row
from medvec.datasets.metadata_csv import ImageMetadata, MetadataTable
from medvec.datasets.splits import TRAIN, VALIDATE
from medvec.phi import Pseudonymizer

SPLIT_FILES = (("train.csv", TRAIN), ("valid.csv", VALIDATE))


class CheXpert(DatasetAdapter):
    name = "chexpert"
    title = "CheXpert v1.0 (Stanford ML Group)"
    metadata_files = ("train.csv", "valid.csv")

    def detect(self, files: DatasetFiles) -> bool:
        return files.exists("train.csv") and files.exists("valid.csv") and \
            "Frontal/Lateral" in files.read_text("valid.csv").splitlines()[0]

    def load(self, files: DatasetFiles, pseudonymizer: Pseudonymizer,
             allow_columns: tuple[str, ...] = ()) -> MetadataTable:
        rows: dict[str, ImageMetadata] = {}
        for name, split in SPLIT_FILES:
            if not files.exists(name):
                continue
            csv_rows = files.read_csv(name)
            columns = chexpert_columns(csv_rows[0].keys()) if csv_rows else {}
            for row in csv_rows:
                parts = row["Path"].strip().replace("\\", "/").split("/")
                relative = "/".join(parts[1:])  # train/patient00001/study1/view1_frontal.jpg
                labels, uncertain = chexpert_row(row, columns)
                patient = next((p for p in parts if p.startswith("patient")), None)
                study = next((p for p in parts if p.startswith("study")), None)
                rows[relative] = ImageMetadata(
                    labels=labels, view_position=_view(row), split=split,
                    subject_key=pseudonymizer.subject_key(patient),
                    study_id=keyed(pseudonymizer, "chexpert-study", f"{patient}/{study}") if study else None,
                    extra={"uncertain_labels": "|".join(uncertain)} if uncertain else {},
                    demographics={k: v for k, v in (("sex", sex(row.get("Sex"))),
                                                    ("age_group", age_group(row.get("Age")))) if v})
        return table(rows)


def _view(row: dict) -> str | None:
    """Frontal images carry AP or PA in `AP/PA`; lateral ones are LATERAL (their `AP/PA` is blank)."""
    if (clean(row.get("Frontal/Lateral")) or "").lower() == "lateral":
        return "LATERAL"
    return (clean(row.get("AP/PA")) or "").upper() or None
