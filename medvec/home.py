"""The Medvec home's layout and every LanceDB table name Medvec owns: the one place that says where a
thing lives, so `reset`, `stats`, the servers and the assets all agree.

Under the home (a folder or an `s3://` prefix):
    batches/<batch>/manifest.json      written once when the batch opens, never changed
    batches/<batch>/records.parquet    one row per normalised image (replaced whole on re-run)
    batches/<batch>/errors.parquet     one row per file that failed
    batches/<batch>/reports.parquet    the batch's parsed reports
    batches/<batch>/awaiting_launch.json, reingest.json   a run a sensor still has to launch
    images/<shard>/<image_id>.webp     viewing size;  thumbs/<shard>/<image_id>.webp  thumbnails
    indexes/<table>/v<version>.*       the in-memory search index saved per table version
    eval/report.json, eval/recall_at_k.png   the latest evaluation
    eval/zero_shot_auc.png             its zero-shot AUC plot (when it ran with zero-shot)
    probes/<table>.json                the finding probes fitted on a table's train split
    models/                            model snapshots and built tiny models (a local home only)
    dagster-io/<asset key>/…           asset values passed between Dagster steps
    lancedb/, incoming/                the default table database and watched source
    collections/<name>/                a collection: a sub-home laid out as above (its own tables, batches,
                                       evaluation), except models/, which stays here (one shared model cache)
"""

from __future__ import annotations

import hashlib
import re

from medvec.storage import HomePath, as_path

BATCHES = "batches"
IMAGES = "images"
THUMBS = "thumbs"
INDEXES = "indexes"
MODELS = "models"
DAGSTER_IO = "dagster-io"
LANCEDB = "lancedb"
INCOMING = "incoming"
BUNDLES = "bundles"
PROBES = "probes"
COLLECTIONS = "collections"
#: A collection's name: a folder name on every file system and an S3 key part, safe in a URL query.
COLLECTION_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
#: Where the latest evaluation lives under the home; the web page, the server and the bundle read it there.
EVAL_FILES = {"json": "eval/report.json", "png": "eval/recall_at_k.png"}
ZERO_SHOT_PLOT = "eval/zero_shot_auc.png"  # beside them when the evaluation ran zero-shot

IMAGES_PREFIX = "images__"
REPORTS_PREFIX = "reports__"
FALLBACK_PREFIX = "fallback_queries__"
SIMILAR_PREFIX = "similar_images__"
INGEST_ERRORS_TABLE = "ingest_errors"
#: Table-name prefixes Medvec owns in a LanceDB database; `reset` drops exactly these (and `ingest_errors`).
TABLE_PREFIXES = (IMAGES_PREFIX, REPORTS_PREFIX, FALLBACK_PREFIX, SIMILAR_PREFIX)


# --- tables ----------------------------------------------------------------------------------------

def image_table_name(model_slug: str) -> str:
    return f"{IMAGES_PREFIX}{model_slug}"


def report_table_name(model_slug: str) -> str:
    return f"{REPORTS_PREFIX}{model_slug}"


def fallback_table_name(model_slug: str) -> str:
    return f"{FALLBACK_PREFIX}{model_slug}"


def similar_table_name(model_slug: str) -> str:
    return f"{SIMILAR_PREFIX}{model_slug}"


def is_medvec_table(name: str) -> bool:
    return name.startswith(TABLE_PREFIXES) or name == INGEST_ERRORS_TABLE


def is_image_table(name: str) -> bool:
    return name.startswith(IMAGES_PREFIX)


def model_slug_of(image_table: str) -> str:
    """`images__tiny_siglip` → `tiny_siglip`."""
    return image_table.removeprefix(IMAGES_PREFIX)


def reports_table_for(image_table: str) -> str:
    """The report table embedded with the same model as `image_table`."""
    return report_table_name(model_slug_of(image_table))


# --- folders ---------------------------------------------------------------------------------------

def batches_dir(home: HomePath) -> HomePath:
    return as_path(home) / BATCHES


def batch_dir(home: HomePath, batch: str) -> HomePath:
    return batches_dir(home) / batch


def index_dir(home: HomePath, table: str) -> HomePath:
    return as_path(home) / INDEXES / table


def eval_file(home: HomePath, kind: str) -> HomePath:
    """`kind` is "json" (the report) or "png" (the recall plot)."""
    return as_path(home) / EVAL_FILES[kind]


def probes_file(home: HomePath, table: str) -> HomePath:
    """The finding probes fitted on `table` (`medvec eval --probes`, the finding_probes asset)."""
    return as_path(home) / PROBES / f"{table}.json"


def dagster_io_dir(home: HomePath) -> HomePath:
    return as_path(home) / DAGSTER_IO


def image_paths(image_id: str) -> tuple[str, str]:
    """Where an image's files live under the Medvec home, sharded so no folder grows huge."""
    shard = hashlib.sha1(image_id.encode()).hexdigest()[:2]
    return f"{IMAGES}/{shard}/{image_id}.webp", f"{THUMBS}/{shard}/{image_id}.webp"


# --- collections -----------------------------------------------------------------------------------

def check_collection_name(name: str) -> str:
    """`name` when it is a valid collection name, else ValueError with one plain line."""
    if not COLLECTION_NAME.fullmatch(name):
        raise ValueError(f"{name!r} is not a collection name: use 1-64 lower-case letters, digits, '_' or '-', "
                         "starting with a letter or digit (e.g. chest, derm_2024)")
    return name


def collection_home(root: HomePath, name: str) -> HomePath:
    """The sub-home of collection `name` under the root home `root`."""
    return as_path(root) / COLLECTIONS / check_collection_name(name)


def root_home(home: HomePath, collection: str | None) -> HomePath:
    """The root home of `home`, the sub-home of `collection` (None: `home` is the root itself)."""
    return as_path(home).parent.parent if collection else as_path(home)


def collection_names(root: HomePath) -> list[str]:
    """The collections under the root home, sorted; folders with names that are not collection names are
    not collections."""
    folder = as_path(root) / COLLECTIONS
    if not folder.is_dir():
        return []
    return sorted(path.name for path in folder.iterdir() if COLLECTION_NAME.fullmatch(path.name) and path.is_dir())
