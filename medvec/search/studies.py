"""Grouped search: a hit is a study (its views, scored by the best view or the mean over views, and its
reports), or an image; either way at most N hits per patient (`subject_key`), so one patient's
twenty follow-ups cannot fill a page. Works on any query vector (text, image, both, refined by
feedback: medvec.search.feedback) over the in-memory vectors of `ImageSearch`.

Candidates come from the index best view first, in widening rounds until k groups pass the
per-patient limit; each candidate study is then scored over all its views that pass the filters.
"""

from __future__ import annotations

import time
import weakref

import numpy as np

from medvec.search.feedback import Refinement, query_vector
from medvec.search.images import Filters, ImageSearch
from medvec.search.results import SearchInputError, SearchResult, check_k

STUDY_SCORES = ("best", "mean")  # the first is the default
FIRST_DEPTH = 64
#: Per loaded table version: each row's study key and subject key (built once, on first grouped query).
_GROUPS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def refined_search(search: ImageSearch, *, k: int = 10, filters: Filters = Filters(), text: str | None = None,
                   image: bytes | None = None, filename: str = "query", image_id: str | None = None,
                   refinement: Refinement = Refinement(), by_study: bool = False, per_patient: int | None = None,
                   study_score: str = STUDY_SCORES[0], reports=None) -> dict:
    """One search over images or studies: the query vector (feedback.query_vector), then grouped hits.
    `reports` (a ReportSearch) attaches each study's reports. Answers JSON (`StudySearchOut`)."""
    started = time.perf_counter()
    vector = query_vector(search, text=text, image=image, filename=filename, image_id=image_id,
                          refinement=refinement)
    query = {"text": (text or "").strip() or None, "image": "upload" if image is not None else None,
             "image_id": image_id, "k": k, "filters": filters.to_json(), **refinement.to_json(),
             "by_study": by_study, "per_patient": per_patient, "study_score": study_score}
    exclude = {image_id} if image_id is not None else set()
    if by_study:
        return search_studies(search, vector, k, filters, per_patient=per_patient, score=study_score,
                              reports=reports, started=started, query=query)
    return search_images(search, vector, k, filters, per_patient=per_patient, exclude=exclude,
                         started=started, query=query).to_json()


def search_images(search: ImageSearch, vector: np.ndarray, k: int, filters: Filters = Filters(), *,
                  per_patient: int | None = None, exclude: set[str] = frozenset(), started: float | None = None,
                  query: dict | None = None) -> SearchResult:
    """The k images nearest to `vector`, at most `per_patient` from one patient."""
    started = time.perf_counter() if started is None else started
    k, per_patient = check_k(k), _check_per_patient(per_patient)
    loaded, picked, _ = _pick(search, vector, k, filters, per_patient, by_study=False, exclude=exclude)
    rows = [rows[0] for _, rows in picked]
    scores = [score for score, _ in picked]
    return search.result_of(loaded, rows, scores, "index+per_patient" if per_patient else "index", started,
                            query or {"k": k, "filters": filters.to_json(), "per_patient": per_patient})


def search_studies(search: ImageSearch, vector: np.ndarray, k: int, filters: Filters = Filters(), *,
                   per_patient: int | None = None, score: str = STUDY_SCORES[0], reports=None,
                   started: float | None = None, query: dict | None = None) -> dict:
    """The k studies nearest to `vector`: each with its views (those passing the filters), best view
    first, scored by the best view (`best`) or the mean over its views (`mean`)."""
    started = time.perf_counter() if started is None else started
    if score not in STUDY_SCORES:
        raise SearchInputError(f"study_score must be one of {', '.join(STUDY_SCORES)}, not {score!r}")
    k, per_patient = check_k(k), _check_per_patient(per_patient)
    loaded, picked, mask = _pick(search, vector, k, filters, per_patient, by_study=True)
    study_key, subject = _groups(loaded)
    vectors = loaded.index.vectors
    studies = []
    for _, (first, *_) in picked:
        rows = np.flatnonzero(study_key == study_key[first]) if study_key[first] is not None else np.array([first])
        if mask is not None:
            rows = rows[mask[rows]]
        view_scores = vectors[rows] @ vector
        order = np.argsort(-view_scores, kind="stable")
        rows, view_scores = rows[order], view_scores[order]
        value = float(view_scores[0] if score == "best" else view_scores.mean())
        studies.append((value, rows, view_scores))
    studies.sort(key=lambda s: -s[0])  # `mean` may reorder what the best views found
    out = []
    for rank, (value, rows, view_scores) in enumerate(studies, start=1):
        views = search.result_of(loaded, rows.tolist(), view_scores.tolist(), "", started, {}).hits
        out.append({"study_id": views[0].metadata.get("study_id"), "subject_key": subject[rows[0]],
                    "score": round(value, 6), "rank": rank, "views": [v.to_json() for v in views],
                    "reports": _study_reports(reports, [v.image_id for v in views])})
    route = "studies+per_patient" if per_patient else "studies"
    return {"model": search.model_name, "table": search.table_name, "table_version": loaded.version,
            "route": route, "took_ms": round((time.perf_counter() - started) * 1000, 3),
            "query": query or {"k": k, "filters": filters.to_json()}, "studies": out}


def _pick(search: ImageSearch, vector, k: int, filters: Filters, per_patient: int | None, *, by_study: bool,
          exclude: set[str] = frozenset()):
    """Walk the nearest rows best first, one per group (study or image), skipping patients at their
    limit, until k groups; widen the candidate depth until k are found or every row was seen."""
    total = len(search.snapshot().ids)
    depth = min(total, max(FIRST_DEPTH, 8 * k))
    while True:
        loaded, scores, rows, mask = search.candidates(vector, depth, filters)
        study_key, subject = _groups(loaded)
        seen, per_subject, picked = set(), {}, []
        for score, row in zip(scores.tolist(), rows.tolist()):
            if row < 0 or loaded.ids[row] in exclude:
                continue
            group = study_key[row] if by_study and study_key[row] is not None else ("row", row)
            if group in seen:
                continue
            who = subject[row]
            if per_patient and who is not None and per_subject.get(who, 0) >= per_patient:
                continue
            seen.add(group)
            per_subject[who] = per_subject.get(who, 0) + 1
            picked.append((score, [row]))
            if len(picked) == k:
                return loaded, picked, mask
        if depth >= total or len(rows) < depth:
            return loaded, picked, mask
        depth = min(total, depth * 4)


def _groups(loaded) -> tuple[np.ndarray, list]:
    groups = _GROUPS.get(loaded)
    if groups is None:
        study = loaded.meta.column("study_id").to_pylist()
        groups = _GROUPS[loaded] = (np.array(study, dtype=object), loaded.meta.column("subject_key").to_pylist())
    return groups


def _study_reports(reports, image_ids: list[str]) -> list[dict]:
    """The reports linked to any of the study's views (usually one); none without a reports table."""
    if reports is None:
        return []
    from medvec.search.reports import NoReports

    found = {}
    try:
        for image_id in image_ids:
            for report in reports.reports_for_image(image_id):
                found.setdefault(report["report_id"], report)
    except NoReports:
        return []
    return list(found.values())


def _check_per_patient(per_patient) -> int | None:
    if per_patient in (None, 0):
        return None
    try:
        per_patient = int(per_patient)
    except (TypeError, ValueError):
        raise SearchInputError(f"per_patient must be a whole number, not {per_patient!r}") from None
    if per_patient < 1:
        raise SearchInputError("per_patient must be at least 1")
    return per_patient
