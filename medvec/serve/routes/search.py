"""Search routes: text → images (and reports with `reports=true`) and find-similar, with the filters
every search takes."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query

from medvec.search.images import MAX_K, Filters, ImageSearch, SearchInputError, SearchResult
from medvec.search.reports import MODES, ReportSearch
from medvec.serve.http_middleware import ERRORS
from medvec.serve.schema import ReportMode, ReportSearchOut, SearchOut, SimilarReportsOut, with_urls

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
                    = None) -> dict:
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
