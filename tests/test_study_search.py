"""Study-level search, image + text queries and relevance feedback on the shared sample collection.

The sample is embedded with a random-weights model, so the tests plant vectors where relevance
matters, and otherwise check grouping, limits and the shapes every interface answers.
"""

from __future__ import annotations

import json

import anyio
import numpy as np
import pytest
from mcp import ClientSession

from medvec.search.configured import open_search
from medvec.search.feedback import ROCCHIO, Refinement, combine, query_vector, rocchio, stored_vectors
from medvec.search.images import Filters, NoSuchImage, SearchInputError
from medvec.search.reports import ReportSearch
from medvec.search.studies import refined_search, search_images, search_studies
from tests.conftest import CHROMIUM
from tests.test_http_api import api  # noqa: F401 - the served API fixture
from tests.test_web_page import card_ids, page, search_for, site  # noqa: F401 - the page fixtures


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


# --- the HTTP API and the MCP tool ------------------------------------------------------------------

def test_http_answers_studies_and_refined_images(api, search):
    studies = api.post("/api/search/refine", params={"q": "edema", "by_study": "true", "per_patient": 1, "k": 5})
    assert studies.status_code == 200, studies.text
    body = studies.json()
    assert body["route"] == "studies+per_patient" and len(body["studies"]) == 5
    assert len({s["subject_key"] for s in body["studies"]}) == 5
    view = body["studies"][0]["views"][0]
    assert view["thumbnail_url"].endswith("/thumbnail") and "source_uri" not in view
    vector, _ = search.text_vector("edema")
    expected = search_studies(search, vector, k=5, per_patient=1)["studies"]
    assert [s["study_id"] for s in body["studies"]] == [s["study_id"] for s in expected]

    base = api.get("/api/search", params={"q": "edema", "k": 20}).json()["hits"]
    liked = base[-1]["image_id"]
    refined = api.post("/api/search/refine", params={"q": "edema", "k": 20, "relevant": [liked]}).json()
    assert [h["image_id"] for h in refined["hits"]].index(liked) < len(base) - 1
    assert refined["query"]["relevant"] == [liked]


def test_http_combines_an_upload_with_text_and_refuses_bad_input(api, search_collection):
    dicom = sorted((search_collection.sample_dir / "synthetic").rglob("*.dcm"))[3]
    answer = api.post("/api/search/refine", params={"q": "cardiomegaly", "text_weight": 0.2, "k": 3},
                      files={"file": (dicom.name, dicom.read_bytes(), "application/dicom")})
    assert answer.status_code == 200, answer.text
    assert answer.json()["query"]["image"] == "upload" and len(answer.json()["hits"]) == 3
    nothing = api.post("/api/search/refine", params={"k": 3})
    assert nothing.status_code == 400 and "give a text" in nothing.json()["error"]
    unknown = api.post("/api/search/refine", params={"relevant": ["no-such-image"]})
    assert unknown.status_code == 404
    bad_score = api.post("/api/search/refine", params={"q": "edema", "study_score": "median"})
    assert bad_score.status_code == 400 and "study_score" in bad_score.json()["error"]


async def _ask_studies(env: dict, errlog, image_id: str) -> dict:
    from tests.test_mcp import _session

    out = {}
    with anyio.fail_after(120):
        async with _session(env, errlog) as (read, write):
            async with ClientSession(read, write) as session:
                await session.initialize()
                out["tools"] = {t.name: t for t in (await session.list_tools()).tools}
                out["studies"] = await session.call_tool(
                    "search_studies", {"query": "edema", "image_id": image_id, "k": 4, "per_patient": 1,
                                       "relevant": [image_id]})
                out["nothing"] = await session.call_tool("search_studies", {})
    return out


