"""`medvec mcp`: the image search as MCP tools an assistant can call, served over stdio.

Three read-only tools on one `ImageSearch`: text → images, image → similar images, and one
image's metadata. stdout carries the protocol and nothing else; logs go to stderr.
"""

from __future__ import annotations

import base64
import contextlib
import inspect
import json
import logging
import sys
from pathlib import Path
from typing import Annotated, Any

from mcp.server.mcpserver import MCPServer
from mcp.types import CallToolResult, ImageContent, TextContent, ToolAnnotations
from pydantic import BaseModel, ConfigDict, Field

from medvec.search import MAX_K, Filters, ImageSearch, NotIndexed, SearchInputError, SearchResult
from medvec.settings import Settings

log = logging.getLogger(__name__)

#: Thumbnails are a few KB of WebP each; the cap keeps one answer from filling an assistant's context.
MAX_THUMBNAILS = 8
MAX_THUMBNAIL_BYTES = 512 * 1024

INSTRUCTIONS = """\
Medvec searches a collection of de-identified chest X-rays (DICOM normalised to WebP) by embedding
similarity. Use search_medical_images to find images matching a text description, find_similar_images
to find images that look like one you already have (by image_id), and get_image_metadata for one
image's details. Scores are cosine similarities from the collection's embedding model: they rank
images, they are not diagnoses or probabilities. Filters (view, labels, modality, split) narrow the
candidates before ranking."""


# --- what the tools return ------------------------------------------------------------------------

class ImageFields(BaseModel):
    """The metadata an assistant needs to talk about an image; never file paths from the source."""

    image_id: str = Field(description="Stable id of the image (its DICOM SOP Instance UID or a hash)")
    study_id: str | None = Field(None, description="Study the image belongs to (de-identified)")
    view_position: str | None = Field(None, description="Projection: PA, AP, LATERAL, ...")
    modality: str | None = Field(None, description="DICOM modality: CR, DX, ...")
    labels: list[str] | None = Field(None, description="Findings recorded for the image, when known")
    split: str | None = Field(None, description="Dataset split (train / valid / test), when known")


class ImageHit(ImageFields):
    score: float = Field(description="Cosine similarity to the query; higher is closer")
    rank: int = Field(description="1 for the best match")


class SearchAnswer(BaseModel):
    hits: list[ImageHit]
    route: str = Field(description="How it was answered: fallback (precomputed), index, similar_images, ...")
    model: str = Field(description="Embedding model the collection was searched with")
    table: str = Field(description="LanceDB table searched")
    table_version: int


class ImageMetadata(ImageFields):
    """Everything the collection keeps about one image (pseudonymised; no source paths)."""

    model_config = ConfigDict(extra="allow")


HIT_FIELDS = tuple(ImageHit.model_fields)

# Tool parameters, described where the assistant reads them (the input schema).
Query = Annotated[str, Field(min_length=1, max_length=1000,
                             description="What to look for, in plain words: a finding, a view, a description "
                                         "(e.g. 'large left pleural effusion', 'lateral view with cardiomegaly')")]
ImageId = Annotated[str, Field(min_length=1, description="An image_id from a previous search result")]
K = Annotated[int, Field(ge=1, le=MAX_K, description=f"How many images to return (1-{MAX_K})")]
View = Annotated[list[str] | None, Field(description="Only these projections, any of: PA, AP, LATERAL, LL ... "
                                                     "(case-insensitive)")]
Labels = Annotated[list[str] | None, Field(description="Only images carrying any of these findings, spelled as in "
                                                       "the collection (e.g. 'Cardiomegaly', 'Pleural Effusion', "
                                                       "'No Finding'); case-insensitive")]
Modality = Annotated[list[str] | None, Field(description="Only these DICOM modalities, any of: CR, DX, ... "
                                                         "(case-insensitive)")]
Split = Annotated[list[str] | None, Field(description="Only these dataset splits, any of: train, valid, test")]
Thumbnails = Annotated[int, Field(ge=0, le=MAX_THUMBNAILS,
                                  description="Also attach WebP thumbnails of the top N hits as images "
                                              f"(0-{MAX_THUMBNAILS}; 0 = text only)")]

READ_ONLY = ToolAnnotations(readOnlyHint=True, destructiveHint=False, idempotentHint=True, openWorldHint=False)


# --- the server -----------------------------------------------------------------------------------

