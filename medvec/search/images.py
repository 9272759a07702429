"""Search one model's image table: text → image, image → image, find-similar, with filters.

LanceDB is the system of record. `ImageSearch` loads the table's vectors and metadata into
memory (a `VectorIndex`), answers from there, and reloads when the table's version changes.
Precomputed answers (`fallback_queries`, `similar_images`) are used when they were computed
against the current version and the request fits them; otherwise the live index answers.
"""

from __future__ import annotations

import json
import logging
import re
import secrets
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from medvec.home import fallback_table_name, index_dir, similar_table_name  # noqa: F401 - also re-exported
from medvec.tables import database
from medvec.embedders.base import Embedder, l2_normalize
from medvec.tables.images import image_table_name, vectors_of
from medvec.storage import HomePath, as_path
from medvec.search.vector_index import IndexInfo, RowFilter, VectorIndex

log = logging.getLogger(__name__)

#: Columns a hit carries as metadata. `source_uri` is left out on purpose: file paths can hold
#: identifiers (names, MRNs in folder names) and a search client has no use for them.
HIT_COLUMNS = ("image_id", "study_id", "series_id", "subject_key", "view_position", "modality", "body_part",
               "labels", "split", "rows", "columns", "width", "height", "source_format", "photometric",
               "bits_stored", "window_source", "batch", "image_uri", "thumb_uri", "extra")
MAX_K = 500


class SearchInputError(ValueError):
    """The request cannot be answered as asked (bad image, unknown id, bad filter): say why."""


class NoSuchImage(SearchInputError):
    pass


class NotIndexed(RuntimeError):
    """The model's table does not exist yet: nothing has been embedded with this model."""


@dataclass(frozen=True)
class Filters:
    """Metadata constraints; each list is any-of, and the lists are ANDed."""

    view: tuple[str, ...] = ()
    modality: tuple[str, ...] = ()
    split: tuple[str, ...] = ()
    labels: tuple[str, ...] = ()

    @classmethod
    def of(cls, view=None, modality=None, split=None, labels=None) -> "Filters":
        def clean(values):
            if values is None:
                return ()
            if isinstance(values, str):
                values = [values]
            return tuple(sorted({str(v).strip() for v in values if str(v).strip()}))

        return cls(view=tuple(v.upper() for v in clean(view)), modality=tuple(m.upper() for m in clean(modality)),
                   split=clean(split), labels=clean(labels))

    def __bool__(self) -> bool:
        return bool(self.view or self.modality or self.split or self.labels)

    def to_json(self) -> dict:
        return {k: list(v) for k, v in self.__dict__.items() if v}


@dataclass
class Hit:
    image_id: str
    score: float
    rank: int
    metadata: dict

    def to_json(self) -> dict:
        return {"image_id": self.image_id, "score": round(float(self.score), 6), "rank": self.rank, **self.metadata}


@dataclass
class SearchResult:
    hits: list[Hit]
    route: str  # fallback | index | similar_images | exact ...
    model: str
    table: str
    table_version: int
    took_ms: float
    query: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return {"model": self.model, "table": self.table, "table_version": self.table_version,
                "route": self.route, "took_ms": round(self.took_ms, 3), "query": self.query,
                "hits": [h.to_json() for h in self.hits]}


def normalize_query_text(text: str) -> str:
    """The key fallback answers are stored under: case, spacing and trailing punctuation ignored."""
    return re.sub(r"\s+", " ", re.sub(r"[.,;:!?]+$", "", text.strip().lower()))


class _Loaded:
    """One table version held in memory: vectors, metadata, the index and the precomputed answers."""

    def __init__(self, version: int, ids: list[str], meta: pa.Table, index: VectorIndex):
        self.version = version
        self.ids = ids
        self.row_of = {image_id: row for row, image_id in enumerate(ids)}
        self.meta = meta
        self.index = index
        self.filters: OrderedDict[Filters, RowFilter] = OrderedDict()
        self.fallback_vectors: dict[str, np.ndarray] = {}
        self.fallback_hits: dict[str, list[tuple[str, float]]] = {}
        self.similar: dict[str, list[tuple[str, float]]] = {}
        self.precomputed: tuple = ()


