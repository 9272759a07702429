"""Study-level search, image + text queries and relevance feedback on the shared sample collection.

The sample is embedded with a random-weights model, so the tests plant vectors where relevance
matters, and otherwise check grouping, limits and the shapes every interface answers.
"""

from __future__ import annotations

import numpy as np
import pytest

from medvec.search.configured import open_search
from medvec.search.feedback import ROCCHIO, Refinement, combine, query_vector, rocchio, stored_vectors
from medvec.search.images import Filters, NoSuchImage, SearchInputError
from medvec.search.reports import ReportSearch
from medvec.search.studies import refined_search, search_images, search_studies


def _meta(search):
    loaded = search.snapshot()
    return loaded, loaded.meta.column("study_id").to_pylist(), loaded.meta.column("subject_key").to_pylist()


def _rank(ids, image_id):
    return ids.index(image_id) if image_id in ids else len(ids)


def test_a_study_hit_holds_every_view_of_its_study_best_view_first(search):
    loaded, study_of, _ = _meta(search)
    vector, _ = search.text_vector("cardiomegaly")
    result = search_studies(search, vector, k=50, reports=ReportSearch(search))
    studies = result["studies"]
    assert [s["rank"] for s in studies] == list(range(1, len(studies) + 1))
    assert len({s["study_id"] for s in studies}) == len(studies)  # one hit per study
    assert len(studies) == len(set(study_of))  # k above the count: every study once
    for study in studies:
        expected = {loaded.ids[row] for row, sid in enumerate(study_of) if sid == study["study_id"]}
        views = study["views"]
        assert {v["image_id"] for v in views} == expected
        assert all(v["study_id"] == study["study_id"] for v in views)
        scores = [v["score"] for v in views]
        assert scores == sorted(scores, reverse=True) and study["score"] == pytest.approx(scores[0], abs=1e-5)
    assert [s["score"] for s in studies] == sorted((s["score"] for s in studies), reverse=True)
    assert any(len(s["views"]) > 1 for s in studies)  # the sample has multi-view studies
    assert any(s["reports"] for s in studies) and all("impression" in r for s in studies for r in s["reports"])


def test_mean_scoring_fuses_the_views(search):
    vector, _ = search.text_vector("edema")
    studies = search_studies(search, vector, k=50, score="mean")["studies"]
    for study in studies:
        assert study["score"] == pytest.approx(np.mean([v["score"] for v in study["views"]]), abs=1e-5)
    with pytest.raises(SearchInputError, match="study_score"):
        search_studies(search, vector, k=5, score="median")


def test_filters_keep_only_the_matching_views_of_a_study(search):
    vector, _ = search.text_vector("edema")
    studies = search_studies(search, vector, k=20, filters=Filters.of(view=["LATERAL"]))["studies"]
    assert studies and all(v["view_position"] == "LATERAL" for s in studies for v in s["views"])


@pytest.mark.parametrize("by_study", [True, False])
def test_at_most_n_hits_per_patient(search, by_study):
    _, _, subject_of = _meta(search)
    vector, _ = search.text_vector("pleural effusion")
    if by_study:
        hits = search_studies(search, vector, k=50, per_patient=1)["studies"]
    else:
        hits = [h.to_json() for h in search_images(search, vector, k=50, per_patient=1).hits]
    subjects = [h["subject_key"] for h in hits]
    assert len(subjects) == len(set(subjects)) == len(set(subject_of))  # every patient, once
    unlimited = search_images(search, vector, k=50).hits
    assert len(unlimited) > len(hits)
    # The limited ranking is the unlimited one with each patient's later hits dropped.
    if not by_study:
        seen, expected = set(), []
        for hit in unlimited:
            if hit.metadata["subject_key"] not in seen:
                seen.add(hit.metadata["subject_key"])
                expected.append(hit.image_id)
        assert [h["image_id"] for h in hits] == expected
    with pytest.raises(SearchInputError, match="per_patient"):
        search_images(search, vector, k=5, per_patient=-2)


def test_an_image_plus_text_query_moves_the_ranking_toward_the_text(search_collection):
    search = open_search(search_collection.settings)  # its own: the planted text must not leak
    try:
        loaded = search.snapshot()
        query_id = loaded.ids[0]
        image_only = [h.image_id for h in search.similar(query_id, k=50).hits]
        target = image_only[-1]  # the stored image least like the query image
        loaded.fallback_vectors["planted finding"] = stored_vectors(search, [target])[0]
        ranks = []
        for weight in (0.0, 0.3, 0.6, 1.0):
            answer = refined_search(search, k=50, image_id=query_id, text="planted finding",
                                    refinement=Refinement.of(text_weight=weight))
            ids = [h["image_id"] for h in answer["hits"]]
            assert query_id not in ids and answer["query"]["text_weight"] == weight
            ranks.append(_rank(ids, target))
        assert ranks == sorted(ranks, reverse=True) and ranks[0] > ranks[-1] == 0
        expected = combine(stored_vectors(search, [query_id])[0], stored_vectors(search, [target])[0], 0.3)
        got = query_vector(search, image_id=query_id, text="planted finding", refinement=Refinement.of(text_weight=0.3))
        assert np.allclose(got, expected, atol=1e-6) and np.linalg.norm(got) == pytest.approx(1.0, abs=1e-5)
    finally:
        search.close()


def test_relevance_feedback_moves_the_ranking_toward_marked_hits(search):
    base = [h.image_id for h in search.search_text("edema", k=50).hits]
    liked, disliked = base[-1], base[0]
    refinement = Refinement.of(relevant=[liked], not_relevant=[disliked])
    first = refined_search(search, k=50, text="edema", refinement=refinement)
    again = refined_search(search, k=50, text="edema", refinement=refinement)
    ids = [h["image_id"] for h in first["hits"]]
    assert ids == [h["image_id"] for h in again["hits"]]  # deterministic
    assert _rank(ids, liked) < _rank(base, liked) and _rank(ids, disliked) > _rank(base, disliked)
    q, _ = search.text_vector("edema")
    a, b, c = ROCCHIO
    moved = a * q + b * stored_vectors(search, [liked])[0] - c * stored_vectors(search, [disliked])[0]
    assert np.allclose(rocchio(q, stored_vectors(search, [liked]), stored_vectors(search, [disliked])),
                       moved / np.linalg.norm(moved), atol=1e-6)
    # "More like these" alone ranks the marked image first.
    alone = refined_search(search, k=3, refinement=Refinement.of(relevant=[liked]))
    assert alone["hits"][0]["image_id"] == liked


def test_bad_refinements_are_plain_input_errors(search):
    with pytest.raises(SearchInputError, match="both"):
        Refinement.of(relevant=["a"], not_relevant=["a"])
    with pytest.raises(SearchInputError, match="text_weight"):
        Refinement.of(text_weight=1.5)
    with pytest.raises(NoSuchImage):
        refined_search(search, text="edema", refinement=Refinement.of(relevant=["no-such-image"]))
    with pytest.raises(SearchInputError, match="give a text"):
        refined_search(search)
