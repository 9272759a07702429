"""Any folder with one metadata CSV (labels.csv, metadata.csv, or the only CSV at the root): today's
generic reader (medvec.datasets.metadata_csv), unchanged, behind the adapter interface."""

from __future__ import annotations

from medvec.datasets.adapters.base import DatasetAdapter, DatasetFiles
from medvec.datasets.metadata_csv import MetadataTable
from medvec.phi import Pseudonymizer


class GenericCsv(DatasetAdapter):
    name = "generic"
    title = "Any images with a metadata CSV (path, labels, view, split, patient columns)"

    def __init__(self, csv_uri: str | None = None):
        self.csv_uri = csv_uri

    def detect(self, files: DatasetFiles) -> bool:
        return files.source.find_metadata_csv() is not None

    def load(self, files: DatasetFiles, pseudonymizer: Pseudonymizer,
             allow_columns: tuple[str, ...] = ()) -> MetadataTable:
        uri = self.csv_uri or files.source.find_metadata_csv()
        if uri is None:
            raise ValueError(f"no metadata CSV at {files.root}: name one with --metadata")
        text = files.source.read_bytes(uri).decode("utf-8-sig")
        return MetadataTable.from_csv_text(text, pseudonymizer, allow_columns)
