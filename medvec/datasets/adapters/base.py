"""What every dataset adapter shares: reading the dataset's published files from its root (folder or
S3 prefix, gzip or not), the adapter interface, and the small value rules (age groups, blanks)."""

from __future__ import annotations

import csv
import gzip
import io
from abc import ABC, abstractmethod

from medvec.datasets.metadata_csv import ImageMetadata, MetadataTable
from medvec.phi import Pseudonymizer
from medvec.sources import ImageSource, open_source


class DatasetFiles:
    """The published files at a dataset's root, by relative path."""

    def __init__(self, root: str, s3_endpoint_url: str | None = None, source: ImageSource | None = None):
        self.source = source or open_source(root, s3_endpoint_url)
        self.root = self.source.root.rstrip("/")

    def uri(self, relative: str) -> str:
        return f"{self.root}/{relative}"

    def exists(self, relative: str) -> bool:
        return self.source.stat(self.uri(relative)) is not None

    def first(self, *relatives: str) -> str | None:
        """The first of these files that is present."""
        return next((r for r in relatives if self.exists(r)), None)

    def read_text(self, relative: str) -> str:
        data = self.source.read_bytes(self.uri(relative))
        if data[:2] == b"\x1f\x8b":  # MIMIC ships .csv.gz; a copy may have been unpacked or not
            data = gzip.decompress(data)
        return data.decode("utf-8-sig")

    def read_csv(self, relative: str) -> list[dict[str, str]]:
        return list(csv.DictReader(io.StringIO(self.read_text(relative))))


class DatasetAdapter(ABC):
    """Turns one public dataset's published files into Medvec's per-image metadata."""

    name: str
    title: str
    #: Published file names (not images) that must never be planned into a batch as images.
    metadata_files: tuple[str, ...] = ()

    @abstractmethod
    def detect(self, files: DatasetFiles) -> bool:
        """True when the root holds this dataset's published files."""

    @abstractmethod
    def load(self, files: DatasetFiles, pseudonymizer: Pseudonymizer,
             allow_columns: tuple[str, ...] = ()) -> MetadataTable:
        """Every image's metadata, keyed by its path relative to the root."""


def clean(value: str | None) -> str | None:
    text = (value or "").strip()
    return text if text and text.lower() not in ("nan", "none") else None


def age_group(value: str | None) -> str | None:
    """Ten-year bands ("40-49") with everything from 90 up as "90+": exact ages (and ages over 89,
    under HIPAA's Safe Harbor) are identifying; a band is what fairness audits filter by."""
    text = (value or "").strip().upper().rstrip("Y")  # NIH's older copies write "058Y"
    try:
        years = int(float(text))
    except ValueError:
        return None
    if years < 0:
        return None
    return "90+" if years >= 90 else f"{years // 10 * 10}-{years // 10 * 10 + 9}"


def sex(value: str | None) -> str | None:
    """"male" / "female" / "other" from M, F, Male, FEMALE, OTHER_OR_UNSPECIFIED ...; unknown is None."""
    text = (value or "").strip().lower()
    if text in ("m", "male"):
        return "male"
    if text in ("f", "female"):
        return "female"
    return "other" if text.startswith("other") else None


def keyed(pseudonymizer: Pseudonymizer, kind: str, value: str | None) -> str | None:
    """A keyed pseudonym for a dataset's study/case number (kept apart from subject keys by `kind`)."""
    value = clean(value)
    return pseudonymizer.subject_key(f"{kind}:{value}") if value else None


def table(rows: dict[str, ImageMetadata]) -> MetadataTable:
    return MetadataTable({key.strip("/").lower(): meta for key, meta in rows.items()}, dropped_columns=[])
