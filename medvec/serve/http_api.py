"""`medvec serve`: the search HTTP API and the web page, over one shared, thread-safe `ImageSearch` and
the `ReportSearch` beside it (radiology reports: BM25, vector, hybrid; images found through their reports).

Endpoints are plain `def` functions: search is CPU-bound, so FastAPI runs them in its thread pool.
Image bytes are found by id only (the table's `image_uri` / `thumb_uri` under the home), never from
a path the client sends. The latest retrieval evaluation is served from the home as `medvec eval` wrote it.
"""

from __future__ import annotations

import hmac
import socket
import sys
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import quote

from fastapi import APIRouter, Depends, FastAPI, File, HTTPException, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from medvec.tables import database
from medvec.embedders.base import EmbedderError
from medvec.home import EVAL_FILES
from medvec.search.reports import MODES, NoReports, ReportSearch
from medvec.search.images import MAX_K, Filters, ImageSearch, NoSuchImage, NotIndexed, SearchInputError, SearchResult
from medvec.settings import Settings
from medvec.storage import HomePath, S3Path, as_path

MAX_UPLOAD_BYTES = 20 * 2**20
#: Room for the multipart boundaries and headers around the file when checking Content-Length.
_MULTIPART_SLACK = 64 * 2**10
WEB_DIR = Path(__file__).resolve().parent.parent / "web"
#: The page loads nothing from elsewhere; the browser enforces it. Images arrive as blob: URLs.
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' blob: data:; connect-src 'self'; "
                               "script-src 'self'; style-src 'self'; frame-ancestors 'none'; base-uri 'none'",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
}
IMAGE_CACHE = "private, max-age=3600"
#: Where `medvec eval` and the retrieval_evaluation asset leave the latest run (evaluation.save_report).
#: How `reports=true` ranks reports (report_search.MODES; the first is the default).
ReportMode = Literal[MODES]  # type: ignore[valid-type]
REPORTS_FLAG = "also search the radiology reports (see the description for the answer's shape)"
HIGHLIGHTS = ("where the query's words occur in `snippet`: [start, end) offsets in Unicode code points "
              "(a browser's UTF-16 string differs only beyond the Basic Multilingual Plane)")
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
    reports: int | None = Field(None, description="reports the model's reports table holds; null when it has none "
                                                  "(then `reports=true` and /api/images/{id}/reports answer 503)")


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


class ReportMatchOut(BaseModel):
    """The report of the study that led to an image, cut around the query's words."""

    report_id: str
    study_key: str
    snippet: str
    highlights: list[tuple[int, int]] = Field(description=HIGHLIGHTS, examples=[[[0, 5], [19, 27]]])


class StudyImageOut(BaseModel):
    """An image of a study, enough to show its thumbnail."""

    image_id: str
    view_position: str | None = None
    labels: list[str] | None = None
    thumb_uri: str | None = None
    image_url: str
    thumbnail_url: str


class StudyOut(BaseModel):
    """A report that matched, with the images of its study."""

    report_id: str
    study_key: str = Field(description="MIMIC-CXR study folder (s50414267), or the Open-I / Indiana uid")
    layout: str = Field(description="mimic, openi or indiana", examples=["openi"])
    score: float = Field(description="hybrid: reciprocal-rank fusion of the BM25 and vector rankings; bm25: the BM25 "
                                     "score; vector: cosine similarity of the report to the query")
    routes: list[str] = Field(description="the rankings that found it: bm25, vector", examples=[["bm25", "vector"]])
    snippet: str = Field(description="the section with most query words (impression first on ties), cut to about "
                                     "240 characters; … marks a cut")
    highlights: list[tuple[int, int]] = Field(description=HIGHLIGHTS, examples=[[[0, 5], [19, 27]]])
    impression: str
    findings: str
    labels: list[str] = Field(description="findings read from the report's text (negation-aware), or its MeSH terms")
    images: list[StudyImageOut]


