"""`medvec serve`: the search HTTP API and the web page, over one shared, thread-safe `ImageSearch` and
the `ReportSearch` beside it (radiology reports: BM25, vector, hybrid; images found through their reports).

The routes live in `serve/routes/` by area, their answers in `serve/schema.py` (shared with the MCP tools),
the token, upload limit and error shape in `serve/http_middleware.py`. Endpoints are plain `def`
functions: search is CPU-bound, so FastAPI runs them in its thread pool.
"""

from __future__ import annotations

import socket
import sys
from pathlib import Path

from fastapi import APIRouter, Depends, FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

from medvec.embedders.shared import SharedEmbedders
from medvec.search.images import ImageSearch, NotIndexed
from medvec.search.reports import ReportSearch
from medvec.serve.api_docs import add_offline_docs
from medvec.serve.collections import CollectionDispatch, OpenCollections, collections_router, known_collection
from medvec.serve.http_middleware import (AUTH_ERRORS, LOOPBACK_HOSTS, MAX_UPLOAD_BYTES, BodyLimit, HostGuard,
                                          add_error_handlers, bearer_guard)
from medvec.serve.routes.images import image_router, upload_router
from medvec.serve.routes.search import refine_router, search_router
from medvec.serve.routes.status import NO_EVAL, eval_router, health_router, stats_router
from medvec.settings import Settings
from medvec.storage import HomePath, as_path

__all__ = ["MAX_UPLOAD_BYTES", "NO_EVAL", "create_app", "serve"]

WEB_DIR = Path(__file__).resolve().parent.parent / "web"
#: The page loads nothing from elsewhere; the browser enforces it. Images arrive as blob: URLs.
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' blob: data:; connect-src 'self'; "
                               "script-src 'self'; style-src 'self'; frame-ancestors 'none'; base-uri 'none'",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
}


def create_app(search: ImageSearch, home: HomePath, *, token: str | None = None,
               max_upload_bytes: int = MAX_UPLOAD_BYTES, allowed_hosts: tuple[str, ...] = (),
               collections: OpenCollections | None = None) -> FastAPI:
    """The API and page over `search` (and its reports); with `token`, every /api/* route but health needs it.
    Only loopback names and `allowed_hosts` are answered; other sites' requests are refused (HostGuard).
    With `collections`, `?collection=NAME` on /api/* is answered by that collection's own app, and
    /api/collections lists them."""
    app = FastAPI(title="Medvec search", version="1", summary="Text → image, image → image and find-similar "
                  "search over embedded medical images (chest X-rays, dermatology photographs ...) and their "
                  "reports.", docs_url=None)
    add_offline_docs(app)  # /docs from local Swagger UI files: FastAPI's default loads them from a CDN
    reports = ReportSearch(search)  # one per app, like `search`: it keeps the reports and their links loaded
    home = as_path(home).resolve()
    add_error_handlers(app)
    if collections is not None:  # innermost: the guards below see every request first
        app.add_middleware(CollectionDispatch, collections=collections)
    app.add_middleware(BodyLimit, max_upload_bytes=max_upload_bytes)
    app.add_middleware(HostGuard, allowed=tuple(allowed_hosts))  # added last: runs first
    # Health never needs the token, so its 404 for an unknown collection names the known ones only without one.
    app.include_router(health_router(search, reports, token), dependencies=[] if collections is None else
                       [Depends(known_collection(collections, name_them=token is None))])
    # The token first: a stranger learns nothing, not even which collections exist.
    guards = [Depends(bearer_guard(token))] if token else []
    guards += [Depends(known_collection(collections))] if collections is not None else []
    guarded = {"prefix": "/api", "dependencies": guards, "responses": AUTH_ERRORS if token else None}
    routers = [search_router(search, reports), upload_router(search, max_upload_bytes), stats_router(search),
               image_router(search, reports, home), eval_router(home), refine_router(search, reports, max_upload_bytes)]
    for router in routers + ([collections_router(collections)] if collections is not None else []):
        app.include_router(router, **guarded)
    app.include_router(_page_router())
    app.mount("/static", StaticFiles(directory=WEB_DIR), name="static")
    return app


