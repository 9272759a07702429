"""`medvec serve`: the search HTTP API and the web page, over one shared, thread-safe `ImageSearch`.

Endpoints are plain `def` functions: search is CPU-bound, so FastAPI runs them in its thread pool.
Image bytes are found by id only (the table's `image_uri` / `thumb_uri` under the home), never from
a path the client sends. The latest retrieval evaluation is served from the home as `medvec eval` wrote it.
"""

from __future__ import annotations

import hmac
import socket
import sys
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Depends, FastAPI, File, HTTPException, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from medvec.embedders.base import EmbedderError
from medvec.search import MAX_K, Filters, ImageSearch, NoSuchImage, NotIndexed, SearchInputError, SearchResult
from medvec.settings import Settings

MAX_UPLOAD_BYTES = 20 * 2**20
#: Room for the multipart boundaries and headers around the file when checking Content-Length.
_MULTIPART_SLACK = 64 * 2**10
WEB_DIR = Path(__file__).resolve().parent / "web"
#: The page loads nothing from elsewhere; the browser enforces it. Images arrive as blob: URLs.
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' blob: data:; connect-src 'self'; "
                               "script-src 'self'; style-src 'self'; frame-ancestors 'none'; base-uri 'none'",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
}
IMAGE_CACHE = "private, max-age=3600"
#: Where `medvec eval` and the retrieval_evaluation asset leave the latest run (evaluation.save_report).
EVAL_FILES = {"report": Path("eval") / "report.json", "plot": Path("eval") / "recall_at_k.png"}
NO_EVAL = "no evaluation yet: run `medvec eval` or materialise retrieval_evaluation"
#: A new run replaces the files in place, so the browser must ask again (the ETag makes that cheap).
EVAL_CACHE = "private, no-cache"


# --- what the API answers (the OpenAPI schema at /openapi.json) ------------------------------------

class ErrorOut(BaseModel):
    error: str = Field(examples=["k must be between 1 and 500"])


class HealthOut(BaseModel):
    ok: bool
    model: str = Field(examples=["tiny-siglip"])
    table: str = Field(examples=["images__tiny_siglip"])
    rows: int | None = Field(None, description="images the search holds; null when the table is missing")
    table_version: int | None = None
    auth_required: bool = Field(description="true when /api/* (except this route) needs a bearer token")
    reason: str | None = Field(None, description="why ok is false")


class ImageOut(BaseModel):
    """One image's metadata, as the table holds it, and where to fetch its pixels."""

    model_config = ConfigDict(extra="allow")

    image_id: str
    study_id: str | None = None
    series_id: str | None = None
    subject_key: str | None = Field(None, description="keyed pseudonym of the patient id, never the id")
    view_position: str | None = Field(None, examples=["PA"])
    modality: str | None = Field(None, examples=["CR"])
    body_part: str | None = None
    labels: list[str] | None = Field(None, examples=[["Cardiomegaly"]])
    split: str | None = Field(None, examples=["train"])
    rows: int | None = None
    columns: int | None = None
    width: int | None = None
    height: int | None = None
    source_format: str | None = None
    photometric: str | None = None
    bits_stored: int | None = None
    window_source: str | None = None
    batch: str | None = None
    image_uri: str | None = Field(None, description="WebP path relative to the Medvec home")
    thumb_uri: str | None = None
    extra: dict[str, Any] = Field(default_factory=dict)
    image_url: str = Field(examples=["/api/images/1.2.3/image"])
    thumbnail_url: str = Field(examples=["/api/images/1.2.3/thumbnail"])


class HitOut(ImageOut):
    score: float = Field(description="cosine similarity, higher is closer")
    rank: int


class SearchOut(BaseModel):
    model: str
    table: str
    table_version: int
    route: str = Field(description="how it was answered: fallback, fallback_vector+index, index[:ivf], "
                                   "similar_images", examples=["fallback"])
    took_ms: float = Field(description="time inside the search, not counting HTTP")
    query: dict[str, Any]
    hits: list[HitOut]


