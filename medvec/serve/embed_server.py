"""`medvec embed-server`: the NV-CLIP NIM embeddings protocol over any local `Embedder`, on FastAPI/uvicorn.

A GPU box serves embeddings to CPU-only workers with it, and the NIM client is tested against it.
Images are decoded and prepared in the thread pool, in parallel; requests that arrive together are
merged into one model call by the asyncio batcher (`embed_batching`), so many small requests still
fill the accelerator.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import signal
import socket
import threading
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from medvec.embedders.base import Embedder, EmbedderError
from medvec.serve.embed_batching import Batcher
from medvec.serve.embed_protocol import (MAX_BODY_BYTES, InvalidRequest, embeddings_response, health,
                                         parse_request, problem)

log = logging.getLogger(__name__)

_STOP_GRACE_S = 10  # in-flight requests get this long to be answered when the server stops


class EmbedServer:
    """The NIM embeddings protocol over a local `Embedder`, served by uvicorn in a background thread.

    `start()` returns once listening and warmed up (`wait_ready=False`: once listening; then
    `/v1/health/ready` answers 503 until the warm-up model call is done). With `api_key`, embedding
    requests need `Authorization: Bearer <api_key>`; health and model routes stay open, as on a NIM.
    """

    def __init__(self, embedder: Embedder, host: str = "127.0.0.1", port: int = 0, max_batch: int = 64,
                 batch_window_ms: float = 5, api_key: str | None = None):
        self.embedder = embedder
        self._batcher = Batcher(embedder, max_batch, batch_window_ms / 1000)
        self._stopping = False
        # Bound and listening now, so `url` is known and early clients wait in the backlog, not refused.
        self._socket = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self._socket.bind((host, port))
            self._socket.listen(128)
        except OSError:
            self._socket.close()
            raise
        self._app = create_app(self._batcher, embedder, api_key, lambda: self.ready)
        self._server = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self._socket.getsockname()[:2]
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
            import uvicorn

            # No access log, no logging setup of uvicorn's own (the host process owns it), and only its warnings.
            config = uvicorn.Config(self._app, log_config=None, log_level="warning", access_log=False, lifespan="on",
                                    timeout_graceful_shutdown=_STOP_GRACE_S, timeout_keep_alive=300)
            self._server = uvicorn.Server(config)
            self._thread = threading.Thread(target=self._serve, name="embed-server", daemon=True)
            self._thread.start()
        if wait_ready:
            while not self._batcher.warm.wait(0.1):
                if not self._thread.is_alive():
                    raise EmbedderError("the embed server stopped before its model warmed up; see the log above")
            if self._batcher.warm_up_error:
                self.stop()
                raise EmbedderError(f"the model behind the embed server failed its warm-up call "
                                    f"({self._batcher.warm_up_error}); see the log above")
        return self

    def _serve(self) -> None:
        # Not the main thread, so uvicorn installs no signal handlers: `serve` below owns Ctrl-C and SIGTERM.
        asyncio.run(self._server.serve(sockets=[self._socket]))

    def stop(self) -> None:
        self._stopping = True
        if self._thread is not None:
            self._server.should_exit = True
            self._thread.join(_STOP_GRACE_S + 5)
        self._socket.close()

    def __enter__(self) -> "EmbedServer":
        return self if self._thread is not None else self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def create_app(batcher: Batcher, embedder: Embedder, api_key: str | None, is_ready) -> FastAPI:
    """The four NIM routes over `batcher`; anything else is a 404 in NIM's problem shape."""

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        batcher.start()
        yield
        await batcher.stop()

    # No docs routes and no slash redirects: a NIM has neither, and a client tested here must work there.
    app = FastAPI(lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None, redirect_slashes=False)
    app.add_middleware(_DeclaredLength)
    expected_auth = f"Bearer {api_key}".encode() if api_key else None
    model_id = embedder.model_id
    prepare = embedder.image_preparer()

    @app.exception_handler(StarletteHTTPException)
    async def no_route(request: Request, exc: StarletteHTTPException):
        # 404 and 405 alike: the hand-written server this replaces knew only its four routes.
        return _problem(404, f"no route {request.method} {request.url.path}")

    @app.get("/v1/health/live")
    def live():
        return health("Service is live.")

    @app.get("/v1/health/ready")
    def ready():
        if is_ready():
            return health("Service is ready.")
        reason = batcher.warm_up_error
        return JSONResponse(health(f"Model failed to load: {reason}" if reason else "Service is not ready."), 503)

    @app.get("/v1/models")
    def models():
        return {"object": "list", "data": [{"id": model_id, "object": "model"}]}

    @app.post("/v1/embeddings")
    async def embeddings(request: Request):
        if expected_auth is not None and not hmac.compare_digest(
                request.headers.get("authorization", "").encode(), expected_auth):
            return _problem(401, "missing or invalid bearer token", {"WWW-Authenticate": "Bearer"})
        try:
            body = _json_body(await request.body())
            # Decoding images is CPU work: the thread pool, so requests decode in parallel.
            job, encoding = await run_in_threadpool(parse_request, body, model_id, prepare)
        except InvalidRequest as exc:
            return _problem(422, str(exc))
        except LookupError as exc:
            return _problem(404, str(exc))
        try:
            vectors = await batcher.submit(job)
        except Exception as exc:  # noqa: BLE001 - the batcher logged it; the client gets a plain 500
            return _problem(500, f"embedding failed: {type(exc).__name__}: {exc}"[:300])
        payload = await run_in_threadpool(_json_bytes, embeddings_response(job, vectors, encoding, model_id))
        return Response(payload, media_type="application/json")

    return app


def _json_body(raw: bytes):
    try:
        return json.loads(raw)
    except json.JSONDecodeError as exc:
        raise InvalidRequest(f"the body is not valid JSON ({exc.msg})") from None
    except ValueError:  # bytes that are not UTF-8 at all
        raise InvalidRequest("the body is not UTF-8 JSON") from None


def _json_bytes(payload: dict) -> bytes:
    return json.dumps(payload).encode()


def _problem(status: int, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(problem(status, detail), status_code=status, headers=headers)


class _DeclaredLength:
    """POST bodies must declare their length, within the limit; checked before routing or reading the body."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["method"] == "POST":
            length = dict(scope["headers"]).get(b"content-length", b"")
            refusal = None
            if not length.isdigit():
                refusal = (411, "a Content-Length header is required")
            elif int(length) > MAX_BODY_BYTES:
                refusal = (413, f"the body is over {MAX_BODY_BYTES // 2**20} MiB")
            if refusal is not None:  # the body stays unread, so the connection cannot be reused
                await _problem(*refusal, {"Connection": "close"})(scope, receive, send)
                return
        await self.app(scope, receive, send)


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
