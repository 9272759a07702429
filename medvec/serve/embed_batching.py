"""Request batching for `medvec embed-server`: an asyncio queue drained into model calls.

Requests that arrive together (up to `max_batch` inputs, within `window_s` of the first) become one
model call per kind; each request's vectors are routed back to it by position. One model thread owns
the embedder, so the event loop keeps accepting and decoding while the accelerator works, and what
queues meanwhile fills the next batch.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from medvec.embedders.base import Embedder, EmbedderError
from medvec.serve.embed_protocol import Job

log = logging.getLogger(__name__)

_WARM_UP_TEXT = "chest x-ray"
_STOP = object()


class Batcher:
    """Runs on one event loop: `submit` from request handlers, `run` as a task, `stop` at shutdown."""

    def __init__(self, embedder: Embedder, max_batch: int, window_s: float):
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self.embedder, self.max_batch, self.window_s = embedder, max_batch, window_s
        self.warm = threading.Event()  # read by other threads: EmbedServer.start waits on it
        self.warm_up_error: str | None = None
        self.counts = {"requests": 0, "inputs": 0, "batches": 0, "model_calls": 0}
        self._queue: asyncio.Queue | None = None
        self._task: asyncio.Task | None = None
        self._held: Job | None = None  # didn't fit the last batch; opens the next one
        self._stopped = False
        self._model = ThreadPoolExecutor(1, thread_name_prefix="embed-model")

    def start(self) -> None:
        """Start draining on the running loop (the app's startup)."""
        self._queue = asyncio.Queue()
        self._task = asyncio.get_running_loop().create_task(self._run(), name="embed-batcher")

    async def submit(self, job: Job) -> np.ndarray:
        """The job's vectors in input order, once its batch has run; raises what the model raised."""
        if self._stopped or self._queue is None:
            raise EmbedderError("the embed server is stopping")
        job.done = asyncio.get_running_loop().create_future()
        self.counts["requests"] += 1
        self.counts["inputs"] += job.size
        self._queue.put_nowait(job)
        return await job.done

    async def stop(self) -> None:
        """Refuse new jobs, answer every accepted one, then let the model thread go."""
        self._stopped = True
        if self._queue is not None:
            self._queue.put_nowait(_STOP)  # after every accepted job, so those are still answered
        if self._task is not None:
            await self._task
        self._model.shutdown(wait=False)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._model, self._warm_up)
        while True:
            jobs, stopping = await self._next_batch()
            if jobs:
                await self._embed(loop, jobs)
            if stopping:
                return

    async def _next_batch(self) -> tuple[list[Job], bool]:
        """The held job or the next queued one, then whatever else arrives within the window and fits."""
        first = self._held if self._held is not None else await self._queue.get()
        self._held = None
        if first is _STOP:
            return [], True
        jobs, size = [first], first.size
        deadline = asyncio.get_running_loop().time() + self.window_s
        while size < self.max_batch:
            try:
                job = self._queue.get_nowait()
            except asyncio.QueueEmpty:
                remaining = deadline - asyncio.get_running_loop().time()
                if remaining <= 0:
                    break
                try:
                    job = await asyncio.wait_for(self._queue.get(), remaining)
                except TimeoutError:
                    break
            if job is _STOP:
                return jobs, True
            if size + job.size > self.max_batch:
                self._held = job
                break
            jobs.append(job)
            size += job.size
        return jobs, False

    async def _embed(self, loop: asyncio.AbstractEventLoop, jobs: list[Job]) -> None:
        try:
            results, calls = await loop.run_in_executor(self._model, self._embed_batch, jobs)
        except Exception as exc:  # noqa: BLE001 - every waiting request answers 500 with it
            log.exception("embedding a batch of %d requests failed", len(jobs))
            for job in jobs:
                if not job.done.done():
                    job.done.set_exception(exc)
            return
        self.counts["batches"] += 1
        self.counts["model_calls"] += calls
        for job, vectors in zip(jobs, results):
            if not job.done.done():  # a client that went away cancelled its future
                job.done.set_result(vectors)

    def _warm_up(self) -> None:
        """One model call before reporting ready: loads kernels, and proves the model gives `dim`-d vectors."""
        try:
            vectors = np.asarray(self.embedder.embed_texts([_WARM_UP_TEXT]))
            if vectors.shape != (1, self.embedder.dim):
                raise EmbedderError(f"the model gave shape {vectors.shape}, not (1, {self.embedder.dim})")
        except Exception as exc:  # noqa: BLE001 - reported by /v1/health/ready and EmbedServer.start()
            log.exception("embed-server warm-up failed")
            self.warm_up_error = f"{type(exc).__name__}: {exc}"[:300]
        self.warm.set()

    def _embed_batch(self, jobs: list[Job]) -> tuple[list[np.ndarray], int]:
        """On the model thread: one call per kind, then each job's vectors put back in its input order."""
        texts = [text for job in jobs for _, text in job.texts]
        images = [image for job in jobs for _, image in job.images]
        text_vectors = self._call(self.embedder.embed_texts, texts)
        image_vectors = self._call(self.embedder.embed_prepared, images)
        results, text_at, image_at = [], 0, 0
        for job in jobs:
            vectors = np.empty((job.size, self.embedder.dim), np.float32)
            if job.texts:
                vectors[[i for i, _ in job.texts]] = text_vectors[text_at:text_at + len(job.texts)]
                text_at += len(job.texts)
            if job.images:
                vectors[[i for i, _ in job.images]] = image_vectors[image_at:image_at + len(job.images)]
                image_at += len(job.images)
            results.append(vectors)
        return results, (text_vectors is not None) + (image_vectors is not None)

    def _call(self, embed, items: list) -> np.ndarray | None:
        if not items:
            return None
        vectors = np.asarray(embed(items), dtype=np.float32)
        if vectors.shape != (len(items), self.embedder.dim):
            raise EmbedderError(f"the model returned shape {vectors.shape} for {len(items)} inputs")
        return vectors
