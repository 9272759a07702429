"""The sample's broken files: what an operator's folder really holds, so every demo shows error records."""

from __future__ import annotations

from pathlib import Path

from medvec.sample.chest_dicom import write_chest
from medvec.sample.plan import ChestSpec


def write_broken(out_dir: Path, spec: ChestSpec) -> list[Path]:
    """A DICOM cut off mid-pixel-data (an interrupted transfer) and a text file posing as data."""
    broken = out_dir / "broken"
    truncated = broken / "truncated_chest.dcm"
    write_chest(spec, truncated)
    data = truncated.read_bytes()
    truncated.write_bytes(data[: int(len(data) * 0.6)])
    notes = broken / "notes.txt"
    notes.write_text("Scan notes for the demo: this is a text file, not an image.\n"
                     "Medvec should record it as an unreadable file and carry on.\n", encoding="utf-8")
    return [truncated, notes]

