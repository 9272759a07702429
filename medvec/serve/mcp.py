"""`medvec mcp`: the image search as MCP tools an assistant can call, served over stdio.

Six read-only tools on one `ImageSearch` and the `ReportSearch` beside it: text → images, image →
similar images, one image's metadata, text → radiology reports (studies, and images found directly or
through their reports), and one image's reports. stdout carries the protocol and nothing else; logs
go to stderr.
"""

from __future__ import annotations

import base64
import contextlib
import inspect
import json
import logging
import sys
from typing import Annotated, Literal

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import CallToolResult, ImageContent, TextContent, ToolAnnotations
from pydantic import Field

from medvec.embedders.shared import SharedEmbedders
from medvec.search.feedback import TEXT_WEIGHT, Refinement
from medvec.search.reports import NoReports, ReportSearch
from medvec.search.probe_rerank import search_text_reranked
from medvec.search.studies import refined_search
from medvec.search.images import MAX_K, Filters, ImageSearch, NotIndexed, SearchInputError
from medvec.serve.collections import OpenCollections, UnknownCollection
from medvec.serve.mcp_answers import (HIT_FIELDS, compact_answer, compact_report_answer, summarize,
                                      summarize_image_reports, summarize_reports)
from medvec.serve.schema import (ImageMetadata, ImageReportsOut, ReportMode, ReportSearchAnswer, SearchAnswer,
                                 StudySearchAnswer)
from medvec.settings import Settings
from medvec.storage import HomePath, as_path

log = logging.getLogger(__name__)

#: Thumbnails are a few KB of WebP each; the cap keeps one answer from filling an assistant's context.
MAX_THUMBNAILS = 8
MAX_THUMBNAIL_BYTES = 512 * 1024

INSTRUCTIONS = """\
Medvec searches a collection of de-identified medical images (chest X-rays from DICOM, PNG or JPEG,
dermatology photographs ..., normalised to WebP) by embedding similarity. Use search_medical_images to
find images matching a text description, find_similar_images to find images that look like one you
already have (by image_id), and get_image_metadata for one image's details. Where the collection has radiology reports, search_reports finds the studies whose
reports match a text (with the matching passage) and the images found directly or through those
reports, and get_image_reports gives an image's report (indication, findings, impression).
search_studies answers whole studies (views and reports together) for a text, an image_id or both,
and takes relevant / not_relevant image_ids from earlier hits to refine a search. Scores
rank results; they are not diagnoses or probabilities. Filters (view, labels, modality, split) narrow
the candidate images before ranking. Where the home holds several collections (chest X-rays,
skin photographs ...), every tool takes `collection` to choose one; omitted, the server's own."""


# Tool parameters, described where the assistant reads them (the input schema).
Query = Annotated[str, Field(min_length=1, max_length=1000,
                             description="What to look for, in plain words: a finding, a view, a description "
                                         "(e.g. 'large left pleural effusion', 'lateral view with cardiomegaly')")]
ImageId = Annotated[str, Field(min_length=1, description="An image_id from a previous search result")]
K = Annotated[int, Field(ge=1, le=MAX_K, description=f"How many images to return (1-{MAX_K})")]
ReportK = Annotated[int, Field(ge=1, le=MAX_K, description=f"How many reports, and how many images, to return "
                                                           f"(1-{MAX_K})")]
View = Annotated[list[str] | None, Field(description="Only these projections, any of: PA, AP, LATERAL, LL ... "
                                                     "(case-insensitive)")]
Labels = Annotated[list[str] | None, Field(description="Only images carrying any of these labels, spelled as in "
                                                       "the collection (a chest one: 'Cardiomegaly', 'Pleural "
                                                       "Effusion', 'No Finding'; a dermatology one its conditions, "
                                                       "e.g. 'Eczema'); case-insensitive")]
Modality = Annotated[list[str] | None, Field(description="Only these DICOM modalities, any of: CR, DX, ... "
                                                         "(case-insensitive)")]
Split = Annotated[list[str] | None, Field(description="Only these dataset splits, any of: train, valid, test")]
Mode = Annotated[ReportMode, Field(description="How reports are ranked: hybrid (default: words and meaning, "
                                               "rank-fused), bm25 (the words themselves), vector (meaning, by the "
                                               "model's text embedding)")]
Rerank = Annotated[Literal["probe"] | None, Field(description="probe: re-order a finding query's hits by "
                                                                 "that finding's linear probe (when fitted)")]
