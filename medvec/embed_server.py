"""`medvec embed-server`: the NIM embeddings protocol over any local `Embedder`.

A GPU box serves embeddings to CPU-only Dagster workers with it. Concurrent requests are queued
and a single model thread drains up to `max_batch` inputs across them per call, so many small
requests still fill the accelerator.
"""

from __future__ import annotations

import base64
import json
import logging
import queue
import threading
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np

from medvec.embedders.base import Embedder

log = logging.getLogger(__name__)

ALLOWED_KEYS = {"input", "model", "encoding_format", "input_type", "truncate"}
MAX_INPUTS = 64


@dataclass
class _Job:
    kind: str  # "image" | "text"
    payloads: list
    done: threading.Event = field(default_factory=threading.Event)
    vectors: np.ndarray | None = None
    error: Exception | None = None


class _Batcher:
    """One thread owns the model; it merges queued jobs of the same kind into one call."""

    def __init__(self, embedder: Embedder, max_batch: int, window_s: float):
        self.embedder, self.max_batch, self.window_s = embedder, max_batch, window_s
        self.queue: queue.Queue[_Job | None] = queue.Queue()
        self.model_calls = 0
        self._thread = threading.Thread(target=self._run, name="embed-batcher", daemon=True)
        self._thread.start()

    def submit(self, job: _Job) -> _Job:
        self.queue.put(job)
        job.done.wait()
        return job

    def stop(self) -> None:
        self.queue.put(None)
        self._thread.join(5)

    def _run(self) -> None:
        while True:
            first = self.queue.get()
            if first is None:
                return
            jobs, size = [first], len(first.payloads)
            while size < self.max_batch:
                try:
                    job = self.queue.get(timeout=self.window_s)
                except queue.Empty:
                    break
                if job is None:
                    self.queue.put(None)
                    break
                if job.kind != first.kind or size + len(job.payloads) > self.max_batch:
                    self._embed([job])  # a different kind or too big: its own call
                    continue
                jobs.append(job)
                size += len(job.payloads)
            self._embed(jobs)

    def _embed(self, jobs: list[_Job]) -> None:
        payloads = [p for job in jobs for p in job.payloads]
        try:
            if jobs[0].kind == "image":
                vectors = self.embedder.embed_prepared([self.embedder.image_preparer()(p) for p in payloads])
            else:
                vectors = self.embedder.embed_texts(payloads)
            self.model_calls += 1
            start = 0
            for job in jobs:
                job.vectors = vectors[start:start + len(job.payloads)]
                start += len(job.payloads)
        except Exception as exc:  # noqa: BLE001 - handed to each waiting request as a 500
            log.exception("embedding failed")
            for job in jobs:
                job.error = exc
        for job in jobs:
            job.done.set()


class _BadRequest(ValueError):
    pass


def _decode_inputs(body: dict) -> tuple[str, list]:
    extra = set(body) - ALLOWED_KEYS
    if extra:
        raise _BadRequest(f"unexpected properties: {', '.join(sorted(extra))}")
    inputs = body.get("input")
    if isinstance(inputs, str):
        inputs = [inputs]
    if not isinstance(inputs, list) or not inputs or not all(isinstance(i, str) for i in inputs):
        raise _BadRequest("input must be a non-empty string or list of strings")
    if len(inputs) > MAX_INPUTS:
        raise _BadRequest(f"at most {MAX_INPUTS} inputs per request, got {len(inputs)}")
    is_image = [i.startswith("data:image/") for i in inputs]
    if any(is_image) and not all(is_image):
        raise _BadRequest("mix of images and texts in one request")
    if not all(is_image):
        return "text", inputs
    images = []
    for item in inputs:
        header, _, data = item.partition(",")
        if not header.endswith(";base64") or header not in ("data:image/png;base64", "data:image/jpeg;base64"):
            raise _BadRequest("images must be data:image/png;base64 or data:image/jpeg;base64 URIs")
        try:
            images.append(base64.b64decode(data, validate=True))
        except ValueError:
            raise _BadRequest("an image data URI is not valid base64") from None
    return "image", images


class EmbedServer:
    def __init__(self, embedder: Embedder, host: str = "127.0.0.1", port: int = 0, *, max_batch: int = 64,
                 batch_window_ms: float = 5.0, api_key: str | None = None):
        self.embedder = embedder
        self.batcher = _Batcher(embedder, max_batch, batch_window_ms / 1000)
        self.ready = False
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, fmt, *args):  # request lines at debug level only
                log.debug("%s " + fmt, self.address_string(), *args)

            def do_GET(self):
                if self.path == "/v1/health/live":
                    return self._json(200, {"object": "health.response", "message": "Service is live."})
                if self.path == "/v1/health/ready":
                    if server.ready:
                        return self._json(200, {"object": "health.response", "message": "Service is ready."})
                    return self._json(503, {"object": "health.response", "message": "Service is not ready."})
                if self.path == "/v1/models":
                    return self._json(200, {"object": "list", "data": [
                        {"id": server.embedder.model_id, "object": "model", "dim": server.embedder.dim}]})
                return self._json(404, {"detail": f"no route {self.path}"})

            def do_POST(self):
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                if self.path != "/v1/embeddings":
                    return self._json(404, {"detail": f"no route {self.path}"})
                if api_key and self.headers.get("Authorization") != f"Bearer {api_key}":
                    return self._json(401, {"detail": "missing or invalid bearer token"})
                try:
                    body = json.loads(raw)
                    if not isinstance(body, dict):
                        raise _BadRequest("the body must be a JSON object")
                    if body.get("model") not in (None, server.embedder.model_id):
                        return self._json(404, {"detail": f"model {body.get('model')} is not served here"})
                    kind, payloads = _decode_inputs(body)
                except (json.JSONDecodeError, _BadRequest) as exc:
                    return self._json(422, {"detail": str(exc)})
                job = server.batcher.submit(_Job(kind, payloads))
                if job.error is not None:
                    return self._json(500, {"detail": f"embedding failed: {type(job.error).__name__}"})
                data = [{"index": i, "embedding": v.tolist(), "object": "embedding"} for i, v in enumerate(job.vectors)]
                usage = {"num_images": len(payloads) if kind == "image" else 0,
                         "prompt_tokens": 0 if kind == "image" else sum(len(t.split()) for t in payloads)}
                usage["total_tokens"] = usage["prompt_tokens"]
                return self._json(200, {"object": "list", "data": data, "model": server.embedder.model_id,
                                        "usage": usage})

            def _json(self, status: int, payload: dict):
                body = json.dumps(payload).encode()
                self.send_response(status, HTTPStatus(status).phrase)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self._httpd = ThreadingHTTPServer((host, port), Handler)
        self._httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> "EmbedServer":
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="embed-server", daemon=True)
        self._thread.start()
        self.ready = True
        return self

    def stop(self) -> None:
        self.ready = False
        self._httpd.shutdown()
        self._httpd.server_close()
        self.batcher.stop()


def serve(embedder: Embedder, host: str = "127.0.0.1", port: int = 8000, *, max_batch: int = 64,
          api_key: str | None = None) -> None:
    """Serve until Ctrl-C (`medvec embed-server`)."""
    server = EmbedServer(embedder, host, port, max_batch=max_batch, api_key=api_key).start()
    log.warning("embed-server: %s (%s, %d-d) at %s/v1/embeddings%s", embedder.name, embedder.model_id,
                embedder.dim, server.url, " (bearer key required)" if api_key else "")
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
