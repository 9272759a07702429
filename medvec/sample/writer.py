"""Writes Medvec's offline demo dataset: two NEMA WG04 radiographs, synthetic chest X-ray DICOMs
whose findings are known by construction, a labels.csv, and a few broken files for error records.

The pieces live beside it: `plan` (which images), `painter` (their anatomy), `chest_dicom` (the files),
`wg04`, `broken` and `reports`; this module writes them all and the labels.csv.
"""

from __future__ import annotations

import csv
import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from pydicom.uid import UID, ExplicitVRLittleEndian

from medvec.sample.broken import write_broken
from medvec.sample.chest_dicom import write_chest
from medvec.sample.plan import assign_splits, chest_specs
from medvec.sample.reports import studies_of, write_sample_reports
from medvec.sample.wg04 import copy_wg04, wg04_sources

log = logging.getLogger(__name__)

LABELS_CSV_HEADER = ("path", "finding_labels", "view_position", "split", "patient_id")


@dataclass
class SampleDataSummary:
    """What write_sample_data wrote. `by_label` counts labelled images per finding label
    (an image with two findings counts once for each)."""

    out_dir: Path
    files: list[Path]
    labels_csv: Path
    by_label: dict[str, int] = field(default_factory=dict)



def write_sample_data(out_dir: str | Path, *, count: int = 36, include_broken: bool = True,
                      include_reports: bool = True,
                      progress: Callable[[int, int], None] | None = None) -> SampleDataSummary:
    """Write the demo dataset under `out_dir` (files are overwritten, nothing else is removed)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    wg04 = wg04_sources()
    specs = chest_specs(count)
    total = len(wg04) + len(specs) + (2 if include_broken else 0) + (len(studies_of(specs)) if include_reports else 0)
    files: list[Path] = []
    rows: list[dict[str, str]] = []

    def done(path: Path) -> None:
        files.append(path)
        if progress is not None:
            progress(len(files), total)

    for row, target in copy_wg04(out_dir, wg04):
        rows.append(row)
        done(target)

    used_syntaxes: Counter[str] = Counter()
    for spec in specs:
        path = out_dir / spec.relative_path
        used_syntaxes[write_chest(spec, path)] += 1
        rows.append({"path": spec.relative_path, "finding_labels": "|".join(spec.labels),
                     "view_position": spec.view, "patient_id": spec.patient_id})
        done(path)

    if include_reports:
        for path in write_sample_reports(out_dir, specs):
            done(path)

    if include_broken:
        # The next unused index gives the truncated file its own UIDs, so it is never mistaken
        # for a good image; uncompressed, so the cut lands in the middle of the pixel data.
        broken_spec = replace(chest_specs(1)[0], index=count, transfer_syntax=ExplicitVRLittleEndian)
        for path in write_broken(out_dir, broken_spec):
            done(path)

    labels_csv = write_labels_csv(out_dir / "labels.csv", rows)
    by_label = Counter(label for row in rows for label in row["finding_labels"].split("|") if label)
    log.info("sample data: %d files in %s; labels %s; transfer syntaxes %s", len(files), out_dir,
             dict(sorted(by_label.items())), {UID(uid).name: n for uid, n in sorted(used_syntaxes.items())})
    return SampleDataSummary(out_dir=out_dir, files=files, labels_csv=labels_csv,
                             by_label=dict(sorted(by_label.items())))


def write_labels_csv(path: Path, rows: list[dict[str, str]]) -> Path:
    """One row per labelled file, with the split its subject falls in (subjects never straddle splits)."""
    splits = assign_splits(list(dict.fromkeys(row["patient_id"] for row in rows)))
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=LABELS_CSV_HEADER, lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow({**row, "split": splits[row["patient_id"]]})
    return path
