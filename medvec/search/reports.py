"""Search reports and images together: BM25 (LanceDB full-text), vector (the model's text tower,
the images' space) and hybrid (reciprocal-rank fusion); text → images directly and through
matching reports; image → similar images → their reports.

Reports link to images by study (medvec.reports.tables.image_link_maps): MIMIC-CXR study folders, Open-I
and Indiana file names. Links are worked out when the tables are loaded, so a report and its
images may arrive in different batches.
"""

from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass, field

import numpy as np

from medvec.models.registry import quality_note
from medvec.tables import database
from medvec.tables.images import vectors_of
from medvec.reports.tables import image_link_maps, linked_image_ids, report_table_name
from medvec.search.images import Filters, ImageSearch, SearchInputError, check_k
from medvec.search.vector_index import VectorIndex

RRF_K = 60  # the usual reciprocal-rank-fusion constant: 1 / (60 + rank)
MODES = ("hybrid", "bm25", "vector")
CANDIDATES = 50  # per ranking, before fusion
_STOPWORDS = {"the", "and", "with", "for", "of", "in", "on", "a", "an", "is", "are", "no", "or", "to", "there",
              "this", "that", "not"}
_REPORT_COLUMNS = ("report_id", "study_key", "layout", "findings", "impression", "indication", "labels",
                   "image_names", "study_folder")


class NoReports(RuntimeError):
    """The model has no reports table yet."""


@dataclass
class ReportHit:
    report_id: str
    study_key: str
    layout: str
    score: float
    routes: list[str]
    snippet: str
    highlights: list[tuple[int, int]]
    impression: str
    findings: str
    labels: list[str]
    image_ids: list[str] = field(default_factory=list)

    def to_json(self, images: list[dict] | None = None) -> dict:
        out = {k: v for k, v in self.__dict__.items() if k != "image_ids"}
        out["score"] = round(self.score, 6)
        out["highlights"] = [list(h) for h in self.highlights]
        out["images"] = images if images is not None else [{"image_id": i} for i in self.image_ids]
        return out