class StatsOut(BaseModel):
    images: int
    subjects: int
    studies: int
    by_view: dict[str, int] = Field(examples=[{"PA": 16, "LATERAL": 12, "AP": 10}])
    by_modality: dict[str, int]
    by_label: dict[str, int]
    by_split: dict[str, int]
    errors: int
    errors_by_stage: dict[str, int]
    models: list[dict[str, Any]]


class EvalModelOut(BaseModel):
    """One model's section of the report; a model whose table is missing has `error` and nothing else."""

    model_config = ConfigDict(extra="allow")

    model: str = Field(examples=["tiny-siglip"])
    table: str = Field(examples=["images__tiny_siglip"])
    table_version: int | None = None
    split: str | None = Field(None, description="the split evaluated; null = every image")
    images: int | None = None
    labelled_images: int | None = None
    text_to_image: dict[str, Any] | None = Field(
        None, description="`per_finding` (recall@k, precision@k, mrr, map, prompts, relevant, candidates), "
                          "`macro` (their mean over findings) and `hard_cases` (`confused_with`: other findings "
                          "retrieved instead, with counts; `worst_ranked`: relevant images ranked lowest); "
                          "null when skipped")
    text_to_image_skipped: str | None = Field(None, description="why text → image was not evaluated")
    image_to_image: dict[str, Any] | None = Field(
        None, description="queries, recall@k, precision@k, mrr, map, excluded_same_subject_or_study, sampled, "
                          "and `note` when no query could be scored")
    chance: dict[str, float] | None = Field(None, description="what a random ranking scores on text → image")
    recall_curve: dict[str, list[float]] | None = Field(None, description="Recall@K for K = 1..50: text, image, "
                                                                          "chance")
    seconds: float | None = None
    error: str | None = Field(None, description="why this model was not evaluated")