Thumbnails = Annotated[int, Field(ge=0, le=MAX_THUMBNAILS,
                                  description="Also attach WebP thumbnails of the top N hits as images "
                                              f"(0-{MAX_THUMBNAILS}; 0 = text only)")]

OptionalQuery = Annotated[str | None, Field(max_length=1000, description="Text to look for; with image_id, "
                                                                         "combined with the image")]
OptionalImageId = Annotated[str | None, Field(description="A stored image (an image_id from a result) to start from")]
TextWeight = Annotated[float, Field(ge=0, le=1, description="With both query and image_id: the text's share")]
Marked = Annotated[list[str] | None, Field(description="image_ids from earlier hits (relevance feedback)")]
PerPatient = Annotated[int | None, Field(ge=1, le=MAX_K, description="At most this many studies per patient")]
StudyScore = Annotated[Literal["best", "mean"], Field(description="best: a study scores as its best view; "
                                                                  "mean: the mean over its views")]
Collection = Annotated[str | None, Field(max_length=64, description="Which collection of the home to ask (a chest "
                                                                   "collection, a dermatology one ...); omit for "
                                                                   "the server's own")]

READ_ONLY = ToolAnnotations(readOnlyHint=True, destructiveHint=False, idempotentHint=True, openWorldHint=False)


# --- the server -----------------------------------------------------------------------------------

#: One search's view of a collection: its images, its reports, and the home its thumbnails live under.
Opened = tuple[ImageSearch, ReportSearch, HomePath]


def build_server(search: ImageSearch, home: HomePath, collections: OpenCollections[Opened] | None = None) -> MCPServer:
    """An MCP server whose tools answer from `search` and its reports; thumbnails are read from under `home`.
    With `collections`, a tool's `collection` argument asks that collection of the home instead."""
    known = f" This home's collections: {', '.join(collections.names()) or 'none'}." if collections else ""
    server = MCPServer("medvec", title="Medvec medical image search", instructions=INSTRUCTIONS + known,
                       version=_version(), log_level="WARNING")
    titles = ("Search medical images by text", "Find similar medical images", "Get one image's metadata",
              "Search reports and their images", "Get one image's reports",
              "Search studies, refined by feedback")
    pick = _picker((search, ReportSearch(search), as_path(home)), collections)
    for tool, title in zip(_image_tools(pick) + _report_tools(pick) + (_study_tool(pick),), titles, strict=True):
        # The docstring is what the assistant reads; cleandoc drops the code's indentation.
        server.add_tool(tool, title=title, description=inspect.cleandoc(tool.__doc__), annotations=READ_ONLY)
    return server


def _picker(default: Opened, collections: OpenCollections[Opened] | None):
    """`with pick(collection) as (search, reports, home)`: the named collection, held while the tool runs."""

    @contextlib.contextmanager
    def pick(collection: str | None):
        if not collection or (collections is not None and collection == collections.default):
            yield default
            return
        try:
            lease = collections.acquire(collection) if collections is not None else None
        except UnknownCollection as exc:
            raise ToolError(str(exc)) from None
        if lease is None:
            raise ToolError(f"this server searches one collection; start `medvec mcp --collection {collection}`")
        try:
            yield lease.value
        finally:
            collections.release(lease)

    return pick


