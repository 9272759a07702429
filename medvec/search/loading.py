"""Loading one version of a model's image table for search: vectors read batch by batch into one
float32 matrix, hit metadata, the saved IVF structure (memory-mapped where it is a local file) and the
precomputed answers; a missing index is built on a background thread while the exact scan answers.

Memory: `to_arrow()` + `combine_chunks()` held the Arrow table, its combined copy and the numpy
matrix at once (~2.7x the vectors at 377k x 1152); a `to_batches` scan still peaked at ~2.5x (Lance
reads whole vector pages and fragments ahead). Here the only full-size allocation is the final matrix,
filled by `take_offsets` pages, the metadata scan's freed buffers are handed back before it fills, and
the ids stay in Arrow (`ImageIds`): ~1.2x the vectors, process baseline included (benchmarks/search.py --load-only).
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import logging
import threading
from collections import OrderedDict
from contextlib import contextmanager
from typing import Callable, Iterable

import numpy as np
import pyarrow as pa

from medvec.home import fallback_table_name, index_dir, similar_table_name
from medvec.search.image_ids import ImageIds
from medvec.search.vector_index import IndexInfo, RowFilter, VectorIndex
from medvec.storage import HomePath, is_remote
from medvec.tables import database

log = logging.getLogger(__name__)

try:  # glibc's allocator controls (see _large_blocks_mapped); other C libraries go without
    _LIBC = ctypes.CDLL("libc.so.6")
    _LIBC.mallopt, _LIBC.malloc_trim  # noqa: B018 - both must exist
except (OSError, AttributeError):
    _LIBC = None
_M_MMAP_THRESHOLD = -3  # mallopt's parameter number (malloc.h)

#: Columns a hit carries as metadata. `source_uri` is left out on purpose: file paths can hold
#: identifiers (names, MRNs in folder names) and a search client has no use for them.
HIT_COLUMNS = ("image_id", "study_id", "series_id", "subject_key", "view_position", "modality", "body_part",
               "labels", "split", "sex", "age_group", "skin_type", "rows", "columns", "width", "height", "source_format", "photometric",
               "bits_stored", "window_source", "batch", "image_uri", "thumb_uri", "extra")
#: Rows per `take_offsets` page while loading: 2,048 x 1,152 floats is 9 MB in flight beside the matrix.
LOAD_BATCH_ROWS = 2_048


def ids_fingerprint(ids: Iterable[str]) -> str:
    digest = hashlib.sha256()
    for image_id in ids:
        digest.update(image_id.encode())
        digest.update(b"\0")
    return digest.hexdigest()


class LoadedTable:
    """One table version held in memory: vectors, metadata, the index and the precomputed answers.

    `index` may be replaced once, by the background build, with one attribute assignment: a query
    reads it once and uses that object throughout, so it sees the old index or the new, never half."""

    def __init__(self, version: int, ids: ImageIds, meta: pa.Table, index: VectorIndex):
        self.version = version
        self.ids = ids  # a sequence of str: ids[row]
        self.row_of = ids.row_of  # a read-only mapping image_id -> row
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


def read_table(table, batch_rows: int = LOAD_BATCH_ROWS) -> tuple[ImageIds, np.ndarray, pa.Table]:
    """(ids, vectors, hit metadata) of the table's checked-out version, in table order.

    The metadata comes from one scan without the vector column (small; its ~370 freed batches are
    handed back before the vectors arrive, see `_release_freed`); the vectors by
    `take_offsets` in `batch_rows` pages, each copied into its rows of the one final matrix and
    dropped. A scan of the vector column holds far more than a page: Lance reads a data file's
    vector page whole (one page per fragment as LanceDB writes them, 230 MB at 50,000 x 1,152) and
    reads fragments ahead, so `to_batches` peaked at ~2.5x the vectors whatever its batch size."""
    dim = table.schema.field("vector").type.list_size
    columns = [c for c in HIT_COLUMNS if c in table.schema.names]
    with _large_blocks_mapped():
        meta = _dictionary_strings(table.search().select(columns).limit(None).to_arrow().combine_chunks())
        _release_freed()
        column = meta.column("image_id").combine_chunks()
        ids = ImageIds(column)  # its sorting scratch comes and goes before the matrix fills
        vectors = np.empty((meta.num_rows, dim), dtype=np.float32)
        for start in range(0, meta.num_rows, batch_rows):
            _take_vectors(table, column, vectors, start, min(meta.num_rows, start + batch_rows))
    return ids, vectors, meta


def _take_vectors(table, ids: pa.Array, vectors: np.ndarray, start: int, stop: int) -> None:
    """Rows [start, stop) of the vectors, written in place. `take_offsets` returns rows in no
    promised order, so each lands by its `_rowoffset`; its `image_id` must be the metadata's for
    that row (a mismatch would pair ids with other rows' vectors under a valid-looking fingerprint)."""
    page = table.take_offsets(list(range(start, stop))).select(["image_id", "vector", "_rowoffset"]).to_arrow()
    if page.num_rows != stop - start:
        raise RuntimeError(f"{table.name}: asked for rows {start}-{stop}, got {page.num_rows}; the table "
                           "changed while loading")
    dim = vectors.shape[1]
    for batch in page.to_batches():
        rows = batch.column("_rowoffset").to_numpy().astype(np.int64, copy=False)
        if not ids.take(pa.array(rows)).equals(batch.column("image_id")):
            raise RuntimeError(f"{table.name}: rows {start}-{stop} changed while loading")
        # flatten() honours the batch's slice offset; to_numpy() views the float buffer (no copy).
        values = batch.column("vector").flatten().to_numpy()
        if rows.size and rows[-1] - rows[0] == rows.size - 1 and np.all(np.diff(rows) == 1):
            vectors[rows[0]:rows[-1] + 1] = values.reshape(-1, dim)
        else:
            vectors[rows] = values.reshape(-1, dim)


def _dictionary_strings(meta: pa.Table) -> pa.Table:
    """String columns with few distinct values (view, modality, split, study ids...) held as dictionaries
    with the narrowest index type: ~45 MB less at 377k rows, and every reader (`to_pylist`, `take`)
    sees the same values. Filters match on the dictionary (`medvec.search.images._filter_mask`)."""
    for position, name in enumerate(meta.column_names):
        column = meta.column(name)
        if name == "image_id" or not pa.types.is_string(column.type):
            continue
        encoded = column.dictionary_encode().combine_chunks()
        values = len(encoded.dictionary)
        index = pa.int8() if values < 2**7 else pa.int16() if values < 2**15 else pa.int32()
        encoded = encoded.cast(pa.dictionary(index, pa.string()))
        if encoded.nbytes < column.nbytes * 0.75:
            meta = meta.set_column(position, name, encoded)
    return meta


def _release_freed() -> None:
    """Hand freed heap memory back to the OS. The metadata scan's batches (~1,000 rows each, so
    their buffers fall below even a 1 MB mmap threshold) stay in glibc's arenas once freed:
    ~200 MB at 377k rows of 44-character UIDs, held beside the whole vector matrix unless trimmed
    here; Arrow's own pool keeps the freed pages of the combine step likewise."""
    pa.default_memory_pool().release_unused()
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


@contextmanager
def _large_blocks_mapped():
    """glibc malloc (Lance's allocator) serves blocks below its mmap threshold from per-thread
    arenas and keeps them when freed; after the first large free that threshold rises to 32 MB, so
    every scan and take buffer lands in an arena and stays resident beside the filling matrix
    (~250 MB at 377k x 1,152). While loading, blocks of 1 MB and up get their own mapping, which
    `free` returns to the OS; after, the threshold is set to 32 MB, where glibc's own adjustment
    leaves a long-running process, so queries' larger arrays are not mapped and faulted each time."""
    if _LIBC is None:
        yield
        return
    _LIBC.mallopt(_M_MMAP_THRESHOLD, 1 << 20)
    try:
        yield
    finally:
        _LIBC.mallopt(_M_MMAP_THRESHOLD, 32 << 20)
        _LIBC.malloc_trim(0)


def saved_index(home: HomePath | None, table_name: str, version: int, ids: Iterable[str],
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
