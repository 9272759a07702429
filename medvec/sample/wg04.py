"""The two NEMA WG04 reference radiographs pydicom-data ships, copied into the sample as real-world files;
skipped with a warning when pydicom-data is not installed (the sample must build offline)."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from pydicom import dcmread

from medvec.sample.plan import NO_FINDING

log = logging.getLogger(__name__)

#: NEMA WG04 reference radiographs shipped by pydicom-data: (file name, labels, view).
WG04_FILES = (
    ("RG1_UNCR.dcm", NO_FINDING, "PA"),  # chest PA, MONOCHROME1, 15-bit
    ("RG3_UNCR.dcm", "", ""),  # knee: not a chest, so no chest finding and no chest view
)


def wg04_sources() -> list[tuple[str, Path, str, str]]:
    try:
        from pydicom.data import get_testdata_file

        # download=False: this dataset must build offline, never fetching from the internet.
        found = [(name, get_testdata_file(name, download=False), labels, view)
                 for name, labels, view in WG04_FILES]
    except Exception as exc:
        log.warning("pydicom test data unavailable (%s); skipping the WG04 images", exc)
        return []
    missing = [name for name, path, _, _ in found if not path]
    if missing:
        log.warning("pydicom-data is not installed (missing %s); skipping the WG04 images. "
                    "Install it with `pip install pydicom-data`.", ", ".join(missing))
        return []
    return [(name, Path(path), labels, view) for name, path, labels, view in found]


def wg04_patient_id(path: Path) -> str:
    return str(dcmread(path, stop_before_pixels=True, specific_tags=["PatientID"]).get("PatientID", ""))


def copy_wg04(out_dir: Path, sources: list[tuple[str, Path, str, str]]):
    """Copy each reference file under `out_dir/wg04/`; yields its labels.csv row and where it went."""
    for name, source, labels, view in sources:
        target = out_dir / "wg04" / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
        yield ({"path": f"wg04/{name}", "finding_labels": labels, "view_position": view,
                "patient_id": wg04_patient_id(source)}, target)