def _image_tools(pick) -> tuple:
    """Text → images, image → similar images, one image's metadata."""

    def search_medical_images(query: Query, k: K = 10, view: View = None, labels: Labels = None,
                              modality: Modality = None, split: Split = None, thumbnails: Thumbnails = 0,
                              rerank: Rerank = None, collection: Collection = None
                              ) -> Annotated[CallToolResult, SearchAnswer]:
        """Find images in the collection that match a text description, best match first.

        Returns up to k hits, each with image_id, score (cosine similarity, for ranking only: not a
        probability or a diagnosis), rank, view_position, modality, labels, split and study_id.
        Combine with filters to narrow the candidates first, e.g. view=["PA"], labels=["Cardiomegaly"];
        each filter is any-of and filters are combined with AND. Pass an image_id from the hits to
        find_similar_images or get_image_metadata. rerank="probe" re-orders the hits of a query that
        names a finding ("pleural effusion") by that finding's linear probe, and adds probe_score.
        """
        filters = Filters.of(view, modality, split, labels)
        with pick(collection) as (search, _, home):
            if rerank == "probe":
                return _answer(lambda: search_text_reranked(search, query, k, filters), f"for {query!r}", home,
                               thumbnails)
            return _answer(lambda: search.search_text(query, k, filters), f"for {query!r}", home, thumbnails)

    def find_similar_images(image_id: ImageId, k: K = 10, view: View = None, labels: Labels = None,
                            modality: Modality = None, split: Split = None, thumbnails: Thumbnails = 0,
                            collection: Collection = None) -> Annotated[CallToolResult, SearchAnswer]:
        """Find the images that look most like a given image in the collection (itself excluded).

        image_id comes from a previous search result. Returns up to k hits in the same shape as
        search_medical_images; the same filters apply (any-of within a filter, AND across filters).
        """
        with pick(collection) as (search, _, home):
            return _answer(lambda: search.similar(image_id, k, Filters.of(view, modality, split, labels)),
                           f"similar to {image_id}", home, thumbnails)

    def get_image_metadata(image_id: ImageId, collection: Collection = None) -> Annotated[CallToolResult, ImageMetadata]:
        """All the metadata the collection holds for one image, by image_id.

        Includes study_id, series_id, subject_key (a keyed pseudonym, not a patient identifier),
        view_position, modality, body_part, labels, split, pixel size, photometric interpretation,
        how it was windowed, the ingest batch, and the paths of its normalised WebP image and
        thumbnail relative to the Medvec home. Never the original file path.
        """
        try:
            with pick(collection) as (search, _, _):
                metadata = search.get(image_id)
        except (SearchInputError, NotIndexed) as exc:
            return _error(exc)
        return CallToolResult(content=[TextContent(type="text", text=json.dumps(metadata, default=str))],
                              structured_content=metadata)

    return search_medical_images, find_similar_images, get_image_metadata


def _report_tools(pick) -> tuple:
    """Text → reports (and images through them), one image's reports."""

    def search_reports(query: Query, k: ReportK = 10, mode: Mode = "hybrid", view: View = None, labels: Labels = None,
                       modality: Modality = None, split: Split = None, thumbnails: Thumbnails = 0,
                       collection: Collection = None) -> Annotated[CallToolResult, ReportSearchAnswer]:
        """Search the radiology reports with a text, and the images through them, best match first.

        Returns `studies`: the k reports that match best (mode hybrid, bm25 or vector), each with
        study_key, the snippet of the report around the query's words, impression, findings, labels
        read from the text, and image_ids (the study's images). And `images`: the k images found
        directly by the text or through those reports, merged, each with routes ("image", "report"
        or both) and, when found through a report, its study_key. Filters (any-of within a filter,
        AND across) narrow the images, not the reports. Report text is de-identified at ingest.
        Fails with a plain reason when the collection has no reports.
        """
        with pick(collection) as (_, reports, home):
            try:
                result = reports.search(query, k, Filters.of(view, modality, split, labels), mode)
            except (SearchInputError, NotIndexed, NoReports) as exc:
                return _error(exc)
            content: list[TextContent | ImageContent] = [TextContent(type="text", text=summarize_reports(result))]
            for image in result["images"][:thumbnails]:
                thumbnail = _thumbnail(home, image.get("thumb_uri"))
                if thumbnail is not None:
                    content.append(thumbnail)
        return CallToolResult(content=content, structured_content=compact_report_answer(result))

    def get_image_reports(image_id: ImageId, collection: Collection = None) -> Annotated[CallToolResult, ImageReportsOut]:
        """The radiology reports of one image's study, by image_id: indication, findings, impression.

        Also the report's study_key, where it came from (mimic, openi or indiana) and the findings
        read from its text. An empty list when no report links to the image. Report text is
        de-identified at ingest (dates, names, numbers replaced by [date], [name], [id]).
        Fails with a plain reason when the collection has no reports.
        """
        try:
            with pick(collection) as (search, reports, _):
                search.get(image_id)  # an unknown id is an error, not an empty list
                answer = {"image_id": image_id, "reports": reports.reports_for_image(image_id)}
        except (SearchInputError, NotIndexed, NoReports) as exc:
            return _error(exc)
        return CallToolResult(content=[TextContent(type="text", text=summarize_image_reports(answer))],
                              structured_content=answer)

    return search_reports, get_image_reports


