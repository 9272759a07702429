"""Search one model's image table: text → image, image → image, find-similar, with filters.

LanceDB is the system of record. `ImageSearch` loads the table's vectors and metadata into
memory (a `VectorIndex`; loading lives in `medvec.search.loading`, the request and answer types in
`medvec.search.results`), answers from there, and reloads when the table's version changes.
Precomputed answers (`fallback_queries`, `similar_images`) are used when they were computed
against the current version and the request fits them; otherwise the live index answers.
"""

from __future__ import annotations

import functools
import json
import logging
import secrets
import threading
import time
from collections import OrderedDict
from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from medvec.embedders.base import Embedder, l2_normalize
from medvec.home import fallback_table_name, index_dir, similar_table_name  # noqa: F401 - also re-exported
from medvec.search.loading import (HIT_COLUMNS, LoadedTable, build_in_background,  # noqa: F401
                                   ids_fingerprint, load_precomputed, precomputed_versions, read_table, saved_index)
from medvec.search.results import (MAX_K, Filters, Hit, NoSuchImage, NotIndexed, SearchInputError,  # noqa: F401
                                   SearchResult, check_k, normalize_query_text)
from medvec.search.vector_index import EXACT_BELOW, RowFilter, VectorIndex
from medvec.settings import DEFAULT_MAX_PIXELS
from medvec.storage import HomePath, as_path
from medvec.tables import database
from medvec.tables.images import image_table_name

log = logging.getLogger(__name__)


