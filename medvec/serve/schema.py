"""The answers Medvec's servers give, as one set of pydantic models: the HTTP API's `response_model`s
(and its OpenAPI schema) and the MCP tools' output schemas are built from the same classes, so the two
cannot drift. The MCP tools answer a compact subset (`ImageHit`, `SearchAnswer`, ...); the HTTP models
extend those with every column and the URLs of the pixels.
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import Any, Literal
from urllib.parse import quote

from pydantic import BaseModel, ConfigDict, Field, model_validator

from medvec.models.registry import quality_note

from medvec.search.reports import MODES

#: How reports are ranked (report_search.MODES, the one list of modes; the first is the default).
ReportMode = Literal[MODES]  # type: ignore[valid-type]
HIGHLIGHTS = ("where the query's words occur in `snippet`: [start, end) offsets in Unicode code points "
              "(a browser's UTF-16 string differs only beyond the Basic Multilingual Plane)")


FUSED_SCALE = ("reciprocal-rank fusion: each route a result is found by adds 1/(60+rank), so scores run "
               "from about 0.016 (one route, rank 1) to 0.033 (both routes, rank 1); not a cosine similarity")


class ModelNamed(BaseModel):
    """An answer that names its model, and says so when the model's results carry no clinical meaning."""

    model: str = Field(description="Embedding model the collection was searched with", examples=["tiny-siglip"])
    model_note: str = Field("", description="Set when the model's results are not clinically meaningful "
                                            "(random or synthetic-only weights); empty for real models")

    @model_validator(mode="after")
    def _note_the_model(self):
        if not self.model_note:
            self.model_note = quality_note(self.model)
        return self


class ErrorOut(BaseModel):
    """Every HTTP error answer; an MCP tool error carries the same plain message as its text."""

    error: str = Field(examples=["k must be between 1 and 500"])


class HealthOut(ModelNamed):
    ok: bool
    table: str = Field(examples=["images__tiny_siglip"])
    rows: int | None = Field(None, description="images the search holds; null when the table is missing")
    table_version: int | None = None
    auth_required: bool = Field(description="true when /api/* (except this route) needs a bearer token")
    reason: str | None = Field(None, description="why ok is false")
    reports: int | None = Field(None, description="reports the model's reports table holds; null when it has none "
                                                  "(then `reports=true` and /api/images/{id}/reports answer 503)")


# --- images and image search: the compact shape (MCP) and the full one (HTTP) ----------------------

class ImageFields(BaseModel):
    """The metadata an assistant needs to talk about an image; never file paths from the source."""

    image_id: str = Field(description="Stable id of the image (its DICOM SOP Instance UID or a hash)")
    study_id: str | None = Field(None, description="Study the image belongs to (de-identified)")
    view_position: str | None = Field(None, description="Projection: PA, AP, LATERAL, ...", examples=["PA"])
    modality: str | None = Field(None, description="DICOM modality: CR, DX, ...", examples=["CR"])
    labels: list[str] | None = Field(None, description="Findings recorded for the image, when known",
                                     examples=[["Cardiomegaly"]])
    split: str | None = Field(None, description="Dataset split (train / valid / test), when known",
                              examples=["train"])


class ImageHit(ImageFields):
    score: float = Field(description="Cosine similarity to the query; higher is closer")
    rank: int = Field(description="1 for the best match")


class SearchAnswer(ModelNamed):
    """What a search answers, compact: the MCP tools' shape, and the base of the HTTP `SearchOut`."""

    hits: list[ImageHit]
    route: str = Field(description="How it was answered: fallback (precomputed), fallback_vector+index, "
                                   "index[:ivf], similar_images", examples=["fallback"])
    table: str = Field(description="LanceDB table searched")
    table_version: int


class ImageMetadata(ImageFields):
    """Everything the collection keeps about one image (pseudonymised; no source paths)."""

    model_config = ConfigDict(extra="allow")


class ImageOut(ImageMetadata):
    """One image's metadata, as the table holds it, and where to fetch its pixels."""

    series_id: str | None = None
    subject_key: str | None = Field(None, description="keyed pseudonym of the patient id, never the id")
    body_part: str | None = None
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


class HitOut(ImageOut, ImageHit):
    """A search hit with every column and its URLs."""


class SearchOut(SearchAnswer):
    hits: list[HitOut]
    took_ms: float = Field(description="time inside the search, not counting HTTP")
    query: dict[str, Any]


#: The collection (`?collection=`) of the request being answered, set by `collections.CollectionDispatch`.
#: The URLs below must name it, so that a hit's image_url fetches from the collection the hit came from;
#: every route builds them here, so it travels with the request rather than through every router.
REQUEST_COLLECTION: ContextVar[str | None] = ContextVar("medvec_request_collection", default=None)


def with_urls(image: dict) -> dict:
    """An image's row with the API URLs of its pixels (`ImageOut.image_url`, `thumbnail_url`)."""
    base = f"/api/images/{quote(image['image_id'], safe='')}"
    collection = REQUEST_COLLECTION.get()
    query = f"?collection={collection}" if collection else ""  # a collection name needs no quoting
    return image | {"image_url": f"{base}/image{query}", "thumbnail_url": f"{base}/thumbnail{query}"}


class CollectionOut(BaseModel):
    name: str | None = Field(description="the collection's name (`?collection=NAME`); null for the home itself",
                             examples=["chest"])
    images: int = Field(description="images it holds (its largest model table's rows)")
    tables: dict[str, int] = Field(description="rows per model table", examples=[{"images__tiny_siglip": 36}])
    default: bool = Field(description="true for the collection answered without `?collection=`")


