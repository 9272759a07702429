"""Loading one version of a model's image table for search: vectors read batch by batch into one
float32 matrix, hit metadata, the saved IVF structure (memory-mapped where it is a local file) and the
precomputed answers; a missing index is built on a background thread while the exact scan answers.

Memory: `to_arrow()` + `combine_chunks()` held the Arrow table, its combined copy and the numpy
matrix at once (~2.7x the vectors at 377k x 1152). Here the only full-size allocation is the final
matrix; each Arrow batch is copied into its rows and dropped (benchmarks/search.py --load-only).
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from collections import OrderedDict
from typing import Callable

import numpy as np
import pyarrow as pa

from medvec.home import fallback_table_name, index_dir, similar_table_name
from medvec.search.vector_index import IndexInfo, RowFilter, VectorIndex
from medvec.storage import HomePath, is_remote
from medvec.tables import database

log = logging.getLogger(__name__)

#: Columns a hit carries as metadata. `source_uri` is left out on purpose: file paths can hold
#: identifiers (names, MRNs in folder names) and a search client has no use for them.
HIT_COLUMNS = ("image_id", "study_id", "series_id", "subject_key", "view_position", "modality", "body_part",
               "labels", "split", "rows", "columns", "width", "height", "source_format", "photometric",
               "bits_stored", "window_source", "batch", "image_uri", "thumb_uri", "extra")
#: Rows per Arrow batch while loading: 8,192 x 1,152 floats is 38 MB in flight on top of the matrix.
LOAD_BATCH_ROWS = 8_192


def ids_fingerprint(ids: list[str]) -> str:
    digest = hashlib.sha256()
    for image_id in ids:
        digest.update(image_id.encode())
        digest.update(b"\0")
    return digest.hexdigest()


class LoadedTable:
    """One table version held in memory: vectors, metadata, the index and the precomputed answers.

    `index` may be replaced once, by the background build, with one attribute assignment: a query
    reads it once and uses that object throughout, so it sees the old index or the new, never half."""

    def __init__(self, version: int, ids: list[str], meta: pa.Table, index: VectorIndex):
        self.version = version
        self.ids = ids
        self.row_of = {image_id: row for row, image_id in enumerate(ids)}
        self.meta = meta
        self.index = index
        self.index_ready = threading.Event()
        self.filters: OrderedDict = OrderedDict()  # Filters -> RowFilter, most recent last
        self.fallback_vectors: dict[str, np.ndarray] = {}
        self.fallback_hits: dict[str, list[tuple[str, float]]] = {}
        self.similar: dict[str, list[tuple[str, float]]] = {}
        self.precomputed: tuple = ()

    def row_filter(self, key, build: Callable[[], RowFilter]) -> RowFilter:
        cached = self.filters.get(key)
        if cached is not None:
            self.filters.move_to_end(key)
            return cached
        made = self.filters[key] = build()
        while len(self.filters) > 64:
            self.filters.popitem(last=False)
        return made


def read_table(table, batch_rows: int = LOAD_BATCH_ROWS) -> tuple[list[str], np.ndarray, pa.Table]:
    """(ids, vectors, hit metadata) of the table's checked-out version, read batch by batch."""
    dim = table.schema.field("vector").type.list_size
    columns = [c for c in HIT_COLUMNS if c in table.schema.names]
    capacity = table.count_rows()
    vectors = np.empty((capacity, dim), dtype=np.float32)
    ids: list[str] = []
    meta_batches = []
    filled = 0
    reader = table.search().select([*columns, "vector"]).limit(None).to_batches(batch_rows)
    for batch in reader:
        n = batch.num_rows
        if filled + n > capacity:  # a writer committed between the count and the scan: grow (rare)
            capacity = max(filled + n, int(capacity * 1.25) + 1)
            vectors = np.resize(vectors, (capacity, dim))
        flat = batch.column("vector").flatten().to_numpy(zero_copy_only=False)
        vectors[filled:filled + n] = flat.reshape(n, dim)
        ids.extend(batch.column("image_id").to_pylist())
        meta_batches.append(batch.select(columns))
        filled += n
    if filled < capacity:
        vectors = vectors[:filled].copy() if filled else vectors[:0]
    schema = meta_batches[0].schema if meta_batches else pa.schema([table.schema.field(c) for c in columns])
    meta = pa.Table.from_batches(meta_batches, schema=schema).combine_chunks()
    return ids, vectors, meta