def build_server(search: ImageSearch, home: Path) -> MCPServer:
    """An MCP server whose tools answer from `search`; thumbnails are read from under `home`."""
    home = Path(home)
    server = MCPServer("medvec", title="Medvec chest X-ray search", instructions=INSTRUCTIONS,
                       version=_version(), log_level="WARNING")

    def search_medical_images(query: Query, k: K = 10, view: View = None, labels: Labels = None,
                              modality: Modality = None, split: Split = None,
                              thumbnails: Thumbnails = 0) -> Annotated[CallToolResult, SearchAnswer]:
        """Find chest X-rays in the collection that match a text description, best match first.

        Returns up to k hits, each with image_id, score (cosine similarity, for ranking only: not a
        probability or a diagnosis), rank, view_position, modality, labels, split and study_id.
        Combine with filters to narrow the candidates first, e.g. view=["PA"], labels=["Cardiomegaly"];
        each filter is any-of and filters are combined with AND. Pass an image_id from the hits to
        find_similar_images or get_image_metadata.
        """
        return _answer(lambda: search.search_text(query, k, Filters.of(view, modality, split, labels)),
                       f"for {query!r}", home, thumbnails)

    def find_similar_images(image_id: ImageId, k: K = 10, view: View = None, labels: Labels = None,
                            modality: Modality = None, split: Split = None,
                            thumbnails: Thumbnails = 0) -> Annotated[CallToolResult, SearchAnswer]:
        """Find the chest X-rays that look most like a given image in the collection (itself excluded).

        image_id comes from a previous search result. Returns up to k hits in the same shape as
        search_medical_images; the same filters apply (any-of within a filter, AND across filters).
        """
        return _answer(lambda: search.similar(image_id, k, Filters.of(view, modality, split, labels)),
                       f"similar to {image_id}", home, thumbnails)

    def get_image_metadata(image_id: ImageId) -> Annotated[CallToolResult, ImageMetadata]:
        """All the metadata the collection holds for one image, by image_id.

        Includes study_id, series_id, subject_key (a keyed pseudonym, not a patient identifier),
        view_position, modality, body_part, labels, split, pixel size, photometric interpretation,
        how it was windowed, the ingest batch, and the paths of its normalised WebP image and
        thumbnail relative to the Medvec home. Never the original file path.
        """
        try:
            metadata = search.get(image_id)
        except (SearchInputError, NotIndexed) as exc:
            return _error(exc)
        return CallToolResult(content=[TextContent(type="text", text=json.dumps(metadata, default=str))],
                              structured_content=metadata)

    for tool, title in ((search_medical_images, "Search chest X-rays by text"),
                        (find_similar_images, "Find similar chest X-rays"),
                        (get_image_metadata, "Get one chest X-ray's metadata")):
        # The docstring is what the assistant reads; cleandoc drops the code's indentation.
        server.add_tool(tool, title=title, description=inspect.cleandoc(tool.__doc__), annotations=READ_ONLY)
    return server


def _answer(run, what: str, home: Path, thumbnails: int) -> CallToolResult:
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


def compact_answer(result: SearchResult) -> dict[str, Any]:
    """The structured answer: the hit fields an assistant uses, not every column."""
    return {"hits": [{name: hit[name] for name in HIT_FIELDS if name in hit} for hit in
                     (h.to_json() for h in result.hits)],
            "route": result.route, "model": result.model, "table": result.table,
            "table_version": result.table_version}


def summarize(result: SearchResult, what: str) -> str:
    """A few lines a person (or a model that ignores structured content) can read."""
    head = f"{len(result.hits)} image(s) {what} (model {result.model}, route {result.route})"
    if result.query.get("filters"):
        head += ", filters " + json.dumps(result.query["filters"])
    if not result.hits:
        return head + ": nothing matched."
    lines = [head + ":"]
    for hit in result.hits:
        meta = hit.metadata
        labels = ", ".join(meta.get("labels") or []) or "no labels"
        lines.append(f"{hit.rank}. {hit.image_id} score {hit.score:.3f} {meta.get('view_position') or '?'} "
                     f"{meta.get('modality') or '?'} [{labels}] split {meta.get('split') or '?'}")
    return "\n".join(lines)


def _thumbnail(home: Path, thumb_uri: str | None) -> ImageContent | None:
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
    from medvec.service import open_search

    # Whatever a library prints while loading must not reach the client as a protocol message;
    # once serving, the SDK itself points fd 1 at stderr for the same reason.
    with contextlib.redirect_stdout(sys.stderr):
        search = open_search(settings, model)
        server = build_server(search, settings.home)
    log.info("MCP server for %s on stdio", search.table_name)
    try:
        server.run("stdio")
    except KeyboardInterrupt:
        pass
    finally:
        search.close()
    return 0
