"""NIH ChestX-ray14: `Data_Entry_2017.csv` (or `_v2020`), `|`-separated `Finding Labels`, and the
official split lists `train_val_list.txt` / `test_list.txt` (the train list has no separate validation).
Images (`images_001/images/00000001_000.png` …) are matched by file name, which is unique."""

from __future__ import annotations

from medvec.datasets.adapters.base import DatasetAdapter, DatasetFiles, age_group, clean, keyed, sex, table
from medvec.datasets.labels import labels_from_terms
from medvec.datasets.metadata_csv import ImageMetadata, MetadataTable
from medvec.datasets.splits import TEST, TRAIN
from medvec.phi import Pseudonymizer

ENTRY_FILES = ("Data_Entry_2017_v2020.csv", "Data_Entry_2017.csv")
SPLIT_LISTS = (("train_val_list.txt", TRAIN), ("test_list.txt", TEST))


class NihChestXray14(DatasetAdapter):
    name = "nih"
    title = "NIH ChestX-ray14 (NIH Clinical Center)"
    metadata_files = (*ENTRY_FILES, "train_val_list.txt", "test_list.txt", "BBox_List_2017.csv")

    def detect(self, files: DatasetFiles) -> bool:
        return files.first(*ENTRY_FILES) is not None

    def load(self, files: DatasetFiles, pseudonymizer: Pseudonymizer,
             allow_columns: tuple[str, ...] = ()) -> MetadataTable:
        splits = {}
        for name, split in SPLIT_LISTS:
            if files.exists(name):
                splits.update({line.strip(): split for line in files.read_text(name).splitlines() if line.strip()})
        rows: dict[str, ImageMetadata] = {}
        for row in files.read_csv(files.first(*ENTRY_FILES)):
            image = clean(row.get("Image Index"))
            if not image:
                continue
            labels, unmapped = labels_from_terms(row.get("Finding Labels") or "")
            patient = clean(row.get("Patient ID"))
            rows[image] = ImageMetadata(
                labels=labels, view_position=(clean(row.get("View Position")) or "").upper() or None,
                split=splits.get(image), subject_key=pseudonymizer.subject_key(patient),
                # One follow-up visit of one patient is NIH's nearest thing to a study.
                study_id=keyed(pseudonymizer, "nih-visit", f"{patient}/{row.get('Follow-up #', '').strip()}"),
                extra={"unmapped_labels": "|".join(unmapped)} if unmapped else {},
                demographics={k: v for k, v in (("sex", sex(row.get("Patient Gender"))),
                                                ("age_group", age_group(row.get("Patient Age")))) if v})
        return table(rows)
