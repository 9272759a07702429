"""Embedding a batch's normalised images: prepare in worker processes, embed in this one.

Preparing (WebP decode, resize, normalise, or PNG encoding for a NIM) runs in spawned workers a
few chunks ahead, so the model never waits for decoding; vectors come back in record order.
`embed_missing` embeds only what the model's table does not already hold for the same content and
model revision, so a re-run, a backfill or an overlapping batch costs no model (or paid NIM) call.
"""

from __future__ import annotations

import logging
import multiprocessing
import time
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from medvec.embedders.base import Embedder, ImagePreparer
from medvec.tables.images import StoredEmbedding
from medvec.tables.records import ImageRecord, IngestError
from medvec.storage import HomePath, as_path

log = logging.getLogger(__name__)

#: Below this many images, worker start-up (~0.3 s each) costs more than it saves.
MIN_IMAGES_FOR_WORKERS = 64


@dataclass
class EmbeddedBatch:
    records: list[ImageRecord]  # the records that got a vector, in order
    vectors: np.ndarray  # (len(records), dim) float32, L2-normalised
    errors: list[IngestError] = field(default_factory=list)
    seconds: float = 0.0
    skipped: int = 0  # records whose stored vector was kept (same content, same model revision)
    embedded_at: list[str | None] | None = None  # per record: a kept vector's original time, None for new

    @property
    def embedded(self) -> int:
        """Vectors the model computed in this call."""
        return len(self.records) - self.skipped

    @property
    def images_per_second(self) -> float:
        return self.embedded / self.seconds if self.seconds > 0 else 0.0


def _prepare_chunk(prepare: ImagePreparer, paths: list[HomePath]) -> list:
    """Worker side: one prepared payload per path (a local file or an S3 object), or the exception that
    file raised."""
    prepared = []
    for path in paths:
        try:
            prepared.append(prepare(path.read_bytes()))
        except Exception as exc:  # noqa: BLE001 - reported per image by the caller
            prepared.append(exc)
    return prepared


def embed_records(records: list[ImageRecord], home: HomePath, embedder: Embedder, *, chunk_size: int = 64,
                  workers: int = 0, prefetch: int = 4,
                  progress: Callable[[int, int], None] | None = None) -> EmbeddedBatch:
    """Vectors for every record whose WebP can be read; an error record for each that cannot."""
    started = time.perf_counter()
    prepare = embedder.image_preparer()
    chunks = [records[i:i + chunk_size] for i in range(0, len(records), chunk_size)]
    kept: list[ImageRecord] = []
    vectors: list[np.ndarray] = []
    errors: list[IngestError] = []
    done = 0

    def consume(chunk: list[ImageRecord], prepared: list) -> None:
        nonlocal done
        good = [(r, p) for r, p in zip(chunk, prepared) if not isinstance(p, Exception)]
        for record, payload in zip(chunk, prepared):
            if isinstance(payload, Exception):
                errors.append(IngestError(record.source_uri, record.batch, "embed", type(payload).__name__,
                                          f"normalised image could not be read for embedding ({str(payload)[:200]})"))
        if good:
            vectors.append(embedder.embed_prepared([p for _, p in good]))
            kept.extend(r for r, _ in good)
        done += len(chunk)
        if progress:
            progress(done, len(records))

    home = as_path(home)
    paths = [[home / r.image_uri for r in chunk] for chunk in chunks]
    use_workers = workers != 1 and len(records) >= MIN_IMAGES_FOR_WORKERS
    if not use_workers:
        for chunk, chunk_paths in zip(chunks, paths):
            consume(chunk, _prepare_chunk(prepare, chunk_paths))
    else:
        context = multiprocessing.get_context("spawn")  # torch and LanceDB threads do not survive fork
        n_workers = workers or max(1, (multiprocessing.cpu_count() or 2) - 1)
        with ProcessPoolExecutor(n_workers, mp_context=context) as pool:
            pending: deque = deque()
            upcoming = iter(zip(chunks, paths))
            for chunk, chunk_paths in upcoming:
                pending.append((chunk, pool.submit(_prepare_chunk, prepare, chunk_paths)))
                if len(pending) >= prefetch:
                    break
            while pending:
                chunk, future = pending.popleft()
                nxt = next(upcoming, None)
                if nxt is not None:  # keep the queue full before the model call blocks this thread
                    pending.append((nxt[0], pool.submit(_prepare_chunk, prepare, nxt[1])))
                consume(chunk, future.result())

    dim = embedder.dim
    stacked = np.concatenate(vectors).astype(np.float32) if vectors else np.zeros((0, dim), np.float32)
    return EmbeddedBatch(kept, stacked, errors, time.perf_counter() - started)


def is_embedded(record: ImageRecord, stored: StoredEmbedding | None, model_id: str, revision: str | None) -> bool:
    """Whether the stored vector is this record's: same source content, same model and revision."""
    return (stored is not None and stored.content_sha256 == record.content_sha256
            and (stored.model_id, stored.model_revision) == (model_id, revision))


def embed_missing(records: list[ImageRecord], home: HomePath, embedder: Embedder,
                  stored: dict[str, StoredEmbedding], *, model_id: str, revision: str | None,
                  progress: Callable[[int, int], None] | None = None, **options) -> EmbeddedBatch:
    """Like `embed_records`, but a record whose stored vector is already its own keeps that vector
    (and its `embedded_at`) and is not sent to the model; only new or changed images are embedded."""
    kept = [r for r in records if is_embedded(r, stored.get(r.image_id), model_id, revision)]
    fresh = [r for r in records if not is_embedded(r, stored.get(r.image_id), model_id, revision)]
    if not fresh:
        result = EmbeddedBatch([], np.zeros((0, embedder.dim), np.float32))
    else:
        result = embed_records(fresh, home, embedder, progress=progress, **options)
    reused = np.stack([stored[r.image_id].vector for r in kept]).astype(np.float32) if kept else None
    vectors = result.vectors if reused is None else np.concatenate([result.vectors.reshape(-1, reused.shape[1]),
                                                                    reused])
    return EmbeddedBatch(result.records + kept, vectors, result.errors, result.seconds, skipped=len(kept),
                         embedded_at=[None] * len(result.records) + [stored[r.image_id].embedded_at for r in kept])


def check_vectors(vectors: np.ndarray, dim: int) -> list[str]:
    """Problems that must stop a write: wrong shape, NaN, zero vectors."""
    problems = []
    if vectors.ndim != 2 or (len(vectors) and vectors.shape[1] != dim):
        problems.append(f"vectors have shape {vectors.shape}, expected (n, {dim})")
        return problems
    if not np.isfinite(vectors).all():
        problems.append(f"{int((~np.isfinite(vectors)).any(axis=1).sum())} vector(s) contain NaN or infinity")
    norms = np.linalg.norm(vectors, axis=1)
    if (norms < 1e-6).any():
        problems.append(f"{int((norms < 1e-6).sum())} vector(s) are all zeros")
    return problems