class ReportSearch:
    """Reports of one model beside its `ImageSearch`; reloads when either table changes."""

    def __init__(self, images: ImageSearch, *, refresh_seconds: float = 2.0):
        self.images = images
        self.table_name = report_table_name(images.model_slug)
        self.refresh_seconds = refresh_seconds
        self._db = database.connect(images.lancedb_uri)
        self._lock = threading.RLock()
        self._state = None
        self._checked_at = 0.0

    # --- loading -----------------------------------------------------------------------------------

    def _current(self):
        now = time.monotonic()
        if self._state is not None and now - self._checked_at < self.refresh_seconds:
            return self._state
        with self._lock:
            table = database.open_table_if_exists(self._db, self.table_name)
            if table is None:
                raise NoReports(f"no reports for {self.images.model_name} yet: put reports beside the images "
                                "(MIMIC-CXR .txt, Open-I XML or the Indiana CSV pair) and run `medvec ingest`")
            image_version = self.images.refresh()
            key = (table.version, image_version)
            self._checked_at = now
            if self._state is None or self._state["key"] != key:
                self._state = self._load(table, key)
            return self._state

    def _load(self, table, key) -> dict:
        data = table.to_arrow()
        vectors = vectors_of(data)
        rows = data.select(list(_REPORT_COLUMNS)).to_pylist()
        by_stem, by_folder = self._image_links()
        image_ids = [linked_image_ids(row, by_stem, by_folder) for row in rows]
        by_image: dict[str, list[int]] = {}
        for index, linked in enumerate(image_ids):
            for image_id in linked:
                by_image.setdefault(image_id, []).append(index)
        return {"key": key, "table": table, "rows": rows, "image_ids": image_ids, "by_image": by_image,
                "row_of": {row["report_id"]: i for i, row in enumerate(rows)},
                "index": VectorIndex.build(vectors)}

    def _image_links(self) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
        table = database.open_table_if_exists(self._db, self.images.table_name)
        if table is None:
            return {}, {}
        data = table.search().select(["image_id", "source_uri"]).limit(None).to_arrow()
        return image_link_maps(data.column("image_id").to_pylist(), data.column("source_uri").to_pylist())

    # --- rankings ----------------------------------------------------------------------------------

    def _bm25(self, state, text: str, n: int) -> list[tuple[int, float]]:
        terms = " ".join(re.findall(r"[A-Za-z0-9]+", text))
        if not terms:
            return []
        try:
            found = (state["table"].search(terms, query_type="fts").select(["report_id", "_score"]).limit(n).to_arrow()
                     .to_pylist())
        except (ValueError, RuntimeError) as exc:  # no FTS index yet
            if "index" not in str(exc).lower():
                raise
            return []
        return [(state["row_of"][r["report_id"]], float(r["_score"])) for r in found if r["report_id"] in state["row_of"]]

    def _vector(self, state, vector: np.ndarray, n: int) -> list[tuple[int, float]]:
        scores, rows = state["index"].search(vector, n)
        return list(zip(rows.tolist(), scores.tolist()))

    def search_reports(self, text: str, k: int = 10, mode: str = "hybrid") -> tuple[list[ReportHit], dict]:
        """Reports ranked by BM25, by vector similarity, or by both fused (reciprocal rank)."""
        if mode not in MODES:
            raise SearchInputError(f"mode must be one of {', '.join(MODES)}, not {mode!r}")
        text = (text or "").strip()
        if not text:
            raise SearchInputError("the query text is empty")
        k = check_k(k)
        state = self._current()
        rankings, info = {}, {"mode": mode}
        if mode in ("hybrid", "bm25"):
            rankings["bm25"] = self._bm25(state, text, max(k, CANDIDATES))
        if mode in ("hybrid", "vector"):
            vector, encoded = self.images.text_vector(text)
            info["text_vector"] = "encoded" if encoded else "stored (common query)"
            rankings["vector"] = self._vector(state, vector, max(k, CANDIDATES))
        fused = fuse(rankings) if mode == "hybrid" else {row: (score, [mode]) for row, score in rankings[mode]}
        order = sorted(fused, key=lambda row: -fused[row][0])[:k]
        words = query_words(text)
        hits = []
        for row in order:
            record = state["rows"][row]
            snippet, highlights = make_snippet(record, words)
            hits.append(ReportHit(report_id=record["report_id"], study_key=record["study_key"], layout=record["layout"],
                                  score=fused[row][0], routes=fused[row][1], snippet=snippet, highlights=highlights,
                                  impression=record["impression"], findings=record["findings"],
                                  labels=list(record["labels"] or []), image_ids=state["image_ids"][row]))
        return hits, info

    # --- images and reports together ---------------------------------------------------------------

    def search(self, text: str, k: int = 10, filters: Filters = Filters(), mode: str = "hybrid") -> dict:
        """Studies (reports with their images) and images, direct hits and report-found ones merged."""
        started = time.perf_counter()
        reports, info = self.search_reports(text, k, mode)
        direct = self.images.search_text(text, k=min(500, k * 2), filters=filters)
        via_reports = [image_id for hit in reports for image_id in hit.image_ids]
        via_reports = [i for i in dict.fromkeys(via_reports) if self._passes(i, filters)]
        report_of = {}
        for hit in reports:
            for image_id in hit.image_ids:
                report_of.setdefault(image_id, hit)
        fused = fuse({"image": [(h.image_id, h.score) for h in direct.hits],
                      "report": [(i, 0.0) for i in via_reports]})
        order = sorted(fused, key=lambda i: -fused[i][0])[:k]
        images = []
        for rank, image_id in enumerate(order, start=1):
            meta = self.images.get(image_id)
            meta.pop("image_id", None)
            report = report_of.get(image_id)
            images.append({"image_id": image_id, "score": round(fused[image_id][0], 6), "rank": rank,
                           "routes": fused[image_id][1], **meta,
                           "report": {"report_id": report.report_id, "study_key": report.study_key,
                                      "snippet": report.snippet, "highlights": [list(h) for h in report.highlights]}
                           if report else None})
        return {"model": self.images.model_name, "model_note": quality_note(self.images.model_name),
                "table": self.table_name, "query": {"text": text, "k": k, "mode": mode, "filters": filters.to_json()}, **info,
                "direct_route": direct.route, "took_ms": round((time.perf_counter() - started) * 1000, 3),
                "studies": [h.to_json(self._image_summaries(h.image_ids)) for h in reports], "images": images}

    def similar_with_reports(self, image_id: str, k: int = 10, filters: Filters = Filters()) -> dict:
        """Images like this one, each with the reports of its study."""
        started = time.perf_counter()
        similar = self.images.similar(image_id, k, filters)
        state = self._current()
        hits = []
        for hit in similar.hits:
            linked = [state["rows"][i] for i in state["by_image"].get(hit.image_id, [])]
            hits.append({**hit.to_json(), "reports": [{"report_id": r["report_id"], "study_key": r["study_key"],
                                                       "impression": r["impression"], "findings": r["findings"],
                                                       "labels": list(r["labels"] or [])} for r in linked]})
        return {"model": self.images.model_name, "model_note": quality_note(self.images.model_name),
                "query": {"image_id": image_id, "k": k, "filters": filters.to_json()},
                "route": similar.route, "took_ms": round((time.perf_counter() - started) * 1000, 3), "hits": hits}

    def reports_for_image(self, image_id: str) -> list[dict]:
        state = self._current()
        return [{k: state["rows"][i][k] for k in ("report_id", "study_key", "layout", "indication", "findings",
                                                   "impression", "labels")}
                for i in state["by_image"].get(image_id, [])]

    def _passes(self, image_id: str, filters: Filters) -> bool:
        if not filters:
            return True
        try:
            meta = self.images.get(image_id)
        except SearchInputError:
            return False
        checks = ((filters.view, (meta.get("view_position") or "").upper()),
                  (filters.modality, (meta.get("modality") or "").upper()), (filters.split, meta.get("split")),
                  (filters.sex, (meta.get("sex") or "").lower()),
                  (filters.age_group, (meta.get("age_group") or "").upper()),
                  (filters.skin_type, (meta.get("skin_type") or "").upper()))
        if any(wanted and value not in wanted for wanted, value in checks):
            return False
        if filters.labels:
            have = {l.lower() for l in meta.get("labels") or []}
            return bool(have & {l.lower() for l in filters.labels})
        return True

    def _image_summaries(self, image_ids: list[str]) -> list[dict]:
        out = []
        for image_id in image_ids:
            try:
                meta = self.images.get(image_id)
            except SearchInputError:
                continue
            out.append({"image_id": image_id, "view_position": meta.get("view_position"),
                        "labels": meta.get("labels"), "thumb_uri": meta.get("thumb_uri")})
        return out