def _page_router() -> APIRouter:
    router = APIRouter(include_in_schema=False)

    @router.get("/")
    def page() -> FileResponse:
        return FileResponse(WEB_DIR / "index.html", media_type="text/html", headers=PAGE_HEADERS)

    return router


# --- `medvec serve` --------------------------------------------------------------------------------

def _one_thread_per_query() -> None:
    """A server encodes one short query at a time: a torch thread team only waits for cores there
    (p99 164 ms against 4 ms with one thread under load, BENCHMARKS.md "HTTP search end to end"), and
    concurrent requests already use the cores."""
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:
        pass


def serve(settings: Settings, *, host: str = "127.0.0.1", port: int = 8080, model: str | None = None,
          token: str | None = None) -> int:
    """Run the API and page in the foreground until Ctrl-C; 1 when the address cannot be bound."""
    import uvicorn

    from medvec.search.configured import open_search

    if host not in LOOPBACK_HOSTS and not token:
        print(f"medvec serve: refusing to listen on {host} without a token: anyone who can reach the port could "
              "search and see images. Set MEDVEC_API_TOKEN (e.g. python -c \"import secrets; "
              "print(secrets.token_urlsafe(32))\"), or bind 127.0.0.1", file=sys.stderr)
        return 2
    try:
        listener = _listen(host, port)
    except OSError as exc:
        print(f"medvec serve: cannot listen on {host}:{port} ({exc.strerror or exc}); choose another --port",
              file=sys.stderr)
        return 1
    _one_thread_per_query()
    embedders = SharedEmbedders()  # one encoder per model, whichever collections ask
    search = open_search(settings, model, embedders=embedders)
    print(_describe(search), flush=True)
    url = f"http://{_display_host(host)}:{listener.getsockname()[1]}/"
    print(f"medvec serve: open {url}  (API docs at {url}docs)" +
          ("; a bearer token is required (MEDVEC_API_TOKEN): paste it into the page or open "
           f"{url}?token=<token> once" if token else ""), flush=True)
    # A specific bind address is a name clients use; 0.0.0.0 is not: those need MEDVEC_ALLOWED_HOSTS.
    allowed = (*settings.allowed_host_list, *([host] if host not in ("0.0.0.0", "::", "") else []))
    if host in ("0.0.0.0", "::", "") and not settings.allowed_host_list:
        print("medvec serve: only loopback names are answered; set MEDVEC_ALLOWED_HOSTS to the host names "
              "clients use for this machine", flush=True)
    # No access log: request lines carry image ids and query text, and `/?token=` would put the token there.
    collections = collection_apps(settings, model, embedders, token=token, allowed_hosts=allowed)
    app = create_app(search, settings.home, token=token, allowed_hosts=allowed, collections=collections)
    config = uvicorn.Config(app, access_log=False, log_level="warning")
    try:
        uvicorn.Server(config).run(sockets=[listener])
    except KeyboardInterrupt:
        pass  # uvicorn shut down cleanly, then re-raised the Ctrl-C for us
    finally:
        collections.close()
        search.close()
        listener.close()
    return 0


def collection_apps(settings: Settings, model: str | None = None, embedders: SharedEmbedders | None = None,
                    **app_options) -> OpenCollections:
    """The other collections of the settings' home, each its own app over its own search when first asked;
    their encoders come from `embedders` (one per model) when given."""
    from medvec.search.configured import open_search

    def open_app(collection: Settings) -> FastAPI:
        search = open_search(collection, model, embedders=embedders)
        app = create_app(search, collection.home, **app_options)
        app.state.search = search  # closed when the app leaves the open collections
        return app

    return OpenCollections(settings, open_app, lambda app: app.state.search.close())


def _listen(host: str, port: int) -> socket.socket:
    """Bind before printing the URL, so a taken port is one plain line rather than a uvicorn exit."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind((host, port))
    except OSError:
        listener.close()
        raise
    return listener


def _display_host(host: str) -> str:
    if host in ("0.0.0.0", ""):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


def _describe(search: ImageSearch) -> str:
    try:
        info = search.info()  # loads the vectors now, so the first request does not wait for them
    except NotIndexed as exc:
        return f"medvec serve: {exc}; the page and /api/health will say so until it exists"
    return (f"medvec serve: {info['rows']} image(s) in {info['table']} v{info['table_version']} "
            f"({info['model']}, {info['index']['kind']} index)")