class ReportImageOut(ImageOut):
    score: float = Field(description="reciprocal-rank fusion of the direct ranking and the report ranking")
    rank: int
    routes: list[str] = Field(description="how it was found: `image` (the text matched the image itself), `report` "
                                          "(a matching report belongs to its study), or both",
                              examples=[["image", "report"]])
    report: ReportMatchOut | None = Field(description="the best matching report of its study; null when found "
                                                      "by the image route only")


class ReportSearchOut(BaseModel):
    """Text → reports and images (`reports=true`): studies whose reports match, and images found directly or
    through those reports, merged."""

    model: str
    table: str = Field(examples=["reports__tiny_siglip"])
    query: dict[str, Any]
    mode: ReportMode
    text_vector: str | None = Field(None, description="vector and hybrid: `encoded`, or `stored (common query)`")
    direct_route: str = Field(description="how the images were searched directly (as `route` without reports)")
    took_ms: float
    studies: list[StudyOut] = Field(description="k reports, best first; filters do not apply to reports")
    images: list[ReportImageOut] = Field(description="k images, best first; filters apply")


class LinkedReportOut(BaseModel):
    report_id: str
    study_key: str
    impression: str
    findings: str
    labels: list[str]


class SimilarHitOut(HitOut):
    reports: list[LinkedReportOut] = Field(description="the reports of the image's study; empty when it has none")


class SimilarReportsOut(BaseModel):
    """Find similar with `reports=true`: each similar image with its study's reports."""

    model: str
    query: dict[str, Any]
    route: str
    took_ms: float
    hits: list[SimilarHitOut]


class ImageReportOut(BaseModel):
    report_id: str
    study_key: str
    layout: str = Field(examples=["mimic"])
    indication: str
    findings: str
    impression: str
    labels: list[str]


class ImageReportsOut(BaseModel):
    """The reports of the image's study (scrubbed of identifiers at ingest); usually one."""

    image_id: str
    reports: list[ImageReportOut]


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
          503: {"model": ErrorOut, "description": "the model's table does not exist yet, or its encoder cannot load; "
                                                  "with reports, also when the model has no reports table"}}
AUTH_ERRORS = {401: {"model": ErrorOut, "description": "missing or wrong bearer token"}}


# --- the app -------------------------------------------------------------------------------------

def create_app(search: ImageSearch, home: HomePath, *, token: str | None = None,
               max_upload_bytes: int = MAX_UPLOAD_BYTES) -> FastAPI:
    """The API and page over `search` (and its reports); with `token`, every /api/* route but health needs it."""
    app = FastAPI(title="Medvec search", version="1", summary="Text → image, image → image and find-similar "
                  "search over embedded chest X-rays, and their radiology reports.")
    reports = ReportSearch(search)  # one per app, like `search`: it keeps the reports and their links loaded
    _add_error_handlers(app)
    app.add_middleware(_BodyLimit, max_upload_bytes=max_upload_bytes)
    app.include_router(_health_router(search, reports, token))
    guard = [Depends(_bearer_guard(token))] if token else []
    app.include_router(_search_router(search, reports, max_upload_bytes), prefix="/api", dependencies=guard,
                       responses=AUTH_ERRORS if token else None)
    app.include_router(_image_router(search, reports, as_path(home).resolve()), prefix="/api", dependencies=guard,
                       responses=AUTH_ERRORS if token else None)
    app.include_router(_eval_router(as_path(home).resolve()), prefix="/api", dependencies=guard,
                       responses=AUTH_ERRORS if token else None)
    app.include_router(_page_router())
    app.mount("/static", StaticFiles(directory=WEB_DIR), name="static")
    return app


def _health_router(search: ImageSearch, reports: ReportSearch, token: str | None) -> APIRouter:
    router = APIRouter(tags=["status"])
    db = database.connect(search.lancedb_uri)

    @router.get("/api/health", response_model=HealthOut, summary="Is search ready?",
                description="Model, table, rows and version, and how many reports the model holds. Never needs "
                            "the token; answers `ok: false` with the reason when the model's table does not exist "
                            "yet.")
    def health() -> HealthOut:
        base = {"model": search.model_name, "table": search.table_name, "auth_required": token is not None}
        try:
            info = search.info()
        except NotIndexed as exc:
            return HealthOut(ok=False, reason=str(exc), **base)
        table = database.open_table_if_exists(db, reports.table_name)
        return HealthOut(ok=True, rows=info["rows"], table_version=info["table_version"],
                         reports=table.count_rows() if table is not None else None, **base)

    return router