def _study_tool(pick):
    """Studies (views and reports together) for a text, a stored image, both, refined by feedback."""

    def search_studies(query: OptionalQuery = None, image_id: OptionalImageId = None,
                       text_weight: TextWeight = TEXT_WEIGHT, relevant: Marked = None, not_relevant: Marked = None, per_patient: PerPatient = None,
                       study_score: StudyScore = "best", k: K = 10, view: View = None, labels: Labels = None,
                       modality: Modality = None, split: Split = None,
                       collection: Collection = None) -> Annotated[CallToolResult, StudySearchAnswer]:
        """Find studies: each hit is one study with its views (best first) and reports.

        Ask with a text (query), a stored image (image_id, itself excluded), or both: "this image, with
        effusion" combines them, text_weight the text's share (0-1). Refine by marking image_ids from
        earlier hits as relevant or not_relevant and asking again (Rocchio feedback; relevant alone is
        a query). per_patient caps studies per patient; study_score ranks by the best view or the mean
        over views. Scores rank; they are not diagnoses or probabilities.
        """
        try:
            with pick(collection) as (search, reports, _):
                answer = refined_search(search, k=k, filters=Filters.of(view, modality, split, labels), text=query,
                                        image_id=image_id, refinement=Refinement.of(text_weight, relevant, not_relevant),
                                        by_study=True, per_patient=per_patient, study_score=study_score, reports=reports)
        except (SearchInputError, NotIndexed) as exc:
            return _error(exc)
        studies = [{**{n: s[n] for n in ("study_id", "subject_key", "score", "rank", "reports")},
                    "views": [{n: v[n] for n in HIT_FIELDS if n in v} for v in s["views"]]} for s in answer["studies"]]
        lines = [f"{len(studies)} stud(ies) via {answer['route']} (model {answer['model']}):"]
        lines += [f"{s['rank']}. study {s['study_id']} score {s['score']:.3f} views "
                  + ", ".join(f"{v['image_id']} {v.get('view_position') or '?'}" for v in s["views"])
                  + (f"; impression: {s['reports'][0]['impression']}" if s["reports"] else "") for s in studies]
        structured = {"studies": studies, **{n: answer[n] for n in ("route", "model", "table", "table_version")}}
        return CallToolResult(content=[TextContent(type="text", text="\n".join(lines))], structured_content=structured)

    return search_studies


def _answer(run, what: str, home: HomePath, thumbnails: int) -> CallToolResult:
    try:
        result = run()
    except (SearchInputError, NotIndexed) as exc:
        return _error(exc)
    answer = compact_answer(result)
    content: list[TextContent | ImageContent] = [TextContent(type="text", text=summarize(result, what))]
    for hit in result.hits[:thumbnails]:
        image = _thumbnail(home, hit.metadata.get("thumb_uri"))
        if image is not None:
            content.append(image)
    return CallToolResult(content=content, structured_content=answer)


def _thumbnail(home: HomePath, thumb_uri: str | None) -> ImageContent | None:
    """The hit's WebP thumbnail, read only from the path the table stores, and only inside `home`."""
    if not thumb_uri:
        return None
    root = home.resolve()
    path = (root / thumb_uri).resolve()
    if not path.is_relative_to(root) or not path.is_file():
        log.warning("thumbnail missing or outside the Medvec home; skipped")
        return None
    data = path.read_bytes()
    if len(data) > MAX_THUMBNAIL_BYTES:
        return None
    return ImageContent(type="image", data=base64.b64encode(data).decode("ascii"), mime_type="image/webp")


def _error(exc: Exception) -> CallToolResult:
    # An expected failure is the assistant's to read and act on, in the search's own words.
    return CallToolResult(content=[TextContent(type="text", text=str(exc))], is_error=True)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("medvec")
    except PackageNotFoundError:
        return ""


def run_stdio(settings: Settings, model: str | None = None) -> int:
    """Serve the search for `settings` (and `model`) on stdin/stdout until the client disconnects."""
    from medvec.search.configured import open_search

    # Whatever a library prints while loading must not reach the client as a protocol message;
    # once serving, the SDK itself points fd 1 at stderr for the same reason.
    with contextlib.redirect_stdout(sys.stderr):
        embedders = SharedEmbedders()  # one encoder per model, whichever collections the tools name
        search = open_search(settings, model, embedders=embedders)
        collections = collection_searches(settings, model, embedders)
        server = build_server(search, settings.home, collections)
    log.info("MCP server for %s on stdio", search.table_name)
    try:
        server.run("stdio")
    except KeyboardInterrupt:
        pass
    finally:
        collections.close()
        search.close()
    return 0


def collection_searches(settings: Settings, model: str | None = None,
                        embedders: SharedEmbedders | None = None) -> OpenCollections[Opened]:
    """The other collections of the settings' home, each its own search when a tool first names it; their
    encoders come from `embedders` (one per model) when given."""
    from medvec.search.configured import open_search

    def open_collection(collection: Settings) -> Opened:
        search = open_search(collection, model, embedders=embedders)
        return search, ReportSearch(search), as_path(collection.home)

    return OpenCollections(settings, open_collection, lambda opened: opened[0].close())
