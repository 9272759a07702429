"""Answers computed ahead of time: the collection vocabulary's common queries, and every image's nearest neighbours.

Fallback queries answer without loading a text encoder: each stores its text embedding (so a
filtered or larger request still skips the encoder) and its top k for the table version it
was computed against. Tables are replaced whole on each run, so re-runs never duplicate.
"""

from __future__ import annotations

import time

import numpy as np
import pyarrow as pa

from medvec.datasets.vocabulary import CHEST
from medvec.embedders.base import Embedder
from medvec.search.images import (ImageSearch, fallback_table_name, normalize_query_text, similar_table_name)

#: The chest vocabulary's queries: the default, and the test and benchmark corpus. A collection's own
#: queries come from its vocabulary (`medvec.datasets.vocabulary.table_vocabulary`).
FALLBACK_QUERIES = CHEST.queries

FALLBACK_SCHEMA = pa.schema([
    ("query", pa.string()), ("query_key", pa.string()), ("vector", pa.list_(pa.float32())),
    ("image_ids", pa.list_(pa.string())), ("scores", pa.list_(pa.float32())), ("k", pa.int32()),
    ("table_version", pa.int64()), ("model_id", pa.string()),
])

SIMILAR_SCHEMA = pa.schema([
    ("image_id", pa.string()), ("neighbour_ids", pa.list_(pa.string())), ("scores", pa.list_(pa.float32())),
    ("table_version", pa.int64()),
])


def compute_fallbacks(search: ImageSearch, embedder: Embedder, *, queries=FALLBACK_QUERIES, k: int = 50) -> dict:
    """Embed each query with the model's text tower, search, and replace the fallback table."""
    started = time.perf_counter()
    version = search.refresh()
    queries = list(queries)
    vectors = embedder.embed_texts(queries) if queries else []  # a labels vocabulary of a table with no labels
    rows = []
    for text, vector in zip(queries, vectors):
        result = search.search_vector(vector, k=min(k, max(1, search.info()["rows"])))
        rows.append({"query": text, "query_key": normalize_query_text(text), "vector": vector.tolist(),
                     "image_ids": [h.image_id for h in result.hits], "scores": [h.score for h in result.hits],
                     "k": k, "table_version": version, "model_id": embedder.model_id})
    table = pa.Table.from_pylist(rows, schema=FALLBACK_SCHEMA)
    _replace(search, fallback_table_name(search.model_slug), table)
    return {"queries": len(rows), "k": k, "table_version": version, "seconds": round(time.perf_counter() - started, 2),
            "examples": {r["query"]: r["image_ids"][:3] for r in rows[:5]}}


def compute_similar(search: ImageSearch, *, k: int = 20, chunk: int = 4096) -> dict:
    """k nearest neighbours of every image (itself excluded), replacing the similar-images table."""
    started = time.perf_counter()
    version = search.refresh()
    search.wait_for_index()  # all-pairs over every row wants the IVF index, not the exact stand-in
    loaded = search.snapshot()
    vectors, ids = loaded.index.vectors, loaded.ids
    rows = []
    for start in range(0, len(ids), chunk):
        scores, found = loaded.index.search_many(vectors[start:start + chunk], k + 1)
        for offset, (row_scores, row_found) in enumerate(zip(scores, found)):
            me = start + offset
            pairs = [(ids[r], float(s)) for r, s in zip(row_found, row_scores) if r >= 0 and r != me][:k]
            rows.append({"image_id": ids[me], "neighbour_ids": [p[0] for p in pairs],
                         "scores": [p[1] for p in pairs], "table_version": version})
    table = pa.Table.from_pylist(rows, schema=SIMILAR_SCHEMA)
    _replace(search, similar_table_name(search.model_slug), table)
    mean_top1 = float(np.mean([r["scores"][0] for r in rows if r["scores"]])) if rows else 0.0
    return {"images": len(rows), "k": k, "table_version": version, "mean_top1_score": round(mean_top1, 4),
            "seconds": round(time.perf_counter() - started, 2)}


def stored_query_vectors(lancedb_uri: str, model_slug: str) -> np.ndarray | None:
    """The text embeddings the last `fallback_queries` run stored (None before the first run)."""
    from medvec.tables import database

    table = database.open_table_if_exists(database.connect(lancedb_uri), fallback_table_name(model_slug))
    if table is None or table.count_rows() == 0:
        return None
    return np.asarray(table.to_arrow().column("vector").to_pylist(), dtype=np.float32)


def _replace(search: ImageSearch, name: str, data: pa.Table) -> None:
    from medvec.tables import database

    db = database.connect(search.lancedb_uri)
    # One overwrite commit: readers see the old answers or the new ones, never a mix.
    table = database.open_table_if_exists(db, name)
    if table is None:
        table = db.create_table(name, schema=data.schema, exist_ok=True)
    table.add(data, mode="overwrite")