def fuse(rankings: dict[str, list[tuple[object, float]]]) -> dict[object, tuple[float, list[str]]]:
    """Reciprocal-rank fusion: each ranking adds 1 / (60 + rank); the routes that found an item."""
    fused: dict[object, tuple[float, list[str]]] = {}
    for name, ranking in rankings.items():
        for rank, (item, _) in enumerate(ranking, start=1):
            score, routes = fused.get(item, (0.0, []))
            fused[item] = (score + 1.0 / (RRF_K + rank), routes + [name])
    return fused


def query_words(text: str) -> list[str]:
    return [w for w in dict.fromkeys(re.findall(r"[a-z0-9]+", text.lower())) if len(w) > 2 and w not in _STOPWORDS]


def make_snippet(record: dict, words: list[str], width: int = 240) -> tuple[str, list[tuple[int, int]]]:
    """The section with the most query words (impression first on ties), cut around the first
    match, and where each query word occurs in it (for highlighting)."""
    sections = [record.get(name) or "" for name in ("impression", "findings", "indication")]
    pattern = re.compile(r"\b(" + "|".join(map(re.escape, words)) + r")\w*", re.IGNORECASE) if words else None
    best = max(sections, key=lambda s: len(pattern.findall(s)) if pattern else 0) if any(sections) else ""
    start = 0
    if pattern:
        first = pattern.search(best)
        if first and first.start() > width // 2:
            start = first.start() - width // 4
    snippet = best[start:start + width]
    if start > 0:
        snippet = "…" + snippet
    if start + width < len(best):
        snippet += "…"
    highlights = [(m.start(), m.end()) for m in pattern.finditer(snippet)
                  if not is_negated(snippet, m.start())] if pattern else []
    return snippet, highlights


# A finding named after one of these in the same clause is reported absent ("No pleural effusion").
_NEGATION = re.compile(r"\b(no|not|without|negative for|free of|absence of|resolved|clear of)\b", re.IGNORECASE)
_CLAUSE_END = re.compile(r"[.;:\n]|\b(but|however|although)\b", re.IGNORECASE)


def is_negated(text: str, at: int) -> bool:
    """Whether the word at `at` sits in a clause a negation cue opened: not a hit to highlight."""
    clause = text[:at]
    ends = list(_CLAUSE_END.finditer(clause))
    if ends:
        clause = clause[ends[-1].end():]
    return _NEGATION.search(clause) is not None


def mark_text(text: str, spans, left: str = "«", right: str = "»") -> str:
    """The snippet with each highlighted span between markers (terminal and MCP text; the web page
    builds <mark> elements from the same offsets)."""
    out, last = [], 0
    for start, end in spans:
        out += [text[last:start], left, text[start:end], right]
        last = end
    return "".join(out + [text[last:]])