def _search_router(search: ImageSearch, reports: ReportSearch, max_upload_bytes: int) -> APIRouter:
    router = APIRouter(tags=["search"], responses=ERRORS)
    limit_text = _mib(max_upload_bytes)

    @router.get("/search", response_model=SearchOut | ReportSearchOut, summary="Text → image (and report) search",
                description="Images nearest to a text query (`SearchOut`). Common findings are answered from "
                            "precomputed results (`route: fallback`); other text loads the model's text encoder "
                            "once.\n\nWith `reports=true` (`ReportSearchOut`): `studies`, the k reports that match "
                            "best by `mode` (`bm25` full text, `vector` the model's text embedding, `hybrid` both "
                            "rank-fused), each with a snippet, the offsets of the query's words in it and its "
                            "study's images; and `images`, the k images found directly or through those reports, "
                            "rank-fused, each with its `routes`. Filters narrow the images, not the reports. 503 "
                            "when the model has no reports table.")
    def search_text(q: Annotated[str, Query(description="query text, up to 1,000 characters",
                                            examples=["pleural effusion"])],
                    k: Annotated[int, Query(ge=1, le=MAX_K, description="how many hits")] = 10,
                    filters: Filters = Depends(_filters),
                    with_reports: Annotated[bool, Query(alias="reports", description=REPORTS_FLAG)] = False,
                    mode: Annotated[ReportMode | None,
                                    Query(description="with reports=true: how reports are ranked (default hybrid)")]
                    = None) -> dict:
        if not with_reports:
            if mode is not None:
                raise SearchInputError("mode ranks reports: add reports=true")
            return _search_json(search.search_text(q, k, filters))
        return _report_search_json(reports.search(q, k, filters, mode or MODES[0]))

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

    @router.get("/similar/{image_id}", response_model=SearchOut | SimilarReportsOut, summary="Find similar",
                description="The k stored images nearest to a stored one, itself excluded (`SearchOut`). With "
                            "`reports=true` (`SimilarReportsOut`), each hit also carries the reports of its study; "
                            "503 when the model has no reports table.")
    def similar(image_id: str, k: Annotated[int, Query(ge=1, le=MAX_K)] = 10,
                filters: Filters = Depends(_filters),
                with_reports: Annotated[bool, Query(alias="reports", description=REPORTS_FLAG)] = False) -> dict:
        if with_reports:
            out = reports.similar_with_reports(image_id, k, filters)
            out["hits"] = [_with_urls(hit) for hit in out["hits"]]
            return out
        return _search_json(search.similar(image_id, k, filters))

    @router.get("/stats", response_model=StatsOut, tags=["status"], summary="What the collection holds",
                description="Images, subjects and studies; counts by view, modality, label and split (the "
                            "values the filters take); ingest errors by stage; models and their tables.")
    def stats() -> dict:
        from medvec.tables.inventory import collection_stats

        return collection_stats(search.lancedb_uri, search.home)  # StatsOut drops lancedb_uri: a server path

    return router


def _image_router(search: ImageSearch, reports: ReportSearch, home: HomePath) -> APIRouter:
    router = APIRouter(tags=["images"], responses={404: ERRORS[404]})
    webp = {200: {"content": {"image/webp": {}}, "description": "WebP bytes"}}

    @router.get("/images/{image_id}", response_model=ImageOut, summary="One image's metadata")
    def image_metadata(image_id: str) -> dict:
        return _with_urls(search.get(image_id))

    @router.get("/images/{image_id}/reports", response_model=ImageReportsOut, summary="One image's reports",
                description="The reports of the image's study: indication, findings and impression, scrubbed of "
                            "identifiers at ingest; an empty list when none links to it. 503 when the model has no "
                            "reports table.", responses={503: ERRORS[503]})
    def image_reports(image_id: str) -> dict:
        search.get(image_id)  # an unknown id is 404, not an empty list
        return {"image_id": image_id, "reports": reports.reports_for_image(image_id)}

    @router.get("/images/{image_id}/image", response_class=FileResponse, responses=webp,
                summary="The normalised image (WebP)")
    def image_file(image_id: str) -> FileResponse:
        return _webp(_stored_file(search, home, image_id, "image_uri"))

    @router.get("/images/{image_id}/thumbnail", response_class=FileResponse, responses=webp,
                summary="The thumbnail (WebP)")
    def thumbnail_file(image_id: str) -> FileResponse:
        return _webp(_stored_file(search, home, image_id, "thumb_uri"))

    return router


