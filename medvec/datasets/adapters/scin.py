"""SCIN (Google, dermatology): `scin_cases.csv` (one row per case, up to three photographs in
`image_1_path` … `image_3_path`) joined on `case_id` with `scin_labels.csv` (dermatologists' labels).

Labels are SCIN's own conditions (a dermatology vocabulary, not CheXpert's), taken from
`weighted_skin_condition_label` (a dict string condition → weight), heaviest first, weights kept.
Kept as filters: sex at birth, age group, self-reported Fitzpatrick type, the dermatologists'
Fitzpatrick estimates and the Monk skin tone labels; race/ethnicity and free text are dropped.
"""

from __future__ import annotations

import ast

from medvec.datasets.adapters.base import DatasetAdapter, DatasetFiles, clean, keyed, sex, table
from medvec.datasets.metadata_csv import ImageMetadata, MetadataTable
from medvec.phi import Pseudonymizer

PREFIXES = ("dataset/", "")  # the bucket's layout, or the `dataset/` folder itself as the root


class Scin(DatasetAdapter):
    name = "scin"
    title = "SCIN: Skin Condition Image Network (Google, public bucket dx-scin-public-data)"
    metadata_files = ("scin_cases.csv", "scin_labels.csv", "scin_app_questions.csv", "scin_label_questions.csv")

    def detect(self, files: DatasetFiles) -> bool:
        return _prefix(files) is not None

    def load(self, files: DatasetFiles, pseudonymizer: Pseudonymizer,
             allow_columns: tuple[str, ...] = ()) -> MetadataTable:
        prefix = _prefix(files) or ""
        labels_name = f"{prefix}scin_labels.csv"
        labels = {r["case_id"]: r for r in files.read_csv(labels_name)} if files.exists(labels_name) else {}
        rows: dict[str, ImageMetadata] = {}
        for case in files.read_csv(f"{prefix}scin_cases.csv"):
            graded = labels.get(case["case_id"], {})
            weights = parse_weights(graded.get("weighted_skin_condition_label"))
            body_parts = [k[len("body_parts_"):] for k, v in case.items()
                          if k.startswith("body_parts_") and (v or "").strip().upper() in ("YES", "TRUE", "1")]
            for n in (1, 2, 3):
                path = clean(case.get(f"image_{n}_path"))
                if not path:
                    continue
                relative = path[len("dataset/"):] if path.startswith("dataset/") else path
                rows[relative] = ImageMetadata(
                    labels=sorted(weights, key=lambda c: (-weights[c], c)),
                    view_position=(clean(case.get(f"image_{n}_shot_type")) or "").upper() or None,
                    subject_key=keyed(pseudonymizer, "scin-case", case["case_id"]),
                    study_id=keyed(pseudonymizer, "scin-case", case["case_id"]),
                    extra={"body_parts": "|".join(body_parts)} if body_parts else {},
                    label_weights=weights, demographics=_demographics(case, graded))
        return table(rows)


def _prefix(files: DatasetFiles) -> str | None:
    return next((p for p in PREFIXES if files.exists(f"{p}scin_cases.csv")), None)


def parse_weights(text: str | None) -> dict[str, float]:
    """"{'Eczema': 0.5, 'Psoriasis': 0.5}" → a dict; blank or unreadable → empty."""
    text = (text or "").strip()
    if not text:
        return {}
    try:
        value = ast.literal_eval(text)  # a Python dict literal, not JSON (single quotes)
    except (ValueError, SyntaxError):
        return {}
    return {str(k): float(v) for k, v in value.items()} if isinstance(value, dict) else {}


def _demographics(case: dict, graded: dict) -> dict[str, str]:
    raters = [clean(graded.get(f"dermatologist_fitzpatrick_skin_type_label_{n}")) for n in (1, 2, 3)]
    kept = {
        "sex": sex(case.get("sex_at_birth")),
        "age_group": clean(case.get("age_group")),
        "fitzpatrick_skin_type": clean(case.get("fitzpatrick_skin_type")),
        "dermatologist_fitzpatrick_skin_types": "|".join(r for r in raters if r) or None,
        "monk_skin_tone_us": clean(graded.get("monk_skin_tone_label_us")),
        "monk_skin_tone_india": clean(graded.get("monk_skin_tone_label_india")),
    }
    return {k: v for k, v in kept.items() if v}
