"""`medvec embed-server`: the NV-CLIP NIM embeddings protocol over any local `Embedder`.

A GPU box serves embeddings to CPU-only workers with it, and the NIM client is tested against it.
Request threads decode and prepare images in parallel; one model thread owns the embedder and
merges the inputs of concurrent requests (up to `max_batch`, within `batch_window_ms` of the
first) into one model call, so many small requests still fill the accelerator.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import logging
import queue
import re
import signal
import socket
import threading
import time
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np
from PIL import UnidentifiedImageError

from medvec.embedders.base import Embedder, EmbedderError
from medvec.embedders.nim import MAX_INPUTS  # the protocol's limit, one place for client and server

log = logging.getLogger(__name__)

# NV-CLIP's EmbeddingsRequest schema: these properties only (`additionalProperties: false`), <= 64 inputs.
ALLOWED_PROPERTIES = frozenset({"input", "model", "encoding_format"})
ENCODINGS = ("float", "base64")
# NIM accepts jpg, png and jpeg data URIs; anything else is refused, so a client tested here works there.
_IMAGE_URI = re.compile(r"data:image/(png|jpe?g);base64,(.*)", re.DOTALL)
_MAX_BODY_BYTES = 256 * 2**20  # 64 large PNGs fit; a runaway upload does not
_WARM_UP_TEXT = "chest x-ray"


class _Invalid(ValueError):
    """A request NIM would answer with 422; the message says what is wrong."""


@dataclass
class _Job:
    """One request's inputs, split by kind but remembering each input's position."""

    texts: list[tuple[int, str]]
    images: list[tuple[int, Any]]  # (position, what the embedder's image_preparer returned)
    done: threading.Event = field(default_factory=threading.Event)
    vectors: np.ndarray | None = None
    error: BaseException | None = None

    @property
    def size(self) -> int:
        return len(self.texts) + len(self.images)


_STOP = object()


class _Batcher:
    """The model thread: drains queued jobs into batches and runs one model call per kind per batch."""

    def __init__(self, embedder: Embedder, max_batch: int, window_s: float):
        self.embedder, self.max_batch, self.window_s = embedder, max_batch, window_s
        self.warm = threading.Event()
        self.warm_up_error: str | None = None
        self.counts = {"requests": 0, "inputs": 0, "batches": 0, "model_calls": 0}
        self._queue: queue.Queue = queue.Queue()
        self._held: _Job | None = None  # didn't fit the last batch; opens the next one
        self._lock = threading.Lock()
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name="embed-model", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def submit(self, job: _Job) -> _Job:
        with self._lock:
            if self._stopped:
                job.error = EmbedderError("the embed server is stopping")
                return job
            self.counts["requests"] += 1
            self.counts["inputs"] += job.size
            self._queue.put(job)
        job.done.wait()
        return job

    def stop(self, timeout_s: float = 10) -> None:
        with self._lock:
            self._stopped = True
            self._queue.put(_STOP)  # after every accepted job, so those are still answered
        if self._thread.is_alive():
            self._thread.join(timeout_s)

    def _run(self) -> None:
        self._warm_up()
        while True:
            first = self._held if self._held is not None else self._queue.get()
            self._held = None
            if first is _STOP:
                return
            jobs, size, stopping = [first], first.size, False
            deadline = time.monotonic() + self.window_s
            while size < self.max_batch:
                try:
                    job = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if job is _STOP:
                    stopping = True
                    break
                if size + job.size > self.max_batch:
                    self._held = job
                    break
                jobs.append(job)
                size += job.size
            self._embed(jobs)
            if stopping:
                return

    def _warm_up(self) -> None:
        """One model call before reporting ready: loads kernels, and proves the model gives `dim`-d vectors."""
        try:
            vectors = np.asarray(self.embedder.embed_texts([_WARM_UP_TEXT]))
            if vectors.shape != (1, self.embedder.dim):
                raise EmbedderError(f"the model gave shape {vectors.shape}, not (1, {self.embedder.dim})")
        except Exception as exc:  # noqa: BLE001 - reported by /v1/health/ready and start()
            log.exception("embed-server warm-up failed")
            self.warm_up_error = f"{type(exc).__name__}: {exc}"[:300]
        self.warm.set()

    def _embed(self, jobs: list[_Job]) -> None:
        try:
            texts = [text for job in jobs for _, text in job.texts]
            images = [image for job in jobs for _, image in job.images]
            text_vectors = self._call(self.embedder.embed_texts, texts)
            image_vectors = self._call(self.embedder.embed_prepared, images)
            with self._lock:
                self.counts["batches"] += 1
            text_at = image_at = 0
            for job in jobs:
                vectors = np.empty((job.size, self.embedder.dim), np.float32)
                if job.texts:
                    vectors[[i for i, _ in job.texts]] = text_vectors[text_at:text_at + len(job.texts)]
                    text_at += len(job.texts)
                if job.images:
                    vectors[[i for i, _ in job.images]] = image_vectors[image_at:image_at + len(job.images)]
                    image_at += len(job.images)
                job.vectors = vectors
        except Exception as exc:  # noqa: BLE001 - every waiting request answers 500 with it
            log.exception("embedding a batch of %d requests failed", len(jobs))
            for job in jobs:
                job.error = exc
        finally:
            for job in jobs:
                job.done.set()

    def _call(self, embed, items: list) -> np.ndarray | None:
        if not items:
            return None
        vectors = np.asarray(embed(items), dtype=np.float32)
        with self._lock:
            self.counts["model_calls"] += 1
        if vectors.shape != (len(items), self.embedder.dim):
            raise EmbedderError(f"the model returned shape {vectors.shape} for {len(items)} inputs")
        return vectors


def _parse_request(body: Any, model_id: str, prepare) -> tuple[_Job, str]:
    """A validated job and the encoding format, or `_Invalid` (422) / `LookupError` (404)."""
    if not isinstance(body, dict):
        raise _Invalid("the body must be a JSON object with input, model and encoding_format")
    extra = sorted(set(body) - ALLOWED_PROPERTIES)
    if extra:
        raise _Invalid(f"additional properties are not allowed: {', '.join(extra)} "
                       f"(allowed: {', '.join(sorted(ALLOWED_PROPERTIES))})")
    if "model" not in body or "input" not in body:
        raise _Invalid("input and model are required")
    if body["model"] != model_id:
        raise LookupError(f"model {body['model']!r} is not served here; this server serves {model_id!r}")
    encoding = body.get("encoding_format", "float")
    if encoding not in ENCODINGS:
        raise _Invalid(f"encoding_format must be one of {', '.join(ENCODINGS)}, not {encoding!r}")
    inputs = body["input"]
    if isinstance(inputs, str):
        inputs = [inputs]
    if not isinstance(inputs, list) or not inputs or not all(isinstance(item, str) for item in inputs):
        raise _Invalid("input must be a string or a non-empty list of strings")
    if len(inputs) > MAX_INPUTS:
        raise _Invalid(f"input holds {len(inputs)} items; at most {MAX_INPUTS} are allowed")
    texts, images = [], []
    for position, item in enumerate(inputs):
        if not item.startswith("data:"):
            texts.append((position, item))
            continue
        match = _IMAGE_URI.fullmatch(item)
        if match is None:
            raise _Invalid(f"input[{position}] is not a data:image/png|jpeg|jpg;base64 URI")
        try:
            raw = base64.b64decode(match.group(2), validate=True)
        except (binascii.Error, ValueError):
            raise _Invalid(f"input[{position}] does not hold valid base64") from None
        try:
            images.append((position, prepare(raw)))
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
            raise _Invalid(f"input[{position}] is not a readable PNG or JPEG image ({type(exc).__name__})") from None
    return _Job(texts, images), encoding


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # socketserver's default backlog of 5 drops bursts of concurrent clients


class EmbedServer:
    """The NIM embeddings protocol over a local `Embedder`, in background threads.

    `start()` returns once listening and warmed up (`wait_ready=False`: once listening; then
    `/v1/health/ready` answers 503 until the warm-up model call is done). With `api_key`, embedding
    requests need `Authorization: Bearer <api_key>`; health and model routes stay open, as on a NIM.
    """

    def __init__(self, embedder: Embedder, host: str = "127.0.0.1", port: int = 0, max_batch: int = 64,
                 batch_window_ms: float = 5, api_key: str | None = None):
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self.embedder = embedder
        self._batcher = _Batcher(embedder, max_batch, batch_window_ms / 1000)
        self._stopping = False
        handler = _handler_class(self, embedder.image_preparer(), api_key)
        server_class = _HTTPServer
        if ":" in host:
            server_class = type("_HTTPServer6", (_HTTPServer,), {"address_family": socket.AF_INET6})
        self._httpd = server_class((host, port), handler)
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

    @property
    def ready(self) -> bool:
        return self._batcher.warm.is_set() and self._batcher.warm_up_error is None and not self._stopping

    @property
    def stats(self) -> dict[str, int]:
        """Requests and inputs accepted, batches run and model calls made (one per kind per batch)."""
        return dict(self._batcher.counts)

    def start(self, wait_ready: bool = True) -> "EmbedServer":
        if self._thread is None:
            # A short poll keeps stop() quick; an idle select wake-up ten times a second costs nothing.
            self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.1,), name="embed-server",
                                            daemon=True)
            self._thread.start()
            self._batcher.start()
        if wait_ready:
            self._batcher.warm.wait()
            if self._batcher.warm_up_error:
                self.stop()
                raise EmbedderError(f"the model behind the embed server failed its warm-up call "
                                    f"({self._batcher.warm_up_error}); see the log above")
        return self

    def stop(self) -> None:
        self._stopping = True
        if self._thread is not None:
            self._httpd.shutdown()
        self._httpd.server_close()
        self._batcher.stop()

    def __enter__(self) -> "EmbedServer":
        return self if self._thread is not None else self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _handler_class(server: EmbedServer, prepare, api_key: str | None) -> type[BaseHTTPRequestHandler]:
    expected_auth = f"Bearer {api_key}".encode() if api_key else None
    model_id = server.embedder.model_id

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, so clients' connection pools work
        timeout = 300  # idle keep-alive connections give their thread back eventually
        # Headers and body go out in two writes; with Nagle on, delayed ACKs add ~40 ms per answer.
        disable_nagle_algorithm = True

        def log_message(self, fmt, *args):  # request lines only at debug level; never headers
            log.debug("%s " + fmt, self.address_string(), *args)

        def do_GET(self):
            route = self.path.split("?", 1)[0]
            if route == "/v1/health/live":
                return self._json(200, {"object": "health.response", "message": "Service is live."})
            if route == "/v1/health/ready":
                if server.ready:
                    return self._json(200, {"object": "health.response", "message": "Service is ready."})
                reason = server._batcher.warm_up_error
                message = f"Model failed to load: {reason}" if reason else "Service is not ready."
                return self._json(503, {"object": "health.response", "message": message})
            if route == "/v1/models":
                return self._json(200, {"object": "list", "data": [{"id": model_id, "object": "model"}]})
            return self._problem(404, f"no route GET {route}")

        def do_POST(self):
            length = self.headers.get("Content-Length")
            if length is None or not length.isdigit():
                self.close_connection = True
                return self._problem(411, "a Content-Length header is required")
            if int(length) > _MAX_BODY_BYTES:
                self.close_connection = True  # the body stays unread
                return self._problem(413, f"the body is over {_MAX_BODY_BYTES // 2**20} MiB")
            raw = self.rfile.read(int(length))
            route = self.path.split("?", 1)[0]
            if route != "/v1/embeddings":
                return self._problem(404, f"no route POST {route}")
            if expected_auth is not None and not hmac.compare_digest(
                    self.headers.get("Authorization", "").encode(), expected_auth):
                return self._problem(401, "missing or invalid bearer token", {"WWW-Authenticate": "Bearer"})
            try:
                job, encoding = _parse_request(json.loads(raw), model_id, prepare)
            except json.JSONDecodeError as exc:
                return self._problem(422, f"the body is not valid JSON ({exc.msg})")
            except _Invalid as exc:
                return self._problem(422, str(exc))
            except LookupError as exc:
                return self._problem(404, str(exc))
            server._batcher.submit(job)
            if job.error is not None:
                return self._problem(500, f"embedding failed: {type(job.error).__name__}: {job.error}"[:300])
            self._json(200, _embeddings_response(job, encoding, model_id))

        def _problem(self, status: int, detail: str, headers: dict[str, str] | None = None):
            """NVCF-style problem details, as NIM sends with 4xx/5xx."""
            phrase = HTTPStatus(status).phrase
            self._json(status, {"type": "about:blank", "title": phrase, "status": status, "detail": detail},
                       headers)

        def _json(self, status: int, payload: dict, headers: dict[str, str] | None = None):
            body = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.end_headers()
            try:
                self.wfile.write(body)
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True  # the client gave up waiting; nothing to tell it

    return Handler


def _embeddings_response(job: _Job, encoding: str, model_id: str) -> dict:
    if encoding == "base64":  # OpenAI/NIM convention: little-endian float32 bytes
        encoded = [base64.b64encode(vector.astype("<f4").tobytes()).decode("ascii") for vector in job.vectors]
    else:
        encoded = [vector.tolist() for vector in job.vectors]
    data = [{"index": i, "embedding": vector, "object": "embedding"} for i, vector in enumerate(encoded)]
    # This server has no tokenizer of its own; whitespace words stand in for prompt tokens.
    tokens = sum(len(text.split()) for _, text in job.texts)
    usage = {"num_images": len(job.images), "prompt_tokens": tokens, "total_tokens": tokens}
    return {"object": "list", "data": data, "model": model_id, "usage": usage}


def serve(embedder: Embedder, host: str = "127.0.0.1", port: int = 8000, *, max_batch: int = 64,
          batch_window_ms: float = 5, api_key: str | None = None) -> None:
    """Serve in the foreground until Ctrl-C or SIGTERM (`medvec embed-server`)."""
    server = EmbedServer(embedder, host, port, max_batch=max_batch, batch_window_ms=batch_window_ms,
                         api_key=api_key).start()
    log.info("embed-server: %s (%s, %d-d) at %s/v1/embeddings, up to %d inputs per model call%s",
             embedder.name, embedder.model_id, embedder.dim, server.url, max_batch,
             ", bearer key required" if api_key else "")
    if host not in ("127.0.0.1", "localhost", "::1") and not api_key:
        log.warning("embed-server listens on %s without a key; set MEDVEC_EMBED_SERVER_KEY to require one", host)
    previous = None
    if threading.current_thread() is threading.main_thread():
        # `docker stop` sends SIGTERM: stop as cleanly as on Ctrl-C.
        previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        log.info("embed-server stopping")
    finally:
        server.stop()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _interrupt(signum, frame):
    raise KeyboardInterrupt
