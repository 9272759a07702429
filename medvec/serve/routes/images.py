"""Image routes: an uploaded image searched (nothing stored), one image's metadata and reports, and its
pixels. Files are found by id only (the table's `image_uri` / `thumb_uri` under the home), never from a
path the client sends."""

from __future__ import annotations

import threading
from typing import Annotated

from fastapi import APIRouter, Depends, File, HTTPException, Query, UploadFile
from fastapi.responses import FileResponse, Response

from medvec.search.images import MAX_K, Filters, ImageSearch
from medvec.search.reports import ReportSearch
from medvec.serve.http_middleware import ERRORS, mib
from medvec.serve.routes.search import filters_query, search_json
from medvec.serve.schema import ErrorOut, ImageOut, ImageReportsOut, SearchOut, with_urls
from medvec.storage import HomePath, S3Path

IMAGE_CACHE = "private, max-age=3600"
#: How long an upload waits for a decoding slot before the server answers 503 (busy, retry).
UPLOAD_WAIT_S = 30.0


def upload_router(search: ImageSearch, max_upload_bytes: int) -> APIRouter:
    router = APIRouter(tags=["search"], responses=ERRORS)
    limit_text = mib(max_upload_bytes)
    # Each upload may decode up to MEDVEC_MAX_PIXELS: bounding how many decode at once bounds the memory
    # parallel uploads (bombs or not) can take, whatever the server's thread pool allows.
    decoding = threading.BoundedSemaphore(getattr(search, "upload_concurrency", 2))

    @router.post("/search/image", response_model=SearchOut, summary="Image → image search",
                 description=f"Upload a DICOM, PNG or JPEG (form field `file`, at most {limit_text}); it is "
                             "normalised and embedded as ingest would, then searched. Nothing is stored.",
                 responses={413: {"model": ErrorOut, "description": f"the upload is over {limit_text}"},
                            503: {"model": ErrorOut, "description": "too many uploads decoding at once; retry"}})
    def search_image(file: Annotated[UploadFile, File(description="DICOM, PNG or JPEG")],
                     k: Annotated[int, Query(ge=1, le=MAX_K)] = 10,
                     filters: Filters = Depends(filters_query)) -> dict:
        data = file.file.read(max_upload_bytes + 1)
        if len(data) > max_upload_bytes:
            raise HTTPException(413, f"the upload is larger than the {limit_text} limit")
        if not decoding.acquire(timeout=UPLOAD_WAIT_S):
            raise HTTPException(503, "too many uploads are being decoded; retry shortly")
        try:
            return search_json(search.search_image(data, k, filters, filename=file.filename or "upload"))
        finally:
            decoding.release()

    return router


def image_router(search: ImageSearch, reports: ReportSearch, home: HomePath) -> APIRouter:
    router = APIRouter(tags=["images"], responses={404: ERRORS[404]})
    webp = {200: {"content": {"image/webp": {}}, "description": "WebP bytes"}}

    @router.get("/images/{image_id}", response_model=ImageOut, summary="One image's metadata")
    def image_metadata(image_id: str) -> dict:
        return with_urls(search.get(image_id))

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


def _stored_file(search: ImageSearch, home: HomePath, image_id: str, column: str) -> HomePath:
    """The id's file under `home`; a uri that resolves outside it (a damaged row, a link) is not served."""
    uri = search.get(image_id).get(column)
    path = (home / uri).resolve() if uri else None
    if path is None or not path.is_relative_to(home) or not path.is_file():
        raise HTTPException(404, f"no stored file for image {image_id!r}")
    return path


def _webp(path: HomePath) -> Response:
    return file_response(path, media_type="image/webp", headers={"Cache-Control": IMAGE_CACHE})


def file_response(path: HomePath, **kwargs) -> Response:
    """A local file streamed from disk; an S3 object (a home on S3) read and sent."""
    if isinstance(path, S3Path):
        return Response(path.read_bytes(), **kwargs)
    return FileResponse(path, **kwargs)