def saved_index(home: HomePath | None, table_name: str, version: int, ids: list[str],
                vectors: np.ndarray) -> VectorIndex | None:
    """The IVF structure `image_index` saved for this exact table version, if any."""
    if home is None:
        return None
    folder = index_dir(home, table_name)
    meta_path, ivf_path = folder / f"v{version}.json", folder / f"v{version}.faiss"
    if not meta_path.exists() or not ivf_path.exists():
        return None
    try:
        saved = json.loads(meta_path.read_text())
        if saved.get("ids_sha") != ids_fingerprint(ids):
            return None
        info = IndexInfo(**saved["info"])
        if is_remote(ivf_path):
            return VectorIndex.with_saved_ivf(vectors, ivf_path, info)
        return _mapped_index(vectors, str(ivf_path), info)
    except Exception as exc:  # noqa: BLE001 - a damaged cache is rebuilt, never fatal
        log.warning("ignoring the saved index for %s v%s (%s)", table_name, version, exc)
        return None


def _mapped_index(vectors: np.ndarray, path: str, info: IndexInfo) -> VectorIndex:
    """The saved IVF read from its file with FAISS's mmap flag: no bytes copy of the file beside the
    index (`read_bytes` + `deserialize_index` held both). Fast-scan lists are repacked into memory
    by FAISS whatever the flag; they are d/8 bytes a row, ~3% of the vectors."""
    import faiss

    ivf = faiss.read_index(path, faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY)
    if ivf.ntotal != len(vectors) or ivf.d != vectors.shape[1]:
        raise ValueError(f"saved index {path} holds {ivf.ntotal}x{ivf.d}, table has {vectors.shape}")
    return VectorIndex(vectors, ivf=ivf, info=info)


def build_in_background(loaded: LoadedTable, vectors: np.ndarray, build: Callable[[np.ndarray], VectorIndex],
                        label: str) -> threading.Thread:
    """Build the IVF index off the request path; until it is swapped in, the exact scan answers (exact
    is slower, ~20-60 ms at 377k rows, but right, and nothing waits 15-21 s under a lock)."""

    def run() -> None:
        try:
            built = build(vectors)
            loaded.index = built
            log.info("%s: %s index built in the background (%.1fs)", label, built.info.kind,
                     built.info.build_seconds)
        except Exception:  # noqa: BLE001 - queries keep the exact path; say why
            log.exception("%s: building the search index failed; exact search goes on answering", label)
        finally:
            loaded.index_ready.set()

    thread = threading.Thread(target=run, name=f"index-build:{label}", daemon=True)
    thread.start()
    return thread


def precomputed_versions(db, model_slug: str) -> tuple:
    tables = (database.open_table_if_exists(db, fallback_table_name(model_slug)),
              database.open_table_if_exists(db, similar_table_name(model_slug)))
    return tuple(t.version if t is not None else None for t in tables)


def load_precomputed(db, model_slug: str, loaded: LoadedTable) -> None:
    """Read the fallback and neighbour tables, then swap them in at once (readers never see half)."""
    versions = precomputed_versions(db, model_slug)
    vectors, hits, similar_of = {}, {}, {}
    fallback = database.open_table_if_exists(db, fallback_table_name(model_slug))
    if fallback is not None:
        for row in fallback.to_arrow().to_pylist():
            key = row["query_key"]
            vectors[key] = np.asarray(row["vector"], dtype=np.float32)
            if row["table_version"] == loaded.version:  # answers for exactly these rows
                hits[key] = list(zip(row["image_ids"], row["scores"]))
    similar = database.open_table_if_exists(db, similar_table_name(model_slug))
    if similar is not None:
        data = similar.to_arrow()
        if data.num_rows and data.column("table_version")[0].as_py() == loaded.version:
            for image_id, neighbours, scores in zip(data.column("image_id").to_pylist(),
                                                    data.column("neighbour_ids").to_pylist(),
                                                    data.column("scores").to_pylist()):
                similar_of[image_id] = list(zip(neighbours, scores))
    loaded.fallback_vectors, loaded.fallback_hits, loaded.similar = vectors, hits, similar_of
    loaded.precomputed = versions