class ImageSearch:
    """Search over `images__<model>`; thread-safe for concurrent readers (the HTTP server).

    `embedder_factory` loads the model's text/image encoder on first need: fallback queries and
    find-similar never load it.
    """

    def __init__(self, lancedb_uri: str, model_slug: str, *, model_name: str | None = None,
                 home: HomePath | None = None, embedder_factory: Callable[[], Embedder] | None = None,
                 refresh_seconds: float = 2.0, exact_below: int | None = None,
                 build_index: Callable[[np.ndarray], VectorIndex] | None = None,
                 max_pixels: int = DEFAULT_MAX_PIXELS, upload_concurrency: int = 2):
        """`build_index` makes the index for a version with no saved one, on a background thread
        (default: `VectorIndex.build` with `exact_below`); tables under `exact_below` rows stay exact."""
        self.lancedb_uri = lancedb_uri
        self.model_slug = model_slug
        self.model_name = model_name or model_slug
        self.table_name = image_table_name(model_slug)
        self.home = as_path(home) if home else None
        self.refresh_seconds = refresh_seconds
        self.max_pixels = max_pixels  # MEDVEC_MAX_PIXELS, for uploaded query images as for ingest
        self.upload_concurrency = upload_concurrency  # MEDVEC_UPLOAD_CONCURRENCY: decodes at once (the server)
        self.exact_below = EXACT_BELOW if exact_below is None else exact_below
        self._build_index = build_index or functools.partial(VectorIndex.build, exact_below=self.exact_below)
        self._embedder_factory = embedder_factory
        self._embedder: Embedder | None = None
        self._text_cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._lock = threading.RLock()
        self._loaded: LoadedTable | None = None
        self._checked_at = 0.0
        self._db = database.connect(lancedb_uri)
        self._table = None

    # --- loading ---------------------------------------------------------------------------------

    def snapshot(self) -> LoadedTable:
        """The loaded table as of now (vectors, ids, index, version): refreshed when it is due."""
        return self._current()

    def _current(self) -> LoadedTable:
        now = time.monotonic()
        loaded = self._loaded
        if loaded is not None and now - self._checked_at < self.refresh_seconds:
            return loaded
        with self._lock:
            if self._table is None:
                self._table = database.open_table_if_exists(self._db, self.table_name)
                if self._table is None:
                    raise NotIndexed(f"no table {self.table_name} at {self.lancedb_uri}: nothing has been embedded "
                                     f"with {self.model_name} yet (run `medvec ingest` or materialise image_embeddings)")
            else:
                self._table.checkout_latest()  # another process may have written since
            version = self._table.version
            self._checked_at = now
            if self._loaded is None or self._loaded.version != version:
                self._loaded = self._load(version)
            elif self._loaded.precomputed != precomputed_versions(self._db, self.model_slug):
                load_precomputed(self._db, self.model_slug, self._loaded)  # new answers, same vectors
            return self._loaded

    def _load(self, version: int) -> LoadedTable:
        started = time.perf_counter()
        ids, vectors, meta = read_table(self._table)
        index = saved_index(self.home, self.table_name, version, ids, vectors)
        loaded = LoadedTable(version, ids, meta, index or VectorIndex(vectors))
        if index is not None or len(ids) < self.exact_below:
            loaded.index_ready.set()
        else:  # queries answer exactly meanwhile; the built index is swapped in when ready
            build_in_background(loaded, loaded.index.vectors, self._build_index, f"{self.table_name} v{version}")
        load_precomputed(self._db, self.model_slug, loaded)
        log.info("loaded %s v%s: %d rows, %s index in %.2fs", self.table_name, version, len(ids),
                 "saved" if index is not None else ("exact" if loaded.index_ready.is_set() else "building the"),
                 time.perf_counter() - started)
        return loaded

    def wait_for_index(self, timeout: float | None = None) -> bool:
        """Block until the current version's index is final (saved, built or exact); False on timeout.
        For batch work (precomputing neighbours) that wants the fast index, not for queries."""
        return self._current().index_ready.wait(timeout)

    def refresh(self) -> int:
        """Force a version check now; returns the version held."""
        self._checked_at = 0.0
        return self._current().version

    # --- the encoder -------------------------------------------------------------------------------

    def _encoder(self) -> Embedder:
        with self._lock:
            if self._embedder is None:
                if self._embedder_factory is None:
                    raise SearchInputError("this search has no encoder configured: only fallback queries and "
                                           "find-similar can be answered")
                self._embedder = self._embedder_factory()
            return self._embedder

    def close(self) -> None:
        if self._embedder is not None:
            self._embedder.close()
            self._embedder = None

    # --- queries -------------------------------------------------------------------------------------

    def search_text(self, text: str, k: int = 10, filters: Filters = Filters()) -> SearchResult:
        started = time.perf_counter()
        text = (text or "").strip()
        if not text:
            raise SearchInputError("the query text is empty")
        if len(text) > 1000:
            raise SearchInputError("the query text is longer than 1,000 characters")
        k = check_k(k)
        loaded = self._current()
        key = normalize_query_text(text)
        query = {"text": text, "k": k, "filters": filters.to_json()}
        stored = loaded.fallback_hits.get(key)
        if stored is not None and not filters and k <= len(stored):
            hits = self._hits(loaded, [loaded.row_of[i] for i, _ in stored[:k]], [s for _, s in stored[:k]])
            return self._result(hits, "fallback", loaded, started, query)
        vector, encoded = self.text_vector(text)
        route = "index" if encoded else "fallback_vector+index"
        return self._vector_search(loaded, vector, k, filters, started, query, route)

    def text_vector(self, text: str) -> tuple[np.ndarray, bool]:
        """The model's embedding of `text`: the stored one for a common query, else encoded now
        (the second value says whether the encoder ran)."""
        key = normalize_query_text(text)
        vector = self._current().fallback_vectors.get(key)
        if vector is not None:
            return vector, False
        with self._lock:
            cached = self._text_cache.get(text)
            if cached is not None:  # reports and images ask for the same text in one request
                self._text_cache.move_to_end(text)
                return cached, True
        vector = self._encoder().embed_texts([text])[0]
        with self._lock:
            self._text_cache[text] = vector
            while len(self._text_cache) > 256:
                self._text_cache.popitem(last=False)
        return vector, True

    def search_image(self, data: bytes, k: int = 10, filters: Filters = Filters(), *,
                     filename: str = "query") -> SearchResult:
        """Embed an uploaded DICOM/PNG/JPEG exactly as ingest would, then search with it."""
        started = time.perf_counter()
        k = check_k(k)
        vector, source_format = self._upload_vector(data, filename)
        query = {"image": "upload", "format": source_format, "k": k, "filters": filters.to_json()}
        return self._vector_search(self._current(), vector, k, filters, started, query, "index")

    def image_vector(self, data: bytes, filename: str = "query") -> np.ndarray:
        """The model's embedding of an uploaded image, normalised exactly as ingest would."""
        return self._upload_vector(data, filename)[0]

    def _upload_vector(self, data: bytes, filename: str) -> tuple[np.ndarray, str]:
        from medvec.imaging.dicom import UnreadableImage
        from medvec.imaging.normalize import NormalizeOptions, normalize_bytes
        from medvec.phi import Pseudonymizer

        if not data:
            raise SearchInputError("the uploaded file is empty")
        try:
            # A query's subject key is never stored or shown: a throwaway key keeps it meaningless. Nor are
            # its pixels, so burned-in text (an ultrasound) is no reason to refuse it.
            normalized = normalize_bytes(data, filename, pseudonymizer=Pseudonymizer(secrets.token_hex(16)),
                                         options=NormalizeOptions(max_pixels=self.max_pixels, allow_burned_in=True))
        except UnreadableImage as exc:
            raise SearchInputError(f"the uploaded file could not be read as an image: {exc.reason}") from None
        except Exception as exc:  # noqa: BLE001 - a decoder's bug on a crafted file is still bad input
            log.warning("an uploaded file failed to decode unexpectedly (%s)", type(exc).__name__)
            raise SearchInputError(f"the uploaded file could not be decoded ({type(exc).__name__})") from None
        self._current()  # a missing table is said before the encoder loads
        return self._encoder().embed_images([normalized.view_webp])[0], normalized.record.source_format

    def search_vector(self, vector: np.ndarray, k: int = 10, filters: Filters = Filters()) -> SearchResult:
        started = time.perf_counter()
        loaded = self._current()
        vector = l2_normalize(np.asarray(vector, dtype=np.float32).reshape(1, -1))[0]
        if vector.shape[0] != loaded.index.vectors.shape[1]:
            raise SearchInputError(f"query vector has {vector.shape[0]} dims, the table {loaded.index.vectors.shape[1]}")
        return self._vector_search(loaded, vector, check_k(k), filters, started, {"vector": True, "k": k}, "index")

    def similar(self, image_id: str, k: int = 10, filters: Filters = Filters()) -> SearchResult:
        """The k images nearest to a stored one (itself excluded)."""
        started = time.perf_counter()
        k = check_k(k)
        loaded = self._current()
        row = loaded.row_of.get(image_id)
        if row is None:
            raise NoSuchImage(f"no image {image_id!r} in {self.table_name}")
        query = {"image_id": image_id, "k": k, "filters": filters.to_json()}
        stored = loaded.similar.get(image_id)
        if stored is not None and not filters and k <= len(stored):
            hits = self._hits(loaded, [loaded.row_of[i] for i, _ in stored[:k]], [s for _, s in stored[:k]])
            return self._result(hits, "similar_images", loaded, started, query)
        return self._vector_search(loaded, loaded.index.vectors[row], k, filters, started, query, "index",
                                   exclude_row=row)

    def get(self, image_id: str) -> dict:
        loaded = self._current()
        row = loaded.row_of.get(image_id)
        if row is None:
            raise NoSuchImage(f"no image {image_id!r} in {self.table_name}")
        return self._hits(loaded, [row], [1.0])[0].metadata | {"image_id": image_id}

    def info(self) -> dict:
        loaded = self._current()
        return {"model": self.model_name, "table": self.table_name, "table_version": loaded.version,
                "rows": len(loaded.ids), "index": loaded.index.info.to_json(),
                "fallback_queries": len(loaded.fallback_vectors),
                "fallback_answers_current": len(loaded.fallback_hits),
                "similar_images_current": len(loaded.similar),
                "encoder_loaded": self._embedder is not None}

    # --- internals -----------------------------------------------------------------------------------

    def _vector_search(self, loaded: LoadedTable, vector: np.ndarray, k: int, filters: Filters, started: float,
                       query: dict, route: str, exclude_row: int | None = None) -> SearchResult:
        index = loaded.index  # read once: the background build may swap it while this query runs
        allowed = self._row_filter(loaded, filters) if filters else None
        want = k + (1 if exclude_row is not None else 0)
        scores, rows = index.search(vector, want, allowed)
        if exclude_row is not None:
            keep = rows != exclude_row
            scores, rows = scores[keep][:k], rows[keep][:k]
        if index.info.kind != "exact":
            route = route.replace("index", f"index:{index.info.kind}")
        return self._result(self._hits(loaded, rows.tolist(), scores.tolist()), route, loaded, started, query)

    def candidates(self, vector: np.ndarray, n: int, filters: Filters = Filters()):
        """(loaded table, scores, rows) of the n rows nearest to a unit `vector` that pass `filters`,
        best first, and the allowed-rows mask (None = all): for searches that regroup the rows."""
        loaded = self._current()
        allowed = self._row_filter(loaded, filters) if filters else None
        scores, rows = loaded.index.search(vector, n, allowed)
        return loaded, scores, rows, (allowed.mask if allowed is not None else None)

    def result_of(self, loaded: LoadedTable, rows: list[int], scores: list[float], route: str, started: float,
                  query: dict) -> SearchResult:
        """A `SearchResult` of these rows of `loaded` (from `candidates`), in this order."""
        return self._result(self._hits(loaded, rows, scores), route, loaded, started, query)

    def _row_filter(self, loaded: LoadedTable, filters: Filters) -> RowFilter:
        return loaded.row_filter(filters, lambda: RowFilter(_filter_mask(loaded, filters)))

    def _hits(self, loaded: LoadedTable, rows: list[int], scores: list[float]) -> list[Hit]:
        if not rows:
            return []
        records = loaded.meta.take(pa.array(rows, type=pa.int64())).to_pylist()
        hits = []
        for rank, (record, score) in enumerate(zip(records, scores), start=1):
            image_id = record.pop("image_id")
            record["extra"] = json.loads(record.get("extra") or "{}")
            hits.append(Hit(image_id=image_id, score=float(score), rank=rank, metadata=record))
        return hits

    def _result(self, hits, route, loaded, started, query) -> SearchResult:
        return SearchResult(hits=hits, route=route, model=self.model_name, table=self.table_name,
                            table_version=loaded.version, took_ms=(time.perf_counter() - started) * 1000, query=query)


