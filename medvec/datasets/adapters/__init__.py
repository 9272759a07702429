"""Dataset adapters: each public dataset's published files → Medvec's per-image metadata.

`detect_dataset(root)` picks the adapter from the files present (the published datasets first, then
the generic CSV); `get_adapter(name)` is the `--dataset NAME` override.
"""

from __future__ import annotations

from medvec.datasets.adapters.base import DatasetAdapter, DatasetFiles
from medvec.datasets.adapters.chexpert import CheXpert
from medvec.datasets.adapters.generic import GenericCsv
from medvec.datasets.adapters.mimic_cxr import MimicCxr
from medvec.datasets.adapters.nih import NihChestXray14
from medvec.datasets.adapters.scin import Scin
from medvec.datasets.adapters.vindr_cxr import VinDrCxr
from medvec.datasets.metadata_csv import MetadataTable
from medvec.phi import Pseudonymizer

#: Detection order: the specific layouts before the generic CSV (NIH's entry file is also "a CSV").
ADAPTERS: dict[str, DatasetAdapter] = {a.name: a for a in (
    MimicCxr(), CheXpert(), NihChestXray14(), VinDrCxr(), Scin(), GenericCsv())}
ALIASES = {"mimic-cxr-jpg": "mimic-cxr", "mimic": "mimic-cxr", "vindr": "vindr-cxr",
           "chestx-ray14": "nih", "csv": "generic"}
DATASET_NAMES = tuple(ADAPTERS)
#: Published metadata files of every dataset: never planned into a batch as images.
_METADATA_NAMES = {n.lower() for a in ADAPTERS.values() for n in a.metadata_files}


def get_adapter(name: str) -> DatasetAdapter:
    key = name.strip().lower()
    key = ALIASES.get(key, key)
    if key not in ADAPTERS:
        raise ValueError(f"unknown dataset {name!r}; known datasets: {', '.join(DATASET_NAMES)}")
    return ADAPTERS[key]


def detect_dataset(root: str, s3_endpoint_url: str | None = None) -> DatasetAdapter | None:
    """The adapter whose published files are at `root`, or None when nothing is recognised."""
    files = DatasetFiles(root, s3_endpoint_url)
    return next((a for a in ADAPTERS.values() if a.detect(files)), None)


def load_dataset_metadata(name: str, root: str, pseudonymizer: Pseudonymizer, *, allow_columns: tuple[str, ...] = (),
                          s3_endpoint_url: str | None = None) -> MetadataTable:
    return get_adapter(name).load(DatasetFiles(root, s3_endpoint_url), pseudonymizer, allow_columns)


def is_dataset_metadata_file(uri: str) -> bool:
    """A dataset's own published list or label file (`.csv.gz`, `SHA256SUMS.txt`, `test_list.txt` …)."""
    name = uri.rsplit("/", 1)[-1].lower()
    return name in _METADATA_NAMES or name.endswith((".csv.gz", ".zip"))


def choose_metadata(source, dataset: str | None = None, metadata_csv: str | None = None) -> tuple[str | None, str | None]:
    """(dataset adapter name, metadata CSV) for a source: `--dataset` wins, an explicit `--metadata` means
    the generic CSV, else the files present decide. The generic adapter travels as today's `metadata_csv`."""
    if not getattr(source, "holds_dataset_files", True):
        return None, metadata_csv  # an archive (DICOMweb) serves instances, not a dataset's published files
    if dataset:
        adapter = get_adapter(dataset)
    elif metadata_csv:
        return None, metadata_csv
    else:
        adapter = next((a for a in ADAPTERS.values() if a.detect(DatasetFiles(source.root, source=source))), None)
    if adapter is None or adapter.name == GenericCsv.name:
        return None, metadata_csv or source.find_metadata_csv()
    return adapter.name, None