class EvalReportOut(BaseModel):
    """`$MEDVEC_HOME/eval/report.json`, as the latest `medvec eval` or retrieval_evaluation wrote it."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    schema_id: str = Field(alias="schema", examples=["medvec.eval/1"])
    split: str | None = Field(None, description="the split evaluated; null = every image")
    ks: list[int] = Field(examples=[[1, 5, 10]])
    uncertain_policy: str = Field(examples=["exclude"])
    findings: list[str]
    models: list[EvalModelOut]


ERRORS = {400: {"model": ErrorOut, "description": "bad input; `error` says why"},
          404: {"model": ErrorOut, "description": "no such image"},
          503: {"model": ErrorOut, "description": "the model's table does not exist yet, or its encoder cannot load"}}
AUTH_ERRORS = {401: {"model": ErrorOut, "description": "missing or wrong bearer token"}}


# --- the app -------------------------------------------------------------------------------------

def create_app(search: ImageSearch, home: Path, *, token: str | None = None,
               max_upload_bytes: int = MAX_UPLOAD_BYTES) -> FastAPI:
    """The API and page over `search`; with `token`, every /api/* route but health needs it."""
    app = FastAPI(title="Medvec search", version="1", summary="Text → image, image → image and find-similar "
                  "search over embedded chest X-rays.")
    _add_error_handlers(app)
    app.add_middleware(_BodyLimit, max_upload_bytes=max_upload_bytes)
    app.include_router(_health_router(search, token))
    guard = [Depends(_bearer_guard(token))] if token else []
    app.include_router(_search_router(search, max_upload_bytes), prefix="/api", dependencies=guard,
                       responses=AUTH_ERRORS if token else None)
    app.include_router(_image_router(search, Path(home).resolve()), prefix="/api", dependencies=guard,
                       responses=AUTH_ERRORS if token else None)
    app.include_router(_eval_router(Path(home).resolve()), prefix="/api", dependencies=guard,
                       responses=AUTH_ERRORS if token else None)
    app.include_router(_page_router())
    app.mount("/static", StaticFiles(directory=WEB_DIR), name="static")
    return app


def _health_router(search: ImageSearch, token: str | None) -> APIRouter:
    router = APIRouter(tags=["status"])

    @router.get("/api/health", response_model=HealthOut, summary="Is search ready?",
                description="Model, table, rows and version. Never needs the token; answers `ok: false` "
                            "with the reason when the model's table does not exist yet.")
    def health() -> HealthOut:
        base = {"model": search.model_name, "table": search.table_name, "auth_required": token is not None}
        try:
            info = search.info()
        except NotIndexed as exc:
            return HealthOut(ok=False, reason=str(exc), **base)
        return HealthOut(ok=True, rows=info["rows"], table_version=info["table_version"], **base)

    return router


def _search_router(search: ImageSearch, max_upload_bytes: int) -> APIRouter:
    router = APIRouter(tags=["search"], responses=ERRORS)
    limit_text = _mib(max_upload_bytes)

    @router.get("/search", response_model=SearchOut, summary="Text → image search",
                description="Images nearest to a text query. Common findings are answered from precomputed "
                            "results (`route: fallback`); other text loads the model's text encoder once.")
    def search_text(q: Annotated[str, Query(description="query text, up to 1,000 characters",
                                            examples=["pleural effusion"])],
                    k: Annotated[int, Query(ge=1, le=MAX_K, description="how many hits")] = 10,
                    filters: Filters = Depends(_filters)) -> dict:
        return _search_json(search.search_text(q, k, filters))

    @router.post("/search/image", response_model=SearchOut, summary="Image → image search",
                 description=f"Upload a DICOM, PNG or JPEG (form field `file`, at most {limit_text}); it is "
                             "normalised and embedded as ingest would, then searched. Nothing is stored.",
                 responses={413: {"model": ErrorOut, "description": f"the upload is over {limit_text}"}})
    def search_image(file: Annotated[UploadFile, File(description="DICOM, PNG or JPEG")],
                     k: Annotated[int, Query(ge=1, le=MAX_K)] = 10,
                     filters: Filters = Depends(_filters)) -> dict:
        data = file.file.read(max_upload_bytes + 1)
        if len(data) > max_upload_bytes:
            raise HTTPException(413, f"the upload is larger than the {limit_text} limit")
        return _search_json(search.search_image(data, k, filters, filename=file.filename or "upload"))

    @router.get("/similar/{image_id}", response_model=SearchOut, summary="Find similar",
                description="The k stored images nearest to a stored one, itself excluded.")
    def similar(image_id: str, k: Annotated[int, Query(ge=1, le=MAX_K)] = 10,
                filters: Filters = Depends(_filters)) -> dict:
        return _search_json(search.similar(image_id, k, filters))

    @router.get("/stats", response_model=StatsOut, tags=["status"], summary="What the collection holds",
                description="Images, subjects and studies; counts by view, modality, label and split (the "
                            "values the filters take); ingest errors by stage; models and their tables.")
    def stats() -> dict:
        from medvec.collection import collection_stats

        return collection_stats(search.lancedb_uri, search.home)  # StatsOut drops lancedb_uri: a server path

    return router


def _image_router(search: ImageSearch, home: Path) -> APIRouter:
    router = APIRouter(tags=["images"], responses={404: ERRORS[404]})
    webp = {200: {"content": {"image/webp": {}}, "description": "WebP bytes"}}

    @router.get("/images/{image_id}", response_model=ImageOut, summary="One image's metadata")
    def image_metadata(image_id: str) -> dict:
        return _with_urls(search.get(image_id))

    @router.get("/images/{image_id}/image", response_class=FileResponse, responses=webp,
                summary="The normalised image (WebP)")
    def image_file(image_id: str) -> FileResponse:
        return _webp(_stored_file(search, home, image_id, "image_uri"))

    @router.get("/images/{image_id}/thumbnail", response_class=FileResponse, responses=webp,
                summary="The thumbnail (WebP)")
    def thumbnail_file(image_id: str) -> FileResponse:
        return _webp(_stored_file(search, home, image_id, "thumb_uri"))

    return router


def _eval_router(home: Path) -> APIRouter:
    router = APIRouter(tags=["evaluation"], responses={404: {"model": ErrorOut, "description": NO_EVAL}})

    @router.get("/eval", response_model=EvalReportOut, summary="The latest retrieval evaluation",
                description="The report (schema `medvec.eval/1`) that `medvec eval` or the retrieval_evaluation "
                            "asset last wrote: per model, text → image per finding and macro-averaged, image → "
                            "image, a random ranking, Recall@K curves and hard cases. Read from disk on every "
                            "request, so a new run shows without restarting the server.")
    def eval_report() -> FileResponse:
        return FileResponse(_eval_file(home, "report"), media_type="application/json",
                            headers={"Cache-Control": EVAL_CACHE})

    @router.get("/eval/plot.png", response_class=FileResponse, summary="The latest Recall@K plot (PNG)",
                responses={200: {"content": {"image/png": {}}, "description": "Recall@K for K = 1..50 per model"}})
    def eval_plot() -> FileResponse:
        return FileResponse(_eval_file(home, "plot"), media_type="image/png", headers={"Cache-Control": EVAL_CACHE})

    return router


def _page_router() -> APIRouter:
    router = APIRouter(include_in_schema=False)

    @router.get("/")
    def page() -> FileResponse:
        return FileResponse(WEB_DIR / "index.html", media_type="text/html", headers=PAGE_HEADERS)

    return router


# --- request pieces --------------------------------------------------------------------------------

def _filters(view: Annotated[list[str], Query(description="any of these view positions (PA, AP, LATERAL…)")] = [],
             label: Annotated[list[str], Query(description="has any of these labels")] = [],
             modality: Annotated[list[str], Query(description="any of these modalities (CR, DX…)")] = [],
             split: Annotated[list[str], Query(description="any of these splits (train, valid, test)")] = [],
             ) -> Filters:
    return Filters.of(view=view, modality=modality, split=split, labels=label)


def _bearer_guard(token: str):
    scheme = HTTPBearer(auto_error=False, description="the server's MEDVEC_API_TOKEN")
    expected = token.encode()

    # A default, not Annotated[...]: with postponed annotations FastAPI would look `scheme` up in globals.
    def require_token(credentials: HTTPAuthorizationCredentials | None = Depends(scheme)) -> None:
        if credentials is None or not hmac.compare_digest(credentials.credentials.encode(), expected):
            raise HTTPException(401, "this server needs its token: send `Authorization: Bearer <MEDVEC_API_TOKEN>`",
                                headers={"WWW-Authenticate": "Bearer"})

    return require_token


def _search_json(result: SearchResult) -> dict:
    out = result.to_json()
    out["hits"] = [_with_urls(hit) for hit in out["hits"]]
    return out


def _with_urls(image: dict) -> dict:
    base = f"/api/images/{quote(image['image_id'], safe='')}"
    return image | {"image_url": f"{base}/image", "thumbnail_url": f"{base}/thumbnail"}


def _stored_file(search: ImageSearch, home: Path, image_id: str, column: str) -> Path:
    """The id's file under `home`; a uri that resolves outside it (a damaged row, a link) is not served."""
    uri = search.get(image_id).get(column)
    path = (home / uri).resolve() if uri else None
    if path is None or not path.is_relative_to(home) or not path.is_file():
        raise HTTPException(404, f"no stored file for image {image_id!r}")
    return path


def _eval_file(home: Path, name: str) -> Path:
    path = (home / EVAL_FILES[name]).resolve()
    if not path.is_relative_to(home) or not path.is_file():
        raise HTTPException(404, NO_EVAL)
    return path


def _mib(size: int) -> str:
    return f"{size / 2**20:g} MiB"


def _webp(path: Path) -> FileResponse:
    return FileResponse(path, media_type="image/webp", headers={"Cache-Control": IMAGE_CACHE})


# --- errors as {"error": "..."} --------------------------------------------------------------------

def _add_error_handlers(app: FastAPI) -> None:
    def error(status: int, message: str, headers: dict | None = None) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status, headers=headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        return error(exc.status_code, str(exc.detail), getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError):
        return error(400, "; ".join(_plain_validation_error(e) for e in exc.errors()))

    @app.exception_handler(NoSuchImage)
    async def no_such_image(request: Request, exc: NoSuchImage):
        return error(404, str(exc))

    @app.exception_handler(SearchInputError)
    async def bad_input(request: Request, exc: SearchInputError):
        return error(400, str(exc))

    @app.exception_handler(NotIndexed)
    async def not_indexed(request: Request, exc: NotIndexed):
        return error(503, str(exc))

    @app.exception_handler(EmbedderError)
    async def encoder_unavailable(request: Request, exc: EmbedderError):
        return error(503, f"the model's encoder is unavailable: {exc}")  # worded as what to do next

    @app.exception_handler(Exception)
    async def bug(request: Request, exc: Exception):  # Starlette re-raises it after this, so uvicorn logs it
        return error(500, "internal error; the server log has the details")


def _plain_validation_error(error: dict) -> str:
    where = [str(part) for part in error.get("loc", ()) if part not in ("query", "body", "path")]
    return f"{'.'.join(where) or 'request'}: {error.get('msg', 'invalid')}"


class _BodyLimit:
    """Refuse a request whose Content-Length is over the limit before its body is read or spooled.

    Bodies sent without a length (chunked) are read, then the endpoint checks the file's size.
    """

    def __init__(self, app, max_upload_bytes: int):
        self.app, self.max_upload_bytes = app, max_upload_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and self._declared_length(scope) > self.max_upload_bytes + _MULTIPART_SLACK:
            message = f"the upload is larger than the {_mib(self.max_upload_bytes)} limit"
            await JSONResponse({"error": message}, status_code=413)(scope, receive, send)
            return
        await self.app(scope, receive, send)

    @staticmethod
    def _declared_length(scope) -> int:
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                return int(value) if value.isdigit() else 0
        return 0


# --- `medvec serve` --------------------------------------------------------------------------------

def serve(settings: Settings, *, host: str = "127.0.0.1", port: int = 8080, model: str | None = None,
          token: str | None = None) -> int:
    """Run the API and page in the foreground until Ctrl-C; 1 when the address cannot be bound."""
    import uvicorn

    from medvec.service import open_search

    try:
        listener = _listen(host, port)
    except OSError as exc:
        print(f"medvec serve: cannot listen on {host}:{port} ({exc.strerror or exc}); choose another --port",
              file=sys.stderr)
        return 1
    search = open_search(settings, model)
    print(_describe(search), flush=True)
    url = f"http://{_display_host(host)}:{listener.getsockname()[1]}/"
    print(f"medvec serve: open {url}  (API docs at {url}docs)" +
          ("; a bearer token is required (MEDVEC_API_TOKEN): paste it into the page or open "
           f"{url}?token=<token> once" if token else ""), flush=True)
    if host not in ("127.0.0.1", "localhost", "::1") and not token:
        print(f"medvec serve: listening on {host} without a token: anyone who can reach this port can search "
              "and see images; set MEDVEC_API_TOKEN to require one", flush=True)
    # No access log: request lines carry image ids and query text, and `/?token=` would put the token there.
    config = uvicorn.Config(create_app(search, settings.home, token=token), access_log=False, log_level="warning")
    try:
        uvicorn.Server(config).run(sockets=[listener])
    except KeyboardInterrupt:
        pass  # uvicorn shut down cleanly, then re-raised the Ctrl-C for us
    finally:
        search.close()
        listener.close()
    return 0


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