def _filter_mask(loaded: LoadedTable, filters: Filters) -> np.ndarray:
    """The rows whose metadata passes every filter (each list any-of)."""
    mask = np.ones(len(loaded.ids), dtype=bool)
    meta = loaded.meta
    # Each filter compares in the case Filters.of gives its values; a table from before a column
    # existed (sex, age_group, skin_type) has no such rows: nothing there matches.
    for column, values, case in (("view_position", filters.view, pc.utf8_upper),
                                 ("modality", filters.modality, pc.utf8_upper), ("split", filters.split, None),
                                 ("sex", filters.sex, pc.utf8_lower), ("age_group", filters.age_group, pc.utf8_upper),
                                 ("skin_type", filters.skin_type, pc.utf8_upper)):
        if not values:
            continue
        if column not in meta.column_names:
            mask[:] = False
            continue
        mask &= _matching(meta.column(column), pa.array(list(values)), case)
    if filters.labels:
        labels = meta.column("labels").combine_chunks()
        flat = pc.utf8_lower(pc.list_flatten(labels))  # "pleural effusion" finds "Pleural Effusion"
        parents = pc.list_parent_indices(labels).to_numpy()
        wanted = pa.array([label.lower() for label in filters.labels])
        matches = pc.fill_null(pc.is_in(flat, value_set=wanted), False)
        has = np.zeros(len(loaded.ids), dtype=bool)
        has[parents[matches.to_numpy(zero_copy_only=False)]] = True
        mask &= has
    return mask


def _matching(column: pa.ChunkedArray, wanted: pa.Array, case) -> np.ndarray:
    """Rows whose value, put in `case`, is one of `wanted` (null matches nothing). A dictionary column
    (`medvec.search.loading` stores few-valued strings so) is matched on its few values, then by index."""
    parts = []
    for chunk in column.chunks:
        if pa.types.is_dictionary(chunk.type):
            values = case(chunk.dictionary) if case else chunk.dictionary
            chunk_hits = pc.take(pc.is_in(values, value_set=wanted), chunk.indices)
        else:
            chunk_hits = pc.is_in(case(chunk) if case else chunk, value_set=wanted)
        parts.append(pc.fill_null(chunk_hits, False).to_numpy(zero_copy_only=False))
    return np.concatenate(parts) if parts else np.zeros(0, dtype=bool)
