"""Status routes: health (never behind the token), what the collection holds, and the latest retrieval
evaluation, read from the home as `medvec eval` wrote it."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException
from fastapi.responses import FileResponse

from medvec.evaluation.retrieval import EVAL_FILES
from medvec.home import ZERO_SHOT_PLOT
from medvec.search.images import ImageSearch, NotIndexed
from medvec.search.reports import ReportSearch
from medvec.serve.routes.images import file_response
from medvec.serve.schema import ErrorOut, EvalReportOut, HealthOut, StatsOut
from medvec.storage import HomePath
from medvec.tables import database

NO_EVAL = "no evaluation yet: run `medvec eval` or materialise retrieval_evaluation"
#: A new run replaces the files in place, so the browser must ask again (the ETag makes that cheap).
EVAL_CACHE = "private, no-cache"


def health_router(search: ImageSearch, reports: ReportSearch, token: str | None) -> APIRouter:
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


def stats_router(search: ImageSearch) -> APIRouter:
    router = APIRouter(tags=["status"])

    @router.get("/stats", response_model=StatsOut, summary="What the collection holds",
                description="Images, subjects and studies; counts by view, modality, label and split (the "
                            "values the filters take); ingest errors by stage; models and their tables.")
    def stats() -> dict:
        from medvec.tables.inventory import collection_stats

        return collection_stats(search.lancedb_uri, search.home)  # StatsOut drops lancedb_uri: a server path

    return router


def eval_router(home: HomePath) -> APIRouter:
    router = APIRouter(tags=["evaluation"], responses={404: {"model": ErrorOut, "description": NO_EVAL}})

    @router.get("/eval", response_model=EvalReportOut, summary="The latest retrieval evaluation",
                description="The report (schema `medvec.eval/1`) that `medvec eval` or the retrieval_evaluation "
                            "asset last wrote: per model, text → image per finding and macro-averaged, image → "
                            "image, a random ranking, Recall@K curves and hard cases. Read from disk on every "
                            "request, so a new run shows without restarting the server.")
    def eval_report() -> FileResponse:
        return file_response(_eval_file(home, "json"), media_type="application/json",
                            headers={"Cache-Control": EVAL_CACHE})

    @router.get("/eval/plot.png", response_class=FileResponse, summary="The latest Recall@K plot (PNG)",
                responses={200: {"content": {"image/png": {}}, "description": "Recall@K for K = 1..50 per model"}})
    def eval_plot() -> FileResponse:
        return file_response(_eval_file(home, "png"), media_type="image/png", headers={"Cache-Control": EVAL_CACHE})

    @router.get("/eval/zero_shot.png", response_class=FileResponse, summary="The latest zero-shot AUC plot (PNG)",
                responses={200: {"content": {"image/png": {}},
                                 "description": "ROC AUC per finding and model with 95% CIs (`medvec eval --zero-shot`)"}})
    def zero_shot_plot() -> FileResponse:
        return file_response(_eval_file(home, ZERO_SHOT_PLOT), media_type="image/png",
                             headers={"Cache-Control": EVAL_CACHE})

    return router


def _eval_file(home: HomePath, name: str) -> HomePath:
    """`name` is a key of EVAL_FILES or a path under the home (ZERO_SHOT_PLOT)."""
    path = (home / EVAL_FILES.get(name, name)).resolve()
    if not path.is_relative_to(home) or not path.is_file():
        raise HTTPException(404, NO_EVAL)
    return path
