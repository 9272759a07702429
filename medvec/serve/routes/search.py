"""Search routes: text → images (and reports with `reports=true`) and find-similar, with the filters
every search takes."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, File, HTTPException, Query, UploadFile

from medvec.search.probe_rerank import RERANK_MODES, search_text_reranked
from medvec.search.images import MAX_K, Filters, ImageSearch, SearchInputError, SearchResult
from medvec.search.feedback import TEXT_WEIGHT, Refinement
from medvec.search.reports import MODES, ReportSearch
from medvec.search.studies import STUDY_SCORES, refined_search
from medvec.serve.http_middleware import ERRORS
from medvec.serve.schema import (ReportMode, ReportSearchOut, SearchOut, SimilarReportsOut, StudySearchOut,
                                 with_urls)

RERANK_HELP = ("`probe`: a query naming a finding (\"pleural effusion\") has its candidates re-ordered by that "
               "finding's linear probe (fitted by `medvec eval --probes`); each hit gains `probe_score`. 400 for "
               "a query that names no finding or a table without probes")
REPORTS_FLAG = "also search the radiology reports (see the description for the answer's shape)"


def search_router(search: ImageSearch, reports: ReportSearch) -> APIRouter:
    router = APIRouter(tags=["search"], responses=ERRORS)

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
                    filters: Filters = Depends(filters_query),
                    with_reports: Annotated[bool, Query(alias="reports", description=REPORTS_FLAG)] = False,
                    mode: Annotated[ReportMode | None,
                                    Query(description="with reports=true: how reports are ranked (default hybrid)")]
                    = None,
                    rerank: Annotated[Literal[RERANK_MODES] | None, Query(description=RERANK_HELP)] = None) -> dict:
        if rerank is not None:
            if with_reports:
                raise SearchInputError("rerank re-ranks images: drop reports=true")
            return search_json(search_text_reranked(search, q, k, filters))
        if not with_reports:
            if mode is not None:
                raise SearchInputError("mode ranks reports: add reports=true")
            return search_json(search.search_text(q, k, filters))
        return _reportsearch_json(reports.search(q, k, filters, mode or MODES[0]))

    @router.get("/similar/{image_id}", response_model=SearchOut | SimilarReportsOut, summary="Find similar",
                description="The k stored images nearest to a stored one, itself excluded (`SearchOut`). With "
                            "`reports=true` (`SimilarReportsOut`), each hit also carries the reports of its study; "
                            "503 when the model has no reports table.")
    def similar(image_id: str, k: Annotated[int, Query(ge=1, le=MAX_K)] = 10,
                filters: Filters = Depends(filters_query),
                with_reports: Annotated[bool, Query(alias="reports", description=REPORTS_FLAG)] = False) -> dict:
        if with_reports:
            out = reports.similar_with_reports(image_id, k, filters)
            out["hits"] = [with_urls(hit) for hit in out["hits"]]
            return out
        return search_json(search.similar(image_id, k, filters))

    return router


def refine_router(search: ImageSearch, reports: ReportSearch, max_upload_bytes: int) -> APIRouter:
    """`POST /search/refine`: study-level hits, per-patient limits, image + text, relevance feedback."""
    router = APIRouter(tags=["search"], responses=ERRORS)

    @router.post("/search/refine", response_model=SearchOut | StudySearchOut, summary="Refined and study-level search",
                 description="One query from any of: `q` (text), an uploaded `file` (multipart, DICOM/PNG/JPEG), "
                             "`image_id` (a stored image, itself excluded); an image and a text together are "
                             f"combined as (1 - w)·image + w·text on unit vectors (`text_weight` w, default "
                             f"{TEXT_WEIGHT}). `relevant` / `not_relevant` image ids move the query by Rocchio "
                             "(q' = q + 0.75·mean(relevant) − 0.15·mean(not relevant), normalised); relevant ids "
                             "alone are a query too. `by_study=true` answers studies (`StudySearchOut`: views, best "
                             "first, and reports; `study_score` best view or mean over views), else images "
                             "(`SearchOut`). `per_patient` caps hits per patient (`subject_key`).")
    def refine(q: Annotated[str | None, Query(max_length=1000, description="query text")] = None,
               file: Annotated[UploadFile | None, File(description="DICOM, PNG or JPEG")] = None,
               image_id: Annotated[str | None, Query(description="a stored image to start from")] = None,
               text_weight: Annotated[float, Query(ge=0, le=1)] = TEXT_WEIGHT,
               relevant: Annotated[list[str], Query(description="image ids marked relevant")] = [],
               not_relevant: Annotated[list[str], Query(description="image ids marked not relevant")] = [],
               by_study: Annotated[bool, Query(description="one hit per study")] = False,
               per_patient: Annotated[int | None, Query(ge=1, le=MAX_K, description="at most this many hits "
                                                                                    "per patient")] = None,
               study_score: Annotated[Literal[STUDY_SCORES], Query(description="best view, or mean over "  # type: ignore
                                                                                "the views")] = STUDY_SCORES[0],
               k: Annotated[int, Query(ge=1, le=MAX_K)] = 10, filters: Filters = Depends(filters_query)) -> dict:
        data = None
        if file is not None:
            data = file.file.read(max_upload_bytes + 1)
            if len(data) > max_upload_bytes:
                raise HTTPException(413, "the upload is larger than the upload limit")
        answer = refined_search(search, k=k, filters=filters, text=q, image=data,
                                filename=(file.filename if file else None) or "upload", image_id=image_id,
                                refinement=Refinement.of(text_weight, relevant, not_relevant), by_study=by_study,
                                per_patient=per_patient, study_score=study_score, reports=reports)
        if by_study:
            for study in answer["studies"]:
                study["views"] = [with_urls(view) for view in study["views"]]
        else:
            answer["hits"] = [with_urls(hit) for hit in answer["hits"]]
        return answer

    return router


def filters_query(view: Annotated[list[str], Query(description="any of these view positions (PA, AP, LATERAL…)")] = [],
             label: Annotated[list[str], Query(description="has any of these labels")] = [],
             modality: Annotated[list[str], Query(description="any of these modalities (CR, DX…)")] = [],
             split: Annotated[list[str], Query(description="any of these splits (train, valid, test)")] = [],
             sex: Annotated[list[str], Query(description="any of these sexes (male, female, other)")] = [],
             age_group: Annotated[list[str], Query(description="any of these age groups (40-49, AGE_30_TO_39…)")] = [],
             skin_type: Annotated[list[str], Query(description="any of these Fitzpatrick skin types (FST1…FST6)")] = [],
             ) -> Filters:
    return Filters.of(view=view, modality=modality, split=split, labels=label, sex=sex, age_group=age_group,
                      skin_type=skin_type)


def search_json(result: SearchResult) -> dict:
    out = result.to_json()
    out["hits"] = [with_urls(hit) for hit in out["hits"]]
    return out


def _reportsearch_json(result: dict) -> dict:
    result["images"] = [with_urls(image) for image in result["images"]]
    for study in result["studies"]:
        study["images"] = [with_urls(image) for image in study["images"]]
    return result