def _eval_router(home: HomePath) -> APIRouter:
    router = APIRouter(tags=["evaluation"], responses={404: {"model": ErrorOut, "description": NO_EVAL}})

    @router.get("/eval", response_model=EvalReportOut, summary="The latest retrieval evaluation",
                description="The report (schema `medvec.eval/1`) that `medvec eval` or the retrieval_evaluation "
                            "asset last wrote: per model, text → image per finding and macro-averaged, image → "
                            "image, a random ranking, Recall@K curves and hard cases. Read from disk on every "
                            "request, so a new run shows without restarting the server.")
    def eval_report() -> FileResponse:
        return _file_response(_eval_file(home, "json"), media_type="application/json",
                            headers={"Cache-Control": EVAL_CACHE})

    @router.get("/eval/plot.png", response_class=FileResponse, summary="The latest Recall@K plot (PNG)",
                responses={200: {"content": {"image/png": {}}, "description": "Recall@K for K = 1..50 per model"}})
    def eval_plot() -> FileResponse:
        return _file_response(_eval_file(home, "png"), media_type="image/png", headers={"Cache-Control": EVAL_CACHE})

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


def _report_search_json(result: dict) -> dict:
    result["images"] = [_with_urls(image) for image in result["images"]]
    for study in result["studies"]:
        study["images"] = [_with_urls(image) for image in study["images"]]
    return result


def _with_urls(image: dict) -> dict:
    base = f"/api/images/{quote(image['image_id'], safe='')}"
    return image | {"image_url": f"{base}/image", "thumbnail_url": f"{base}/thumbnail"}


def _stored_file(search: ImageSearch, home: HomePath, image_id: str, column: str) -> HomePath:
    """The id's file under `home`; a uri that resolves outside it (a damaged row, a link) is not served."""
    uri = search.get(image_id).get(column)
    path = (home / uri).resolve() if uri else None
    if path is None or not path.is_relative_to(home) or not path.is_file():
        raise HTTPException(404, f"no stored file for image {image_id!r}")
    return path


def _eval_file(home: HomePath, name: str) -> HomePath:
    path = (home / EVAL_FILES[name]).resolve()
    if not path.is_relative_to(home) or not path.is_file():
        raise HTTPException(404, NO_EVAL)
    return path


def _mib(size: int) -> str:
    return f"{size / 2**20:g} MiB"


def _webp(path: HomePath) -> Response:
    return _file_response(path, media_type="image/webp", headers={"Cache-Control": IMAGE_CACHE})


def _file_response(path: HomePath, **kwargs) -> Response:
    """A local file streamed from disk; an S3 object (a home on S3) read and sent."""
    if isinstance(path, S3Path):
        return Response(path.read_bytes(), **kwargs)
    return FileResponse(path, **kwargs)


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

    # Domain errors with a plain message for the user. Starlette picks the most specific class first,
    # so NoSuchImage (a SearchInputError) answers 404, not 400.
    for exc_class, status in ((NoSuchImage, 404), (SearchInputError, 400), (NotIndexed, 503), (NoReports, 503)):
        app.add_exception_handler(exc_class, lambda request, exc, status=status: error(status, str(exc)))

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

    try:
        listener = _listen(host, port)
    except OSError as exc:
        print(f"medvec serve: cannot listen on {host}:{port} ({exc.strerror or exc}); choose another --port",
              file=sys.stderr)
        return 1
    _one_thread_per_query()
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
