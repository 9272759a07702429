"""What the MCP tools answer: the structured content (the compact shapes of `schema`) and the few lines of
text a person, or a model that ignores structured content, reads."""

from __future__ import annotations

import json
from typing import Any

from medvec.models.registry import quality_note
from medvec.search.images import SearchResult
from medvec.search.reports import mark_text
from medvec.serve.schema import FUSED_SCALE, ImageHit, ReportImageHit, StudyFields

# The tools answer the compact shapes of `schema`, the classes the HTTP API's answers extend.
HIT_FIELDS = (*ImageHit.model_fields, "probe_score")  # probe_score: only on rerank="probe" answers
STUDY_FIELDS = tuple(StudyFields.model_fields)
REPORT_IMAGE_FIELDS = tuple(f for f in ReportImageHit.model_fields if f != "study_key")


def compact_answer(result: SearchResult) -> dict[str, Any]:
    """The structured answer: the hit fields an assistant uses, not every column."""
    return {"hits": [{name: hit[name] for name in HIT_FIELDS if name in hit} for hit in
                     (h.to_json() for h in result.hits)],
            "route": result.route, "model": result.model, "model_note": quality_note(result.model),
            "table": result.table, "table_version": result.table_version}


def summarize(result: SearchResult, what: str) -> str:
    """A few lines a person (or a model that ignores structured content) can read."""
    head = f"{len(result.hits)} image(s) {what} (model {result.model}, route {result.route})"
    if result.query.get("filters"):
        head += ", filters " + json.dumps(result.query["filters"])
    if note := quality_note(result.model):
        head += f" [{note}]"
    if not result.hits:
        return head + ": nothing matched."
    lines = [head + ":"]
    for hit in result.hits:
        meta = hit.metadata
        labels = ", ".join(meta.get("labels") or []) or "no labels"
        lines.append(f"{hit.rank}. {hit.image_id} score {hit.score:.3f} {meta.get('view_position') or '?'} "
                     f"{meta.get('modality') or '?'} [{labels}] split {meta.get('split') or '?'}")
    return "\n".join(lines)


def compact_report_answer(result: dict) -> dict[str, Any]:
    """Studies with their image ids; images with the fields an assistant uses and the report's study."""
    studies = [{"rank": rank, **{name: study[name] for name in STUDY_FIELDS},
                "image_ids": [image["image_id"] for image in study["images"]]}
               for rank, study in enumerate(result["studies"], start=1)]
    images = [{**{name: image[name] for name in REPORT_IMAGE_FIELDS if name in image},
               "study_key": image["report"]["study_key"] if image["report"] else None} for image in result["images"]]
    return {"studies": studies, "images": images, "mode": result["mode"], "model": result["model"],
            "model_note": quality_note(result["model"]), "table": result["table"], "score_scale": FUSED_SCALE}


def summarize_reports(result: dict) -> str:
    """Studies with the matched words between « », then the images and how each was found."""
    query = result["query"]
    head = (f"{len(result['studies'])} report(s) ({result['mode']}) and {len(result['images'])} image(s) for "
            f"{query['text']!r} (model {result['model']})")
    if note := quality_note(result["model"]):
        head += f" [{note}]"
    if query.get("filters"):
        head += ", image filters " + json.dumps(query["filters"])
    lines = [head + "; scores are rank-fusion sums (about 0.016-0.033), not cosines:"]
    for rank, study in enumerate(result["studies"], start=1):
        labels = ", ".join(study["labels"]) or "no findings read"
        images = ", ".join(image["image_id"] for image in study["images"]) or "none in the collection"
        lines.append(f"{rank}. study {study['study_key']} ({study['layout']}, {'+'.join(study['routes'])}) "
                     f"score {study['score']:.4f} [{labels}]: {mark_text(study['snippet'], study['highlights'])} "
                     f"Images: {images}")
    if result["images"]:
        lines.append("Images (direct and through reports):")
    for image in result["images"]:
        via = f" study {image['report']['study_key']}" if image["report"] else ""
        lines.append(f"{image['rank']}. {image['image_id']} score {image['score']:.4f} {'+'.join(image['routes'])} "
                     f"{image.get('view_position') or '?'} [{', '.join(image.get('labels') or []) or 'no labels'}]"
                     f"{via}")
    return "\n".join(lines)


def summarize_image_reports(answer: dict) -> str:
    if not answer["reports"]:
        return f"No report links to image {answer['image_id']}."
    lines = [f"{len(answer['reports'])} report(s) for image {answer['image_id']}:"]
    for report in answer["reports"]:
        lines.append(f"Study {report['study_key']} ({report['layout']})")
        lines += [f"  {name.capitalize()}: {report[name]}" for name in ("indication", "findings", "impression")
                  if report[name]]
    return "\n".join(lines)