class ImageSearch:
    """Search over `images__<model>`; thread-safe for concurrent readers (the HTTP server).

    `embedder_factory` loads the model's text/image encoder on first need: fallback queries and
    find-similar never load it.
    """

    def __init__(self, lancedb_uri: str, model_slug: str, *, model_name: str | None = None,
                 home: HomePath | None = None, embedder_factory: Callable[[], Embedder] | None = None,
                 refresh_seconds: float = 2.0, exact_below: int | None = None):
        self.lancedb_uri = lancedb_uri
        self.model_slug = model_slug
        self.model_name = model_name or model_slug
        self.table_name = image_table_name(model_slug)
        self.home = as_path(home) if home else None
        self.refresh_seconds = refresh_seconds
        self.exact_below = exact_below
        self._embedder_factory = embedder_factory
        self._embedder: Embedder | None = None
        self._text_cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._lock = threading.RLock()
        self._loaded: _Loaded | None = None
        self._checked_at = 0.0
        self._db = database.connect(lancedb_uri)
        self._table = None

    # --- loading ---------------------------------------------------------------------------------

    def snapshot(self) -> _Loaded:
        """The table version held in memory (ids, metadata, index, precomputed answers), reloaded when stale."""
        return self._current()

    def _current(self) -> _Loaded:
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
            elif self._loaded.precomputed != self._precomputed_versions():
                self._load_precomputed(self._loaded)  # new fallback / neighbour answers, same vectors
            return self._loaded

    def _load(self, version: int) -> _Loaded:
        started = time.perf_counter()
        data = self._table.to_arrow()
        ids = data.column("image_id").to_pylist()
        vectors = vectors_of(data)
        meta = data.select([c for c in HIT_COLUMNS if c in data.schema.names]).combine_chunks()
        index = self._saved_index(version, ids, vectors) or VectorIndex.build(
            vectors, **({"exact_below": self.exact_below} if self.exact_below is not None else {}))
        loaded = _Loaded(version, ids, meta, index)
        self._load_precomputed(loaded)
        log.info("loaded %s v%s: %d rows, %s index in %.2fs", self.table_name, version, len(ids),
                 index.info.kind, time.perf_counter() - started)
        return loaded

    def _saved_index(self, version: int, ids: list[str], vectors: np.ndarray) -> VectorIndex | None:
        """The IVF structure `image_index` saved for this exact table version, if any."""
        if self.home is None:
            return None
        folder = index_dir(self.home, self.table_name)
        meta_path, ivf_path = folder / f"v{version}.json", folder / f"v{version}.faiss"
        if not meta_path.exists() or not ivf_path.exists():
            return None
        try:
            saved = json.loads(meta_path.read_text())
            if saved.get("ids_sha") != ids_fingerprint(ids):
                return None
            return VectorIndex.with_saved_ivf(vectors, ivf_path, IndexInfo(**saved["info"]))
        except Exception as exc:  # noqa: BLE001 - a damaged cache is rebuilt, never fatal
            log.warning("ignoring the saved index for %s v%s (%s)", self.table_name, version, exc)
            return None

    def _precomputed_versions(self) -> tuple:
        tables = (database.open_table_if_exists(self._db, fallback_table_name(self.model_slug)),
                  database.open_table_if_exists(self._db, similar_table_name(self.model_slug)))
        return tuple(t.version if t is not None else None for t in tables)

    def _load_precomputed(self, loaded: _Loaded) -> None:
        """Read the fallback and neighbour tables, then swap them in at once (readers never see half)."""
        versions = self._precomputed_versions()
        vectors, hits, similar_of = {}, {}, {}
        fallback = database.open_table_if_exists(self._db, fallback_table_name(self.model_slug))
        if fallback is not None:
            for row in fallback.to_arrow().to_pylist():
                key = row["query_key"]
                vectors[key] = np.asarray(row["vector"], dtype=np.float32)
                if row["table_version"] == loaded.version:  # answers for exactly these rows
                    hits[key] = list(zip(row["image_ids"], row["scores"]))
        similar = database.open_table_if_exists(self._db, similar_table_name(self.model_slug))
        if similar is not None:
            data = similar.to_arrow()
            if data.num_rows and data.column("table_version")[0].as_py() == loaded.version:
                for image_id, neighbours, scores in zip(data.column("image_id").to_pylist(),
                                                        data.column("neighbour_ids").to_pylist(),
                                                        data.column("scores").to_pylist()):
                    similar_of[image_id] = list(zip(neighbours, scores))
        loaded.fallback_vectors, loaded.fallback_hits, loaded.similar = vectors, hits, similar_of
        loaded.precomputed = versions

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
        from medvec.imaging.dicom import UnreadableImage
        from medvec.imaging.normalize import normalize_bytes
        from medvec.phi import Pseudonymizer

        started = time.perf_counter()
        k = check_k(k)
        if not data:
            raise SearchInputError("the uploaded file is empty")
        try:
            # A query's subject key is never stored or shown: a throwaway key keeps it meaningless.
            normalized = normalize_bytes(data, filename, pseudonymizer=Pseudonymizer(secrets.token_hex(16)))
        except UnreadableImage as exc:
            raise SearchInputError(f"the uploaded file could not be read as an image: {exc.reason}") from None
        loaded = self._current()
        vector = self._encoder().embed_images([normalized.view_webp])[0]
        query = {"image": "upload", "format": normalized.record.source_format, "k": k, "filters": filters.to_json()}
        return self._vector_search(loaded, vector, k, filters, started, query, "index")

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

    def _vector_search(self, loaded: _Loaded, vector: np.ndarray, k: int, filters: Filters, started: float,
                       query: dict, route: str, exclude_row: int | None = None) -> SearchResult:
        allowed = self._row_filter(loaded, filters) if filters else None
        want = k + (1 if exclude_row is not None else 0)
        scores, rows = loaded.index.search(vector, want, allowed)
        if exclude_row is not None:
            keep = rows != exclude_row
            scores, rows = scores[keep][:k], rows[keep][:k]
        if loaded.index.info.kind != "exact":
            route = route.replace("index", f"index:{loaded.index.info.kind}")
        return self._result(self._hits(loaded, rows.tolist(), scores.tolist()), route, loaded, started, query)

    def _row_filter(self, loaded: _Loaded, filters: Filters) -> RowFilter:
        cached = loaded.filters.get(filters)
        if cached is not None:
            loaded.filters.move_to_end(filters)
            return cached
        mask = np.ones(len(loaded.ids), dtype=bool)
        meta = loaded.meta
        for column, values in (("view_position", filters.view), ("modality", filters.modality),
                               ("split", filters.split)):
            if values:
                col = pc.utf8_upper(meta.column(column)) if column != "split" else meta.column(column)
                mask &= pc.fill_null(pc.is_in(col, value_set=pa.array(list(values))), False).to_numpy(zero_copy_only=False)
        if filters.labels:
            labels = meta.column("labels").combine_chunks()
            flat = pc.utf8_lower(pc.list_flatten(labels))  # "pleural effusion" finds "Pleural Effusion"
            parents = pc.list_parent_indices(labels).to_numpy()
            wanted = pa.array([label.lower() for label in filters.labels])
            matches = pc.fill_null(pc.is_in(flat, value_set=wanted), False)
            has = np.zeros(len(loaded.ids), dtype=bool)
            has[parents[matches.to_numpy(zero_copy_only=False)]] = True
            mask &= has
        row_filter = RowFilter(mask)
        loaded.filters[filters] = row_filter
        while len(loaded.filters) > 64:
            loaded.filters.popitem(last=False)
        return row_filter

    def _hits(self, loaded: _Loaded, rows: list[int], scores: list[float]) -> list[Hit]:
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


def check_k(k) -> int:
    try:
        k = int(k)
    except (TypeError, ValueError):
        raise SearchInputError(f"k must be a whole number, not {k!r}") from None
    if not 1 <= k <= MAX_K:
        raise SearchInputError(f"k must be between 1 and {MAX_K}")
    return k


def ids_fingerprint(ids: list[str]) -> str:
    import hashlib

    digest = hashlib.sha256()
    for image_id in ids:
        digest.update(image_id.encode())
        digest.update(b"\0")
    return digest.hexdigest()