def test_mcp_search_studies_answers_what_the_domain_answers(search_collection, search, tmp_path):
    image_id = search.snapshot().ids[2]
    with open(tmp_path / "stderr.txt", "w") as errlog:
        out = anyio.run(_ask_studies, dict(search_collection.env), errlog, image_id)
    tool = out["tools"]["search_studies"]
    assert {"query", "image_id", "text_weight", "relevant", "not_relevant", "per_patient", "study_score"} <= set(
        tool.input_schema["properties"])
    assert "studies" in tool.output_schema["properties"]
    result = out["studies"]
    assert not result.is_error, result.content
    expected = refined_search(search, k=4, text="edema", image_id=image_id, per_patient=1, by_study=True,
                              refinement=Refinement.of(relevant=[image_id]), reports=ReportSearch(search))
    studies = result.structured_content["studies"]
    assert [s["study_id"] for s in studies] == [s["study_id"] for s in expected["studies"]]
    assert set(studies[0]["views"][0]) <= {"image_id", "score", "rank", "view_position", "labels", "split",
                                           "study_id", "modality"}
    assert out["nothing"].is_error and "give a text" in out["nothing"].content[0].text


def test_cli_searches_by_study_per_patient_and_with_an_image_and_text(search_collection, search):
    from tests.test_search_cli import _run

    env = search_collection.env
    out = json.loads(_run(["search", "edema", "--by-study", "--per-patient", "1", "--k", "4", "--json"], env).stdout)
    vector, _ = search.text_vector("edema")
    expected = search_studies(search, vector, k=4, per_patient=1)["studies"]
    assert [s["study_id"] for s in out["studies"]] == [s["study_id"] for s in expected]
    assert len({s["subject_key"] for s in out["studies"]}) == 4
    dicom = sorted((search_collection.sample_dir / "synthetic").rglob("*.dcm"))[3]
    combined = json.loads(_run(["search", "--image", str(dicom), "cardiomegaly", "--text-weight", "0.3", "--k", "3",
                                "--json"], env).stdout)
    assert combined["query"]["image"] == "upload" and combined["query"]["text"] == "cardiomegaly"
    assert combined["query"]["text_weight"] == 0.3 and len(combined["hits"]) == 3
    human = _run(["search", "edema", "--by-study", "--k", "2"], env).stdout
    assert "study hit(s)" in human and "study " in human


# --- the web page ---------------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's Chromium at /usr/bin/chromium")
def test_the_page_groups_by_study_and_re_searches_with_marked_hits(page, site, search):
    page.goto(site + "/")
    page.wait_for_selector("#filter-view .chip")
    first = search_for(page, "edema")
    page.check("#by-study")
    page.wait_for_selector(".study-group")
    vector, _ = search.text_vector("edema")
    expected = search_studies(search, vector, k=12)["studies"]
    shown = page.eval_on_selector_all(".study-group", "s => s.map(n => n.dataset.studyId)")
    assert shown == [s["study_id"] for s in expected]
    views = page.eval_on_selector_all(".study-group:first-child .study-image", "f => f.map(n => n.dataset.imageId)")
    assert views == [v["image_id"] for v in expected[0]["views"]]
    assert "route studies" in page.inner_text("#summary") and page.is_hidden("#images-heading")

    page.uncheck("#by-study")
    page.wait_for_selector(".card")
    assert card_ids(page) == first
    liked = first[-1]
    page.click(f".card[data-image-id='{liked}'] .mark-relevant")
    assert page.is_visible("#feedback") and "1 more like these" in page.inner_text("#feedback-count")
    page.click("#feedback-apply")
    page.wait_for_function(f"() => document.querySelector('.card').dataset.imageId !== {first[0]!r} || "
                           f"[...document.querySelectorAll('.card')].map(c => c.dataset.imageId).indexOf({liked!r}) "
                           f"< {len(first) - 1}")
    refined = refined_search(search, k=12, text="edema", refinement=Refinement.of(relevant=[liked]))
    page.wait_for_function("() => document.querySelector('#summary').textContent.includes('route index')")
    assert card_ids(page) == [h["image_id"] for h in refined["hits"]] != first
    assert page.get_attribute(f".card[data-image-id='{liked}']", "class").count("marked-relevant") == 1
    assert page.errors == []