class CollectionsOut(BaseModel):
    collections: list[CollectionOut]


# --- reports and report search ---------------------------------------------------------------------

class StudyFields(BaseModel):
    """A report that matched a text: what both servers say about it."""

    report_id: str
    study_key: str = Field(description="The study: a MIMIC-CXR study folder (s50414267) or an Open-I / Indiana uid")
    layout: str = Field(description="Where the report came from: mimic, openi or indiana", examples=["openi"])
    score: float = Field(description="hybrid: reciprocal-rank fusion of the BM25 and vector rankings; bm25: the BM25 "
                                     "score; vector: cosine similarity of the report to the query")
    routes: list[str] = Field(description="The rankings that found it: bm25 (words), vector (meaning)",
                              examples=[["bm25", "vector"]])
    snippet: str = Field(description="the section with most query words (impression first on ties), cut to about "
                                     "240 characters; … marks a cut")
    impression: str
    findings: str
    labels: list[str] = Field(description="Findings read from the report text (negations respected) or its MeSH terms")


class StudyHit(StudyFields):
    """A report that matched, and the ids of its study's images (MCP)."""

    rank: int = Field(description="1 for the best match")
    image_ids: list[str] = Field(description="The study's images in the collection")


class ReportImageHit(ImageHit):
    score: float = Field(description="Fused rank score of the direct and report routes; higher is better")
    routes: list[str] = Field(description="image: the text matched the image itself; report: a matching report "
                                          "belongs to its study", examples=[["image", "report"]])
    study_key: str | None = Field(None, description="The matching report's study, when found through a report")


class ReportAnswerFields(ModelNamed):
    mode: ReportMode = Field(description="How reports were ranked: hybrid, bm25 or vector")
    score_scale: str = Field(FUSED_SCALE, description="What the images' (and hybrid studies') scores measure")
    table: str = Field(description="LanceDB reports table searched", examples=["reports__tiny_siglip"])


class ReportSearchAnswer(ReportAnswerFields):
    """Text → reports and images, compact (MCP)."""

    studies: list[StudyHit]
    images: list[ReportImageHit]


# --- the HTTP API's fuller shapes ---------------------------------------------------------------

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


class StudyOut(StudyFields):
    """A report that matched, with the highlighted words of its snippet and the images of its study."""

    highlights: list[tuple[int, int]] = Field(description=HIGHLIGHTS, examples=[[[0, 5], [19, 27]]])
    images: list[StudyImageOut]


class ReportImageOut(HitOut):
    score: float = Field(description="reciprocal-rank fusion of the direct ranking and the report ranking")
    routes: list[str] = Field(description="how it was found: `image` (the text matched the image itself), `report` "
                                          "(a matching report belongs to its study), or both",
                              examples=[["image", "report"]])
    report: ReportMatchOut | None = Field(description="the best matching report of its study; null when found "
                                                      "by the image route only")


class ReportSearchOut(ReportAnswerFields):
    """Text → reports and images (`reports=true`): studies whose reports match, and images found directly or
    through those reports, merged."""

    query: dict[str, Any]
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


class SimilarReportsOut(ModelNamed):
    """Find similar with `reports=true`: each similar image with its study's reports."""

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
    """The reports of the image's study (scrubbed of identifiers at ingest); usually one. Both servers answer it."""

    image_id: str
    reports: list[ImageReportOut] = Field(description="The reports of the image's study; empty when none links "
                                                      "to it")


# --- study-level and refined search -------------------------------------------------------------

class StudyGroup(BaseModel):
    """A study as one hit (MCP): its views that pass the filters, best first, and its reports."""

    study_id: str | None = Field(description="The study (de-identified); null for an image with no study")
    subject_key: str | None = Field(None, description="keyed pseudonym of the patient id, never the id")
    score: float = Field(description="`best`: the best view's cosine similarity; `mean`: the mean over its views")
    rank: int = Field(description="1 for the best study")
    views: list[ImageHit]
    reports: list[ImageReportOut] = Field(description="the reports linked to its views; empty when none")


class StudySearchAnswer(BaseModel):
    """Studies nearest to a query (text, image, both, refined by feedback), compact (MCP)."""

    studies: list[StudyGroup]
    route: str = Field(description="studies, or studies+per_patient when a per-patient limit applied")
    model: str
    table: str
    table_version: int


class StudyGroupOut(StudyGroup):
    views: list[HitOut]


class StudySearchOut(StudySearchAnswer):
    """`by_study=true`: each hit a study with every view (and URLs) and its reports."""

    studies: list[StudyGroupOut]
    took_ms: float
    query: dict[str, Any] = Field(description="what was asked: text, image, image_id, text_weight, relevant, "
                                              "not_relevant, by_study, per_patient, study_score, k, filters")


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
    zero_shot: dict[str, Any] | None = Field(
        None, description="with `medvec eval --zero-shot`: `models` (per model `per_finding` and `macro`: auc, "
                          "ci_low, ci_high, replicates_scored, positives, negatives), `comparisons` (each later model "
                          "minus the first on the same images and patients: difference, ci_low, ci_high), `prompts`, "
                          "`replicates`, `seed`")
    probes: list[dict[str, Any]] | None = Field(
        None, description="with `medvec eval --probes`: per model, test-split AUC of each finding's linear probe "
                          "(per_finding, macro as in zero_shot), the splits and where the probes were saved")

